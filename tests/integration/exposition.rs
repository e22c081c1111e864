//! The `/metrics` exposition as scrapers get it: the format negotiated, `promtool check
//! metrics` clean, the series there from the first scrape, TIME_WAITs by service.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
};

use crate::{
    metrics::{free_port, get_metrics, scrape, scrape_until, value},
    support::Tracer,
};

/// The exposition a scraper gets: Prometheus text 0.0.4 unless OpenMetrics is asked for,
/// `promtool check metrics` clean, `build_info` and the bounded series there from the first
/// scrape, and a server's own TIME_WAITs under its service rather than per client port.
#[test]
fn metrics_negotiate_their_format_pass_promtool_and_start_complete() {
    let port = free_port();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let service = listener.local_addr().expect("addr");
    let tracer = Tracer::start(&[
        "metrics",
        "--metrics",
        &format!("127.0.0.1:{port}"),
        "-L",
        &service.port().to_string(),
    ]);
    // Before any event.
    let (_, first) = scrape(port);
    for (name, labels) in [
        (
            "tcptrace_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))][..],
        ),
        (
            "tcptrace_state_duration_seconds_count",
            &[("state", "ESTABLISHED")][..],
        ),
        ("tcptrace_flows_closed_total", &[("cause", "rto")][..]),
        ("tcptrace_drops_total", &[("reason", "NO_SOCKET")][..]),
        (
            "tcptrace_connect_failures_total",
            &[("destination", "other")][..],
        ),
        (
            "tcptrace_time_wait_sockets",
            &[("destination", "other")][..],
        ),
        (
            "tcptrace_time_wait_service_sockets",
            &[("service", "other")][..],
        ),
    ] {
        assert!(
            first.samples.iter().any(
                |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            ),
            "{name}{labels:?} from the first scrape"
        );
    }

    // A server that closes first: its TIME_WAITs are its service's.
    for _ in 0..20 {
        let mut client = TcpStream::connect(service).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        drop(server);
        let _ = client.read(&mut [0u8; 1]);
    }
    let (text, scraped) = scrape_until(port, "the server's TIME_WAITs", |s| {
        value(
            s,
            "tcptrace_time_wait_service_sockets",
            &[("service", &service.to_string())],
        ) >= 20.0
    });
    assert_eq!(
        value(&scraped, "tcptrace_time_wait_sockets", &[]),
        0.0,
        "no destination per client port: {text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): `cargo xtask setup` installs it"));
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // What Prometheus asks for: OpenMetrics.
    let (head, body) = get_metrics(
        port,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE tcptrace_transitions counter"),
        "{body}"
    );
    assert!(
        text.contains("# TYPE tcptrace_transitions_total counter"),
        "{text}"
    );
    tracer.stop();
}
