//! A real container runtime: podman, with runc (it joins the cgroup v2 hierarchy on hybrid
//! hosts too), runs a container from a busybox image built here from Debian's busybox-static
//! (no registry). The container's connections carry its container id and runtime, and
//! `--container ID` admits exactly them. `cargo xtask setup` installs podman, runc and
//! busybox-static; if the container cannot start, the test fails saying why.
use std::{
    io::Read,
    net::TcpListener,
    path::Path,
    process::{Command, Output},
    sync::OnceLock,
    thread,
    time::Duration,
};

use crate::support::Tracer;

const IMAGE: &str = "localhost/tcptrace-busybox:test";

fn podman(args: &[&str]) -> Output {
    let out = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman ({e}): `cargo xtask setup` installs it"));
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The image: a root filesystem of busybox-static and its applets, imported (once a run).
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tcptrace-image-{}", std::process::id()));
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).expect("rootfs");
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("/bin/busybox (`cargo xtask setup` installs busybox-static)");
        for applet in ["sh", "nc", "echo", "sleep"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        let tar = dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(dir.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success(), "tar of the rootfs");
        podman(&["import", path(&tar), IMAGE]);
        let _ = std::fs::remove_dir_all(&dir);
    });
    IMAGE
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn a_podman_containers_connections_name_it_and_its_id_filters_them() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let p = port.to_string();
    let acceptor = thread::spawn(move || {
        for _ in 0..2 {
            let (mut peer, _) = listener.accept().expect("accept");
            let _ = peer.read(&mut [0u8; 16]);
        }
    });
    let all = Tracer::start(&["flows", "--no-time-wait", "-D", &p]);
    let name = format!("tcptrace-test-{}", std::process::id());
    // It waits before connecting: long enough for a tracer filtered by its id to start; and
    // lives on a second after: a cgroup is named while it exists, and the tracer reads its
    // records up to --poll-interval (100 ms) after they were written.
    let script = format!("sleep 4; echo hi | nc 127.0.0.1 {port}; sleep 1");
    let run = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        image(),
        "sh",
        "-c",
        &script,
    ]);
    let id = String::from_utf8_lossy(&run.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "a container id: {id}");
    let only = Tracer::start_beside(
        &all,
        &[
            "flows",
            "--no-time-wait",
            "-D",
            &p,
            "--container",
            &id[..12],
        ],
    );
    // A client on the host, outside the container.
    let host_client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    drop(host_client);
    podman(&["wait", &name]);
    acceptor.join().expect("acceptor");
    thread::sleep(Duration::from_millis(300));
    let (all, only) = (all.stop(), only.stop());
    podman(&["rm", "-f", &name]);

    let from_container: Vec<_> = all
        .of_type("flow")
        .into_iter()
        .filter(|f| f["container_id"] == id.as_str())
        .collect();
    assert_eq!(from_container.len(), 1, "{:#?}", all.records);
    let f = from_container[0];
    assert_eq!(f["container_runtime"], "podman", "{f}");
    assert_eq!(f["comm"], "nc", "{f}");
    assert!(f.get("pod").is_none(), "not a pod: {f}");
    let filtered = only.of_type("flow");
    assert_eq!(filtered.len(), 1, "only the container's: {filtered:#?}");
    assert_eq!(filtered[0]["container_id"], id.as_str());
    eprintln!("container: {f}");
}
