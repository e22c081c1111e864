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

impl WorkloadFilter {
    /// Resolves the names against this host now: every name given must match a workload.
    pub fn resolve(&mut self, sources: &IdentitySources) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if sources.cgroup_root.as_os_str().is_empty() {
            bail!("--pod/--namespace/--container: no cgroup v2 hierarchy is mounted (give --cgroup-root)");
        }
        let tree = IdentityResolver::new(sources.clone()).walk();
        let missing = |flag: &str, name: &str, found: bool| -> Result<()> {
            if found {
                return Ok(());
            }
            bail!(
                "{flag} {name}: no such {} on this node (looked in {} and the cgroups under {})",
                &flag[2..],
                sources.pod_logs.display(),
                sources.cgroup_root.display()
            )
        };
        for pod in &self.pods {
            missing(
                "--pod",
                pod,
                tree.iter().any(|i| i.pod.as_ref() == Some(pod)),
            )?;
        }
        for ns in &self.namespaces {
            missing(
                "--namespace",
                ns,
                tree.iter().any(|i| i.namespace.as_ref() == Some(ns)),
            )?;
        }
        for c in &self.containers {
            missing(
                "--container",
                c,
                tree.iter().any(|i| self.container_matches(c, i)),
            )?;
        }
        self.cgroups = self.select(&tree);
        if self.cgroups.is_empty() {
            bail!(
                "--pod/--namespace/--container: no workload on this node matches all of {}",
                self.describe()
            );
        }
        Ok(())
    }
}
