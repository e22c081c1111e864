//! Prometheus metrics scraped over HTTP during real traffic, parsed with a Prometheus
//! text-format parser, compared with what the tracer saw.
use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use crate::{
    ports::RefusingPort,
    support::{heavy_load, wait_until, Tracer},
};

/// A port free on 127.0.0.1 now, for a `--metrics` endpoint.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// GET /metrics with `accept` as the Accept header (none: `None`): the head and the body.
pub fn get_metrics(port: u16, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n").as_bytes())
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_string(), body.to_string())
}

/// A scrape as `curl` makes it (no Accept header): Prometheus text 0.0.4, parsed.
pub fn scrape(port: u16) -> (String, prometheus_parse::Scrape) {
    let (head, body) = get_metrics(port, None);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let lines = BufReader::new(body.as_bytes()).lines();
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    (body.to_string(), parsed)
}

/// Scrapes until `ready` holds of what is scraped: the tracer publishes its counts once a
/// second, so a test waits for what it checks rather than for a fixed time.
pub fn scrape_until(
    port: u16,
    what: &str,
    ready: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> (String, prometheus_parse::Scrape) {
    let mut last = None;
    wait_until(what, Duration::from_secs(15), || {
        let scraped = scrape(port);
        let ok = ready(&scraped.1);
        last = Some(scraped);
        ok
    });
    last.expect("scraped at least once")
}

pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_are_served_headless_and_match_the_tracer() {
    let _load = heavy_load();
    let port = free_port();
    let tracer = Tracer::start_alone(
        &_load,
        &["metrics", "--metrics", &format!("127.0.0.1:{port}")],
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    for _ in 0..50 {
        let client = TcpStream::connect(addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        let _ = server.read(&mut [0u8; 1]);
    }
    // Kernel counters reach the metrics every second.
    let (text, scrape) = scrape_until(port, "the 50 connections in the metrics", |s| {
        value(s, "tcptrace_flows_opened_total", &[]) >= 100.0
            && value(s, "tcptrace_time_wait_sockets", &[]) >= 50.0
            && value(
                s,
                "tcptrace_state_duration_seconds_count",
                &[("state", "ESTABLISHED")],
            ) >= 50.0
    });
    let out = tracer.stop();
    assert!(
        out.records.iter().all(|r| r["type"] == "summary"),
        "headless: no per-event output"
    );
    let summary = out.summary();

    let established = value(
        &scrape,
        "tcptrace_transitions_total",
        &[("from", "SYN_SENT"), ("to", "ESTABLISHED")],
    );
    assert!(established >= 50.0, "{text}");
    let seen_by_tracer = summary["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .find(|t| t["old"] == "SYN_SENT" && t["new"] == "ESTABLISHED")
        .and_then(|t| t["count"].as_f64())
        .expect("the tracer counted them");
    assert!(
        established <= seen_by_tracer,
        "{established} scraped, {seen_by_tracer} at exit"
    );
    assert!(
        value(
            &scrape,
            "tcptrace_flows_closed_total",
            &[("cause", "normal")]
        ) >= 50.0,
        "{text}"
    );
    assert!(
        value(&scrape, "tcptrace_flows_opened_total", &[]) >= 100.0,
        "{text}"
    );
    assert!(
        value(&scrape, "tcptrace_time_wait_sockets", &[]) >= 50.0,
        "TIME_WAIT gauge: {text}"
    );
    assert!(
        value(
            &scrape,
            "tcptrace_state_duration_seconds_count",
            &[("state", "ESTABLISHED")]
        ) >= 50.0,
        "{text}"
    );
    let types: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    // Prometheus text names a counter's family as its samples.
    assert_eq!(
        types.get("tcptrace_transitions_total"),
        Some(&"counter"),
        "{text}"
    );
    assert_eq!(
        types.get("tcptrace_state_duration_seconds"),
        Some(&"histogram"),
        "{text}"
    );
    assert_eq!(
        types.get("tcptrace_time_wait_sockets"),
        Some(&"gauge"),
        "{text}"
    );
    assert!(
        text.contains("tcptrace_lost_events_total{reason=\"skipped_by_kernel\"}"),
        "{text}"
    );
}

#[test]
fn evictions_and_filtered_events_are_metrics_too() {
    let port = free_port();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tracer = Tracer::start(&[
        "metrics",
        "--metrics",
        &format!("127.0.0.1:{port}"),
        "--max-flows",
        "16",
        "-L",
        &addr.port().to_string(),
    ]);
    let pairs: Vec<_> = (0..15)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            thread::sleep(Duration::from_millis(5));
            (client, server)
        })
        .collect();
    // 15 of 16 entries: the next check evicts down to 13, once.
    let (text, scrape) = scrape_until(port, "an eviction pass", |s| {
        value(s, "tcptrace_evicted_flows_total", &[]) > 0.0
    });
    let out = tracer.stop();
    drop(pairs);
    let summary = out.summary();
    assert_eq!(
        value(&scrape, "tcptrace_evicted_flows_total", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(summary["flows"]["evicted"], 2, "{summary}");
    let filtered = value(&scrape, "tcptrace_filtered_events_total", &[]);
    // The 15 clients' own transitions at least (their local ports are not the listener's).
    assert!(filtered >= 30.0, "{text}");
    assert!(
        filtered <= summary["filtered_events"].as_f64().expect("filtered"),
        "{text}"
    );
}

/// SO_LINGER 0: close() resets the connection.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a valid `linger` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// What the flow records of one tracer add up to: the summary's close causes, sides,
/// retransmits by state, and each state's holds (nanoseconds, sorted).
struct FlowRecordTotals {
    finished: u64,
    causes: serde_json::Map<String, serde_json::Value>,
    close: serde_json::Map<String, serde_json::Value>,
    rtx_by_state: serde_json::Map<String, serde_json::Value>,
    held: BTreeMap<String, Vec<f64>>,
}

fn add(map: &mut serde_json::Map<String, serde_json::Value>, key: &str, n: u64) {
    let now = map.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    map.insert(key.to_string(), (now + n).into());
}

fn flow_record_totals(records: &[serde_json::Value]) -> FlowRecordTotals {
    let mut totals = FlowRecordTotals {
        finished: 0,
        causes: Default::default(),
        close: Default::default(),
        rtx_by_state: Default::default(),
        held: BTreeMap::new(),
    };
    for flow in records.iter().filter(|r| r["type"] == "flow") {
        totals.finished += 1;
        add(
            &mut totals.causes,
            flow["cause"].as_str().expect("cause"),
            1,
        );
        add(&mut totals.close, flow["close"].as_str().expect("close"), 1);
        for step in flow["path"].as_array().expect("path") {
            let state = step["state"].as_str().expect("state");
            if let Some(ns) = step["held_ns"].as_f64() {
                totals.held.entry(state.to_string()).or_default().push(ns);
            }
            let rtx = step["rtx"].as_u64().expect("rtx");
            if rtx > 0 {
                add(&mut totals.rtx_by_state, state, rtx);
            }
        }
    }
    for holds in totals.held.values_mut() {
        holds.sort_by(f64::total_cmp);
    }
    totals
}

/// The kernel counts closes, close sides, state durations and retransmits in every mode;
/// `tcptrace metrics` sends a record only for a flow entering TIME_WAIT, in brief. Its summary
/// must say what the flow records of `tcptrace flows` (a record per flow, classified in
/// userspace) add up to, for the same connections traced at the same time — TIME_WAITs and
/// their sides included.
#[test]
fn metrics_counted_in_the_kernel_match_the_flows_read() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let refusing = RefusingPort::new();
    let refused = refusing.port;
    let filter = format!("{},{refused}", addr.port());
    let endpoint = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let args = ["-D", filter.as_str()];
    let flows = Tracer::start(&[&["flows"][..], &args].concat());
    let metrics = Tracer::start_beside(
        &flows,
        &[&["metrics", "--metrics", endpoint.as_str()][..], &args].concat(),
    );
    // Normal closes (the client first), resets received, local aborts, refused connects.
    for _ in 0..10 {
        let client = TcpStream::connect(addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        let _ = server.read(&mut [0u8; 1]);
    }
    for _ in 0..3 {
        let mut client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        reset_on_close(&server);
        drop(server);
        let _ = client.read(&mut [0u8; 1]);
    }
    for _ in 0..2 {
        let client = TcpStream::connect(addr).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        reset_on_close(&client);
        drop(client);
    }
    for _ in 0..3 {
        assert!(TcpStream::connect(("127.0.0.1", refused)).is_err());
    }
    thread::sleep(Duration::from_millis(300));
    let (metrics, flows) = (metrics.stop(), flows.stop());
    assert!(
        metrics.records.iter().all(|r| r["type"] == "summary"),
        "headless"
    );
    let (m, f) = (metrics.summary(), flows.summary());
    // The 10 clients that closed first hold TIME_WAIT: a timer start and a flow in brief each
    // (a re-armed timer would add one); nothing else sends a record.
    let tw = &m["time_wait"];
    assert_eq!(tw["client_side"], 10, "{m}");
    assert_eq!(tw["server_side"], 0, "{m}");
    let submitted = m["records_submitted"].as_u64().expect("records_submitted");
    assert!(
        (20..=30).contains(&submitted),
        "a record per TIME_WAIT flow only: {m}"
    );
    assert_eq!(tw, &f["time_wait"], "TIME_WAIT as the flows saw it");
    let read = flow_record_totals(&flows.records);
    assert_eq!(read.finished, 18, "{f}");
    assert_eq!(m["flows"]["finished"], read.finished, "{m}");
    assert_eq!(f["flows"]["finished"], read.finished, "{f}");
    assert_eq!(m["causes"], serde_json::Value::Object(read.causes.clone()));
    assert_eq!(
        m["causes"],
        serde_json::json!({"normal": 10, "reset_received": 3, "aborted": 2, "refused": 3}),
        "{m}"
    );
    assert_eq!(
        m["close"],
        serde_json::Value::Object(read.close),
        "close sides"
    );
    assert_eq!(
        m["retransmits_by_state"],
        serde_json::Value::Object(read.rtx_by_state),
        "{m}"
    );
    // The same states held, as often; quantiles within the kernel's buckets (1/8) — and
    // within 20 µs: each tracer's programs read the clock themselves, one after the other.
    // The longest hold is one sample, and an interrupt between the two tracers' programs
    // delays one clock read by its length (49 µs in one CI run): 200 µs there.
    let m_held: BTreeMap<String, serde_json::Value> = m["held"]
        .as_array()
        .expect("held")
        .iter()
        .map(|h| (h["state"].as_str().expect("state").to_string(), h.clone()))
        .collect();
    assert_eq!(
        m_held.keys().collect::<Vec<_>>(),
        read.held.keys().collect::<Vec<_>>(),
        "{m}"
    );
    for (state, holds) in &read.held {
        let mh = &m_held[state];
        assert_eq!(mh["count"], holds.len(), "{state}: {mh} vs {holds:?}");
        // The median as the summary ranks it: the sample at rank ceil(n / 2).
        let median = holds[holds.len().div_ceil(2) - 1];
        let max = holds[holds.len() - 1];
        for (q, fv, slack_ns) in [("p50_ns", median, 20_000.0), ("max_ns", max, 200_000.0)] {
            let mv = mh[q].as_f64().expect("a duration");
            assert!(
                (mv - fv).abs() <= (fv / 8.0).max(slack_ns),
                "{state} {q}: {mv} counted in the kernel, {fv} from the flow records"
            );
        }
    }
}
