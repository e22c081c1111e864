//! `cargo xtask soak [--minutes N | --short]`: tcptrace (flows + metrics) under steady load,
//! then a burst above it, then idle; every sample the tracer's RSS, kernel map memory, open
//! fds and lost events; at the end the flows it printed against the connections the load
//! generator made, TIME_WAIT expiries against the kernel's TcpExtTW, and memory after idle
//! against after warm-up. Any drift exits non-zero.
use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::bench::{run_clients, Server};

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Length of the soak (at least 5: warm-up and idle each outlast TIME_WAIT's 60 s).
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// 60 s instead (run by `cargo xtask test`): TIME_WAIT not traced, so that memory is
    /// stable within a minute; the TIME_WAIT check needs the full soak.
    #[arg(long)]
    short: bool,
    /// Steady connections per second (default: the flows mode's lossless rate from
    /// target/bench/results.json, else 10,000).
    #[arg(long)]
    rate: Option<f64>,
}

impl SoakArgs {
    /// The 60-second soak at `rate`.
    pub fn short(rate: f64) -> SoakArgs {
        SoakArgs {
            minutes: 1,
            short: true,
            rate: Some(rate),
        }
    }
}

struct Phases {
    warm_up: u64,
    steady: u64,
    burst: u64,
    idle: u64,
    sample: u64,
}

/// One sample of the tracer.
#[derive(Clone, Debug)]
struct Sample {
    at_s: u64,
    phase: &'static str,
    conn_per_s: f64,
    rss_kib: u64,
    map_kib: u64,
    fds: usize,
    lost: u64,
}

#[path = "soak_readings.rs"]
mod readings;
use readings::{json_number, lost_in_all, map_kib, open_fds, scrape_lost, status_kib, tcp_ext_tw};

/// What the tracer printed: flow lines counted, the summary kept.
struct Output {
    /// Flows whose remote port is one of the load's server ports (the clients' side), and
    /// whose local port is (the server's side).
    client_flows: u64,
    server_flows: u64,
    /// Server-side sockets that closed in SYN_RECV (counted in `server_flows` too): children
    /// the kernel created and dropped before the connection was made (a duplicate child of
    /// one handshake), which no client counts; and the first few of them.
    server_syn_recv_deaths: u64,
    syn_recv_samples: Vec<String>,
    /// Flows on neither side (another program's connections), and the first few of them:
    /// a flow of the load printed with the wrong addresses would show here.
    other_flows: u64,
    other_samples: Vec<String>,
    summary: Option<serde_json::Value>,
    lost: u64,
}

/// The number after `"field":` in a JSON line.
fn start_tracer(
    bin: &Path,
    server_ports: &[u16],
    metrics: u16,
    time_wait: bool,
) -> Result<(Child, Arc<Mutex<Output>>)> {
    // Unfiltered: both sides of every connection (either may close first under this load,
    // and TcpExtTW counts every TIME_WAIT on the host).
    let mut cmd = Command::new(bin);
    cmd.args([
        "flows",
        "--json",
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
    ]);
    if !time_wait {
        cmd.arg("--no-time-wait");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut lines = stderr.lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("tcptrace: tracing") => break,
            Some(Ok(line)) => eprintln!("{line}"),
            _ => bail!("tcptrace exited before attaching: {:?}", child.wait()),
        }
    }
    let output = Arc::new(Mutex::new(Output {
        client_flows: 0,
        server_flows: 0,
        server_syn_recv_deaths: 0,
        syn_recv_samples: Vec::new(),
        other_flows: 0,
        other_samples: Vec::new(),
        summary: None,
        lost: 0,
    }));
    let lost = output.clone();
    thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(n) = lost_in_all(&line) {
                lost.lock().unwrap_or_else(|p| p.into_inner()).lost = n;
            }
        }
    });
    let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().context("stdout")?);
    let sink = output.clone();
    let mut server_ports = server_ports.to_vec();
    server_ports.sort_unstable();
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
            if line.starts_with("{\"type\":\"flow\"") {
                let is_server_port = |field| {
                    json_number(&line, field)
                        .is_some_and(|p| server_ports.binary_search(&p).is_ok())
                };
                if is_server_port("\"rport\":") {
                    out.client_flows += 1;
                } else if is_server_port("\"lport\":") {
                    out.server_flows += 1;
                    if closed_in_syn_recv(&line) {
                        out.server_syn_recv_deaths += 1;
                        if out.syn_recv_samples.len() < 5 {
                            out.syn_recv_samples.push(line);
                        }
                    }
                } else {
                    out.other_flows += 1;
                    if out.other_samples.len() < 5 {
                        out.other_samples.push(line);
                    }
                }
            } else if line.starts_with("{\"type\":\"summary\"") {
                out.summary = serde_json::from_str(&line).ok();
            }
        }
    });
    Ok((child, output))
}

/// Whether a flow line's path is a child's SYN_RECV → CLOSE, seen from its start.
fn closed_in_syn_recv(line: &str) -> bool {
    let Some(at) = line.find("\"path\":[") else {
        return false;
    };
    let mut steps = line[at + "\"path\":[".len()..].split("},{");
    steps
        .next()
        .is_some_and(|s| s.starts_with("{\"state\":\"SYN_RECV\""))
        && steps
            .next()
            .is_some_and(|s| s.starts_with("\"state\":\"CLOSE\""))
        && line.contains("\"start_seen\":true")
}

fn default_rate() -> f64 {
    let path = crate::workspace_root().join("target/bench/results.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["lossless"]
                .as_array()?
                .iter()
                .find(|l| l["mode"].as_str().is_some_and(|m| m.starts_with("flows")))?["conn_per_s"]
                .as_f64()
        })
        .unwrap_or(10_000.0)
}

/// Waits until no socket is in TIME_WAIT (at most 65 s), so every expiry counted by the
/// kernel from here on belongs to a TIME_WAIT the tracer saw start.
fn wait_for_no_time_wait() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(65);
    loop {
        let out = Command::new("ss")
            .args(["-tanH", "state", "time-wait"])
            .output()?;
        let n = String::from_utf8_lossy(&out.stdout).lines().count();
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} sockets still in TIME_WAIT after 65 s");
        }
        eprintln!("xtask soak: waiting for {n} TIME_WAITs from before to run out");
        thread::sleep(Duration::from_secs(5));
    }
}

pub fn run(args: &SoakArgs, bin: &Path) -> Result<()> {
    let phases = if args.short {
        Phases {
            warm_up: 15,
            steady: 25,
            burst: 10,
            idle: 10,
            sample: 5,
        }
    } else {
        if args.minutes < 5 {
            bail!("--minutes must be at least 5 (or use --short)");
        }
        let total = args.minutes * 60;
        Phases {
            warm_up: 90,
            steady: total - 90 - 30 - 70,
            burst: 30,
            idle: 70,
            sample: 60,
        }
    };
    let time_wait = !args.short;
    let rate = args.rate.unwrap_or_else(default_rate);
    crate::bench::raise_nofile(16_384)?;
    if time_wait {
        wait_for_no_time_wait()?;
    }
    let server = Server::start(false)?;
    let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let tw_before = tcp_ext_tw()?;
    let (mut tracer, output) = start_tracer(bin, &server.ports, metrics, time_wait)?;
    let pid = tracer.id();
    eprintln!(
        "xtask soak: {} s steady at {rate:.0} conn/s, {} s burst at three times that, {} s idle; tracer pid {pid}",
        phases.warm_up + phases.steady,
        phases.burst,
        phases.idle
    );
    let (mut made, mut errors, mut at) = (0u64, 0u64, 0u64);
    let mut samples: Vec<Sample> = Vec::new();
    let plan = [
        ("warm-up", phases.warm_up, Some(rate)),
        ("steady", phases.steady, Some(rate)),
        // Above the steady rate, paced the same way (the clients close first), so that every
        // TIME_WAIT is on the traced side.
        ("burst", phases.burst, Some(rate * 3.0)),
        ("idle", phases.idle, Some(0.0)),
    ];
    println!(
        "{:>6} {:<8} {:>9} {:>9} {:>9} {:>5} {:>8}",
        "t (s)", "phase", "conn/s", "RSS MiB", "maps KiB", "fds", "lost"
    );
    for (phase, secs, phase_rate) in plan {
        let mut left = secs;
        while left > 0 {
            let chunk = left.min(phases.sample);
            let conn_per_s = if phase_rate == Some(0.0) {
                thread::sleep(Duration::from_secs(chunk));
                0.0
            } else {
                let r = run_clients(
                    &server.ports,
                    2,
                    Duration::from_secs(chunk),
                    false,
                    phase_rate,
                )?;
                made += r.connections;
                errors += r.errors;
                r.rate()
            };
            left -= chunk;
            at += chunk;
            let sample = Sample {
                at_s: at,
                phase,
                conn_per_s,
                rss_kib: status_kib(pid, "VmRSS:"),
                map_kib: map_kib(pid),
                fds: open_fds(pid),
                lost: output.lock().unwrap_or_else(|p| p.into_inner()).lost,
            };
            println!(
                "{:>6} {:<8} {:>9.0} {:>9.1} {:>9} {:>5} {:>8}",
                sample.at_s,
                sample.phase,
                sample.conn_per_s,
                sample.rss_kib as f64 / 1024.0,
                sample.map_kib,
                sample.fds,
                sample.lost
            );
            samples.push(sample);
        }
    }
    // /metrics once, at the end (a scrape's own TIME_WAIT runs out after the soak).
    let scraped_lost = scrape_lost(metrics);
    let tw_at_stop = tcp_ext_tw()?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = tracer.wait()?;
    let tw_after = tcp_ext_tw()?;
    thread::sleep(Duration::from_millis(500));
    let out = output.lock().unwrap_or_else(|p| p.into_inner());
    let summary = out.summary.clone().context("no summary from tcptrace")?;
    println!("lost events scraped from /metrics at the end: {scraped_lost}");

    check(&Checks {
        status_ok: status.success(),
        made,
        errors,
        printed: (out.client_flows, out.server_flows),
        syn_recv_deaths: (out.server_syn_recv_deaths, &out.syn_recv_samples),
        others: (out.other_flows, &out.other_samples),
        summary: &summary,
        samples: &samples,
        time_wait: time_wait.then_some((tw_at_stop - tw_before, tw_after - tw_before)),
    })
}

struct Checks<'a> {
    status_ok: bool,
    made: u64,
    errors: u64,
    /// Flows printed: (clients' side, server's side).
    printed: (u64, u64),
    /// Server-side children closed in SYN_RECV, and the first few.
    syn_recv_deaths: (u64, &'a [String]),
    /// Flows of other connections (the /metrics scrape's two sides), and the first few.
    others: (u64, &'a [String]),
    summary: &'a serde_json::Value,
    samples: &'a [Sample],
    /// TcpExtTW since start, read before and after the tracer stopped.
    time_wait: Option<(u64, u64)>,
}

fn check(c: &Checks) -> Result<()> {
    let mut drift = Vec::new();
    let lost_flows = c.summary["lost"]["flows"].as_u64().unwrap_or(0);
    let untracked = c.summary["flows"]["untracked"].as_u64().unwrap_or(0);
    let lost = c.summary["lost"]["total"].as_u64().unwrap_or(0);
    println!(
        "connections made {} ({} failed); flows printed: {} clients' and {} servers' sides; \
         lost flow records {lost_flows}, untracked {untracked}, events lost {lost}",
        c.made, c.errors, c.printed.0, c.printed.1
    );
    // What the summary says went wrong without being lost, to tell a shortfall's cause.
    let anomalies: Vec<String> = [
        "read_errors",
        "decode_errors",
        "stale_flows",
        "path_gaps",
        "truncated_paths",
        "nested_events",
    ]
    .iter()
    .map(|k| format!("{k} {}", c.summary[k]))
    .collect();
    println!("tcptrace's summary: {}", anomalies.join(", "));
    if !c.status_ok {
        drift.push("tcptrace did not exit 0".to_string());
    }
    // Each side of every connection is printed once, unless its record was lost (counted):
    // exact when nothing is lost.
    // A server child that closed in SYN_RECV belongs to no connection the load made.
    let (deaths, death_samples) = c.syn_recv_deaths;
    if deaths > 0 {
        println!("server-side children closed in SYN_RECV (no connection made): {deaths}");
        for line in death_samples {
            println!("  {line}");
        }
    }
    let servers = c.printed.1 - deaths;
    for (side, printed) in [("clients'", c.printed.0), ("servers'", servers)] {
        if printed > c.made + c.errors || printed + lost + c.errors < c.made {
            drift.push(format!(
                "{printed} flows of the {side} side printed ({lost} events lost) for {} \
                 connections made ({} failed)",
                c.made, c.errors
            ));
        }
        if lost == 0 && c.errors == 0 && printed != c.made {
            drift.push(format!(
                "{printed} flows of the {side} side printed for {} connections, nothing lost",
                c.made
            ));
        }
    }
    if let Some((at_stop, after)) = c.time_wait {
        // TcpExtTW counts every TIME_WAIT that ended (expired, killed or reused; measured:
        // 40,448 ended = 40,191 expired + 254 reused + 3 killed); after the idle phase,
        // longer than TIME_WAIT, none is left in progress.
        let tw = &c.summary["time_wait"];
        let ends = tw["ends"].as_object().cloned().unwrap_or_default();
        let ended: u64 = ends.values().filter_map(serde_json::Value::as_u64).sum();
        println!(
            "TIME_WAIT: tcptrace saw {} enter and {ended} end ({}), kernel TcpExtTW {at_stop}..{after}",
            tw["entered"],
            serde_json::Value::Object(ends)
        );
        // Exact when nothing was lost; else short by at most the events lost (a timer hook
        // the kernel skipped while busy on that CPU).
        if ended > after || ended + lost < at_stop || (lost == 0 && ended < at_stop) {
            drift.push(format!(
                "tcptrace saw {ended} TIME_WAITs end, the kernel {at_stop}..{after}"
            ));
        }
    }
    let warm = c.samples.iter().rfind(|s| s.phase == "warm-up");
    let end = c.samples.last();
    if let (Some(warm), Some(end)) = (warm, end) {
        println!(
            "after warm-up: RSS {:.1} MiB, maps {} KiB, {} fds; after idle: RSS {:.1} MiB, maps {} KiB, {} fds; lost {lost}",
            warm.rss_kib as f64 / 1024.0,
            warm.map_kib,
            warm.fds,
            end.rss_kib as f64 / 1024.0,
            end.map_kib,
            end.fds
        );
        if end.rss_kib as f64 > warm.rss_kib as f64 * 1.05 {
            drift.push(format!(
                "RSS grew from {} to {} KiB (more than 5%)",
                warm.rss_kib, end.rss_kib
            ));
        }
        if end.map_kib != warm.map_kib {
            drift.push(format!(
                "kernel map memory went from {} to {} KiB",
                warm.map_kib, end.map_kib
            ));
        }
        if end.fds != warm.fds {
            drift.push(format!("open fds went from {} to {}", warm.fds, end.fds));
        }
    }
    if !drift.is_empty() && c.others.0 > 0 {
        // A flow of the load printed with the wrong addresses would be among them.
        println!(
            "{} flows of other connections printed; the first:\n{}",
            c.others.0,
            c.others.1.join("\n")
        );
    }
    if drift.is_empty() {
        println!("soak: no drift");
        Ok(())
    } else {
        bail!("soak: {}", drift.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::closed_in_syn_recv;

    #[test]
    fn only_a_child_seen_from_its_start_closing_in_syn_recv_is_a_dropped_child() {
        let child = r#"{"type":"flow","lport":80,"path":[{"state":"SYN_RECV","held_ns":10,"rtx":0},{"state":"CLOSE","held_ns":null,"rtx":0}],"start_seen":true}"#;
        assert!(closed_in_syn_recv(child), "{child}");
        let made = r#"{"type":"flow","path":[{"state":"SYN_RECV","held_ns":10,"rtx":0},{"state":"ESTABLISHED","held_ns":5,"rtx":0},{"state":"CLOSE","held_ns":null,"rtx":0}],"start_seen":true}"#;
        assert!(!closed_in_syn_recv(made), "{made}");
        let unseen = r#"{"type":"flow","path":[{"state":"SYN_RECV","held_ns":null,"rtx":0},{"state":"CLOSE","held_ns":null,"rtx":0}],"start_seen":false}"#;
        assert!(!closed_in_syn_recv(unseen), "{unseen}");
        let twice = r#"{"type":"flow","path":[{"state":"LAST_ACK","held_ns":null,"rtx":0},{"state":"CLOSE","held_ns":null,"rtx":0}],"start_seen":false}"#;
        assert!(!closed_in_syn_recv(twice), "{twice}");
    }
}
