//! The bulk-transfer rows: each mode's program runs per second while a few long flows move
//! data over loopback and no connection opens or closes. What runs then is what runs for work
//! that is not a TCP state change (timers armed and cancelled as segments flow, packets
//! freed): the measure of issue 36's target (at most 1,000 runs a second). The flows are
//! opened before the counts are read and closed after.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    steady::{costs_between, held_programs, program_names, ProgramCost},
    tracer::BpfStats,
    Bench,
};

/// The modes measured: (name, tcptrace's arguments).
const MODES: [(&str, &[&str]); 6] = [
    ("transitions", &[]),
    ("flows", &["flows"]),
    ("alerts", &["alerts"]),
    ("all", &["all"]),
    ("timewait", &["timewait"]),
    ("metrics", &["metrics", "--metrics", "127.0.0.1:0"]),
];

/// Long flows at once.
const FLOWS: usize = 4;
/// Seconds measured per mode.
const SECS: f64 = 6.0;

#[derive(Serialize, Debug, Clone)]
pub struct BulkRow {
    pub mode: String,
    pub secs: f64,
    /// What the flows moved, in Gbit/s.
    pub gbit_per_s: f64,
    /// Program runs per second, every program of the mode; and by program (runs in `runs`
    /// are per second here).
    pub runs_per_s: f64,
    pub by_program: Vec<ProgramCost>,
}

/// `FLOWS` connected loopback pairs; each writer sends as fast as it can while `go` is set.
struct Streams {
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Streams {
    fn open() -> Result<Streams> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let to = listener.local_addr()?;
        let (go, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let bytes = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..FLOWS {
            let mut writer = TcpStream::connect(to).context("a bulk flow")?;
            let (mut reader, _) = listener.accept()?;
            let (go, stop, bytes) = (go.clone(), stop.clone(), bytes.clone());
            threads.push(thread::spawn(move || {
                let chunk = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    if !go.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    match writer.write(&chunk) {
                        Ok(n) => bytes.fetch_add(n as u64, Ordering::Relaxed),
                        Err(_) => break,
                    };
                }
            }));
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            }));
        }
        Ok(Streams {
            go,
            stop,
            bytes,
            threads,
        })
    }

    fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The longest wait for the TIME_WAITs of earlier rows to run out (60 s each).
const TIME_WAIT_DRAIN: Duration = Duration::from_secs(75);
/// Few enough TIME_WAITs left to start (the host's own, or the last stragglers).
const TIME_WAIT_LEFT: u64 = 100;

/// Sockets in TIME_WAIT in this network namespace (`/proc/net/sockstat`'s `tw`).
fn time_waits() -> Result<u64> {
    let sockstat =
        std::fs::read_to_string("/proc/net/sockstat").context("read /proc/net/sockstat")?;
    parse_time_waits(&sockstat).context("no TCP tw count in /proc/net/sockstat")
}

fn parse_time_waits(sockstat: &str) -> Option<u64> {
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    words.find(|w| *w == "tw")?;
    words.next()?.parse().ok()
}

/// Waits (at most `TIME_WAIT_DRAIN`) for the TIME_WAITs the churn rows left to run out:
/// their expiries run the expiry hook, TCP work of connections closed before the row, not of
/// the bulk transfer it measures. Returns how many were left.
fn drain_time_waits() -> Result<u64> {
    let started = Instant::now();
    let mut left = time_waits()?;
    if left > TIME_WAIT_LEFT {
        eprintln!("xtask bench: bulk: waiting for {left} TIME_WAITs of earlier rows to run out");
    }
    while left > TIME_WAIT_LEFT && started.elapsed() < TIME_WAIT_DRAIN {
        thread::sleep(Duration::from_secs(1));
        left = time_waits()?;
    }
    Ok(left)
}

/// Every mode's row.
pub fn rows(bench: &Bench) -> Result<Vec<BulkRow>> {
    let left = drain_time_waits()?;
    eprintln!("xtask bench: bulk: {left} sockets in TIME_WAIT at the first row");
    let mut rows = Vec::new();
    for (mode, args) in MODES {
        let row = row(bench, mode, args)?;
        eprintln!(
            "xtask bench: bulk, {mode}: {:.0} program runs a second at {:.1} Gbit/s",
            row.runs_per_s, row.gbit_per_s
        );
        rows.push(row);
    }
    Ok(rows)
}

fn row(bench: &Bench, mode: &str, args: &[&str]) -> Result<BulkRow> {
    let out = bench.dir.join(format!("bulk-{mode}.out"));
    let stats = BpfStats::enable()?;
    let tracer = bench.tcptrace(args, &out)?;
    let streams = Streams::open()?;
    // The opens' transitions are behind us before the counts are read.
    thread::sleep(Duration::from_millis(500));
    let before = held_programs(tracer.pid());
    let started = Instant::now();
    streams.go.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs_f64(SECS));
    streams.go.store(false, Ordering::Relaxed);
    let after = held_programs(tracer.pid());
    let secs = started.elapsed().as_secs_f64();
    let moved = streams.bytes.load(Ordering::Relaxed);
    let names = program_names();
    streams.close();
    tracer.stop()?;
    drop(stats);
    let mut by_program = costs_between(&before, after, &names);
    for c in &mut by_program {
        c.runs = (c.runs as f64 / secs).round() as u64;
    }
    let _ = std::fs::remove_file(&out);
    Ok(BulkRow {
        mode: mode.to_string(),
        secs,
        gbit_per_s: moved as f64 * 8.0 / secs / 1e9,
        runs_per_s: by_program.iter().map(|c| c.runs as f64).sum(),
        by_program,
    })
}

/// The rows as a table, on stderr.
pub fn print(rows: &[BulkRow]) {
    eprintln!("\n| mode | Gbit/s | program runs/s | by program (runs/s) |");
    eprintln!("|---|---|---|---|");
    for r in rows {
        let programs: Vec<String> = (r.by_program.iter())
            .map(|c| format!("{} {}", c.program, c.runs))
            .collect();
        eprintln!(
            "| `{}` | {:.1} | {:.0} | {} |",
            r.mode,
            r.gbit_per_s,
            r.runs_per_s,
            programs.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_waits_are_read_from_sockstat() {
        let sockstat = "sockets: used 190\nTCP: inuse 7 orphan 0 tw 131072 alloc 9 mem 2\nUDP: inuse 1 mem 0\n";
        assert_eq!(super::parse_time_waits(sockstat), Some(131_072));
        assert_eq!(
            super::parse_time_waits("UDP: inuse 1 mem 0\n"),
            None,
            "no TCP line"
        );
    }
}
