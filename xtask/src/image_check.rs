//! Part of `cargo xtask test`: the image, run the way `deploy/daemonset.yaml` says — its
//! arguments, its host mounts, host network and PID namespaces, exactly the capabilities it
//! adds (all others dropped), a read-only root filesystem — read from the manifest itself, so
//! that the manifest cannot drift from what was run. It must trace real connections and serve
//! them on /metrics, with nothing on stderr but the start-up line, and name a kubelet's pod and
//! a podman container to a real Prometheus (`image_workloads`).
use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use yaml_rust2::{Yaml, YamlLoader};

use crate::image::podman;

const NAME: &str = "tcptrace-image-check";
const TAG: &str = "tcptrace:check";

/// What the DaemonSet's container is given.
#[derive(Debug, Default, PartialEq)]
pub struct PodSpec {
    pub args: Vec<String>,
    pub caps: Vec<String>,
    pub read_only: bool,
    pub host_network: bool,
    pub host_pid: bool,
    /// (host path, container path, read-only, propagation from the host).
    pub mounts: Vec<(String, String, bool, bool)>,
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container's spec, as the manifest writes it.
pub fn pod_spec(manifest: &str) -> Result<PodSpec> {
    let docs = YamlLoader::load_from_str(manifest).context("parsing the manifest")?;
    let pod = &docs.first().context("an empty manifest")?["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let security = &c["securityContext"];
    let volumes = pod["volumes"].as_vec().context("no volumes")?;
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_vec().context("no volumeMounts")? {
        let name = m["name"].as_str().context("a mount without a name")?;
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .with_context(|| format!("no volume {name}"))?;
        let host = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("volume {name} is not a hostPath"))?;
        mounts.push((
            host.to_string(),
            m["mountPath"].as_str().context("no mountPath")?.to_string(),
            m["readOnly"].as_bool().unwrap_or(false),
            m["mountPropagation"].as_str() == Some("HostToContainer"),
        ));
    }
    if strings(&security["capabilities"]["drop"]) != ["ALL"] {
        bail!("the manifest's container does not drop ALL capabilities");
    }
    Ok(PodSpec {
        args: strings(&c["args"]),
        caps: strings(&security["capabilities"]["add"]),
        read_only: security["readOnlyRootFilesystem"].as_bool() == Some(true),
        host_network: pod["hostNetwork"].as_bool() == Some(true),
        host_pid: pod["hostPID"].as_bool() == Some(true),
        mounts,
    })
}

/// `podman run` arguments for the spec.
pub fn podman_run_args(spec: &PodSpec, image: &str) -> Vec<String> {
    podman_run_args_named(spec, image, NAME)
}

/// `podman run` arguments for the spec, the container named `name`.
pub fn podman_run_args_named(spec: &PodSpec, image: &str, name: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--runtime", "runc", "run", "-d", "--name", name]
        .map(String::from)
        .to_vec();
    if spec.host_network {
        args.extend(["--network".into(), "host".into()]);
    }
    if spec.host_pid {
        args.extend(["--pid".into(), "host".into()]);
    }
    if spec.read_only {
        args.push("--read-only".into());
    }
    args.extend(["--cap-drop".into(), "all".into()]);
    for cap in &spec.caps {
        args.extend(["--cap-add".into(), format!("CAP_{cap}")]);
    }
    // Not "privileged": podman's default seccomp profile, as a kubelet's RuntimeDefault,
    // would refuse bpf(2) for a container without it; the manifest leaves seccomp unset
    // (Unconfined, Kubernetes' default).
    args.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
    // The limits the runtime inherits (podman's own defaults raise RLIMIT_NOFILE, which a
    // container without CAP_SYS_RESOURCE may not; a kubelet's runtime keeps its own).
    for (name, resource) in [
        ("nofile", libc::RLIMIT_NOFILE),
        ("nproc", libc::RLIMIT_NPROC),
    ] {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) fills our struct.
        if unsafe { libc::getrlimit(resource, &mut limit) } == 0 {
            // At most what this process has (lowering needs no capability); nproc kept low.
            let most = if name == "nproc" { 4096 } else { 1 << 20 };
            let (soft, hard) = (limit.rlim_cur.min(most), limit.rlim_max.min(most));
            args.extend(["--ulimit".into(), format!("{name}={soft}:{hard}")]);
        }
    }
    for (host, path, ro, propagate) in &spec.mounts {
        let mut options = vec![if *ro { "ro" } else { "rw" }];
        if *propagate {
            options.push("rslave");
        }
        args.extend(["-v".into(), format!("{host}:{path}:{}", options.join(","))]);
    }
    args.push(image.into());
    args.extend(spec.args.iter().cloned());
    args
}

/// The metrics port of `--metrics ADDR:PORT` in the arguments.
fn metrics_port(args: &[String]) -> Result<u16> {
    let at = args
        .iter()
        .position(|a| a == "--metrics")
        .context("no --metrics")?;
    let addr = args.get(at + 1).context("--metrics without an address")?;
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .context("--metrics address without a port")
}

fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Builds the image from `binary` and runs it as the manifest says (see the module).
pub fn check(binary: &std::path::Path) -> Result<()> {
    crate::image::build_image(binary, TAG)?;
    run_as_manifest_says(TAG)
}

/// Runs `image` as the manifest says (see the module).
pub fn run_as_manifest_says(image: &str) -> Result<()> {
    let root = crate::workspace_root();
    let manifest = fs::read_to_string(root.join("deploy/daemonset.yaml"))?;
    let spec = pod_spec(&manifest)?;
    for (host, ..) in &spec.mounts {
        // The manifest's DirectoryOrCreate volumes.
        fs::create_dir_all(host).with_context(|| format!("creating {host}"))?;
    }
    let _ = Command::new("podman").args(["rm", "-f", NAME]).output();
    let run = podman_run_args(&spec, image);
    println!(
        "xtask: as deploy/daemonset.yaml says: podman {}",
        run.join(" ")
    );
    podman(&run)?;
    let result = exercise(&spec).and_then(|()| {
        let named = crate::image_workloads::check(&spec, image, metrics_port(&spec.args)?)?;
        println!(
            "xtask: Prometheus scraped the container's /metrics: {} connections of pod \
             shop/cart-{} and {} of a podman container, under their names",
            named.pod_connections,
            std::process::id(),
            named.container_connections
        );
        println!(
            "xtask: the image as `flows --pod`: {}\nxtask: then: {}",
            named.waiting_notice, named.pod_flow
        );
        Ok(())
    });
    let logs = Command::new("podman").args(["logs", NAME]).output();
    let _ = Command::new("podman").args(["rm", "-f", NAME]).output();
    let logs = logs
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    result.with_context(|| format!("the container said: {logs}"))?;
    let said: Vec<&str> = logs
        .lines()
        .filter(|l| !l.starts_with("tcptrace: tracing TCP") && !l.trim().is_empty())
        // The start-up's count of connections opened meanwhile (the check's own polls).
        .filter(|l| !l.contains("network namespace during the"))
        .collect();
    if !said.is_empty() {
        bail!(
            "the container said more than its start-up line: {}",
            said.join(" | ")
        );
    }
    for (cap, outcome) in without_each(&spec, image)? {
        println!("xtask: the manifest's container without {cap}: {outcome}");
    }
    Ok(())
}

/// Capabilities the manifest adds whose absence a short run on this machine cannot show,
/// and why.
pub const NO_EFFECT_HERE: [(&str, &str); 3] = [
    ("SYS_RESOURCE", "RLIMIT_MEMLOCK, for kernels before 5.11 only"),
    (
        "SYS_PTRACE",
        "the idle report's owners of other users' connections (its first report comes after --idle-report)",
    ),
    (
        "NET_ADMIN",
        "conntrack lookups, only where a namespace's conntrack table holds entries",
    ),
];

/// The manifest's container run without each capability it adds, in turn: what that does
/// here (refused, a warning, or nothing this check can see), as (capability, outcome). BPF
/// and PERFMON are implied by SYS_ADMIN, which the manifest also adds: where one makes no
/// difference alone it is run without SYS_ADMIN too, and must then be refused.
pub fn without_each(spec: &PodSpec, image: &str) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for cap in &spec.caps {
        let mut outcome = outcome_without(spec, image, &[cap])?;
        let implied = ["BPF", "PERFMON"].contains(&cap.as_str())
            && spec.caps.iter().any(|c| c == "SYS_ADMIN");
        if outcome.is_none() && implied {
            match outcome_without(spec, image, &[cap, "SYS_ADMIN"])? {
                Some(refused) if refused.starts_with("refused") => {
                    outcome = Some(format!("implied by CAP_SYS_ADMIN; without both, {refused}"))
                }
                other => bail!("without {cap} and SYS_ADMIN: {other:?}"),
            }
        }
        let outcome = match outcome {
            Some(said) => said,
            None => match NO_EFFECT_HERE.iter().find(|(c, _)| c == cap) {
                Some((_, why)) => format!("no effect in this check ({why})"),
                None => {
                    bail!("the manifest adds {cap}, and the container works the same without it")
                }
            },
        };
        let named = outcome.contains(&format!("CAP_{cap}")) || outcome.starts_with("no effect");
        if !named {
            bail!("without {cap} the container says so without naming it: {outcome}");
        }
        found.push((cap.clone(), outcome));
    }
    Ok(found)
}

/// The container run without `caps`: `Some("refused: …")` or `Some("warned: …")`, `None`
/// when it works the same.
fn outcome_without(spec: &PodSpec, image: &str, caps: &[&str]) -> Result<Option<String>> {
    let fewer = PodSpec {
        caps: (spec.caps.iter())
            .filter(|c| !caps.contains(&c.as_str()))
            .cloned()
            .collect(),
        args: spec.args.clone(),
        mounts: spec.mounts.clone(),
        ..*spec
    };
    let _ = Command::new("podman").args(["rm", "-f", NAME]).output();
    podman(&podman_run_args(&fewer, image))?;
    let ran = exercise(&fewer);
    // What it says of its last connections comes with its next second's upkeep.
    thread::sleep(Duration::from_millis(2_500));
    let logs = Command::new("podman").args(["logs", NAME]).output()?;
    let _ = Command::new("podman").args(["rm", "-f", NAME]).output();
    let logs = String::from_utf8_lossy(&logs.stderr).into_owned();
    let said = |prefix: &str| {
        logs.lines()
            .find(|l| l.starts_with(prefix) && !l.contains("network namespace during the"))
            .map(str::to_string)
    };
    Ok(
        match (ran, said("tcptrace: error"), said("tcptrace: warning")) {
            (Err(_), Some(error), _) => Some(format!("refused: {error}")),
            (Err(e), None, _) => bail!("without {caps:?}: {e:#}; it said: {logs}"),
            (Ok(()), _, Some(warning)) => Some(format!("warned: {warning}")),
            (Ok(()), _, None) => None,
        },
    )
}

/// Waits for /metrics, makes connections, and finds them counted.
fn exercise(spec: &PodSpec) -> Result<()> {
    let port = metrics_port(&spec.args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape(port).is_err() {
        if Instant::now() > deadline {
            bail!("/metrics on :{port} did not answer within 60 s");
        }
        let running = podman(&["inspect", "--format", "{{.State.Running}}", NAME])?;
        if running.trim() != "true" {
            bail!("the container exited");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let to = listener.local_addr()?;
    let opened = |body: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with("tcptrace_flows_opened_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let before = opened(&scrape(port)?);
    for _ in 0..20 {
        let c = TcpStream::connect(to)?;
        let (s, _) = listener.accept()?;
        drop(c);
        drop(s);
    }
    // A container that connects as it starts (named by its cgroup id: CAP_DAC_READ_SEARCH).
    let accept = thread::spawn(move || listener.accept().map(|(mut s, _)| s.read(&mut [0u8; 4])));
    crate::image_workloads::container_connects(to.port())?;
    accept
        .join()
        .map_err(|_| anyhow::anyhow!("the acceptor panicked"))???;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = opened(&scrape(port)?);
        if now >= before + 42 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "tcptrace_flows_opened_total went from {before} to {now}, not by the 42 flows made"
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_becomes_podman_arguments() {
        let manifest = fs::read_to_string(crate::workspace_root().join("deploy/daemonset.yaml"))
            .expect("the manifest");
        let spec = pod_spec(&manifest).expect("a spec");
        assert!(
            spec.host_network && spec.host_pid && spec.read_only,
            "{spec:?}"
        );
        assert!(spec.caps.iter().any(|c| c == "BPF"), "{spec:?}");
        let args = podman_run_args(&spec, "img").join(" ");
        assert!(args.contains("--cap-drop all --cap-add CAP_"), "{args}");
        assert!(
            args.contains("-v /sys/kernel/btf:/sys/kernel/btf:ro"),
            "{args}"
        );
        assert!(args.contains("/run/netns:/run/netns:ro,rslave"), "{args}");
        assert!(args.ends_with(&spec.args.join(" ")), "{args}");
        assert_eq!(metrics_port(&spec.args).expect("a port"), 9595);
    }
}
