//! Kernel memory per tracked flow, with many live connections held by helper processes.
use std::{process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::{raise_nofile, tracer::map_memlock, Bench};

/// Connections one helper process holds (the sandbox allows 20,000 open files a process).
const HOLD_PER_PROCESS: usize = 15_000;

/// Kernel memory of the default (preallocated) flow table per slot.
pub(crate) fn preallocated_bytes_per_slot(bench: &Bench) -> Result<f64> {
    const DEFAULT_MAX_FLOWS: u32 = 131_072;
    let tracer = bench.tcptrace(&["flows"], &bench.dir.join("prealloc.out"))?;
    let bytes = map_memlock(tracer.pid(), DEFAULT_MAX_FLOWS)
        .context("preallocated flow table not found in tracer fdinfo")?;
    tracer.stop()?;
    let per_slot = bytes as f64 / f64::from(DEFAULT_MAX_FLOWS);
    eprintln!(
        "xtask bench: preallocated flow table {bytes} B for {DEFAULT_MAX_FLOWS} flows: {per_slot:.0} B/flow"
    );
    Ok(per_slot)
}

/// Kernel memory of the flow table (allocated on demand) with `live` flows: live/2 connections whose client ends are
/// held by helper processes and whose server ends wait, established, in accept queues.
pub(crate) fn memory_per_flow(bench: &Bench, live: usize) -> Result<f64> {
    let conns = live / 2;
    let (listeners, ports) = listeners()?;
    let out = bench.dir.join("memory.out");
    // Allocated on demand: the table grows by what a flow costs.
    let tracer = bench.tcptrace(
        &[
            "flows",
            "--flow-memory",
            "on-demand",
            "--max-flows",
            "1048576",
        ],
        &out,
    )?;
    let pid = tracer.pid();
    let empty = map_memlock(pid, 1_048_576).context("flow table not found in tracer fdinfo")?;
    let held = Held::open(&ports, conns)?;
    std::thread::sleep(Duration::from_millis(500));
    let full = map_memlock(pid, 1_048_576).context("flow table")?;
    held.close()?;
    drop(listeners);
    tracer.stop()?;
    let per_flow = (full.saturating_sub(empty)) as f64 / (conns * 2) as f64;
    eprintln!(
        "xtask bench: flow table {empty} B empty, {full} B with {} flows: {per_flow:.0} B/flow",
        conns * 2
    );
    Ok(per_flow)
}

/// Connections held open by helper processes (`xtask bench-hold`), round-robin over `ports`.
struct Held(Vec<std::process::Child>);

impl Held {
    fn open(ports: &[String], conns: usize) -> Result<Held> {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let exe = std::env::current_exe()?;
        let mut helpers = Vec::new();
        let mut left = conns;
        while left > 0 {
            let n = left.min(HOLD_PER_PROCESS);
            left -= n;
            let mut child = Command::new(&exe)
                .args([
                    "bench-hold",
                    "--count",
                    &n.to_string(),
                    "--ports",
                    &ports.join(","),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("helper stdout")?).read_line(&mut line)?;
            helpers.push(child);
            if line.trim() != "ready" {
                Held(helpers).close()?;
                bail!("connection holder failed: {line}");
            }
        }
        Ok(Held(helpers))
    }

    fn close(self) -> Result<()> {
        for mut h in self.0 {
            drop(h.stdin.take());
            h.wait()?;
        }
        Ok(())
    }
}

/// Listening sockets with long backlogs (the held connections wait in their accept queues)
/// and their ports.
fn listeners() -> Result<(Vec<std::net::TcpListener>, Vec<String>)> {
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::fd::AsRawFd;
    let listeners: Vec<TcpListener> = (0..64)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<_>>()?;
    for l in &listeners {
        // SAFETY: re-listening on a listening socket only changes its backlog.
        unsafe { libc::listen(l.as_raw_fd(), 65_535) };
    }
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<std::io::Result<_>>()?;
    Ok((listeners, ports))
}

/// Slab and per-CPU kernel memory now (/proc/meminfo), in bytes.
fn kernel_memory() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .with_context(|| format!("{key} missing from /proc/meminfo"))
    };
    Ok((kib("Slab:")? + kib("Percpu:")?) * 1024)
}

/// What `conns` held connections add to the kernel's slab and per-CPU memory. Listeners of
/// their own: the server ends are never accepted and stay in the accept queues (closed) until
/// their listener goes.
fn held_memory(conns: usize) -> Result<u64> {
    let (listeners, ports) = listeners()?;
    let before = kernel_memory()?;
    let held = Held::open(&ports, conns)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = kernel_memory()?;
    held.close()?;
    drop(listeners);
    // Closed sockets are freed after an RCU grace period: let the next measure start clean.
    std::thread::sleep(Duration::from_secs(2));
    Ok(after.saturating_sub(before))
}

/// Kernel memory per flow kept in socket-local storage: `live` sockets held with
/// `tcptrace flows --flow-memory socket` running, against the same sockets untraced
/// (after one hold that grows the socket caches, alternating, three times each; the storage
/// is allocated with the socket, not in a map whose size fdinfo reports). The median.
pub(crate) fn socket_storage_per_flow(bench: &Bench, live: usize) -> Result<f64> {
    let conns = live / 2;
    held_memory(conns)?;
    let mut differences = Vec::new();
    for round in 0..3 {
        let untraced = held_memory(conns)?;
        let out = bench.dir.join(format!("socket-memory-{round}.out"));
        let tracer = bench.tcptrace(&["flows", "--flow-memory", "socket"], &out)?;
        let traced = held_memory(conns);
        tracer.stop()?;
        let traced = traced?;
        let per_flow = (traced as f64 - untraced as f64) / (conns * 2) as f64;
        eprintln!(
            "xtask bench: {} sockets took {untraced} B untraced, {traced} B with flows in socket storage: {per_flow:.0} B/flow",
            conns * 2
        );
        differences.push(per_flow);
    }
    differences.sort_by(f64::total_cmp);
    Ok(differences[1])
}

/// `xtask bench-hold`: opens `count` connections round-robin over `ports`, says "ready", and
/// holds them until stdin closes.
pub fn hold(count: usize, ports: &str) -> Result<()> {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream};
    let ports: Vec<u16> = ports.split(',').map(str::parse).collect::<Result<_, _>>()?;
    raise_nofile(count + 100)?;
    let held: Vec<TcpStream> = (0..count)
        .map(|i| TcpStream::connect((Ipv4Addr::LOCALHOST, ports[i % ports.len()])))
        .collect::<std::io::Result<_>>()
        .context("open a held connection")?;
    println!("ready");
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
    Ok(())
}
