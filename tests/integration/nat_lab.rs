//! The NAT lab: two client namespaces and a server behind a router namespace that
//! source-NATs (MASQUERADE to a narrow port range) and, where asked, destination-NATs a
//! Service address.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::netns::{run_in_namespace, sh};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Namespaces `<tag>c1`, `<tag>c2` (clients 10.232.<x>.2 and 10.232.<x+1>.2), `<tag>r` (the
/// router, 10.232.<x+2>.1 toward the server) and `<tag>s` (the server, 10.232.<x+2>.2).
pub struct NatLab {
    tag: String,
    pub clients: [Ipv4Addr; 2],
    pub nat: Ipv4Addr,
    pub server: Ipv4Addr,
}

impl NatLab {
    /// The lab, the router source-NATing what leaves toward the server to ports `ports`.
    pub fn new(ports: &str) -> NatLab {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("nt{}-{n}", pid % 100_000);
        let x = ((pid * 11 + n * 7) % 80) as u8 * 3;
        let net = |i: u8| Ipv4Addr::new(10, 232, x + i, 2);
        let lab = NatLab {
            tag: tag.clone(),
            clients: [net(0), net(1)],
            nat: Ipv4Addr::new(10, 232, x + 2, 1),
            server: net(2),
        };
        for ns in ["c1", "c2", "r", "s"] {
            sh(&["ip", "netns", "add", &lab.ns(ns)]);
            sh(&["ip", "-n", &lab.ns(ns), "link", "set", "lo", "up"]);
        }
        for (i, end) in ["c1", "c2", "s"].into_iter().enumerate() {
            let (outer, inner) = (format!("{tag}{end}r"), format!("{tag}r{end}"));
            sh(&[
                "ip",
                "link",
                "add",
                &outer,
                "netns",
                &lab.ns(end),
                "type",
                "veth",
                "peer",
                "name",
                &inner,
                "netns",
                &lab.ns("r"),
            ]);
            let (host, gateway) = (net(i as u8), Ipv4Addr::new(10, 232, x + i as u8, 1));
            sh(&[
                "ip",
                "-n",
                &lab.ns(end),
                "addr",
                "add",
                &format!("{host}/24"),
                "dev",
                &outer,
            ]);
            sh(&["ip", "-n", &lab.ns(end), "link", "set", &outer, "up"]);
            sh(&[
                "ip",
                "-n",
                &lab.ns(end),
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ]);
            sh(&[
                "ip",
                "-n",
                &lab.ns("r"),
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                &inner,
            ]);
            sh(&["ip", "-n", &lab.ns("r"), "link", "set", &inner, "up"]);
        }
        lab.exec("r", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let to_server = format!("{tag}rs");
        lab.exec(
            "r",
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &to_server,
                "-p",
                "tcp",
                "-j",
                "MASQUERADE",
                "--to-ports",
                ports,
            ],
        );
        lab
    }

    /// The router translates `vip:port` (a Service address) to the server's `to_port`.
    pub fn dnat(&self, vip: Ipv4Addr, port: u16, to_port: u16) {
        let to = format!("{}:{to_port}", self.server);
        let (vip, port) = (vip.to_string(), port.to_string());
        self.exec(
            "r",
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &vip,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        );
    }

    pub fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.tag)
    }

    pub fn exec(&self, which: &str, args: &[&str]) {
        let mut full = vec![
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            self.ns(which),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        sh(&full);
    }

    /// Runs `f` on a thread inside namespace `which`; sockets it creates stay there.
    pub fn run_in<T: Send + 'static>(
        &self,
        which: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        run_in_namespace(&self.ns(which), f)
    }

    /// A listener in the server's namespace.
    pub fn listen(&self, port: u16) -> TcpListener {
        let server = self.server;
        self.run_in("s", move || {
            TcpListener::bind((server, port)).expect("bind in s")
        })
    }

    /// A connect() from client `i` (0 or 1), with a timeout.
    pub fn connect(&self, i: usize, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        let to = SocketAddr::from((self.server, port));
        self.run_in(["c1", "c2"][i], move || {
            TcpStream::connect_timeout(&to, timeout)
        })
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for ns in ["c1", "c2", "r", "s"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(ns)])
                .status();
        }
    }
}

/// One connection through the router before tracing, so that its conntrack table holds an
/// entry when the tracer reads the namespaces at start.
pub fn warm_up(lab: &NatLab, listener: &TcpListener, port: u16) {
    let stream = lab
        .connect(0, port, Duration::from_secs(2))
        .expect("warm-up connect");
    let (accepted, _) = listener.accept().expect("warm-up accept");
    drop(stream);
    drop(accepted);
}
