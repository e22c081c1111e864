//! Two measurements that need more than a round: the kernel programs' cost per run, by
//! program (bpf_stats on for that round only), and the tracer's CPU at a fixed 10k
//! connections/s in steady state (after a warm-up longer than TIME_WAIT, so that the
//! TIME_WAIT population and the tracer's tables have stopped growing).
use std::{
    collections::HashMap,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{loadgen::run_clients, tracer::BpfStats, Bench};

/// One BPF program's cost over a round.
#[derive(Serialize, Debug, Clone)]
pub struct ProgramCost {
    /// Its name (bpftool's whole name; the kernel's 15 characters without bpftool).
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// CPU of one mode at the fixed rate.
#[derive(Serialize, Debug, Clone)]
pub struct SteadyCpu {
    pub mode: String,
    pub rate_conn_per_s: f64,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub cpu_percent: f64,
}

/// `(prog_id, run_time_ns, run_cnt)` of every BPF program a process holds (its fdinfo).
pub(super) fn held_programs(pid: u32) -> Vec<(u32, u64, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let field = |info: &str, name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .filter_map(|info| {
            Some((
                u32::try_from(field(&info, "prog_id:")?).ok()?,
                field(&info, "run_time_ns:")?,
                field(&info, "run_cnt:")?,
            ))
        })
        .collect()
}

/// The kernel programs' cost by program, over one flat-out round of `args` (the tracer's
/// own hooks only; bpf_stats is on for this round alone).
pub fn program_costs(bench: &Bench, args: &[&str]) -> Result<Vec<ProgramCost>> {
    Ok(programs_over_a_round(bench, &|out| bench.tcptrace(args, out))?.0)
}

/// The kernel programs' cost, by program, over one flat-out round of the tracer `start`
/// starts (bpf_stats on for that round alone), and the connections the round made.
pub fn programs_over_a_round(
    bench: &Bench,
    start: &dyn Fn(&std::path::Path) -> Result<super::tracer::RunningTracer>,
) -> Result<(Vec<ProgramCost>, u64)> {
    let (mut costs, connections) = programs_of_tracers_in_a_round(bench, &[start])?;
    Ok((costs.pop().unwrap_or_default(), connections))
}

/// One flat-out round with the row's tracer and the hash-state probe attached together, both
/// on every transition of the same seconds: (the row's programs, the probe's, connections).
pub fn programs_beside_probe(
    bench: &Bench,
    start: &dyn Fn(&std::path::Path) -> Result<super::tracer::RunningTracer>,
) -> Result<(Vec<ProgramCost>, Vec<ProgramCost>, u64)> {
    let probe = |out: &std::path::Path| bench.tcptrace(super::modes::HASH_PROBE_ARGS, out);
    let (mut costs, connections) = programs_of_tracers_in_a_round(bench, &[&probe, start])?;
    let row = costs.pop().unwrap_or_default();
    let probe = costs.pop().unwrap_or_default();
    Ok((row, probe, connections))
}

/// What starts a tracer, writing its output to the path it is given.
type StartTracer<'a> = &'a dyn Fn(&std::path::Path) -> Result<super::tracer::RunningTracer>;

/// One flat-out round (bpf_stats on for it only) with every tracer `starts` starts running,
/// started in that order: each one's programs, in the same order, and the connections made.
fn programs_of_tracers_in_a_round(
    bench: &Bench,
    starts: &[StartTracer<'_>],
) -> Result<(Vec<Vec<ProgramCost>>, u64)> {
    let outs: Vec<_> = (0..starts.len())
        .map(|i| bench.dir.join(format!("bpf-stats-{i}.out")))
        .collect();
    let stats = BpfStats::enable()?;
    let mut tracers = Vec::with_capacity(starts.len());
    for (start, out) in starts.iter().zip(&outs) {
        tracers.push(start(out)?);
    }
    let before: Vec<_> = tracers.iter().map(|t| held_programs(t.pid())).collect();
    let load = bench.load(None)?;
    let after: Vec<_> = tracers.iter().map(|t| held_programs(t.pid())).collect();
    let names = program_names();
    for tracer in tracers {
        tracer.stop()?;
    }
    drop(stats);
    let costs = before
        .iter()
        .zip(after)
        .map(|(before, after)| costs_between(before, after, &names))
        .collect();
    for out in outs {
        let _ = fs::remove_file(out);
    }
    Ok((costs, load.connections))
}

/// Each program's runs and ns per run between two reads of [`held_programs`], most run first.
pub(super) fn costs_between(
    before: &[(u32, u64, u64)],
    after: Vec<(u32, u64, u64)>,
    names: &HashMap<u32, String>,
) -> Vec<ProgramCost> {
    let mut costs: Vec<ProgramCost> = after
        .into_iter()
        .filter_map(|(id, ns, runs)| {
            let (_, ns0, runs0) = before.iter().find(|(i, ..)| *i == id).copied()?;
            let runs = runs.saturating_sub(runs0);
            (runs > 0).then(|| ProgramCost {
                program: names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("id {id}")),
                runs,
                ns_per_run: ns.saturating_sub(ns0) as f64 / runs as f64,
            })
        })
        .collect();
    costs.sort_by_key(|c| std::cmp::Reverse(c.runs));
    costs
}

/// Loaded programs' names by id, read while they are loaded: bpftool's (whole, from the
/// programs' BTF), else the kernel's 15 characters.
pub(super) fn program_names() -> HashMap<u32, String> {
    let mut names: HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
        .collect();
    names.extend(whole_program_names());
    names
}

/// Loaded programs' whole names by id, as bpftool reads them from each program's BTF (the
/// kernel keeps 15 characters: `tcp_retransmit_skb` and `tcp_retransmit_synack` would read
/// alike); empty when bpftool is missing or fails.
fn whole_program_names() -> HashMap<u32, String> {
    #[derive(serde::Deserialize)]
    struct Shown {
        id: u32,
        name: Option<String>,
    }
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return HashMap::new();
    };
    serde_json::from_slice::<Vec<Shown>>(&out.stdout)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p.id, p.name?)))
        .collect()
}

/// On-CPU time of every thread of a process, in ns (schedstat: exact, not tick-sampled).
fn on_cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).context("tracer tasks")? {
        let path = task?.path().join("schedstat");
        if let Ok(stat) = fs::read_to_string(&path) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// The tracer's CPU at `rate` connections/s, measured for `measure` after `warmup`.
pub fn steady_cpu(
    bench: &Bench,
    mode: &[&str],
    rate: f64,
    warmup: Duration,
    measure: Duration,
) -> Result<SteadyCpu> {
    let out = bench.dir.join("steady.out");
    let tracer = bench.tcptrace(mode, &out)?;
    let pid = tracer.pid();
    let ports = bench.server.ports.clone();
    let threads = bench.args.threads;
    let load =
        thread::spawn(move || run_clients(&ports, threads, warmup + measure, false, Some(rate)));
    thread::sleep(warmup);
    let (cpu0, t0) = (on_cpu_ns(pid)?, Instant::now());
    thread::sleep(measure);
    let (cpu1, elapsed) = (on_cpu_ns(pid)?, t0.elapsed());
    let achieved = load
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))??;
    tracer.stop()?;
    Ok(SteadyCpu {
        mode: format!("tcptrace {}", mode.join(" ")),
        rate_conn_per_s: achieved.rate(),
        warmup_s: warmup.as_secs_f64(),
        measured_s: elapsed.as_secs_f64(),
        cpu_percent: cpu1.saturating_sub(cpu0) as f64 / elapsed.as_nanos() as f64 * 100.0,
    })
}

/// The highest of the tried fixed rates at which a mode lost no record to a full ring.
#[derive(Serialize, Debug, Clone)]
pub struct LosslessRate {
    pub mode: String,
    /// Achieved connections/s and state events/s of the first lossless rate, if any.
    pub conn_per_s: Option<f64>,
    pub events_per_s: Option<f64>,
    /// (achieved connections/s, records lost to a full ring, events the kernel skipped) for
    /// every rate tried.
    pub tried: Vec<(f64, u64, u64)>,
}

/// Tries `rates` (connections/s, highest first) until a round loses nothing: no record lost
/// to a full ring and no event skipped by the kernel.
pub fn lossless_rate(bench: &Bench, mode: &[&str], rates: &[f64]) -> Result<LosslessRate> {
    let mut result = LosslessRate {
        mode: format!("tcptrace {}", mode.join(" ")),
        conn_per_s: None,
        events_per_s: None,
        tried: Vec::new(),
    };
    for &rate in rates {
        // A round counts only if the load reached 90% of the rate asked for: the first round
        // after a tracer starts sometimes falls short; it is tried once more.
        for attempt in 0..2 {
            let out = bench.dir.join("lossless.out");
            let tracer = bench.tcptrace(mode, &out)?;
            let load = bench.load(Some(rate))?;
            let cost = tracer.stop()?;
            let (events, lost_ring, skipped) = super::summary_numbers(&out)?;
            let _ = fs::remove_file(&out);
            result.tried.push((load.rate(), lost_ring, skipped));
            let reached = load.rate() >= 0.9 * rate;
            eprintln!(
                "xtask bench: {} at {:.0} conn/s (asked {rate:.0}): {lost_ring} records lost, {skipped} events skipped by the kernel{}",
                result.mode,
                load.rate(),
                if reached { "" } else { " (rate not reached)" }
            );
            if !reached && attempt == 0 {
                continue;
            }
            if reached && lost_ring == 0 && skipped == 0 {
                result.conn_per_s = Some(load.rate());
                result.events_per_s = Some(events as f64 / (cost.wall_ns as f64 / 1e9));
                return Ok(result);
            }
            break;
        }
    }
    Ok(result)
}
