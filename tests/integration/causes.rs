//! A close cause for every flow, staged for real: keepalive timeout, retransmission timeout,
//! SYN timeout (two namespaces, iptables DROP, per-namespace sysctls), resets on loopback.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    netns::{Connected, NetnsPair},
    retransmit::abort,
    support::{path_states, Output, Tracer},
};

pub fn set_int(stream: &impl AsRawFd, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt on an open socket with a valid int.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {level}/{name}: {}",
        std::io::Error::last_os_error()
    );
}

fn only_flow<'a>(out: &'a Output, local: (&str, u16), remote: (&str, u16)) -> &'a Value {
    out.flow(local, remote)
}

#[test]
fn keepalive_timeout_names_the_cause_and_the_probes() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["all"]);
    let Connected {
        listener: _listener,
        client,
        server,
        server_port: port,
        client_port,
    } = pair.connect();
    set_int(&server, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set_int(&server, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
    set_int(&server, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
    set_int(&server, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    pair.exec(&pair.a, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    let started = Instant::now();
    // 1 s idle + 3 probes 1 s apart, then the reset: about 4-5 s.
    let mut server = server;
    let err = server.read(&mut [0u8; 1]).expect_err("killed by keepalive");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let out = tracer.stop();
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    let flow = only_flow(&out, (&a, port), (&b, client_port));
    assert_eq!(path_states(flow), ["SYN_RECV", "ESTABLISHED", "CLOSE"]);
    assert_eq!(flow["cause"], "keepalive_timeout", "{flow}");
    assert_eq!(flow["reset_reason"], "TCP_KEEPALIVE_TIMEOUT", "{flow}");
    assert_eq!(flow["err"], 110, "{flow}");
    assert_eq!(flow["probes"], 3, "{flow}");
    assert_eq!(flow["rtx"], 0, "keepalive, not retransmission: {flow}");

    // The probes, live, before the end; then the alert with the settings in force.
    let alerts = out.for_tuple("alert", (&a, port), (&b, client_port));
    let probes: Vec<u64> = alerts
        .iter()
        .filter(|x| x["kind"] == "keepalive_probe")
        .map(|x| x["probe"].as_u64().expect("probe number"))
        .collect();
    assert_eq!(probes, [1, 2, 3], "{alerts:#?}");
    let death = alerts
        .iter()
        .find(|x| x["kind"] == "keepalive_timeout")
        .unwrap_or_else(|| panic!("a keepalive alert: {alerts:#?}"));
    assert_eq!(death["pid"], std::process::id(), "{death}");
    assert_eq!(death["probes_unanswered"], 3, "{death}");
    assert_eq!(death["keepalive"]["source"], "socket", "{death}");
    assert_eq!(death["keepalive"]["idle_ns"], 1_000_000_000u64, "{death}");
    assert_eq!(death["keepalive"]["intvl_ns"], 1_000_000_000u64, "{death}");
    assert_eq!(death["keepalive"]["probes"], 3, "{death}");
    let silent = death["silent_ns"].as_u64().expect("silence known");
    assert!((3_000_000_000..8_000_000_000).contains(&silent), "{death}");
    assert!(
        death["history"]
            .as_str()
            .is_some_and(|h| h.starts_with("SYN_RECV")),
        "{death}"
    );
    let last_probe_ts = alerts
        .iter()
        .filter(|x| x["kind"] == "keepalive_probe")
        .map(|x| x["ts_unix_ns"].as_u64().expect("ts"))
        .max()
        .expect("probes");
    assert!(
        last_probe_ts <= death["ts_unix_ns"].as_u64().expect("ts"),
        "probes come first"
    );
    drop(client);
}

#[test]
fn retransmission_timeout_is_rto() {
    let pair = NetnsPair::new();
    // retries2 = 2: the kernel gives up after about 1.4 s of silence.
    pair.sysctl(&pair.b, "net.ipv4.tcp_retries2", "2");
    let tracer = Tracer::start(&["flows"]);
    let Connected {
        listener: _listener,
        mut client,
        server: _server,
        server_port: port,
        client_port,
    } = pair.connect();
    pair.exec(&pair.a, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    client.write_all(b"data in flight").expect("write");
    let err = client
        .read(&mut [0u8; 1])
        .expect_err("retransmissions exhausted");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let out = tracer.stop();
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    let flow = only_flow(&out, (&b, client_port), (&a, port));
    assert_eq!(path_states(flow), ["SYN_SENT", "ESTABLISHED", "CLOSE"]);
    assert_eq!(flow["cause"], "rto", "{flow}");
    assert_eq!(flow["err"], 110, "{flow}");
    assert!(flow["path"][1]["rtx"].as_u64() >= Some(2), "{flow}");
}

#[test]
fn unanswered_syns_are_a_syn_timeout() {
    let pair = NetnsPair::new();
    pair.sysctl(&pair.b, "net.ipv4.tcp_syn_retries", "1");
    pair.exec(
        &pair.a,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "4445", "-j", "DROP",
        ],
    );
    let tracer = Tracer::start(&["flows"]);
    let addr_a = pair.addr_a;
    let err = pair.run_in(&pair.b, move || {
        TcpStream::connect((addr_a, 4445)).expect_err("SYNs are dropped")
    });
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let out = tracer.stop();
    let a = pair.addr_a.to_string();
    let flows: Vec<&Value> = out
        .of_type("flow")
        .into_iter()
        .filter(|f| f["raddr"] == a.as_str() && f["rport"] == 4445)
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(path_states(flows[0]), ["SYN_SENT", "CLOSE"]);
    assert_eq!(flows[0]["cause"], "syn_timeout", "{}", flows[0]);
    assert!(
        flows[0]["path"][0]["rtx"].as_u64() >= Some(1),
        "{}",
        flows[0]
    );
}

#[test]
fn a_reset_is_received_by_one_side_and_sent_by_the_other() {
    let tracer = Tracer::start(&["flows"]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (server, _) = listener.accept().expect("accept");
    abort(server); // SO_LINGER 0: RST
    thread::sleep(Duration::from_millis(50));
    let err = client.read(&mut [0u8; 1]).expect_err("reset");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
    drop(client);
    let out = tracer.stop();
    let server = out.flow(("127.0.0.1", port), ("127.0.0.1", client_port));
    assert_eq!(server["cause"], "aborted", "{server}");
    let client = out.flow(("127.0.0.1", client_port), ("127.0.0.1", port));
    assert_eq!(client["cause"], "reset_received", "{client}");
    assert_eq!(client["reset_received"], true, "{client}");
    assert_eq!(client["err"], 104, "{client}");
    let summary = out.summary();
    assert_eq!(summary["causes"]["reset_received"], 1, "{summary}");
    assert!(
        summary["causes"]["aborted"].as_u64() >= Some(1),
        "{summary}"
    );
}

#[test]
fn tcp_user_timeout_is_its_own_cause() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["flows"]);
    let Connected {
        listener: _listener,
        mut client,
        server: _server,
        server_port: port,
        client_port,
    } = pair.connect();
    set_int(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 1_000);
    pair.exec(&pair.a, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    client.write_all(b"data in flight").expect("write");
    let err = client.read(&mut [0u8; 1]).expect_err("user timeout");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    // The flow is printed once the tracer has read its end: waited for, not assumed to have
    // been read by the time the tracer is stopped.
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| {
        r["lport"] == client_port && r["raddr"] == a
    });
    let out = tracer.stop();
    let flow = out.flow((&b, client_port), (&a, port));
    assert_eq!(flow["cause"], "user_timeout", "{flow}");
}

/// Half-open: we closed, the peer is silent: our FIN is retransmitted in FIN_WAIT1, and the
/// alerts mode says so as it happens.
#[test]
fn fin_retransmits_raise_half_open_alerts() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["alerts"]);
    let Connected {
        listener: _listener,
        client,
        server,
        server_port: port,
        client_port,
    } = pair.connect();
    pair.exec(&pair.a, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    drop(client); // FIN into the void
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    tracer.wait_for_records("two FIN retransmit alerts", Duration::from_secs(10), |r| {
        r.iter()
            .filter(|x| x["type"] == "alert" && x["lport"] == client_port && x["raddr"] == a)
            .count()
            >= 2
    });
    let out = tracer.stop();
    let alerts = out.for_tuple("alert", (&b, client_port), (&a, port));
    assert!(
        alerts.len() >= 2,
        "FIN retransmitted at 0.2 s and 0.6 s: {alerts:#?}"
    );
    for alert in &alerts {
        assert_eq!(alert["kind"], "fin_retransmit", "{alert}");
        assert_eq!(alert["state"], "FIN_WAIT1", "{alert}");
        assert_eq!(alert["pid"], std::process::id(), "{alert}");
    }
    assert!(
        out.of_type("flow").is_empty(),
        "alerts mode prints alerts only"
    );
    assert!(out.of_type("transition").is_empty());
    drop(server);
}
