//! The NAT boundary on the real kernel: two clients behind a MASQUERADE router with a narrow
//! port range, a server behind it; drops joined to the clients' own flows across the
//! translation, SNAT port exhaustion and TIME_WAIT PAWS alerts.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    netns::{run_in_namespace, sh},
    support::Tracer,
};

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

fn ip(addr: Ipv4Addr) -> String {
    addr.to_string()
}

/// The router's only NAT port is held by one client's open connection: the other client's
/// SYNs are dropped at the NAT, said as `snat_exhausted` alerts naming the client, the NAT
/// address and the port it tried, and joined to that client's own flow (with the addresses
/// past the NAT); the first client's flow carries none of them.
#[test]
fn a_source_nat_out_of_ports_is_alerted_and_its_drops_join_the_clients_own_flow() {
    let lab = NatLab::new("41000-41000");
    let tracer = Tracer::start(&["all", "--flows-at", "close"]);
    let listener = lab.listen(9090);
    let mut held = (lab.connect(0, 9090, Duration::from_secs(2)))
        .expect("the first client takes the NAT's only port");
    let held_port = held.local_addr().expect("addr").port();
    let (accepted, _) = listener.accept().expect("accept");
    let refused = lab.connect(1, 9090, Duration::from_millis(2_500));
    assert!(
        refused.is_err(),
        "the second client's connect() cannot get through the NAT"
    );
    let (client, nat, server) = (ip(lab.clients[1]), ip(lab.nat), ip(lab.server));
    // The second client's one connection: its port is the flow's.
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| r["laddr"] == client);
    held.write_all(b"x")
        .expect("the first client's connection still works");
    drop(held);
    drop(accepted);
    let first = ip(lab.clients[0]);
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| {
        r["laddr"] == first && r["lport"] == held_port
    });
    let out = tracer.stop();
    let port = out
        .of_type("flow")
        .into_iter()
        .find(|f| f["laddr"] == client)
        .and_then(|f| f["lport"].as_u64())
        .expect("the second client's flow");
    let alerts: Vec<&Value> = out
        .of_type("alert")
        .into_iter()
        .filter(|a| a["kind"] == "snat_exhausted" && a["laddr"] == client)
        .collect();
    assert!(
        alerts.len() >= 2,
        "the SYN and its retransmits: {alerts:#?}"
    );
    for alert in &alerts {
        assert_eq!(alert["lport"], port, "{alert}");
        assert_eq!(
            (&alert["raddr"], &alert["rport"]),
            (&server.clone().into(), &9090.into())
        );
        assert_eq!(alert["nat"]["saddr"], nat, "{alert}");
        assert_eq!(alert["nat"]["sport"], 41000, "the port it tried: {alert}");
        let detail = alert["detail"].as_str().expect("detail");
        assert!(detail.contains("no free port on"), "{detail}");
    }
    let flow = out.flow((&client, port as u16), (&server, 9090));
    assert_eq!(flow["close"], "connect_failed", "{flow}");
    let dropped = flow["drops"]["NETFILTER_DROP"].as_u64().unwrap_or(0);
    assert!(
        dropped >= 2,
        "the client's drops past the NAT are its own: {flow}"
    );
    assert_eq!(
        flow["nat"]["laddr"], nat,
        "the addresses past the NAT: {flow}"
    );
    assert_eq!(flow["nat"]["lport"], 41000, "{flow}");
    assert_eq!(flow["nat"]["raddr"], server, "{flow}");
    let first = out.flow((&ip(lab.clients[0]), held_port), (&server, 9090));
    assert_eq!(
        first["drops"],
        serde_json::json!({}),
        "no other flow's drops: {first}"
    );
    let drops: Vec<&Value> = out
        .of_type("drop")
        .into_iter()
        .filter(|d| d["conntrack"]["original"]["saddr"] == client)
        .collect();
    assert!(drops.len() >= 2, "drop records carry the entry: {drops:#?}");
    for d in drops {
        assert_eq!(
            (&d["saddr"], &d["sport"]),
            (&nat.clone().into(), &41000.into()),
            "{d}"
        );
        assert_eq!(d["conntrack"]["original"]["sport"], port, "{d}");
        assert_eq!(d["conntrack"]["src_nat"], true, "{d}");
        assert_eq!(d["conntrack"]["confirmed"], false, "{d}");
    }
}

/// A server that closes first holds TIME_WAIT per 4-tuple; two clients behind one NAT
/// address reuse its four ports with their own timestamp clocks, and the TIME_WAITs reject
/// the SYNs whose timestamps look old: `time_wait_paws` alerts naming the source and the
/// local port, with the explanation.
#[test]
fn time_waits_rejecting_syns_from_behind_a_nat_are_paws_alerts() {
    let lab = NatLab::new("42000-42003");
    let listener = lab.listen(8080);
    // The router's table holds an entry before the tracer starts: it is found at start.
    warm_up(&lab, &listener, 8080);
    let tracer = Tracer::start(&["all", "--flows-at", "close"]);
    let server_thread = thread::spawn(move || {
        // The server closes first: it holds the TIME_WAITs.
        for stream in listener.incoming().take(40) {
            let Ok(mut stream) = stream else { break };
            let _ = stream.read(&mut [0u8; 8]);
        }
    });
    let mut connected = 0;
    for round in 0..20 {
        for client in 0..2 {
            if let Ok(mut stream) = lab.connect(client, 8080, Duration::from_secs(3)) {
                connected += 1;
                let _ = stream.write_all(b"x");
                let _ = stream.read(&mut [0u8; 8]);
            }
        }
        if round >= 3 && tracer.has_record(|r| r["kind"] == "time_wait_paws") {
            break;
        }
    }
    assert!(connected > 0, "some connections got through");
    let nat = ip(lab.nat);
    tracer.wait_for_record("alert", Duration::from_secs(10), |r| {
        r["kind"] == "time_wait_paws"
    });
    let out = tracer.stop();
    let alerts: Vec<&Value> = out
        .of_type("alert")
        .into_iter()
        .filter(|a| a["kind"] == "time_wait_paws")
        .collect();
    assert!(!alerts.is_empty());
    // The rejected SYNs are on the clients' own flows, with the addresses past the NAT
    // (and on the server's flow of the same 4-tuple, when a later SYN got through).
    let clients_rejected: Vec<&Value> = out
        .of_type("flow")
        .into_iter()
        .filter(|f| f["drops"]["TCP_RFC7323_TW_PAWS"].as_u64() > Some(0))
        .filter(|f| lab.clients.iter().any(|c| f["laddr"] == ip(*c)))
        .collect();
    assert!(
        !clients_rejected.is_empty(),
        "a client's flow carries its rejected SYNs: {:#?}",
        out.of_type("flow")
    );
    for flow in clients_rejected {
        assert_eq!(flow["nat"]["laddr"], nat, "{flow}");
        assert_eq!(flow["nat"]["raddr"], ip(lab.server), "{flow}");
    }
    let mut named = 0;
    for alert in &alerts {
        assert_eq!(alert["laddr"], ip(lab.server), "ours first: {alert}");
        assert_eq!(alert["lport"], 8080, "{alert}");
        assert_eq!(alert["raddr"], nat, "the NAT's address: {alert}");
        let port = alert["rport"].as_u64().expect("rport");
        assert!(
            (42000..=42003).contains(&port),
            "one of the NAT's ports: {alert}"
        );
        let detail = alert["detail"].as_str().expect("detail");
        assert!(
            detail.contains("closed first") && detail.contains("PAWS"),
            "{detail}"
        );
        // The client behind the NAT, from the router's conntrack entry (looked up after
        // the drop: where the NAT already gave the tuple to the next connection, the entry
        // is gone and the alert cannot say).
        let behind = &alert["nat"]["saddr"];
        if !behind.is_null() {
            named += 1;
            assert!(
                lab.clients.iter().any(|c| *behind == ip(*c)),
                "the client behind the NAT: {alert}"
            );
            assert!(detail.contains("the client behind the NAT"), "{detail}");
        }
    }
    assert!(named > 0, "the client behind the NAT is named: {alerts:#?}");
    drop(server_thread);
}

/// One connection through the router before tracing, so that its conntrack table holds an
/// entry when the tracer reads the namespaces at start.
fn warm_up(lab: &NatLab, listener: &TcpListener, port: u16) {
    let stream = lab
        .connect(0, port, Duration::from_secs(2))
        .expect("warm-up connect");
    let (accepted, _) = listener.accept().expect("warm-up accept");
    drop(stream);
    drop(accepted);
}

/// A Service address: the router destination-NATs it to the server. The client's flow
/// carries the backend it really reached (and the source NAT on the way).
#[test]
fn a_destination_nat_shows_the_backend_on_the_clients_flow() {
    let lab = NatLab::new("43000-43100");
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    lab.dnat(vip, 80, 8080);
    let listener = lab.listen(8080);
    warm_up(&lab, &listener, 8080);
    let tracer = Tracer::start(&["flows", "--flows-at", "close"]);
    let to = SocketAddr::from((vip, 80));
    let mut client = lab
        .run_in("c2", move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })
        .expect("connect to the VIP");
    let port = client.local_addr().expect("addr").port();
    let (mut server, peer) = listener.accept().expect("accept");
    client.write_all(b"hello").expect("write");
    let _ = server.read(&mut [0u8; 8]);
    drop(client);
    drop(server);
    let client_ip = ip(lab.clients[1]);
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| {
        r["laddr"] == client_ip && r["lport"] == port
    });
    let out = tracer.stop();
    let flow = out.flow((&client_ip, port), (&vip.to_string(), 80));
    assert_eq!(flow["nat"]["raddr"], ip(lab.server), "the backend: {flow}");
    assert_eq!(flow["nat"]["rport"], 8080, "{flow}");
    assert_eq!(
        flow["nat"]["laddr"],
        ip(lab.nat),
        "the source NAT too: {flow}"
    );
    assert_eq!(
        flow["nat"]["lport"],
        peer.port(),
        "as the server saw it: {flow}"
    );
    assert_eq!(flow["drops"], serde_json::json!({}), "{flow}");
}

/// A conntrack table full (a tiny nf_conntrack_max; the limit is the host's, each
/// namespace's table is held to it): an alert naming the namespace, its fill and the
/// packets dropped.
#[test]
fn a_full_conntrack_table_is_alerted_on_with_its_drops() {
    // Alone: the limit is the whole host's.
    let load = crate::support::heavy_load();
    const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
    let own: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .expect("nf_conntrack_count")
        .trim()
        .parse()
        .expect("a count");
    assert!(
        own < 16,
        "this host's own conntrack table holds {own} entries: lowering nf_conntrack_max to \
         24 for this test would drop its connections"
    );
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(MAX, &self.0);
        }
    }
    let _restore = Restore(std::fs::read_to_string(MAX).expect("read nf_conntrack_max"));
    let lab = NatLab::new("44000-44999");
    let listener = lab.listen(7070);
    warm_up(&lab, &listener, 7070);
    let tracer = Tracer::start_alone(&load, &["alerts"]);
    std::fs::write(MAX, "24").expect("set nf_conntrack_max");
    let mut held = Vec::new();
    for i in 0..30 {
        if let Ok(stream) = lab.connect(i % 2, 7070, Duration::from_millis(300)) {
            held.push(stream);
            held.push(listener.accept().expect("accept").0);
        }
    }
    assert!(held.len() < 60, "the table stopped new connections");
    tracer.wait_for_record("alert", Duration::from_secs(15), |r| {
        r["kind"] == "conntrack_full" && r["nat"]["dropped_total"].as_u64() > Some(0)
    });
    let out = tracer.stop();
    let router = lab.ns("r");
    let alert = out
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "conntrack_full")
        .expect("the alert");
    let detail = alert["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&router),
        "names the router's namespace: {detail}"
    );
    assert!(detail.contains("of 24 entries"), "{detail}");
    assert!(detail.contains("packets dropped"), "{detail}");
}
