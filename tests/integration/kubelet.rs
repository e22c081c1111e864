//! A Kubernetes node as the kubelet lays it out, without a kubelet: real cgroups (v2) named
//! as the systemd or the cgroupfs driver names them, and the kubelet's pod log directories
//! (`<namespace>_<pod>_<uid>/<container>/`) and container log links
//! (`<pod>_<namespace>_<container>-<id>.log`). Processes are moved into the containers'
//! cgroups and make real connections.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// How the kubelet names cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
    Systemd,
    /// `kubepods/besteffort/pod<uid>/<id>`
    Cgroupfs,
}

#[derive(Clone, Debug)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    pub container_id: String,
    /// The container's cgroup and the pod's.
    pub cgroup: PathBuf,
    pub pod_cgroup: PathBuf,
    /// The container's cgroup id (its directory's inode), read when it was made.
    id: u64,
    log_dir: PathBuf,
    log_link: PathBuf,
}

impl FakePod {
    /// The container's cgroup id (its directory's inode).
    pub fn cgroup_id(&self) -> u64 {
        self.id
    }

    /// The compact label tcptrace shows.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.container)
    }
}

pub struct FakeNode {
    root: PathBuf,
    logs: PathBuf,
    /// Directories made, removed deepest first at the end.
    made: Vec<PathBuf>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh id of `digits` hex digits, different for every call in this run.
fn fresh_hex(digits: usize) -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // The counter first: ids differ in their first digits (a 12-digit prefix names one).
    let seed = format!("{n:08x}{nanos:08x}{:08x}", std::process::id());
    seed.repeat(digits / seed.len() + 1)[..digits].to_string()
}

/// Where cgroup v2 is mounted.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).expect("mount point")))
        })
        .expect("a cgroup2 hierarchy is mounted on this machine")
}

impl FakeNode {
    pub fn new() -> FakeNode {
        let logs = std::env::temp_dir().join(format!("tcptrace-node-{}", fresh_hex(12)));
        for dir in ["pods", "containers"] {
            fs::create_dir_all(logs.join(dir)).expect("log directories");
        }
        FakeNode {
            root: cgroup2_root(),
            logs,
            made: Vec::new(),
        }
    }

    /// The flags that point tcptrace at this node's log directories.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--pod-logs".into(),
            self.logs.join("pods").display().to_string(),
            "--container-logs".into(),
            self.logs.join("containers").display().to_string(),
        ]
    }

    fn mkdir(&mut self, dir: PathBuf) {
        if !dir.exists() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            self.made.push(dir);
        }
    }

    /// A pod with one container, its cgroups and log directories made.
    pub fn pod(&mut self, driver: Driver, namespace: &str, name: &str, container: &str) -> FakePod {
        let uid = {
            let h = fresh_hex(32);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        };
        let container_id = fresh_hex(64);
        let (parents, pod_dir, container_dir) = match driver {
            Driver::Systemd => (
                vec!["kubepods.slice", "kubepods.slice/kubepods-burstable.slice"],
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                    uid.replace('-', "_")
                ),
                format!("cri-containerd-{container_id}.scope"),
            ),
            Driver::Cgroupfs => (
                vec!["kubepods", "kubepods/besteffort"],
                format!("kubepods/besteffort/pod{uid}"),
                container_id.clone(),
            ),
        };
        // In the kubelet's order: the pod's cgroup, its log directory and the container's,
        // the container's cgroup (made by the runtime as it starts), the container's log link.
        for parent in parents {
            self.mkdir(self.root.join(parent));
        }
        let pod_cgroup = self.root.join(pod_dir);
        self.mkdir(pod_cgroup.clone());
        let log_dir = self
            .logs
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(log_dir.join(container)).expect("pod log directory");
        let cgroup = pod_cgroup.join(container_dir);
        self.mkdir(cgroup.clone());
        let log_link = self
            .logs
            .join("containers")
            .join(format!("{name}_{namespace}_{container}-{container_id}.log"));
        fs::write(&log_link, "").expect("container log link");
        let id = fs::metadata(&cgroup)
            .unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()))
            .ino();
        FakePod {
            id,
            namespace: namespace.into(),
            name: name.into(),
            uid,
            container: container.into(),
            container_id,
            cgroup,
            pod_cgroup,
            log_dir,
            log_link,
        }
    }

    /// The pod is deleted: its cgroups (empty by now) and log directories go.
    pub fn remove(&mut self, pod: &FakePod) {
        for dir in [&pod.cgroup, &pod.pod_cgroup] {
            remove_cgroup(dir);
            self.made.retain(|d| d != dir);
        }
        let _ = fs::remove_dir_all(&pod.log_dir);
        let _ = fs::remove_file(&pod.log_link);
    }
}

/// Removes a cgroup once the processes that were in it are gone.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(dir).is_err() && dir.exists() {
        assert!(
            Instant::now() < deadline,
            "cannot remove {}: {:?}",
            dir.display(),
            fs::read_to_string(dir.join("cgroup.procs"))
        );
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // A shared parent another test still uses stays.
            let _ = fs::remove_dir(dir);
        }
        let _ = fs::remove_dir_all(&self.logs);
    }
}

/// `command` run by bash after moving itself into `cgroup`.
pub fn spawn_in(cgroup: &Path, command: &str) -> Child {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {command}",
            cgroup.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash")
}

/// A server in `cgroup` on 127.0.0.1 that reads a line from each client and closes; returns
/// it and its port.
pub fn server_in(cgroup: &Path) -> (Child, u16) {
    let script = "import socket\n\
                  s = socket.socket()\n\
                  s.bind(('127.0.0.1', 0))\n\
                  s.listen(64)\n\
                  print(s.getsockname()[1], flush=True)\n\
                  while True:\n    c, _ = s.accept()\n    c.recv(16)\n    c.close()\n";
    let mut child = spawn_in(cgroup, &format!("python3 -c \"{script}\""));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the server's port");
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("server port {line:?}: {e}"));
    (child, port)
}

/// `n` connections from a process in `cgroup` to `port`, each sending a line and closing.
pub fn clients_in(cgroup: &Path, port: u16, n: usize) {
    let mut child = spawn_in(
        cgroup,
        &format!(
            "bash -c 'for i in $(seq {n}); do exec 3<>/dev/tcp/127.0.0.1/{port}; echo hi >&3; \
             read -t 2 -u 3 _ ; exec 3<&-; done'"
        ),
    );
    assert!(child.wait().expect("clients").success(), "clients failed");
}
