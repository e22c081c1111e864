//! The node the manifest's container watches in the image check: a kubelet's pod (its cgroups
//! as the systemd driver names them, its log directories under /var/log/pods and
//! /var/log/containers, which the manifest mounts), a real podman container (a busybox image
//! imported here: no registry), connections from both, and a real Prometheus scraping the
//! container's /metrics. Beside it, the image run with the manifest's mounts and privileges
//! but `flows --pod NAME` started before the pod exists: it must say it waits, then print the
//! pod's flows.
use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{image::podman, image_check::PodSpec};

const BUSYBOX: &str = "localhost/tcptrace-busybox:check";
const FLOWS: &str = "tcptrace-image-check-flows";

/// A pod with one container, as a kubelet with the systemd cgroup driver lays it out.
struct FakePod {
    container: String,
    cgroup: PathBuf,
    /// Made here, removed deepest first.
    dirs: Vec<PathBuf>,
    log_dir: PathBuf,
    log_link: PathBuf,
}

fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            right.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
        })
        .context("no cgroup2 hierarchy is mounted")
}

impl FakePod {
    fn new(namespace: &str, name: &str, container: &str) -> Result<FakePod> {
        let pid = std::process::id();
        let uid = format!("{pid:08x}-0000-4000-8000-{:012x}", u64::from(pid) * 7919);
        let container_id = format!("{:0>64}", format!("{pid:x}c0ffee"));
        let root = cgroup2_root()?;
        let mut pod = FakePod {
            container: container.into(),
            cgroup: PathBuf::new(),
            dirs: Vec::new(),
            log_dir: PathBuf::from(format!("/var/log/pods/{namespace}_{name}_{uid}")),
            log_link: PathBuf::from(format!(
                "/var/log/containers/{name}_{namespace}_{container}-{container_id}.log"
            )),
        };
        let slice = "kubepods.slice/kubepods-besteffort.slice";
        let pod_dir = format!(
            "{slice}/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        );
        for dir in [
            "kubepods.slice".to_string(),
            slice.to_string(),
            pod_dir.clone(),
            format!("{pod_dir}/cri-containerd-{container_id}.scope"),
        ] {
            let path = root.join(dir);
            if !path.exists() {
                fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
                pod.dirs.push(path.clone());
            }
            pod.cgroup = path;
        }
        fs::create_dir_all(pod.log_dir.join(container))?;
        fs::create_dir_all("/var/log/containers")?;
        fs::write(&pod.log_link, "")?;
        Ok(pod)
    }

    /// A process in the pod's container cgroup connecting `n` times to `port` on loopback,
    /// a connection every 100 ms.
    fn connect(&self, port: u16, n: u32) -> Result<Child> {
        let script = format!(
            "import socket, time\n\
             for _ in range({n}):\n    \
                 c = socket.create_connection(('127.0.0.1', {port}))\n    \
                 c.sendall(b'x')\n    \
                 c.close()\n    \
                 time.sleep(0.1)\n"
        );
        let procs = self.cgroup.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec python3 -c \"$0\"",
                procs.display()
            ))
            .arg(script)
            .spawn()
            .context("starting the pod's process")
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.log_dir);
        let _ = fs::remove_file(&self.log_link);
        for dir in self.dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A podman container (busybox) that connects once to `port` on loopback as it starts, and
/// exits a second later; waits for it.
pub fn container_connects(port: u16) -> Result<()> {
    let image = busybox_image()?;
    let script = format!("echo x | nc 127.0.0.1 {port}; sleep 1");
    let args = [
        &["--runtime", "runc", "run", "--rm"][..],
        &PODMAN_RUN,
        &[image, "sh", "-c", &script],
    ]
    .concat();
    podman(&args).map(drop)
}

/// `podman run`'s options for the busybox containers: the host's network, and the limits a
/// runtime keeps (podman's defaults raise them past what a capability-less run may).
const PODMAN_RUN: [&str; 6] = [
    "--network",
    "host",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The busybox image (Debian's busybox-static, installed by `cargo xtask setup`), built once.
fn busybox_image() -> Result<&'static str> {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if BUILT.get().is_some() {
        return Ok(BUSYBOX);
    }
    let dir = std::env::temp_dir().join(format!("tcptrace-busybox-{}", std::process::id()));
    let bin = dir.join("rootfs/bin");
    fs::create_dir_all(&bin)?;
    fs::copy("/bin/busybox", bin.join("busybox"))
        .context("/bin/busybox (`cargo xtask setup` installs busybox-static)")?;
    for applet in ["sh", "nc", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let tar = dir.join("rootfs.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .args(["-cf", path(&tar)?, "."])
        .status()?;
    if !made.success() {
        bail!("tar of the busybox rootfs failed");
    }
    podman(&["import", path(&tar)?, BUSYBOX])?;
    let _ = fs::remove_dir_all(&dir);
    let _ = BUILT.set(());
    Ok(BUSYBOX)
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a path that is not UTF-8")
}

/// A Prometheus server on loopback scraping `target` every second, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!("tcptrace-image-prom-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tcptrace\n    \
                 static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n"
            ),
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start prometheus (`cargo xtask setup` installs it)")?;
        Ok(Prometheus { child, port, dir })
    }

    /// The body of an HTTP/1.0 GET of `path` (no chunked encoding to undo).
    fn get(&self, path: &str) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string())
    }

    /// The values of `label` across `metric`'s series, for an error message.
    fn labels(&self, metric: &str, label: &str) -> String {
        self.get(&format!("/api/v1/label/{label}/values?match[]={metric}"))
            .unwrap_or_else(|e| format!("({e:#})"))
    }

    /// The sum an instant PromQL query returns (0 for no series).
    fn sum(&self, promql: &str) -> Result<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = self.get(&format!("/api/v1/query?query={encoded}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("{promql}: {body}"))?;
        let result = json["data"]["result"]
            .as_array()
            .with_context(|| format!("{promql}: {body}"))?;
        Ok(result
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to `secs` for `ready`, saying `what` if it never is.
fn wait_for(what: &str, secs: u64, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if ready().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {secs} s");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// What the check saw, for its report.
pub struct Named {
    pub pod_connections: f64,
    pub container_connections: f64,
    pub waiting_notice: String,
    pub pod_flow: String,
}

/// Runs while the manifest's container (metrics on `metrics_port`) runs: a pod and a podman
/// container connect; Prometheus must find both under their names, and the image run as
/// `flows --pod NAME` must wait for the pod, then print its flows.
pub fn check(spec: &PodSpec, image: &str, metrics_port: u16) -> Result<Named> {
    let pid = std::process::id();
    let (namespace, name) = ("shop", format!("cart-{pid}"));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for peer in listener.incoming() {
            let Ok(mut peer) = peer else { break };
            let _ = peer.read(&mut [0u8; 8]);
        }
    });
    let busybox = busybox_image()?;
    let prometheus = Prometheus::start(metrics_port)?;
    // The image as `flows --pod NAME`, with the manifest's mounts and privileges, before the
    // pod exists.
    let flows_spec = PodSpec {
        args: [
            "flows",
            "--flows-at",
            "close",
            "--pod",
            &name,
            "--cgroup-root",
            "/host/sys/fs/cgroup",
            "--identity-column",
            "always",
        ]
        .map(String::from)
        .to_vec(),
        caps: spec.caps.clone(),
        mounts: spec.mounts.clone(),
        ..*spec
    };
    let _ = Command::new("podman").args(["rm", "-f", FLOWS]).output();
    podman(&crate::image_check::podman_run_args_named(
        &flows_spec,
        image,
        FLOWS,
    ))?;
    let result = (|| -> Result<Named> {
        let logs = || -> Result<(String, String)> {
            let out = Command::new("podman").args(["logs", FLOWS]).output()?;
            Ok((
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        };
        wait_for("the flows container's waiting notice", 30, || {
            Ok(logs()?.1.contains("waiting for"))
        })?;
        let pod = FakePod::new(namespace, &name, "app")?;
        thread::sleep(Duration::from_millis(1_500));
        let mut load = pod.connect(port, 10)?;
        let script = format!("for i in 1 2 3 4 5; do echo x | nc 127.0.0.1 {port}; done; sleep 2");
        let args = [
            &["--runtime", "runc", "run", "-d"][..],
            &PODMAN_RUN,
            &[busybox, "sh", "-c", &script],
        ]
        .concat();
        let container = podman(&args)?;
        let short = container.get(..12).unwrap_or(&container).to_string();
        let loaded = load.wait()?;
        if !loaded.success() {
            bail!("the pod's process failed");
        }
        let by_pod = format!(
            "sum(tcptrace_workload_connections_total{{k8s_namespace=\"{namespace}\",\
             k8s_pod=\"{name}\",k8s_container=\"{}\",direction=\"outbound\"}})",
            pod.container
        );
        let by_container = format!(
            "sum(tcptrace_workload_connections_total{{workload=\"podman:{short}\",\
             direction=\"outbound\"}})"
        );
        wait_for(&format!("Prometheus: {by_pod} >= 10"), 30, || {
            Ok(prometheus.sum(&by_pod)? >= 10.0)
        })?;
        wait_for(&format!("Prometheus: {by_container} >= 5"), 30, || {
            Ok(prometheus.sum(&by_container)? >= 5.0)
        })
        .with_context(|| {
            format!(
                "the workloads Prometheus has: {}",
                prometheus.labels("tcptrace_workload_connections_total", "workload")
            )
        })?;
        let _ = podman(&["wait", &container]);
        let _ = Command::new("podman")
            .args(["rm", "-f", &container])
            .output();
        wait_for("the flows container's pod flows", 15, || {
            Ok(logs()?.0.lines().filter(|l| l.contains(&name)).count() >= 10)
        })?;
        let (stdout, stderr) = logs()?;
        let others = stdout
            .lines()
            .filter(|l| !l.starts_with("TIME") && !l.contains(&name) && !l.trim().is_empty())
            .count();
        if others > 0 {
            bail!("`flows --pod {name}` printed {others} flows of others: {stdout}");
        }
        drop(pod);
        Ok(Named {
            pod_connections: prometheus.sum(&by_pod)?,
            container_connections: prometheus.sum(&by_container)?,
            waiting_notice: (stderr.lines())
                .find(|l| l.contains("waiting for"))
                .unwrap_or_default()
                .to_string(),
            pod_flow: (stdout.lines())
                .find(|l| l.contains(&name))
                .unwrap_or_default()
                .to_string(),
        })
    })();
    let _ = Command::new("podman").args(["rm", "-f", FLOWS]).output();
    result
}
