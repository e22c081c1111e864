//! A real Prometheus (Debian's package, installed by `cargo xtask setup`) scraping
//! `tcptrace metrics` during real connections: PromQL counts and rates match what was
//! generated, every panel of the shipped Grafana dashboard returns series, the shipped alert
//! rules pass `promtool check rules`, load and evaluate healthy, and the agent-down rule's
//! expression fires once tcptrace is gone.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use crate::{
    kubelet::{spawn_in, Driver, FakeNode, FakePod},
    ports::{free_port, free_port_without_time_waits, RefusingPort},
    support::Tracer,
};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus-rules.yaml"
);
const DASHBOARD: &str = include_str!("../../deploy/grafana-dashboard.json");
const NODE: &str = "test-node";
const NAMESPACE: &str = "tcptrace-test";

/// A Prometheus server on loopback with its own storage, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [\"{RULES}\"]\n\
                 scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      \
                 - targets: [\"127.0.0.1:{target_port}\"]\n        labels:\n          \
                 node: {NODE}\n          namespace: {NAMESPACE}\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}): `cargo xtask setup` installs it")
            });
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !prometheus.get("/-/ready").0.contains("200") {
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// (status line, body) of an HTTP/1.0 GET (no chunked encoding to undo).
    fn get(&self, path_and_query: &str) -> (String, String) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (String::new(), String::new());
        };
        let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return (String::new(), String::new());
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// An instant PromQL query (at `at`, seconds since the epoch, or now): its result vector.
    fn query_at(&self, promql: &str, at: Option<f64>) -> Vec<Value> {
        let mut path = format!("/api/v1/query?query={}", encode(promql));
        if let Some(at) = at {
            path.push_str(&format!("&time={at:.3}"));
        }
        let (status, body) = self.get(&path);
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: not JSON ({e}): {status} {body}"));
        assert_eq!(json["status"], "success", "{promql}: {body}");
        json["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: no result vector: {body}"))
            .clone()
    }

    /// The single value a query returns.
    fn value(&self, promql: &str) -> f64 {
        let result = self.query_at(promql, None);
        assert_eq!(result.len(), 1, "{promql}: one series expected: {result:?}");
        number(&result[0])
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn number(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a sample value: {sample}"))
}

/// Percent-encoding for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

/// Connections to `port` at `per_second`, the client closing first (its TIME_WAITs point at
/// the destination), until `stop`; counts those made.
/// Connections at `per_second` for `secs` from a process in `pod` (server and client both
/// there): it prints how many it made when done.
fn paced_load_in(pod: &FakePod, port: u16, per_second: u32, secs: u32) -> Child {
    let script = format!(
        "import socket, time\n\
         l = socket.socket()\n\
         l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1', {port}))\n\
         l.listen(64)\n\
         n, every = 0, 1.0 / {per_second}\n\
         nxt = time.time()\n\
         end = nxt + {secs}\n\
         while time.time() < end:\n    \
             c = socket.create_connection(('127.0.0.1', {port}))\n    \
             s, _ = l.accept()\n    \
             c.shutdown(socket.SHUT_WR)\n    \
             s.recv(1)\n    \
             s.close()\n    \
             c.close()\n    \
             n += 1\n    \
             nxt += every\n    \
             time.sleep(max(0.0, nxt - time.time()))\n\
         print(n, flush=True)\n"
    );
    spawn_in(&pod.cgroup, &format!("python3 -c \"{script}\""))
}

/// How many connections the load made (it prints it at its end).
fn connections_made(load: Child) -> f64 {
    let out = load.wait_with_output().expect("the load");
    assert!(out.status.success(), "the load failed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("the load's count: {e}"))
}

fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let names: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        names.contains(&"node") && names.contains(&"namespace") && names.contains(&"pod"),
        "{names:?}"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().expect("a panel title").to_string();
            p["targets"]
                .as_array()
                .expect("panel targets")
                .iter()
                .map(move |t| {
                    let expr = t["expr"].as_str().expect("a PromQL expr");
                    let expr = expr
                        .replace("$__rate_interval", "15s")
                        .replace("$node", NODE)
                        .replace("$namespace", NAMESPACE)
                        .replace("$pod", ".*");
                    (title.clone(), expr)
                })
        })
        .collect()
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules", RULES])
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): `cargo xtask setup` installs it"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}

#[test]
fn prometheus_scrapes_counts_and_rates_that_match_the_traffic() {
    let metrics_port = free_port();
    let (load_port, refused) = (free_port_without_time_waits(), RefusingPort::new());
    let refused_port = refused.port;
    let filter = format!("{load_port},{refused_port}");
    // The load runs in a pod: the metrics by workload name it.
    let mut node = FakeNode::new();
    let pod = node.pod(Driver::Systemd, "shop", "loadgen-0", "client");
    // Only this test's connections: every other test's traffic is filtered out in the kernel.
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "metrics",
        "--metrics",
        &metrics_addr,
        "-D",
        &filter,
        "--metrics-pod-labels",
    ];
    let node_args = node.args();
    args.extend(node_args.iter().map(String::as_str));
    let tracer = Tracer::start(&args);
    let prometheus = Prometheus::start(metrics_port);
    // Prometheus applies discovered targets up to 5 s after start: the load begins once
    // tcptrace has been scraped, so that the first sample precedes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prometheus
        .query_at("up{job=\"tcptrace\"} == 1", None)
        .iter()
        .any(|s| s["metric"]["node"] == NODE)
    {
        assert!(Instant::now() < deadline, "tcptrace never scraped");
        thread::sleep(Duration::from_millis(250));
    }
    let load_started = unix_now();
    let load = paced_load_in(&pod, load_port, 10, 15);
    for _ in 0..3 {
        assert!(TcpStream::connect(("127.0.0.1", refused_port)).is_err());
    }
    // The load runs 15 s; the rate is read 12 s in, over its last 5 s (time the test sets).
    thread::sleep(Duration::from_secs(12));

    // While the load runs: the rate over the last 5 s, and every dashboard panel.
    let rate = prometheus.value(&format!(
        "sum(rate(tcptrace_transitions_total{{from=\"SYN_SENT\",to=\"ESTABLISHED\",node=\"{NODE}\"}}[5s]))"
    ));
    let elapsed = unix_now() - load_started;
    assert!(
        (7.0..=13.0).contains(&rate),
        "rate {rate}/s for 10 connections/s ({elapsed:.1} s in)"
    );
    let mut answered = Vec::new();
    for (panel, expr) in dashboard_queries() {
        let series = prometheus.query_at(&expr, None);
        assert!(!series.is_empty(), "panel {panel:?}: no series for {expr}");
        answered.push(format!("{panel}: {} series", series.len()));
    }
    let forecast = prometheus.value(&format!(
        "max(tcptrace_time_wait_forecast_ratio{{destination=\"127.0.0.1:{load_port}\"}})"
    ));
    assert!(
        forecast > 0.0 && forecast < 0.8,
        "10/s is far below capacity: {forecast}"
    );

    let n = connections_made(load);
    let count = |promql: &str| prometheus.value(promql);
    // Scraped every second: wait until the last connections (and the refused ones) are in.
    crate::support::wait_until(
        "Prometheus to have scraped every connection",
        Duration::from_secs(20),
        || {
            let lost = count("sum(tcptrace_lost_events_total)");
            count("tcptrace_flows_opened_total") + lost >= n + 3.0
                && count("tcptrace_flows_closed_total{cause=\"normal\"}") + lost >= n
        },
    );
    // Every event the kernel skipped or could not queue is counted (host-wide: other tests'
    // traffic runs beside this one): the counts are exact when nothing was lost, and short by
    // at most what was.
    let lost = count("sum(tcptrace_lost_events_total)");
    let counted = |promql: &str, expected: f64| {
        let got = count(promql);
        assert!(
            got <= expected && got + lost >= expected,
            "{promql}: {got}, expected {expected} ({lost} events lost: {:?})",
            prometheus.query_at("tcptrace_lost_events_total > 0", None)
        );
    };
    counted(
        "tcptrace_transitions_total{from=\"SYN_SENT\",to=\"ESTABLISHED\"}",
        n,
    );
    counted("tcptrace_flows_closed_total{cause=\"normal\"}", n);
    counted("tcptrace_flows_closed_total{cause=\"refused\"}", 3.0);
    counted("tcptrace_flows_opened_total", n + 3.0);
    // Every client entered TIME_WAIT (60 s): it is still there, or it ended early (a
    // TIME_WAIT the kernel killed, which the tracer saw end).
    let ended = count("sum(tcptrace_time_wait_duration_seconds_count)");
    counted(
        &format!(
            "sum(tcptrace_time_wait_sockets{{destination=\"127.0.0.1:{load_port}\"}}) + {ended}"
        ),
        n,
    );
    assert_eq!(
        count("sum(tcptrace_lost_events_total{reason=~\"ring_full.*\"})"),
        0.0
    );
    // increase() over the whole load extrapolates; it stays within a scrape's worth.
    let increase = count(&format!(
        "sum(increase(tcptrace_flows_opened_total[{}s]))",
        (unix_now() - load_started).ceil() as u64 + 5
    ));
    assert!(
        (increase - (n + 3.0)).abs() <= 0.15 * n + 3.0,
        "{increase} vs {}",
        n + 3.0
    );

    // By workload: the pod the traffic came from (its client side: -D admits only that).
    let by_pod = prometheus.query_at(
        &format!(
            "sum by (k8s_namespace, k8s_pod, k8s_container, direction) \
             (tcptrace_workload_connections_total{{peer=~\".*:{load_port}\"}})"
        ),
        None,
    );
    assert_eq!(
        by_pod.len(),
        1,
        "the pod's outbound connections: {by_pod:?}"
    );
    assert_eq!(by_pod[0]["metric"]["direction"], "outbound");
    for series in &by_pod {
        let m = &series["metric"];
        assert_eq!(
            (&m["k8s_namespace"], &m["k8s_pod"], &m["k8s_container"]),
            (
                &Value::from("shop"),
                &Value::from("loadgen-0"),
                &Value::from("client")
            ),
            "{series}"
        );
        let got = number(series);
        assert!(got <= n && got + lost >= n, "{series}: {got} of {n}");
    }
    counted(
        &format!(
            "sum(tcptrace_workload_time_waits_total{{k8s_pod=\"loadgen-0\",destination=\"127.0.0.1:{load_port}\"}})"
        ),
        n,
    );
    counted(
        "sum(tcptrace_workload_flows_closed_total{k8s_pod=\"loadgen-0\",cause=\"normal\"})",
        n,
    );
    eprintln!("prometheus by pod: {by_pod:?}");

    // The rules loaded and evaluate without error.
    let (_, rules) = prometheus.get("/api/v1/rules");
    let rules: Value = serde_json::from_str(&rules).expect("rules JSON");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    assert_eq!(loaded.len(), 7, "{rules}");
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Agent down: the rule's expression returns the node once tcptrace is gone.
    let summary = tracer.stop();
    assert_eq!(
        summary.summary()["flows"]["finished"].as_u64(),
        Some(n as u64 + 3)
    );
    let down = loaded
        .iter()
        .find(|r| r["name"] == "TcptraceAgentDown")
        .and_then(|r| r["query"].as_str())
        .expect("the agent-down rule")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fired = prometheus.query_at(&down, None);
        if fired.iter().any(|s| s["metric"]["node"] == NODE) {
            break;
        }
        assert!(Instant::now() < deadline, "{down} never returned {NODE}");
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "prometheus: {n} connections, rate {rate:.2}/s, forecast {forecast:.4}; {}",
        answered.join("; ")
    );
}
