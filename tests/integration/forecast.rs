//! The exhaustion forecast per network namespace: a client namespace with a narrowed
//! `ip_local_port_range` and `tcp_tw_reuse=0` runs out of ports toward one server; the forecast
//! takes that namespace's capacity, crosses 100% and alerts before the client's first
//! EADDRNOTAVAIL, while the host's own connections keep the host's capacity.
use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{netns::NetnsPair, support::Tracer};

/// The client namespace's ephemeral ports: 100, so that ~20 connections a second use them up
/// in ~5 s (capacity 100 / 60 s = 1.7/s).
const RANGE: (u16, u16) = (20000, 20099);

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
}

fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// This namespace's usable ephemeral ports, as tcptrace should count them.
fn host_usable_ports() -> u64 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("range");
    let mut parts = range
        .split_whitespace()
        .map(|p| p.parse::<u64>().expect("a port"));
    let (lo, hi) = (parts.next().expect("lo"), parts.next().expect("hi"));
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    assert!(
        reserved.trim().is_empty(),
        "this test counts the host's ports without reserved ones: {reserved}"
    );
    hi - lo + 1
}

/// Accepts and reads each connection to its end, then closes: the client closes first and
/// holds the TIME_WAIT.
fn serve_until_dropped(listener: TcpListener) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let _ = stream.read(&mut [0u8; 16]);
            });
        }
    });
}

/// Connects from the client namespace every 50 ms until connect() fails with EADDRNOTAVAIL;
/// returns when it failed (unix ns) and how many connections it made.
fn connect_until_exhausted(pair: &NetnsPair, port: u16) -> (u64, u32) {
    let server = pair.addr_a;
    pair.run_in(&pair.b, move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut made = 0;
        while Instant::now() < deadline {
            match TcpStream::connect((server, port)) {
                Ok(client) => {
                    made += 1;
                    drop(client);
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                    return (unix_ns(), made);
                }
                Err(e) => panic!("connect {server}:{port} after {made}: {e}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("connect never failed with EADDRNOTAVAIL after {made} connections")
    })
}

fn forecasts(out: &crate::support::Output) -> Vec<(u64, &Value)> {
    out.of_type("time_wait_gauges")
        .into_iter()
        .flat_map(|g| {
            let ts = g["ts_unix_ns"].as_u64().expect("ts");
            g["forecast"]
                .as_array()
                .expect("forecast")
                .iter()
                .map(move |f| (ts, f))
        })
        .collect()
}

#[test]
fn each_namespace_is_forecast_with_its_own_ports_and_warns_before_eaddrnotavail() {
    let pair = NetnsPair::new();
    pair.sysctl(
        &pair.b,
        "net.ipv4.ip_local_port_range",
        &format!("{} {}", RANGE.0, RANGE.1),
    );
    pair.sysctl(&pair.b, "net.ipv4.tcp_tw_reuse", "0");
    let client_netns = inode(&format!("/run/netns/{}", pair.b));
    let own_netns = inode("/proc/self/ns/net");
    let gauges = Tracer::start(&["timewait", "--interval", "1s"]);
    let alerts = Tracer::start_beside(&gauges, &["alerts"]);
    let metrics_port = crate::metrics::free_port();
    let dir = crate::recording::temp_dir("forecast");
    let file = dir.join("netns.rec");
    let recorder = crate::recording::Recorder::start(&["-o", file.to_str().expect("utf-8")]);
    let metrics = Tracer::start_beside(
        &gauges,
        &["metrics", "--metrics", &format!("127.0.0.1:{metrics_port}")],
    );

    // The host's own connections, closed first by the client on loopback.
    let local = TcpListener::bind("127.0.0.1:0").expect("bind");
    let local_port = local.local_addr().expect("addr").port();
    serve_until_dropped(local);
    for _ in 0..20 {
        drop(TcpStream::connect(("127.0.0.1", local_port)).expect("connect on loopback"));
    }
    let addr_a = pair.addr_a;
    let listener = pair.run_in(&pair.a, move || {
        TcpListener::bind((addr_a, 0)).expect("bind")
    });
    let port = listener.local_addr().expect("addr").port();
    serve_until_dropped(listener);
    let (failed_at, made) = connect_until_exhausted(&pair, port);
    // One more failure, then a second for the metric to be read.
    let server = pair.addr_a;
    let again = pair.run_in(&pair.b, move || TcpStream::connect((server, port)));
    assert_eq!(
        again.err().and_then(|e| e.raw_os_error()),
        Some(libc::EADDRNOTAVAIL),
        "still exhausted"
    );
    // The gauge names the namespace, by inode and by name.
    let labels = [
        ("netns", client_netns.to_string()),
        ("netns_name", pair.b.clone()),
        ("destination", format!("{}:{port}", pair.addr_a)),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ratio_of = |s: &prometheus_parse::Scrape| {
        crate::metrics::value(s, "tcptrace_time_wait_forecast_ratio", &labels)
    };
    let destination = format!("{}:{port}", pair.addr_a);
    let failures = [
        ("errno", "EADDRNOTAVAIL"),
        ("destination", destination.as_str()),
    ];
    let (text, scraped) = crate::metrics::scrape_until(
        metrics_port,
        "the namespace's forecast over 100% and both failures counted",
        |s| {
            ratio_of(s) > 1.0
                && crate::metrics::value(s, "tcptrace_connect_failures_total", &failures) >= 2.0
        },
    );
    let ratio = ratio_of(&scraped);
    assert!(
        ratio > 1.0,
        "the namespace's forecast over 100%: {ratio}\n{text}"
    );
    let _ = metrics.stop();
    let (status, said) = recorder.stop_with(libc::SIGINT);
    assert!(status.success(), "{said}");
    let gauges = gauges.stop();
    let alerts = alerts.stop();

    // The namespace's forecast: its 100 ports, its 60 s (no reuse), named by its inode and
    // its /run/netns name.
    let all = forecasts(&gauges);
    let ours: Vec<&(u64, &Value)> = all
        .iter()
        .filter(|(_, f)| f["raddr"] == pair.addr_a.to_string() && f["rport"] == port)
        .collect();
    let (_, last) = ours
        .last()
        .unwrap_or_else(|| panic!("a forecast toward the server: {all:#?}"));
    assert_eq!(last["netns"], client_netns, "{last}");
    assert_eq!(last["netns_name"], pair.b.as_str(), "{last}");
    assert_eq!(last["usable_ports"], 100, "{last}");
    assert_eq!(
        last["port_range"],
        serde_json::json!([RANGE.0, RANGE.1]),
        "{last}"
    );
    assert_eq!(last["tw_reuse"], 0, "{last}");
    assert_eq!(last["hold_s"], 60.0, "{last}");
    let capacity = last["capacity_per_s"].as_f64().expect("capacity");
    assert!((capacity - 100.0 / 60.0).abs() < 0.01, "{last}");
    // Over 100% before connect() failed, in the gauges and as an alert.
    let before: Vec<f64> = ours
        .iter()
        .filter(|(ts, _)| *ts < failed_at)
        .map(|(_, f)| f["utilization"].as_f64().expect("utilization"))
        .collect();
    assert!(
        before.iter().any(|&u| u > 1.0),
        "the forecast crossed 100% before EADDRNOTAVAIL ({made} connections): {before:?}"
    );
    let warned = alerts
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "port_exhaustion" && a["rport"] == port)
        .unwrap_or_else(|| panic!("an exhaustion alert: {:#?}", alerts.records));
    let warned_at = warned["ts_unix_ns"].as_u64().expect("ts");
    assert!(
        warned_at < failed_at,
        "warned {:.1}s before the first EADDRNOTAVAIL: {warned}",
        (failed_at as f64 - warned_at as f64) / 1e9
    );
    assert_eq!(warned["forecast"]["netns"], client_netns, "{warned}");
    let detail = warned["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&pair.b) && detail.contains("100 ports of 20000-20099"),
        "{detail}"
    );
    eprintln!(
        "forecast at the first EADDRNOTAVAIL ({made} connections): {:.0}%, alerted {:.1}s before",
        before.last().copied().unwrap_or_default() * 100.0,
        (failed_at - warned_at) as f64 / 1e9
    );

    // The recording carries the namespace: its report forecasts with the namespace's ports.
    let report =
        crate::recording::report(&file, &["--mode", "timewait", "--interval", "1s", "--json"]);
    let reported: Vec<Value> = crate::recording::json_lines(&report)
        .into_iter()
        .filter(|l| l["type"] == "time_wait_gauges")
        .flat_map(|g| g["forecast"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["rport"] == port)
        .collect();
    let last = reported.last().unwrap_or_else(|| {
        panic!(
            "the report's forecast toward the server: {}",
            String::from_utf8_lossy(&report.stderr)
        )
    });
    assert_eq!(
        (&last["netns_name"], &last["usable_ports"]),
        (&Value::from(pair.b.as_str()), &Value::from(100)),
        "{last}"
    );

    // The failure itself, caught on the state tracepoint: the process, the destination asked
    // for, the errno, what surrounded it — and counted in the metric.
    let failed = alerts
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "connect_failure" && a["rport"] == port)
        .unwrap_or_else(|| panic!("a connect_failure alert: {:#?}", alerts.records));
    assert_eq!(
        (
            &failed["pid"],
            &failed["errno"],
            &failed["raddr"],
            &failed["netns"]
        ),
        (
            &Value::from(std::process::id()),
            &Value::from("EADDRNOTAVAIL"),
            &Value::from(pair.addr_a.to_string()),
            &Value::from(client_netns)
        ),
        "{failed}"
    );
    assert!(failed["time_waits"].as_u64() >= Some(90), "{failed}");
    assert!(
        failed["forecast"]["utilization"].as_f64() > Some(1.0),
        "the forecast at the failure: {failed}"
    );
    let counted = crate::metrics::value(
        &scraped,
        "tcptrace_connect_failures_total",
        &[
            ("errno", "EADDRNOTAVAIL"),
            ("destination", &format!("{}:{port}", pair.addr_a)),
        ],
    );
    assert_eq!(
        counted, 2.0,
        "each failure counted (the first, and the one after): {counted}\n{text}"
    );

    // The host's own connections keep the host's capacity.
    let host = all
        .iter()
        .map(|(_, f)| f)
        .find(|f| f["rport"] == local_port)
        .unwrap_or_else(|| panic!("a forecast for the host's loopback destination: {all:#?}"));
    assert_eq!(host["netns"], own_netns, "{host}");
    assert_eq!(host["usable_ports"], host_usable_ports(), "{host}");
}

#[test]
fn time_wait_overflows_are_counted_in_the_namespace_whose_buckets_are_full() {
    let pair = NetnsPair::new();
    pair.sysctl(&pair.b, "net.ipv4.tcp_max_tw_buckets", "0");
    let client_netns = inode(&format!("/run/netns/{}", pair.b));
    // Every namespace on the host is read at start and every 10 s: one whose buckets are
    // full holds no TIME_WAIT to be noticed by.
    let mut tracer = Tracer::start(&["flows"]);
    let addr_a = pair.addr_a;
    let listener = pair.run_in(&pair.a, move || {
        TcpListener::bind((addr_a, 0)).expect("bind")
    });
    let port = listener.local_addr().expect("addr").port();
    serve_until_dropped(listener);
    pair.run_in(&pair.b, move || {
        for _ in 0..5 {
            drop(TcpStream::connect((addr_a, port)).expect("connect"));
        }
    });
    let said = format!(
        "TIME_WAITs skipped in network namespace {client_netns} \"{}\"",
        pair.b
    );
    tracer.wait_for_stderr_lines(&said, Duration::from_secs(30), |lines| {
        lines.iter().any(|l| l.contains(&said)) && crate::support::time_waits_skipped(lines) >= 5
    });
    let out = tracer.stop();
    let s = out.summary();
    assert!(s["time_wait"]["overflows"].as_u64() >= Some(5), "{s}");
}

#[test]
fn bind_to_a_port_in_use_is_an_alert_and_a_metric() {
    let metrics_port = crate::metrics::free_port();
    let alerts = Tracer::start(&["alerts"]);
    let metrics = Tracer::start_beside(
        &alerts,
        &["metrics", "--metrics", &format!("127.0.0.1:{metrics_port}")],
    );
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    let err = TcpListener::bind(taken).expect_err("the port is in use");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
    let local = taken.to_string();
    let labels = [("errno", "EADDRINUSE"), ("local", local.as_str())];
    let (text, scraped) =
        crate::metrics::scrape_until(metrics_port, "the bind failure counted", |s| {
            crate::metrics::value(s, "tcptrace_bind_failures_total", &labels) > 0.0
        });
    let counted = crate::metrics::value(&scraped, "tcptrace_bind_failures_total", &labels);
    assert_eq!(counted, 1.0, "{text}");
    let _ = metrics.stop();
    let out = alerts.stop();
    let alert = out
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "bind_failure" && a["lport"] == taken.port())
        .unwrap_or_else(|| panic!("a bind_failure alert: {:#?}", out.records));
    assert_eq!(
        (&alert["pid"], &alert["errno"], &alert["laddr"]),
        (
            &Value::from(std::process::id()),
            &Value::from("EADDRINUSE"),
            &Value::from("127.0.0.1")
        ),
        "{alert}"
    );
    assert!(
        out.summary()["port_failures"].as_u64() >= Some(1),
        "{}",
        out.summary()
    );
}
