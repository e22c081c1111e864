//! The ghost-connection report: an idle ESTABLISHED pair without keepalive is listed under its
//! process; a pair with keepalive is not.
use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::support::{Tracer, BIN};

fn keepalive_on(s: &impl AsRawFd) {
    let one: i32 = 1;
    // SAFETY: setsockopt on an open socket with a valid int.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&raw const one).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// (local, remote) ports of the idle sockets the report lists for this process.
fn listed_ports(report: &Value) -> Vec<(u64, u64)> {
    report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["pid"] == std::process::id())
        .flat_map(|g| g["sockets"].as_array().expect("sockets").iter())
        .map(|s| {
            assert!(s["idle_ns"].as_u64() >= Some(1_000_000_000), "{s}");
            (
                s["lport"].as_u64().expect("lport"),
                s["rport"].as_u64().expect("rport"),
            )
        })
        .collect()
}

struct Pairs {
    plain: (TcpStream, TcpStream),
    with_keepalive: (TcpStream, TcpStream),
    _listener: TcpListener,
}

fn idle_pairs() -> Pairs {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let plain_client = TcpStream::connect(addr).expect("connect");
    let (plain_server, _) = listener.accept().expect("accept");
    let ka_client = TcpStream::connect(addr).expect("connect");
    let (ka_server, _) = listener.accept().expect("accept");
    keepalive_on(&ka_client);
    keepalive_on(&ka_server);
    Pairs {
        plain: (plain_client, plain_server),
        with_keepalive: (ka_client, ka_server),
        _listener: listener,
    }
}

fn port(s: &TcpStream) -> (u64, u64) {
    (
        u64::from(s.local_addr().expect("addr").port()),
        u64::from(s.peer_addr().expect("peer").port()),
    )
}

fn assert_lists_only_the_plain_pair(report: &Value, pairs: &Pairs) {
    let listed = listed_ports(report);
    assert!(listed.contains(&port(&pairs.plain.0)), "{report}");
    assert!(listed.contains(&port(&pairs.plain.1)), "{report}");
    assert!(
        !listed.contains(&port(&pairs.with_keepalive.0)),
        "keepalive armed: {report}"
    );
    assert!(
        !listed.contains(&port(&pairs.with_keepalive.1)),
        "keepalive armed: {report}"
    );
    assert!(report["scanned"].as_u64() >= Some(4), "{report}");
}

#[test]
fn idle_command_lists_ghost_connections() {
    let pairs = idle_pairs();
    // The report lists sockets idle for --min-idle (1 s) of wall-clock time.
    thread::sleep(Duration::from_millis(1_300));
    let out = Command::new(BIN)
        .args(["idle", "--min-idle", "1s", "--json"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["type"], "idle_report");
    assert_lists_only_the_plain_pair(&report, &pairs);
}

#[test]
fn periodic_idle_report_beside_tracing() {
    let pairs = idle_pairs();
    let tracer = Tracer::start(&["flows", "--idle-report", "1s"]);
    // A report every second; the pair is listed once it has been idle a second.
    let plain = port(&pairs.plain.0);
    tracer.wait_for_record("idle_report", Duration::from_secs(10), |r| {
        listed_ports(r).contains(&plain)
    });
    let out = tracer.stop();
    let reports = out.of_type("idle_report");
    assert!(!reports.is_empty(), "a report every second");
    assert_lists_only_the_plain_pair(reports.last().expect("a report"), &pairs);
}
