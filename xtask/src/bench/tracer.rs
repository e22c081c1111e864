//! Running a tracer (tcptrace or bpftrace) beside the load and reading what it cost.
use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A tracer process with its stdout going to a file.
pub struct RunningTracer {
    child: Child,
    started: Instant,
    /// CPU time spent before it was ready (start-up: BTF parsing, loading, attaching).
    startup_cpu_ns: u64,
}

/// What a tracer cost and delivered over one round.
#[derive(Clone, Debug, Default)]
pub struct TracerCost {
    /// User + system CPU time of the tracer process.
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// Peak resident set size.
    pub peak_rss_kib: u64,
    /// Total run time and runs of its BPF programs (only while bpf_stats is enabled).
    pub bpf_run_ns: u64,
    pub bpf_run_cnt: u64,
}

/// Whether process `pid` holds a BPF program.
fn holds_bpf_programs(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| fs::read_to_string(e.path()).is_ok_and(|info| info.contains("prog_type:")))
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Where a tracer started with stdout to `out` has its stderr (after it was ready).
pub fn stderr_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".stderr");
    name.into()
}

impl RunningTracer {
    /// Starts `cmd` with stdout to `out`, and waits for `ready` on stdout or stderr.
    pub fn start(mut cmd: Command, out: &Path, ready: &'static str) -> Result<RunningTracer> {
        let file = File::create(out).with_context(|| format!("create {}", out.display()))?;
        let mut child = cmd
            .stdout(Stdio::from(file))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {cmd:?}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let pid = child.id();
        loop {
            // `ready` empty: a tool that says nothing when it is attached (libbpf-tools buffer
            // their stdout into a file) is ready once it holds its programs, and a moment more.
            let stdout_ready = match ready {
                "" => {
                    holds_bpf_programs(pid) && {
                        thread::sleep(Duration::from_millis(500));
                        true
                    }
                }
                _ => fs::read_to_string(out).is_ok_and(|s| s.contains(ready)),
            };
            if stdout_ready {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains(ready) => break,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{cmd:?} exited before it was ready: {}", seen.join(" | "))
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{cmd:?} not ready within 60 s: {}", seen.join(" | "));
            }
        }
        // Keep draining stderr so the tracer never blocks on it, into OUT.stderr (where the
        // line modes' summary goes).
        let mut said = File::create(stderr_path(out)).context("create the stderr file")?;
        thread::spawn(move || {
            for line in rx {
                let _ = writeln!(said, "{line}");
            }
        });
        let startup_cpu_ns = cpu_ns(child.id())?;
        Ok(RunningTracer {
            child,
            started: Instant::now(),
            startup_cpu_ns,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the process's cost, then stops it with SIGINT and waits.
    pub fn stop(mut self) -> Result<TracerCost> {
        let pid = self.pid();
        let mut cost = TracerCost {
            wall_ns: self.started.elapsed().as_nanos() as u64,
            ..Default::default()
        };
        cost.cpu_ns = cpu_ns(pid)?.saturating_sub(self.startup_cpu_ns);
        let status = fs::read_to_string(format!("/proc/{pid}/status")).context("tracer status")?;
        cost.peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        (cost.bpf_run_ns, cost.bpf_run_cnt) = bpf_prog_stats(pid);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = self.child.wait().context("wait for tracer")?;
        if !status.success() {
            bail!("tracer exited {status}");
        }
        Ok(cost)
    }
}

/// User + system CPU time of a process so far.
fn cpu_ns(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).context("tracer stat")?;
    // Fields after the parenthesised comm: utime is the 14th field, stime the 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(ticks * 1_000_000_000 / clock_ticks())
}

/// Sums run_time_ns / run_cnt over the BPF programs a process holds (from fdinfo).
fn bpf_prog_stats(pid: u32) -> (u64, u64) {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let (mut ns, mut cnt) = (0, 0);
    for entry in dir.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        for line in info.lines() {
            if let Some(v) = line.strip_prefix("run_time_ns:") {
                ns += v.trim().parse::<u64>().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("run_cnt:") {
                cnt += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (ns, cnt)
}

/// The memory the kernel reports for the hash map of `max_entries` entries a process holds.
pub fn map_memlock(pid: u32, max_entries: u32) -> Option<u64> {
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("map_type:") == Some(1) && field("max_entries:") == Some(u64::from(max_entries)) {
            return field("memlock:");
        }
    }
    None
}

/// Turns kernel.bpf_stats_enabled on for as long as the guard lives.
pub struct BpfStats;

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enable bpf_stats")?;
        Ok(BpfStats)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// tracefs, which bpftrace needs (tcptrace does not).
pub fn mount_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .context("mount tracefs")?;
    if !status.success() {
        bail!("mounting tracefs at /sys/kernel/tracing failed");
    }
    Ok(())
}
