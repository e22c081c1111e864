//! What the soak reads of the tracer and the kernel each sample: memory, fds, TIME_WAIT
//! expiries, lost events.
use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

pub(super) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Kernel memory of the tracer's maps (the `memlock` of each map fd).
pub(super) fn map_kib(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.map_while(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("map_id:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum::<u64>()
        / 1024
}

/// Open fds: the fewest of three looks 50 ms apart (the tracer opens its programs' fdinfo
/// for a moment every second to read the kernel's miss counts).
pub(super) fn open_fds(pid: u32) -> usize {
    (0..3)
        .map(|i| {
            if i > 0 {
                thread::sleep(Duration::from_millis(50));
            }
            std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
        })
        .min()
        .unwrap_or(0)
}

/// The kernel's TcpExtTW: TIME_WAITs that ran out (tw_timer_handler).
pub(super) fn tcp_ext_tw() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("read /proc/net/netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no TcpExt in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find_map(|(n, v)| (n == "TW").then(|| v.parse().ok()).flatten())
        .context("no TcpExt TW counter")
}

pub(super) fn scrape_lost(port: u16) -> u64 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("tcptrace_lost_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub(super) fn json_number(line: &str, field: &str) -> Option<u16> {
    let rest = line.split(field).nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Events lost so far, from the tracer's warnings ("… events lost (N in all: …").
pub(super) fn lost_in_all(line: &str) -> Option<u64> {
    let rest = line.split(" events lost (").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
