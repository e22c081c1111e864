//! In-kernel filters: by real connections, what matches is traced and what does not costs no
//! ring-buffer record (the kernel's own counters say so).
use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
};

use serde_json::Value;

use crate::{
    netns::NetnsPair,
    support::{wait_for_closes, wait_for_closes_in, Output, Tracer},
};

fn host_netns() -> String {
    "/proc/self/ns/net".to_string()
}

/// `n` connections to `listener`, each accepted and closed (client first).
fn connect_n(listener: &TcpListener, to: SocketAddr, n: usize) -> Vec<(u16, u16)> {
    (0..n)
        .map(|_| {
            let client = TcpStream::connect(to).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            let ports = (client.local_addr().expect("addr").port(), to.port());
            drop(client);
            drop(server);
            ports
        })
        .collect()
}

/// The host's ephemeral port range as a `-L` value (`32768-60999`).
fn ephemeral_ports() -> String {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("port range")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
}

fn flows(out: &Output) -> Vec<&Value> {
    out.of_type("flow")
}

fn port_of(v: &Value, key: &str) -> u16 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u16
}

#[test]
fn port_filters_trace_matching_ports_only_and_filtered_traffic_sends_nothing() {
    let wanted = TcpListener::bind("127.0.0.1:0").expect("bind");
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (wanted_addr, other_addr) = (
        wanted.local_addr().expect("addr"),
        other.local_addr().expect("addr"),
    );
    let port = wanted_addr.port().to_string();
    let netns = host_netns();
    let by_remote = Tracer::start(&["flows", "--no-time-wait", "-D", &port, "--netns", &netns]);
    let by_local = Tracer::start(&["flows", "--no-time-wait", "-L", &port, "--netns", &netns]);
    // The README's way to follow a service and what it calls: a port on either side.
    let either = Tracer::start(&[
        "flows",
        "--no-time-wait",
        "--port",
        &format!("{port},{}", other_addr.port()),
        "--netns",
        &netns,
    ]);
    let clients = connect_n(&wanted, wanted_addr, 5);
    connect_n(&other, other_addr, 20);
    wait_for_closes(&[wanted_addr.port(), other_addr.port()]);

    let out = by_remote.stop();
    let flows_seen = flows(&out);
    assert_eq!(
        flows_seen.len(),
        5,
        "the 5 client flows to port {port} only: {flows_seen:#?}"
    );
    for flow in &flows_seen {
        assert_eq!(port_of(flow, "rport"), wanted_addr.port(), "{flow}");
        assert!(
            clients.iter().any(|(c, _)| *c == port_of(flow, "lport")),
            "{flow}"
        );
    }
    let summary = out.summary();
    // Nothing else reached the ring buffer: the 20 other connections (and the 5 accepted
    // sides) were dropped in the kernel, each of their transitions counted as filtered.
    assert_eq!(summary["records_submitted"], 5, "{summary}");
    assert_eq!(summary["records_delivered"], 5, "{summary}");
    let filtered = summary["filtered_events"]
        .as_u64()
        .expect("filtered_events");
    assert!(
        filtered >= 20 * 10 + 5 * 5,
        "filtered {filtered}: {summary}"
    );
    assert_eq!(summary["flows"]["seen"], 5, "{summary}");
    assert!(summary["filters"]
        .as_str()
        .expect("filters")
        .contains(&format!("remote port {port}")));

    let out = by_local.stop();
    let flows_seen = flows(&out);
    assert_eq!(
        flows_seen.len(),
        5,
        "the 5 accepted flows on {port}: {flows_seen:#?}"
    );
    for flow in &flows_seen {
        assert_eq!(port_of(flow, "lport"), wanted_addr.port(), "{flow}");
        assert_eq!(flow["path"][0]["state"], "SYN_RECV", "{flow}");
    }
    assert_eq!(out.summary()["records_submitted"], 5);
    // Both sides of both ports' connections: 2 × (5 + 20) flows.
    let out = either.stop();
    let flows_seen = flows(&out);
    assert_eq!(flows_seen.len(), 50, "{flows_seen:#?}");
    let (accepted, connecting) = flows_seen
        .iter()
        .partition::<Vec<&&Value>, _>(|f| f["path"][0]["state"] == "SYN_RECV");
    assert_eq!((accepted.len(), connecting.len()), (25, 25));
    assert!(out.summary()["filters"]
        .as_str()
        .expect("filters")
        .contains("(either side)"));
}

#[test]
fn a_local_port_is_judged_once_connect_binds_it() {
    // The held first transition lives in the flow table, or in the socket's own storage.
    for flow_memory in ["prealloc", "socket"] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ports = ephemeral_ports();
        let dport = addr.port().to_string();
        let tracer = Tracer::start(&[
            "states",
            "-L",
            &ports,
            "-D",
            &dport,
            "--flow-memory",
            flow_memory,
        ]);
        let clients = connect_n(&listener, addr, 3);
        let out = tracer.stop();
        for (client, _) in clients {
            let path: Vec<(String, String)> = out
                .of_type("transition")
                .into_iter()
                .filter(|t| port_of(t, "lport") == client)
                .map(|t| {
                    (
                        t["old"].as_str().expect("old").into(),
                        t["new"].as_str().expect("new").into(),
                    )
                })
                .collect();
            assert_eq!(
                path.first(),
                Some(&("CLOSE".to_string(), "SYN_SENT".to_string())),
                "--flow-memory {flow_memory}: the first transition (port 0 when it happened) is \
                 sent once the port is bound, with the port: {path:?}"
            );
            assert_eq!(path.len(), 5, "--flow-memory {flow_memory}: {path:?}");
        }
    }
}

#[test]
fn address_and_family_filters_see_dual_stack_sockets_as_they_are() {
    let listener = TcpListener::bind("[::]:0").expect("bind dual-stack");
    let port = listener.local_addr().expect("addr").port();
    let p = port.to_string();
    let v4_client = Tracer::start(&["flows", "--no-time-wait", "-4", "-D", &p]);
    let v6_servers = Tracer::start(&["flows", "--no-time-wait", "-6", "-L", &p]);
    let from_v4_net = Tracer::start(&[
        "flows",
        "--no-time-wait",
        "-L",
        &p,
        "--remote-addr",
        "127.0.0.0/8",
    ]);
    let to_v6_loopback =
        Tracer::start(&["flows", "--no-time-wait", "-D", &p, "--remote-addr", "::1"]);
    connect_n(
        &listener,
        format!("127.0.0.1:{port}").parse().expect("addr"),
        1,
    );
    connect_n(&listener, format!("[::1]:{port}").parse().expect("addr"), 1);

    let out = v4_client.stop();
    let f = flows(&out);
    assert_eq!(f.len(), 1, "-4: the IPv4 client only: {f:#?}");
    assert_eq!(f[0]["raddr"], "127.0.0.1");

    let out = v6_servers.stop();
    assert_eq!(
        flows(&out).len(),
        2,
        "-6: both accepted sockets are IPv6 (one IPv4-mapped): {:#?}",
        flows(&out)
    );

    let out = from_v4_net.stop();
    let f = flows(&out);
    assert_eq!(
        f.len(),
        1,
        "127.0.0.0/8 matches the IPv4-mapped peer only: {f:#?}"
    );
    assert_eq!(f[0]["raddr"], "127.0.0.1");

    let out = to_v6_loopback.stop();
    let f = flows(&out);
    assert_eq!(f.len(), 1, "::1 matches the IPv6 client only: {f:#?}");
    assert_eq!(f[0]["raddr"], "::1");
}

/// A client in another process: `bash` connecting through /dev/tcp, optionally first moving
/// itself into a cgroup. Returns the client's port as the server saw it.
fn bash_client(listener: &TcpListener, cgroup: Option<&PathBuf>) -> u16 {
    let port = listener.local_addr().expect("addr").port();
    let join = cgroup.map_or(String::new(), |cg| {
        format!("echo $$ > {}/cgroup.procs && ", cg.display())
    });
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{join}exec 3<>/dev/tcp/127.0.0.1/{port} && sleep 0.2"
        ))
        .spawn()
        .expect("bash");
    let (server, peer) = listener.accept().expect("accept");
    assert!(child.wait().expect("bash").success());
    drop(server);
    peer.port()
}

#[test]
fn pid_filter_follows_the_owner_into_accepted_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let me = std::process::id().to_string();
    let p = addr.port().to_string();
    // The listener predates the tracer: its owner is learnt from /proc at start. Flows in a
    // table or in each socket's storage.
    for flow_memory in ["prealloc", "socket"] {
        let tracer = Tracer::start(&[
            "flows",
            "--no-time-wait",
            "-p",
            &me,
            "-L",
            &p,
            "--flow-memory",
            flow_memory,
        ]);
        let ours = connect_n(&listener, addr, 2);
        let theirs = bash_client(&listener, None);
        let out = tracer.stop();
        let f = flows(&out);
        assert_eq!(
            f.len(),
            3,
            "--flow-memory {flow_memory}: the 3 accepted sockets belong to this process: {f:#?}"
        );
        for flow in &f {
            assert_eq!(
                flow["pid"].as_u64(),
                Some(u64::from(std::process::id())),
                "--flow-memory {flow_memory}: {flow}"
            );
        }
        assert!(f.iter().any(|flow| port_of(flow, "rport") == theirs));
        assert!(ours
            .iter()
            .all(|(c, _)| f.iter().any(|flow| port_of(flow, "rport") == *c)));
    }

    // With TIME_WAIT traced: a timewait socket has no owner; it is traced when its flow was.
    let tracer = Tracer::start(&["flows", "-p", &me, "-D", &p]);
    let ours = connect_n(&listener, addr, 2);
    let theirs = bash_client(&listener, None);
    let out = tracer.stop();
    let f = flows(&out);
    assert_eq!(
        f.len(),
        2,
        "only this process's clients, not bash's: {f:#?}"
    );
    let summary = out.summary();
    assert_eq!(
        summary["time_wait"]["entered"], 2,
        "our two clients closed first; bash's TIME_WAIT is not ours: {summary}"
    );
    assert!(f.iter().all(|flow| port_of(flow, "lport") != theirs));
    assert!(ours
        .iter()
        .all(|(c, _)| f.iter().any(|flow| port_of(flow, "lport") == *c)));
}

#[test]
fn cgroup_filter_takes_a_container_cgroup_and_its_descendants() {
    let root = crate::kubelet::cgroup2_root();
    let name = format!("tcptrace-test-{}", std::process::id());
    let parent = root.join(&name);
    let inner = parent.join("inner");
    fs::create_dir_all(&inner).unwrap_or_else(|e| panic!("mkdir {}: {e}", inner.display()));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let p = listener.local_addr().expect("addr").port().to_string();
    // As a container runtime names it: relative to the cgroup2 mount.
    let tracer = Tracer::start(&[
        "flows",
        "--no-time-wait",
        "--cgroup",
        &format!("/{name}"),
        "-D",
        &p,
    ]);
    let contained = bash_client(&listener, Some(&inner));
    let outside = bash_client(&listener, None);
    let out = tracer.stop();
    let _ = fs::remove_dir(&inner);
    let _ = fs::remove_dir(&parent);
    let f = flows(&out);
    assert_eq!(f.len(), 1, "the client in {}: {f:#?}", inner.display());
    assert_eq!(port_of(f[0], "lport"), contained);
    assert_ne!(contained, outside);
}

#[test]
fn netns_filter_traces_one_namespace() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["flows", "--no-time-wait", "--netns", &pair.a]);
    let c = pair.connect();
    let server_port = c.server_port;
    drop(c);
    // Host traffic at the same time is not traced.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    connect_n(&listener, addr, 3);
    wait_for_closes(&[addr.port()]);
    wait_for_closes_in(Some(&pair.a), &[server_port]);
    let out = tracer.stop();
    let f = flows(&out);
    assert!(
        f.iter()
            .all(|flow| flow["laddr"] == pair.addr_a.to_string()),
        "only namespace {}: {f:#?}",
        pair.a
    );
    assert!(
        f.iter().any(|flow| port_of(flow, "lport") == server_port),
        "the accepted socket in {}: {f:#?}",
        pair.a
    );
}

#[test]
fn a_held_first_transition_that_finds_the_table_full_is_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ports = ephemeral_ports();
    let dport = addr.port().to_string();
    let tracer = Tracer::start(&["states", "--max-flows", "1", "-L", &ports, "-D", &dport]);
    let pairs: Vec<_> = (0..5)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            (client, server)
        })
        .collect();
    let clients: Vec<u16> = pairs
        .iter()
        .map(|(c, _)| c.local_addr().expect("addr").port())
        .collect();
    let out = tracer.stop();
    drop(pairs);
    let sent_starts = out
        .of_type("transition")
        .into_iter()
        .filter(|t| t["old"] == "CLOSE" && t["new"] == "SYN_SENT")
        .filter(|t| clients.contains(&port_of(t, "lport")))
        .count() as u64;
    let undecided = out.summary()["lost"]["undecided"]
        .as_u64()
        .expect("undecided");
    assert!(
        undecided >= 1,
        "a one-entry table cannot hold five: {}",
        out.summary()
    );
    assert_eq!(
        sent_starts + undecided,
        5,
        "every held first transition is either sent or counted: {}",
        out.summary()
    );
}
