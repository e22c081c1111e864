//! Two network namespaces joined by a veth pair: the test's own hosts, for staging drops.
use std::{
    fs::File,
    net::Ipv4Addr,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetnsPair {
    pub a: String,
    pub b: String,
    /// The veth end in B (for a qdisc on what B sends).
    pub dev_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the named namespace (/run/netns/NAME); sockets it creates
/// stay in that namespace.
pub fn run_in_namespace<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{name}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

impl NetnsPair {
    /// Namespaces `tt<pid>-<n>a` / `…b` with 10.231.<x>.1/30 and .2/30.
    pub fn new() -> NetnsPair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("tt{}-{n}", pid % 100_000);
        let x = ((pid * 7 + n * 13) % 200 + 20) as u8;
        let pair = NetnsPair {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
            dev_b: format!("v{tag}b"),
            addr_a: Ipv4Addr::new(10, 231, x, 1),
            addr_b: Ipv4Addr::new(10, 231, x, 2),
        };
        let (va, vb) = (format!("v{tag}a"), format!("v{tag}b"));
        sh(&["ip", "netns", "add", &pair.a]);
        sh(&["ip", "netns", "add", &pair.b]);
        sh(&[
            "ip", "link", "add", &va, "netns", &pair.a, "type", "veth", "peer", "name", &vb,
            "netns", &pair.b,
        ]);
        for (ns, dev, addr) in [(&pair.a, &va, pair.addr_a), (&pair.b, &vb, pair.addr_b)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it creates stay in that namespace.
    pub fn run_in<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in_namespace(ns, f)
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full);
    }
}

/// A connection from namespace B (client) to namespace A (server).
pub struct Connected {
    pub listener: TcpListener,
    pub client: TcpStream,
    pub server: TcpStream,
    pub server_port: u16,
    pub client_port: u16,
}

impl NetnsPair {
    /// Listens in A, connects from B, accepts.
    pub fn connect(&self) -> Connected {
        let addr_a = self.addr_a;
        let listener = self.run_in(&self.a, move || {
            TcpListener::bind((addr_a, 0)).expect("bind in A")
        });
        let server_port = listener.local_addr().expect("addr").port();
        let client = self.run_in(&self.b, move || {
            TcpStream::connect((addr_a, server_port)).expect("connect from B")
        });
        let client_port = client.local_addr().expect("addr").port();
        let (server, _) = listener.accept().expect("accept");
        Connected {
            listener,
            client,
            server,
            server_port,
            client_port,
        }
    }

    /// Sets a sysctl inside namespace `ns` (the TCP retry counts are per namespace).
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        self.exec(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
