//! Beside the state machine, staged between two namespaces: a flow's bytes and RTT (a token
//! bucket makes the RTT by queueing: this kernel has no netem), packets dropped by iptables
//! with the kernel's reason, and SYN-ACKs a listener sends again.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    metrics::{self, free_port},
    netns::NetnsPair,
    support::{again_while_counted_lost, wait_until, Output, Tracer},
};

const SENT: usize = 300_000;
const ANSWER: usize = 1_000;

/// The drops of a flow record, by reason.
fn drops(flow: &Value, reason: &str) -> u64 {
    flow["drops"][reason].as_u64().unwrap_or(0)
}

/// `iptables OP INPUT -p tcp --dport PORT MATCHING… -j DROP` in namespace A: the packets to
/// `port` that also match `matching` are dropped there on arrival (`-A` adds, `-D` removes).
fn drop_in_a(pair: &NetnsPair, op: &str, port: u16, matching: &[&str]) {
    let port = port.to_string();
    let mut args = vec!["iptables", op, "INPUT", "-p", "tcp", "--dport", &port];
    args.extend_from_slice(matching);
    args.extend(["-j", "DROP"]);
    pair.exec(&pair.a, &args);
}

fn set_syn_count(stream_fd: i32, count: i32) {
    // SAFETY: setsockopt on an open socket with an int.
    let rc = unsafe {
        libc::setsockopt(
            stream_fd,
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const count).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_SYNCNT");
}

#[test]
fn a_flow_carries_the_bytes_it_sent_and_the_rtt_a_token_bucket_makes() {
    let pair = NetnsPair::new();
    // The client's side queues what it sends: 2 Mbit/s, up to 200 ms of queue.
    pair.exec(
        &pair.b,
        &[
            "tc",
            "qdisc",
            "add",
            "dev",
            &pair.dev_b,
            "root",
            "tbf",
            "rate",
            "2mbit",
            "burst",
            "16kbit",
            "latency",
            "200ms",
        ],
    );
    let port = free_port().to_string();
    let metrics = format!("127.0.0.1:{port}");
    let tracer = Tracer::start(&["flows", "--no-time-wait", "--metrics", &metrics]);
    let c = pair.connect();
    let server = thread::spawn(move || {
        let mut server = c.server;
        let mut got = Vec::new();
        server.read_to_end(&mut got).expect("read");
        server.write_all(&[b'y'; ANSWER]).expect("answer");
        got.len()
    });
    let mut client = c.client;
    client.write_all(&[b'x'; SENT]).expect("send");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).expect("read the answer");
    assert_eq!(server.join().expect("server"), SENT);
    assert_eq!(answer.len(), ANSWER);
    drop(client);
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    let destination = format!("{a}:{}", c.server_port);
    // Both ends' flows closed and in the metrics (published every second): this test's
    // destination's bytes, not only some two flows' RTTs (other tests' flows count too).
    let (_, scrape) =
        metrics::scrape_until(port.parse().expect("a port"), "both flows' RTT", |s| {
            metrics::value(s, "tcptrace_flow_rtt_seconds_count", &[]) >= 2.0
                && metrics::value(
                    s,
                    "tcptrace_destination_bytes_total",
                    &[("destination", &destination), ("direction", "received")],
                ) > 0.0
                && metrics::value(
                    s,
                    "tcptrace_service_bytes_total",
                    &[("service", &destination), ("direction", "received")],
                ) > 0.0
        });
    let out = tracer.stop();

    let flow = out.flow((&b, c.client_port), (&a, c.server_port));
    // The metrics say the same: bytes per destination, the RTT histogram.
    let sent = metrics::value(
        &scrape,
        "tcptrace_destination_bytes_total",
        &[("destination", &destination), ("direction", "sent")],
    );
    assert_eq!(
        Some(sent as u64),
        flow["bytes_acked"].as_u64(),
        "{destination}"
    );
    let service = format!("{a}:{}", c.server_port);
    let received = metrics::value(
        &scrape,
        "tcptrace_service_bytes_total",
        &[("service", &service), ("direction", "received")],
    );
    assert!(received >= SENT as f64, "{received}");
    assert!(metrics::value(&scrape, "tcptrace_flow_rtt_seconds_count", &[]) >= 2.0);
    // Data bytes, and the SYN's and FIN's sequence numbers besides (as the kernel counts).
    let acked = flow["bytes_acked"].as_u64().expect("bytes_acked");
    assert!((SENT as u64..=SENT as u64 + 2).contains(&acked), "{flow}");
    let received = flow["bytes_received"].as_u64().expect("bytes_received");
    assert!(
        (ANSWER as u64..=ANSWER as u64 + 2).contains(&received),
        "{flow}"
    );
    assert!(
        flow["segs_out"].as_u64() > Some(SENT as u64 / 65_536),
        "{flow}"
    );
    // Unshaped, this path's RTT is tens of µs; the bucket's queue (up to 200 ms at 2 Mbit/s)
    // makes it milliseconds: this machine measured 90–140 ms.
    let srtt = flow["srtt_ns"].as_u64().expect("an RTT sample");
    assert!(
        (10_000_000..=1_000_000_000).contains(&srtt),
        "srtt {srtt} ns: {flow}"
    );
    let min = flow["min_rtt_ns"].as_u64().expect("a minimum RTT");
    assert!(min <= srtt, "{flow}");
    assert!(flow["rttvar_ns"].is_u64(), "{flow}");
    let server = out.flow((&a, c.server_port), (&b, c.client_port));
    let received = server["bytes_received"].as_u64().expect("bytes_received");
    assert!(
        (SENT as u64..=SENT as u64 + 2).contains(&received),
        "{server}"
    );
    // The kernel counts retransmitted segments, the tracer retransmitted packets (one may
    // carry several segments): never fewer.
    assert!(
        flow["total_retrans"].as_u64() >= flow["rtx"].as_u64(),
        "{flow}"
    );
    let summary = out.summary();
    assert!(
        summary["vitals"]["bytes_acked"].as_u64() >= Some(SENT as u64),
        "{summary}"
    );
}

#[test]
fn syns_dropped_by_this_hosts_firewall_explain_the_syn_timeout() {
    let (out, ends) = again_while_counted_lost(syn_timeout_behind_a_firewall, |out, ends| {
        !out.for_tuple("flow", ends.client(), ends.server())
            .is_empty()
    });
    let (client_port, port) = (ends.client_port, ends.server_port);
    let (a, b) = (ends.server_addr.as_str(), ends.client_addr.as_str());
    let flow = out.flow((b, client_port), (a, port));
    assert_eq!(flow["cause"], "syn_timeout", "{flow}");
    assert!(
        drops(flow, "NETFILTER_DROP") >= 2,
        "the SYN and its retry: {flow}"
    );
    // Each drop on its own line: the SYN, from the client, as it travelled.
    let lines: Vec<&Value> = out
        .of_type("drop")
        .into_iter()
        .filter(|d| d["dport"] == port && d["saddr"] == b)
        .collect();
    assert!(lines.len() >= 2, "{:#?}", out.of_type("drop"));
    for d in &lines {
        assert_eq!(
            (&d["reason"], &d["tcp_flags"]),
            (&"NETFILTER_DROP".into(), &"SYN".into())
        );
    }
    let alert = out
        .for_tuple("alert", (b, client_port), (a, port))
        .into_iter()
        .find(|al| al["kind"] == "syn_timeout")
        .unwrap_or_else(|| panic!("a syn_timeout alert: {:#?}", out.of_type("alert")));
    let detail = alert["detail"].as_str().expect("detail");
    assert!(
        detail.contains("dropped on this host: NETFILTER_DROP:")
            && detail.contains("a netfilter rule or conntrack (firewall, NAT) dropped it"),
        "{detail}"
    );
    assert!(
        alert["drops"]["NETFILTER_DROP"].as_u64() >= Some(2),
        "{alert}"
    );
    assert!(out.summary()["drops_by_reason"]["NETFILTER_DROP"].as_u64() >= Some(2));
}

/// The two ends of the connection attempt [`syn_timeout_behind_a_firewall`] staged.
struct AttemptEnds {
    client_addr: String,
    client_port: u16,
    server_addr: String,
    server_port: u16,
}

impl AttemptEnds {
    fn client(&self) -> (&str, u16) {
        (&self.client_addr, self.client_port)
    }
    fn server(&self) -> (&str, u16) {
        (&self.server_addr, self.server_port)
    }
}

/// A connect from B whose SYN and its one retry a rule in A drops, traced by `all`.
fn syn_timeout_behind_a_firewall() -> (Output, AttemptEnds) {
    let pair = NetnsPair::new();
    let listener = pair.run_in(&pair.a, {
        let addr = pair.addr_a;
        move || std::net::TcpListener::bind((addr, 0)).expect("bind")
    });
    let port = listener.local_addr().expect("addr").port();
    drop_in_a(&pair, "-A", port, &["--syn"]);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let tracer = Tracer::start(&["all", "--no-time-wait", "--metrics", &metrics_addr]);
    let addr_a = pair.addr_a;
    let client_port = pair.run_in(&pair.b, move || {
        // SAFETY: a new TCP socket; closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "socket");
        set_syn_count(fd, 1);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr_a).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: connect with a valid sockaddr_in; it blocks until the SYNs time out.
        let rc = unsafe {
            libc::connect(
                fd,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, -1, "the SYNs are dropped: connect fails");
        let mut local: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: getsockname into a sockaddr_in of the right length.
        unsafe { libc::getsockname(fd, (&raw mut local).cast(), &mut len) };
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        u16::from_be(local.sin_port)
    });
    drop(listener);
    // The kernel's counts reach the endpoint every second.
    let (_, scrape) = metrics::scrape_until(metrics_port, "the SYN and its retry dropped", |s| {
        metrics::value(s, "tcptrace_drops_total", &[("reason", "NETFILTER_DROP")]) >= 2.0
    });
    let dropped = metrics::value(
        &scrape,
        "tcptrace_drops_total",
        &[("reason", "NETFILTER_DROP")],
    );
    assert!(dropped >= 2.0, "{dropped}");
    let ends = AttemptEnds {
        client_addr: pair.addr_b.to_string(),
        client_port,
        server_addr: pair.addr_a.to_string(),
        server_port: port,
    };
    (tracer.stop(), ends)
}

#[test]
fn established_traffic_dropped_lands_on_its_flow() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["flows", "--no-time-wait"]);
    let c = pair.connect();
    drop_in_a(&pair, "-A", c.server_port, &[]);
    let mut client = c.client;
    client.write_all(b"into the void").expect("write");
    // RTO starts at 200 ms and doubles: 0.2, 0.6 s.
    wait_until("2 retransmits", Duration::from_secs(15), || {
        crate::retransmit::total_retrans(&client) >= 2
    });
    crate::retransmit::abort(client);
    // Aborted too: its FIN would wait for an answer the firewall eats.
    crate::retransmit::abort(c.server);
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    tracer.wait_for_records("both flows", Duration::from_secs(10), |r| {
        let flow = |port: u16| r.iter().any(|f| f["type"] == "flow" && f["lport"] == port);
        flow(c.server_port) && flow(c.client_port)
    });
    let out = tracer.stop();

    // Dropped on the server's host, each carrying the server's socket (early demux).
    let server = out.flow((&a, c.server_port), (&b, c.client_port));
    assert!(drops(server, "NETFILTER_DROP") >= 2, "{server}");
    let client = out.flow((&b, c.client_port), (&a, c.server_port));
    assert!(client["rtx"].as_u64() >= Some(2), "{client}");
}

#[test]
fn a_listener_sends_its_syn_ack_again_when_the_ack_is_lost() {
    let pair = NetnsPair::new();
    let listener = pair.run_in(&pair.a, {
        let addr = pair.addr_a;
        move || std::net::TcpListener::bind((addr, 0)).expect("bind")
    });
    let port = listener.local_addr().expect("addr").port();
    // The handshake's last ACK (and anything else but a SYN, FIN or RST) is lost for 1.5 s:
    // the listener sends its SYN-ACK again after 1 s.
    let lost_ack = ["--tcp-flags", "SYN,ACK,FIN,RST", "ACK"];
    drop_in_a(&pair, "-A", port, &lost_ack);
    let tracer = Tracer::start(&["all", "--no-time-wait"]);
    let addr_a = pair.addr_a;
    let client = pair.run_in(&pair.b, move || {
        TcpStream::connect((addr_a, port)).expect("connect")
    });
    let client_port = client.local_addr().expect("addr").port();
    tracer.wait_for_record("retransmit", Duration::from_secs(15), |r| {
        r["synack"] == true && r["lport"] == port
    });
    drop_in_a(&pair, "-D", port, &lost_ack);
    // The client's next segment completes the handshake.
    (&client).write_all(b"hello").expect("write");
    let (mut server, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).expect("read");
    drop(client);
    drop(server);
    tracer.wait_for_record("flow", Duration::from_secs(10), |f| {
        f["lport"] == port && f["rport"] == client_port
    });
    let out = tracer.stop();

    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    let synacks: Vec<&Value> = out
        .for_tuple("retransmit", (&a, port), (&b, client_port))
        .into_iter()
        .filter(|r| r["synack"] == true)
        .collect();
    assert!(!synacks.is_empty(), "{:#?}", out.of_type("retransmit"));
    assert_eq!(synacks[0]["state"], "SYN_RECV");
    let child = out.flow((&a, port), (&b, client_port));
    assert_eq!(child["path"][0]["state"], "SYN_RECV", "{child}");
    assert!(child["path"][0]["rtx"].as_u64() >= Some(1), "{child}");
    assert!(out.summary()["synack_retransmits"].as_u64() >= Some(1));
}

#[test]
fn a_burst_of_drops_is_counted_whole_and_sent_at_the_rate_set() {
    let pair = NetnsPair::new();
    // One drop record a second per CPU: the burst below goes mostly unsent.
    let tracer = Tracer::start(&["all", "--no-time-wait", "--drop-records-per-s", "1"]);
    let c = pair.connect();
    drop_in_a(&pair, "-A", c.server_port, &[]);
    let mut client = c.client;
    client.set_nodelay(true).expect("TCP_NODELAY");
    // Ten segments at once (the initial window sends them all), each dropped on arrival.
    for _ in 0..10 {
        client.write_all(b"x").expect("write");
    }
    thread::sleep(Duration::from_millis(300));
    crate::retransmit::abort(client);
    crate::retransmit::abort(c.server);
    let out = tracer.stop();

    let summary = out.summary();
    let drops = summary["drops"].as_u64().expect("drops");
    let unsent = summary["drops_unsent"].as_u64().expect("drops_unsent");
    let lines = out.of_type("drop").len() as u64;
    assert!(drops >= 10, "{summary}");
    assert!(unsent >= 5, "at most a record a CPU a second: {summary}");
    assert_eq!(
        lines + unsent,
        drops,
        "every drop sent or counted as unsent: {summary}"
    );
    // By reason, the kernel's own counts: every drop, sent or not.
    assert!(
        summary["drops_by_reason"]["NETFILTER_DROP"].as_u64() >= Some(10),
        "{summary}"
    );
}
