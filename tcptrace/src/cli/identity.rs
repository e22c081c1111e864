//! Who a socket belongs to (container, pod, unit): the flags that say where identities are
//! read from and how they are shown, and the workload filters (`--pod`, `--namespace`,
//! `--container`), resolved to cgroup ids at start and again every second while tracing.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::host::identity_resolver::{IdentityResolver, IdentitySources};
use crate::model::filter::WorkloadFilter;

/// Workload labels on metrics: at most this many (namespace, pod, container) label sets by
/// default; the rest are summed under `other`.
pub const DEFAULT_METRICS_WORKLOADS: usize = 200;

/// When column output has the identity column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ColumnWhen {
    /// When standard output is a terminal at least 160 columns wide.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Workload identity (a socket's cgroup → container, pod, unit)")]
pub struct IdentityArgs {
    /// The WORKLOAD column (namespace/pod/container, a container id, a systemd unit, or
    /// cgroup:ID) in column output: auto shows it on terminals at least 160 columns wide.
    /// JSON always carries cgroup_id, container_id, pod, namespace, container and unit.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value = "auto"
    )]
    pub identity_column: ColumnWhen,
    /// The cgroup2 mount to resolve cgroup ids in (default: the first cgroup2 mount; in a
    /// container, mount the host's /sys/fs/cgroup and name it here).
    #[arg(long, global = true, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
    /// The kubelet's pod log directories (<namespace>_<pod>_<uid>/<container>/): pod and
    /// container names without an API server.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/log/pods"
    )]
    pub pod_logs: PathBuf,
    /// The kubelet's container log links (<pod>_<namespace>_<container>-<id>.log): which
    /// container id is which container.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/log/containers"
    )]
    pub container_logs: PathBuf,
    /// Export metrics by workload (tcptrace_workload_*: connections per destination and
    /// local service, closes by cause, TIME_WAITs per destination, port failures) with
    /// k8s_namespace, k8s_pod and k8s_container labels (at most --metrics-max-workloads label
    /// sets, the rest under k8s_pod="other"). In `tcptrace metrics`, the kernel then sends
    /// every flow's end (the cost of `tcptrace flows`).
    #[arg(long, global = true)]
    pub metrics_pod_labels: bool,
    /// The most (namespace, pod, container) label sets with --metrics-pod-labels.
    #[arg(long, global = true, value_name = "N", default_value_t = DEFAULT_METRICS_WORKLOADS)]
    pub metrics_max_workloads: usize,
}

/// Identity settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    pub column: ColumnWhen,
    pub sources: IdentitySources,
    pub metrics_labels: bool,
    pub metrics_max_workloads: usize,
}

impl TryFrom<IdentityArgs> for IdentityConfig {
    type Error = anyhow::Error;
    fn try_from(args: IdentityArgs) -> Result<IdentityConfig> {
        if let Some(root) = &args.cgroup_root {
            if !root.is_dir() {
                bail!("--cgroup-root {}: not a directory", root.display());
            }
        }
        if !(1..=10_000).contains(&args.metrics_max_workloads) {
            bail!("--metrics-max-workloads must be between 1 and 10000");
        }
        // Without a cgroup2 mount, identities stay bare ids (the filters say so if given).
        let cgroup_root = match args.cgroup_root {
            Some(root) => cgroup2_under(root)?,
            None => crate::host::identity_resolver::cgroup2_mount().unwrap_or_default(),
        };
        Ok(IdentityConfig {
            column: args.identity_column,
            sources: IdentitySources {
                cgroup_root,
                pod_logs: args.pod_logs,
                container_logs: args.container_logs,
            },
            metrics_labels: args.metrics_pod_labels,
            metrics_max_workloads: args.metrics_max_workloads,
        })
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            column: ColumnWhen::Auto,
            sources: IdentitySources {
                cgroup_root: PathBuf::new(),
                pod_logs: PathBuf::from("/var/log/pods"),
                container_logs: PathBuf::from("/var/log/containers"),
            },
            metrics_labels: false,
            metrics_max_workloads: DEFAULT_METRICS_WORKLOADS,
        }
    }
}

/// The cgroup2 hierarchy at `root`, or under it in `unified/` (a hybrid host's /sys/fs/cgroup
/// mounted whole).
fn cgroup2_under(root: PathBuf) -> Result<PathBuf> {
    use crate::host::identity_resolver::is_cgroup2;
    if is_cgroup2(&root) {
        return Ok(root);
    }
    let unified = root.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    bail!(
        "--cgroup-root {}: not a cgroup v2 hierarchy (nor is {})",
        root.display(),
        unified.display()
    )
}

/// A Kubernetes name as the API server accepts it: lowercase letters, digits and `-` (and `.`
/// in a pod's name, a DNS subdomain), starting and ending with a letter or digit, at most 63
/// characters (253 for a pod).
fn check_kubernetes_name(flag: &str, name: &str) -> Result<()> {
    let (dots, longest) = match flag {
        "--pod" => (true, 253),
        _ => (false, 63),
    };
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edges = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > longest
        || !name.chars().all(allowed)
        || !edges(name.chars().next())
        || !edges(name.chars().last())
    {
        bail!(
            "{flag} '{name}' is not a Kubernetes name (lowercase letters, digits and '-'{}, \
             starting and ending with a letter or digit, at most {longest} characters)",
            if dots { " or '.'" } else { "" }
        );
    }
    Ok(())
}

impl WorkloadFilter {
    /// Checks the names and resolves them against this host now. A well-formed name that
    /// matches nothing yet is not an error: the session traces nothing until a workload it
    /// names appears (it looks every second) and says so once, at start.
    pub fn resolve(&mut self, sources: &IdentitySources) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        for pod in &self.pods {
            check_kubernetes_name("--pod", pod)?;
        }
        for ns in &self.namespaces {
            check_kubernetes_name("--namespace", ns)?;
        }
        for c in &self.containers {
            check_kubernetes_name("--container", c)?;
        }
        if sources.cgroup_root.as_os_str().is_empty() {
            bail!("--pod/--namespace/--container: no cgroup v2 hierarchy is mounted (give --cgroup-root)");
        }
        let tree = IdentityResolver::new(sources.clone()).walk();
        self.cgroups = self.select(&tree);
        Ok(())
    }
}
