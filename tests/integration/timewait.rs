//! TIME_WAIT made visible: measured durations and end causes, pre-existing sockets, gauges
//! that match `ss`.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    netns::sh,
    support::{path_states, Tracer},
};

/// A loopback listener on a port no TIME_WAIT points at: other tests' TIME_WAITs toward an
/// earlier listener of the same number (60 s of them) would count toward this one.
fn listener_without_time_waits() -> TcpListener {
    let port = crate::ports::free_port_without_time_waits();
    TcpListener::bind(("127.0.0.1", port)).expect("bind a port without TIME_WAITs")
}

/// A loopback connection that the client closes first; returns (client port, server port).
fn client_closes_first(listener: &TcpListener) -> (u16, u16) {
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    assert_eq!(server.read(&mut [0u8; 1]).expect("EOF"), 0);
    drop(server);
    (client_port, addr.port())
}

/// A client connects to `server_port` and closes first, then, 1.3 s later, connects again from
/// the same local port (tcp_tw_reuse: 2, loopback, after 1 s) and closes that one after
/// `open_s`; returns the port.
fn reuse_after_time_wait(server_port: u16, open_s: f64) -> u16 {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time\n\
                 def c(p):\n  s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n  \
                 s.bind(('127.0.0.1', p)); s.connect(('127.0.0.1', {server_port})); return s\n\
                 s=c(0); p=s.getsockname()[1]; s.close(); time.sleep(1.3)\n\
                 s=c(p); print(p, flush=True); time.sleep({open_s}); s.close()\n"
            ),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the reused port")
}

fn time_wait_of(flow: &Value) -> &Value {
    let tw = &flow["time_wait"];
    assert!(tw.is_object(), "a time_wait: {flow}");
    tw
}

/// One test may wait ~60 s: the real TIME_WAIT, measured end to end.
#[test]
fn client_time_wait_lasts_about_60s_and_expires() {
    let tracer = Tracer::start(&["flows"]);
    let listener = listener_without_time_waits();
    let port = listener.local_addr().expect("addr").port().to_string();
    // The same under a filter (the timer's expiry is traced through its start's verdict;
    // the kernel reports a cancel just before every expiry).
    let filtered = Tracer::start_beside(&tracer, &["flows", "-D", &port]);
    // As a person reads it: the flow as it closes, the TIME_WAIT's end on its own record.
    let at_close = Tracer::start_beside(&tracer, &["flows", "-D", &port, "--flows-at", "close"]);
    let (client_port, server_port) = client_closes_first(&listener);
    let is_client = |r: &Value| r["lport"] == client_port && r["rport"] == server_port;
    at_close.wait_for_record("flow", Duration::from_secs(1), |r| {
        is_client(r) && r["time_wait"].is_null() && r["time_wait_follows"] == true
    });
    // The timer wheel rounds up: the expiry comes 60-62 s later.
    thread::sleep(Duration::from_millis(63_500));
    let out = at_close.stop();
    let flows: Vec<&Value> = out
        .of_type("flow")
        .into_iter()
        .filter(|r| is_client(r))
        .collect();
    assert_eq!(flows.len(), 1, "printed once, at its close: {flows:?}");
    let ends: Vec<&Value> = out
        .of_type("time_wait")
        .into_iter()
        .filter(|r| is_client(r))
        .collect();
    assert_eq!(ends.len(), 1, "its TIME_WAIT's end: {:?}", out.records);
    assert_eq!(ends[0]["end"], "expired", "{}", ends[0]);
    assert_eq!(ends[0]["flow_seen"], true, "{}", ends[0]);
    assert_eq!(ends[0]["skaddr"], flows[0]["skaddr"], "joined by socket");
    let held = ends[0]["held_ns"].as_u64().expect("held");
    assert!(
        (59_500_000_000..63_000_000_000).contains(&held),
        "{}",
        ends[0]
    );
    let out = tracer.stop();
    let flow = out.flow(("127.0.0.1", client_port), ("127.0.0.1", server_port));
    assert_eq!(
        path_states(flow)[0],
        "SYN_SENT",
        "the client side holds TIME_WAIT"
    );
    let tw = time_wait_of(flow);
    assert_eq!(tw["end"], "expired", "{flow}");
    let held = tw["held_ns"].as_u64().expect("held");
    assert!((59_500_000_000..63_000_000_000).contains(&held), "{flow}");
    let server = out.flow(("127.0.0.1", server_port), ("127.0.0.1", client_port));
    assert!(
        server["time_wait"].is_null(),
        "the passive side has none: {server}"
    );
    let s = out.summary();
    assert!(s["time_wait"]["client_side"].as_u64() >= Some(1), "{s}");
    assert!(s["time_wait"]["ends"]["expired"].as_u64() >= Some(1), "{s}");

    let out = filtered.stop();
    let flow = out.flow(("127.0.0.1", client_port), ("127.0.0.1", server_port));
    assert_eq!(time_wait_of(flow)["end"], "expired", "under -D: {flow}");
    let s = out.summary();
    assert_eq!(s["time_wait"]["ends"]["expired"].as_u64(), Some(1), "{s}");
}

#[test]
fn early_ends_are_reused_or_killed() {
    let tracer = Tracer::start(&["flows"]);
    // Reused: the same 4-tuple connects again (tcp_tw_reuse, 2 = loopback, after 1 s).
    let listener = listener_without_time_waits();
    let server_port = listener.local_addr().expect("addr").port();
    let acceptor = thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let _ = s.read(&mut [0u8; 1]);
        }
    });
    let reused_port = reuse_after_time_wait(server_port, 0.0);
    acceptor.join().expect("acceptor");

    // Killed: the namespace holding a TIME_WAIT goes away.
    let ns = format!("ttk{}", std::process::id() % 100_000);
    sh(&["ip", "netns", "add", &ns]);
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    sh(&[
        "ip", "netns", "exec", &ns, "python3", "-c",
        "import socket\ns=socket.socket(); s.bind(('127.0.0.1',7777)); s.listen()\n\
         c=socket.create_connection(('127.0.0.1',7777)); a,_=s.accept(); c.close(); a.recv(1); a.close()",
    ]);
    sh(&["ip", "netns", "del", &ns]);
    // A flow is printed once its TIME_WAIT has ended: reused, and killed with its namespace.
    tracer.wait_for_records(
        "the reused and the killed TIME_WAITs' flows",
        Duration::from_secs(15),
        |r| {
            let ended = |f: &&Value, end: &str| f["type"] == "flow" && f["time_wait"]["end"] == end;
            r.iter()
                .any(|f| ended(&f, "reused") && f["lport"] == reused_port)
                && r.iter().any(|f| ended(&f, "killed") && f["rport"] == 7777)
        },
    );
    let out = tracer.stop();

    let flows = out.of_type("flow");
    let reused = flows
        .iter()
        .find(|f| {
            f["lport"] == reused_port && f["rport"] == server_port && f["time_wait"].is_object()
        })
        .unwrap_or_else(|| panic!("the first connection's flow: {flows:#?}"));
    let tw = time_wait_of(reused);
    assert_eq!(tw["end"], "reused", "{reused}");
    assert!(
        (1_000_000_000..5_000_000_000).contains(&tw["held_ns"].as_u64().expect("held")),
        "{reused}"
    );
    let killed = flows
        .iter()
        .find(|f| f["rport"] == 7777 && f["time_wait"].is_object())
        .unwrap_or_else(|| panic!("the namespace's client flow: {flows:#?}"));
    assert_eq!(time_wait_of(killed)["end"], "killed", "{killed}");
}

fn last_gauges(out: &crate::support::Output) -> &Value {
    out.of_type("time_wait_gauges")
        .into_iter()
        .last()
        .expect("gauges were printed")
}

fn destination_count(gauges: &Value, port: u16) -> u64 {
    gauges["by_destination"]
        .as_array()
        .expect("by_destination")
        .iter()
        .filter(|d| d["raddr"] == "127.0.0.1" && d["rport"] == port)
        .map(|d| d["count"].as_u64().expect("count"))
        .sum()
}

#[test]
fn time_wait_sockets_from_before_tracing_are_counted() {
    let listener = listener_without_time_waits();
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..5 {
        client_closes_first(&listener);
    }
    let tracer = Tracer::start(&["timewait", "--interval", "500ms"]);
    tracer.wait_for_record("time_wait_gauges", Duration::from_secs(10), |g| {
        destination_count(g, port) >= 5
    });
    let out = tracer.stop();
    let gauges = last_gauges(&out);
    assert!(gauges["preexisting"].as_u64() >= Some(5), "{gauges}");
    assert_eq!(destination_count(gauges, port), 5, "{gauges}");
    assert!(out.summary()["time_wait"]["preexisting"].as_u64() >= Some(5));
}

#[test]
fn burst_gauge_matches_ss_and_forecasts() {
    let load = crate::support::heavy_load();
    let tracer = Tracer::start_alone(&load, &["timewait", "--interval", "1s"]);
    let listener = listener_without_time_waits();
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..2_000 {
        client_closes_first(&listener);
    }
    // Gauges every second: wait for one after the burst.
    tracer.wait_for_record("time_wait_gauges", Duration::from_secs(10), |g| {
        destination_count(g, port) >= 1_900
    });
    let out = tracer.stop();
    let ss = Command::new("ss")
        .args([
            "-Htan",
            "state",
            "time-wait",
            "dst",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("ss runs");
    let in_ss = String::from_utf8_lossy(&ss.stdout).lines().count() as u64;
    let gauges = last_gauges(&out);
    let ours = destination_count(gauges, port);
    assert!(in_ss >= 1_900, "ss sees the burst: {in_ss}");
    assert!(
        ours.abs_diff(in_ss) <= in_ss / 50,
        "gauge {ours} vs ss {in_ss}: {gauges}"
    );
    let forecast = gauges["forecast"]
        .as_array()
        .expect("forecast")
        .iter()
        .find(|f| f["rport"] == port)
        .unwrap_or_else(|| panic!("a forecast for the burst's destination: {gauges}"));
    assert!(
        forecast["capacity_per_s"].as_f64() > Some(100.0),
        "{forecast}"
    );
    assert!(forecast["rate_per_s"].as_f64() > Some(0.0), "{forecast}");
}

#[test]
fn time_waits_skipped_by_a_full_table_are_reported() {
    let pair = crate::netns::NetnsPair::new();
    pair.sysctl(&pair.a, "net.ipv4.tcp_max_tw_buckets", "0");
    let mut tracer = Tracer::start_in(&pair.a, &["flows"]);
    let ports = pair.run_in(&pair.a, || {
        let listener = listener_without_time_waits();
        (0..5)
            .map(|_| client_closes_first(&listener))
            .collect::<Vec<_>>()
    });
    // The overflow counter is read every second.
    tracer.wait_for_stderr_lines("5 TIME_WAITs skipped", Duration::from_secs(10), |lines| {
        crate::support::time_waits_skipped(lines) >= 5
    });
    let out = tracer.stop();
    let s = out.summary();
    assert!(s["time_wait"]["overflows"].as_u64() >= Some(5), "{s}");
    // Each flow's start was matched to an overflow (no sock_diag read saw its socket): none
    // of them counts as entered toward its destination (the tracer sees the whole host, and
    // other tests' TIME_WAITs elsewhere are entered).
    let server_port = ports[0].1;
    let entered_toward = (s["time_wait"]["top_destinations"].as_array())
        .expect("top_destinations")
        .iter()
        .any(|d| d["rport"] == server_port);
    assert!(!entered_toward, "none was made toward :{server_port}: {s}");
    let skipped_toward = |port: u16| {
        (s["time_wait"]["overflow_destinations"]
            .as_array()
            .expect("overflow_destinations"))
        .iter()
        .filter(|d| d["rport"] == port)
        .map(|d| d["count"].as_u64().expect("count"))
        .sum::<u64>()
    };
    assert_eq!(skipped_toward(server_port), 5, "by destination: {s}");
    for &(client_port, server_port) in &ports {
        let flow = out.flow(("127.0.0.1", client_port), ("127.0.0.1", server_port));
        let tw = time_wait_of(flow);
        assert_eq!(tw["end"], "overflow", "no TIME_WAIT was created: {flow}");
        assert_eq!(tw["held_ns"], 0, "{flow}");
    }
}

/// Ends no hook shows, read from sock_diag: a TIME_WAIT destroyed with `ss -K` is `killed`,
/// one whose 4-tuple a connection still open took over is `reused`, each within the reads'
/// interval (tracing's own namespace is read every second; the verdict waits a tick).
#[test]
fn ends_no_hook_shows_are_read_from_the_sockets() {
    let tracer = Tracer::start(&["flows"]);
    let listener = listener_without_time_waits();
    let server_port = listener.local_addr().expect("addr").port();
    // The first two connections close as the client does; the third (the reuse) stays open.
    let acceptor = thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let _ = s.read(&mut [0u8; 1]);
        }
        listener.accept().expect("accept").0
    });
    // Killed: destroyed by `ss -K` a moment after it started.
    let killed = TcpStream::connect(("127.0.0.1", server_port)).expect("connect");
    let killed_port = killed.local_addr().expect("addr").port();
    drop(killed);
    thread::sleep(Duration::from_millis(300));
    sh(&[
        "ss",
        "-K",
        "state",
        "time-wait",
        "src",
        &format!("127.0.0.1:{killed_port}"),
    ]);
    // Reused by a connection that stays open (4 s): the same local port again after 1.3 s.
    let reused_port = reuse_after_time_wait(server_port, 4.0);
    drop(acceptor.join().expect("acceptor"));
    let ended = |r: &Value, port: u16, end: &str| {
        r["type"] == "flow" && r["lport"] == port && r["time_wait"]["end"] == end
    };
    tracer.wait_for_records(
        "the killed and the reused TIME_WAITs",
        Duration::from_secs(10),
        |r| {
            r.iter().any(|f| ended(f, killed_port, "killed"))
                && r.iter().any(|f| ended(f, reused_port, "reused"))
        },
    );
    let out = tracer.stop();
    let held = |port: u16, end: &str| -> u64 {
        let flow = (out.of_type("flow").into_iter())
            .find(|f| ended(f, port, end))
            .unwrap_or_else(|| panic!("port {port} {end}: {:#?}", out.of_type("flow")));
        time_wait_of(flow)["held_ns"].as_u64().expect("held")
    };
    // Read every second (spaced to 100 times a read's cost: other tests' TIME_WAITs make reads
    // dearer), judged at the next tick: seconds after the real end, never before it, and far
    // from the 60 s of an expiry.
    let killed_held = held(killed_port, "killed");
    assert!(
        (300_000_000..6_000_000_000).contains(&killed_held),
        "killed 0.3 s after it started, known {killed_held} ns after"
    );
    let reused_held = held(reused_port, "reused");
    assert!(
        (1_300_000_000..7_000_000_000).contains(&reused_held),
        "reused 1.3 s after it started, known {reused_held} ns after"
    );
    let s = out.summary();
    assert!(s["time_wait"]["ends"]["killed"].as_u64() >= Some(1), "{s}");
}
