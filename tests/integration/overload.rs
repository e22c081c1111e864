//! Overload honesty: a deliberately tiny ring buffer under a burst. Every record the kernel
//! tried to send is either delivered or counted lost, checked against the kernel's counters.
use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use crate::support::Tracer;

#[test]
fn tiny_ring_buffer_loses_records_and_counts_every_one() {
    // TIME_WAIT records are left out: their attempts are not derivable from the summary.
    let load = crate::support::heavy_load();
    let tracer = Tracer::start_alone(
        &load,
        &[
            "all",
            "--ring-size",
            "4KiB",
            "--poll-interval",
            "2s",
            "--no-time-wait",
        ],
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    for _ in 0..400 {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop((client, server));
    }
    drop(listener);
    // The loss is reported while tracing, at the next live check (every second).
    tracer.wait_for_record("lost", Duration::from_secs(10), |_| true);
    let out = tracer.stop();
    let s = out.summary();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("a number: {s}"));

    // What the kernel tried to send in `all` mode: a record per transition, one more per flow
    // reaching CLOSE, one per retransmit.
    let closes: u64 = s["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["new"] == "CLOSE")
        .map(|t| n(&t["count"]))
        .sum();
    let attempted = n(&s["state_events"]) + closes + n(&s["retransmits"]);
    let lost = &s["lost"];
    let ring_lost = n(&lost["transitions"])
        + n(&lost["flows"])
        + n(&lost["retransmits"])
        + n(&lost["probes"])
        + n(&lost["time_wait"]);
    assert!(
        ring_lost > 0,
        "a 4 KiB ring under a burst must lose records: {s}"
    );
    assert_eq!(
        n(&s["records_submitted"]) + ring_lost,
        attempted,
        "every attempt was submitted or counted lost: {s}"
    );
    assert_eq!(
        n(&s["records_delivered"]),
        n(&s["records_submitted"]),
        "everything submitted was delivered: {s}"
    );
    assert_eq!(
        n(&lost["total"]),
        ring_lost + n(&lost["missed_events"]),
        "{s}"
    );
    // Each delivered record printed one line: transitions, flows, retransmits and keepalive
    // probes (shown as alerts); other alerts are derived from those records.
    let printed = ["transition", "flow", "retransmit"]
        .iter()
        .map(|kind| out.of_type(kind).len() as u64)
        .sum::<u64>()
        + out
            .of_type("alert")
            .iter()
            .filter(|a| a["kind"] == "keepalive_probe")
            .count() as u64;
    assert_eq!(printed, n(&s["records_delivered"]), "{s}");
    let live: u64 = out.of_type("lost").iter().map(|l| n(&l["new"])).sum();
    assert!(live > 0, "losses are reported live too");
    assert!(live <= n(&lost["total"]), "{live} reported live, {s}");
}

/// A flow table of 4 entries under 20 open sockets: the rest are counted as untracked, the
/// tracer keeps going, and what it does print is right.
#[test]
fn a_tiny_flow_table_counts_what_it_cannot_track() {
    let load = crate::support::heavy_load();
    let mut tracer = Tracer::start_alone(&load, &["flows", "--max-flows", "4", "--no-time-wait"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pairs: Vec<_> = (0..10)
        .map(|_| {
            let client = std::net::TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            (client, server)
        })
        .collect();
    // Said live, at the next check (every second).
    tracer.wait_for_stderr("flows not tracked", Duration::from_secs(10));
    drop(pairs);
    let out = tracer.stop();
    assert!(
        out.stderr.contains("flows not tracked") && out.stderr.contains("--max-flows"),
        "reported live: {}",
        out.stderr
    );
    let s = out.summary();
    let untracked = s["flows"]["untracked"].as_u64().expect("untracked");
    // 21 sockets (20 + the listener) for 4 entries: at least 17 could not be tracked.
    assert!(untracked >= 17, "{s}");
    // The flows it kept are whole.
    for flow in out.of_type("flow") {
        if flow["start_seen"] == true {
            let states = crate::support::path_states(flow);
            assert!(
                matches!(states[0].as_str(), "SYN_SENT" | "SYN_RECV" | "LISTEN"),
                "{flow}"
            );
            assert_eq!(states.last().map(String::as_str), Some("CLOSE"), "{flow}");
        }
    }
}

#[test]
fn a_nearly_full_flow_table_evicts_the_least_recently_active_and_counts_each() {
    evicts_and_counts(&[]);
}

#[test]
fn a_flow_table_allocated_on_demand_evicts_and_counts_the_same() {
    evicts_and_counts(&["--flow-memory", "on-demand"]);
}

fn evicts_and_counts(extra: &[&str]) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let port = addr.port().to_string();
    // Only this listener's accepted sockets are tracked: the table's content is known. Alone:
    // `-L` is a port in every network namespace, and another test's socket in a namespace of
    // its own may have the same local port (it once made the first pass evict 3).
    let mut args = vec!["flows", "--no-time-wait", "--max-flows", "16", "-L", &port];
    args.extend_from_slice(extra);
    let load = crate::support::heavy_load();
    let mut tracer = Tracer::start_alone(&load, &args);
    let open = |_| {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        // Distinct activity times: the oldest are the least recently active.
        std::thread::sleep(std::time::Duration::from_millis(5));
        (client, server)
    };
    let mut pairs: Vec<_> = (0..15).map(open).collect();
    // 15 of 16 entries: the next check (every second) evicts down to 13. Wait for it before the
    // 16th, which would otherwise make it evict 3 (a loaded machine may delay the check).
    tracer.wait_for_stderr(
        "least recently active flows evicted",
        Duration::from_secs(10),
    );
    pairs.push(open(15));
    let newest = pairs.pop().expect("newest");
    let newest_port = newest.0.local_addr().expect("addr").port();
    drop(newest);
    let oldest = pairs.remove(0);
    let oldest_port = oldest.0.local_addr().expect("addr").port();
    drop(oldest);
    // Both closes' flows printed (without TIME_WAIT they end at CLOSE).
    tracer.wait_for_records(
        "the newest and the oldest flows",
        Duration::from_secs(10),
        |r| {
            [newest_port, oldest_port]
                .iter()
                .all(|&port| r.iter().any(|f| f["type"] == "flow" && f["rport"] == port))
        },
    );
    let out = tracer.stop();
    drop(pairs);

    assert!(
        out.stderr.contains("2 least recently active flows evicted"),
        "reported live: {}",
        out.stderr
    );
    let evicted = out.of_type("evicted");
    assert_eq!(evicted.len(), 1, "one pass: {evicted:#?}");
    assert_eq!(
        (evicted[0]["new"].as_u64(), evicted[0]["total"].as_u64()),
        (Some(2), Some(2))
    );
    let s = out.summary();
    assert_eq!(s["flows"]["evicted"], 2, "{s}");
    assert_eq!(s["flows"]["untracked"], 0, "{s}");
    // 16 inserted, 2 evicted, 1 closed (the newest); the oldest came back when it closed.
    assert_eq!(
        s["flows"]["open"], 13,
        "every eviction counted exactly: {s}"
    );

    let flow_of = |client_port: u16| {
        let flows: Vec<_> = out
            .of_type("flow")
            .into_iter()
            .filter(|f| f["rport"] == client_port)
            .collect();
        assert_eq!(flows.len(), 1, "{flows:#?}");
        flows[0]
    };
    let kept = flow_of(newest_port);
    assert_eq!(kept["start_seen"], true, "{kept}");
    assert_eq!(
        crate::support::path_states(kept),
        ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
        "{kept}"
    );
    let evicted_flow = flow_of(oldest_port);
    assert_eq!(
        evicted_flow["start_seen"], false,
        "evicted, then seen again: its start is unknown, not invented: {evicted_flow}"
    );
    assert_eq!(crate::support::path_states(evicted_flow)[0], "ESTABLISHED");
}
