//! Real loopback connections, IPv4 and IPv6: whole paths, durations, owners, close sides.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{path_states, thread_comm, wait_for_closes, Output, Tracer};

/// Transitions of the socket behind `flow`, in order, within its lifetime.
fn transitions_of<'a>(out: &'a Output, flow: &Value) -> Vec<&'a Value> {
    let end = flow["ts_unix_ns"].as_u64().expect("flow ts");
    let life = flow["life_ns"].as_u64().unwrap_or(0);
    out.of_type("transition")
        .into_iter()
        .filter(|t| t["skaddr"] == flow["skaddr"])
        .filter(|t| {
            let ts = t["ts_unix_ns"].as_u64().expect("transition ts");
            ts <= end && ts + life >= end
        })
        .collect()
}

fn pairs(transitions: &[&Value]) -> Vec<(String, String)> {
    transitions
        .iter()
        .map(|t| {
            (
                t["old"].as_str().expect("old").to_string(),
                t["new"].as_str().expect("new").to_string(),
            )
        })
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Every state but the last was held a positive time; the times add up to the lifetime,
/// which fits in what the test measured.
fn assert_durations(flow: &Value, at_most: Duration) {
    let path = flow["path"].as_array().expect("path");
    let (last, held) = path.split_last().expect("non-empty path");
    assert!(
        last["held_ns"].is_null(),
        "the final state has no hold time: {flow}"
    );
    let sum: u64 = held
        .iter()
        .map(|s| {
            let ns = s["held_ns"]
                .as_u64()
                .unwrap_or_else(|| panic!("known duration: {flow}"));
            assert!(ns > 0, "positive duration: {flow}");
            ns
        })
        .sum();
    let life = flow["life_ns"].as_u64().expect("life known");
    assert_eq!(sum, life, "state times add up to the lifetime: {flow}");
    assert!(
        life <= at_most.as_nanos() as u64,
        "life {life} ns within {at_most:?}: {flow}"
    );
    assert_eq!(flow["start_seen"], true);
}

fn assert_owner(record: &Value, comm: &str) {
    assert_eq!(record["pid"], std::process::id(), "owner pid: {record}");
    assert_eq!(record["comm"], comm, "owner comm: {record}");
}

fn client_and_server_paths(bind: &str, shown: &str) {
    let tracer = Tracer::start(&["all"]);
    let comm = thread_comm();
    let started = Instant::now();
    let listener = TcpListener::bind((bind, 0)).expect("bind");
    let server_port = listener.local_addr().expect("addr").port();
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    thread::sleep(Duration::from_millis(20));
    drop(client); // the client closes first: FIN_WAIT1, FIN_WAIT2, (TIME_WAIT)
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    drop(server); // CLOSE_WAIT -> LAST_ACK -> CLOSE
    wait_for_closes(&[server_port]);
    drop(listener);
    let elapsed = started.elapsed();
    let out = tracer.stop();

    let client = out.flow((shown, client_port), (shown, server_port));
    assert_eq!(
        path_states(client),
        strs(&["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"])
    );
    assert_eq!(client["close"], "active");
    assert_eq!(client["cause"], "normal");
    assert_eq!(client["rtx"], 0);
    assert_durations(client, elapsed);
    assert!(
        client["path"][1]["held_ns"].as_u64() >= Some(20_000_000),
        "slept 20 ms: {client}"
    );
    assert_owner(client, &comm);
    let steps = transitions_of(&out, client);
    assert_eq!(
        pairs(&steps),
        [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    for (i, step) in steps.iter().enumerate().skip(1) {
        assert_eq!(
            step["old_held_ns"],
            client["path"][i - 1]["held_ns"],
            "{step}"
        );
        assert_owner(step, &comm);
    }

    let server = out.flow((shown, server_port), (shown, client_port));
    assert_eq!(
        path_states(server),
        strs(&["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"])
    );
    assert_eq!(server["close"], "passive");
    assert_eq!(server["cause"], "normal");
    assert_durations(server, elapsed);
    assert_owner(server, &comm);
    let steps = transitions_of(&out, server);
    assert_eq!(
        pairs(&steps),
        [
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Softirq transitions (SYN_RECV, CLOSE_WAIT) still name the owner, not whoever ran.
    for step in &steps {
        assert_owner(step, &comm);
    }

    let listener_flow = out.for_tuple(
        "flow",
        (shown, server_port),
        (if shown.contains(':') { "::" } else { "0.0.0.0" }, 0),
    );
    assert!(
        listener_flow.iter().any(|f| f["close"] == "listener"),
        "the listener's own lifecycle: {listener_flow:#?}"
    );

    let summary = out.summary();
    assert_eq!(summary["lost"]["total"], 0, "{summary}");
    assert!(
        summary["flows"]["finished"].as_u64() >= Some(3),
        "{summary}"
    );
    assert!(summary["state_events"].as_u64() >= Some(12), "{summary}");
    assert!(summary["close"]["active"].as_u64() >= Some(1), "{summary}");
    let held = summary["held"].as_array().expect("held");
    let established = held
        .iter()
        .find(|h| h["state"] == "ESTABLISHED")
        .expect("ESTABLISHED percentiles");
    assert!(
        established["max_ns"].as_u64() >= Some(20_000_000),
        "{established}"
    );
}

#[test]
fn ipv4_client_and_server_paths() {
    client_and_server_paths("127.0.0.1", "127.0.0.1");
}

#[test]
fn ipv6_client_and_server_paths() {
    client_and_server_paths("::1", "::1");
}

#[test]
fn refused_connection_is_syn_sent_to_close() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let tracer = Tracer::start(&["all"]);
    let comm = thread_comm();
    TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens: refused");
    let out = tracer.stop();
    let flows: Vec<&Value> = out
        .of_type("flow")
        .into_iter()
        .filter(|f| f["rport"] == port && f["pid"] == std::process::id())
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(path_states(flows[0]), strs(&["SYN_SENT", "CLOSE"]));
    assert_eq!(flows[0]["close"], "connect_failed");
    assert_eq!(flows[0]["cause"], "refused");
    assert_eq!(flows[0]["err"], 111, "ECONNREFUSED");
    assert_owner(flows[0], &comm);
    let steps = transitions_of(&out, flows[0]);
    assert_eq!(
        pairs(&steps),
        [("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[test]
fn flow_older_than_the_tracer_has_unknown_start() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    let tracer = Tracer::start(&["flows"]);
    drop(client);
    let mut buf = [0u8; 4];
    assert_eq!(server.read(&mut buf).expect("EOF"), 0);
    drop(server);
    wait_for_closes(&[addr.port()]);
    let out = tracer.stop();
    let flow = out.flow(("127.0.0.1", client_port), ("127.0.0.1", addr.port()));
    assert_eq!(
        path_states(flow),
        strs(&["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"])
    );
    assert_eq!(flow["start_seen"], false);
    assert!(
        flow["path"][0]["held_ns"].is_null(),
        "never invented: {flow}"
    );
    assert!(flow["life_ns"].is_null(), "{flow}");
    assert!(flow["path"][1]["held_ns"].as_u64() > Some(0), "{flow}");
    assert_eq!(flow["close"], "active");
    assert!(
        out.of_type("transition").is_empty(),
        "flows mode prints flows only"
    );
}

/// shutdown() then close(): the kernel sets FIN_WAIT2 (or FIN_WAIT1) a second time, and the
/// tracepoint reports it. The transition is shown as it happened; the flow stays in the state
/// it was in — one step of its path, one time held.
#[test]
fn a_state_set_twice_is_one_stay() {
    let tracer = Tracer::start(&["all"]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut client = TcpStream::connect(addr).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (server, _) = listener.accept().expect("accept");
    server
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown: ESTABLISHED -> FIN_WAIT1, acknowledged: FIN_WAIT2");
    thread::sleep(Duration::from_millis(30));
    drop(server); // close(): FIN_WAIT2 set again, then the timewait socket takes over
    let mut buf = [0u8; 4];
    assert_eq!(client.read(&mut buf).expect("EOF"), 0);
    drop(client);
    wait_for_closes(&[addr.port()]);
    let out = tracer.stop();

    let server = out.flow(("127.0.0.1", addr.port()), ("127.0.0.1", client_port));
    assert_eq!(
        path_states(server),
        strs(&["SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]),
        "{server}"
    );
    assert_durations(server, Duration::from_secs(5));
    let held_in = |i: usize| {
        server["path"][i]["held_ns"]
            .as_u64()
            .unwrap_or_else(|| panic!("held time of step {i}: {server}"))
    };
    let fin_wait2_held = held_in(3);
    assert!(
        held_in(2) + fin_wait2_held >= 30_000_000,
        "FIN_WAIT1 then one stay in FIN_WAIT2 span the 30 ms before close(): {server}"
    );
    let steps = transitions_of(&out, server);
    let again = steps
        .iter()
        .find(|t| t["old"] == "FIN_WAIT2" && t["new"] == "FIN_WAIT2")
        .unwrap_or_else(|| panic!("the kernel's second FIN_WAIT2 is shown: {steps:#?}"));
    let so_far = again["old_held_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("held so far: {again}"));
    assert!(
        so_far <= fin_wait2_held && so_far >= fin_wait2_held / 2,
        "held so far at the second set, within the one stay ({fin_wait2_held} ns): {again}"
    );
    let last = steps.last().expect("transitions");
    assert_eq!(last["new"], "CLOSE");
    assert_eq!(
        last["old_held_ns"].as_u64(),
        Some(fin_wait2_held),
        "the stay ends at CLOSE: {last}"
    );
    let held = out.summary()["held"].as_array().expect("held").clone();
    let fin_wait2 = held
        .iter()
        .find(|h| h["state"] == "FIN_WAIT2")
        .expect("FIN_WAIT2 percentiles");
    assert!(
        fin_wait2["max_ns"].as_u64() >= Some(fin_wait2_held),
        "the histogram has the whole stay: {fin_wait2}"
    );
}
