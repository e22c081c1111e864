//! A row's kernel time beside the hash-state probe's: bpf_stats rounds of the row and of the
//! probe, alternated (probe then row, row then probe, ...), so that each multiple compares two
//! rounds seconds apart. This VM's speed drifts from minute to minute: a row measured once and
//! set against a probe measured ten minutes later moved by ±20% from run to run.
use std::path::Path;

use anyhow::Result;

use super::{modes, steady, tracer::RunningTracer, Bench};

/// What a row's kernel rounds measured.
pub(super) struct KernelRounds {
    /// The programs of the round whose multiple of the probe is the median (its ns per
    /// connection and runs per connection are the row's).
    pub(super) programs: Vec<steady::ProgramCost>,
    pub(super) connections: u64,
    /// Each pair's multiple of the probe, in the order measured (empty: the row is a probe
    /// or the floor, measured once).
    pub(super) x_probe: Vec<f64>,
    /// Each round's multiple of the probe attached beside it in the same round (as many
    /// rounds as pairs; empty as above).
    pub(super) x_probe_same_round: Vec<f64>,
}

/// The tracer's programs' time per connection over a round.
pub(super) fn ns_per_connection(programs: &[steady::ProgramCost], connections: u64) -> f64 {
    let ns: f64 = programs.iter().map(|p| p.ns_per_run * p.runs as f64).sum();
    ns / connections.max(1) as f64
}

/// A row's time as a multiple of the probe's (0 without a probe time).
fn multiple(row_ns: f64, probe_ns: f64) -> f64 {
    if probe_ns > 0.0 {
        row_ns / probe_ns
    } else {
        0.0
    }
}

/// Whether a row is measured once: the floor and the probes are what the others are set
/// against.
fn measured_alone(name: &str) -> bool {
    name == modes::FLOOR_ROW || name == modes::HASH_PROBE_ROW || name == modes::STORAGE_PROBE_ROW
}

/// The row `start` starts, in `pairs` pairs of rounds beside the hash-state probe (one round
/// alone for the floor and the probes themselves).
pub(super) fn measure(
    bench: &Bench,
    name: &str,
    start: &dyn Fn(&Path) -> Result<RunningTracer>,
    pairs: usize,
) -> Result<KernelRounds> {
    if measured_alone(name) || pairs == 0 {
        let (programs, connections) = steady::programs_over_a_round(bench, start)?;
        return Ok(KernelRounds {
            programs,
            connections,
            x_probe: Vec::new(),
            x_probe_same_round: Vec::new(),
        });
    }
    let probe = |out: &Path| bench.tcptrace(modes::HASH_PROBE_ARGS, out);
    let mut rounds = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        // Alternate which goes first, so that neither always follows the other.
        let (row, probe_round) = if pair % 2 == 0 {
            let p = steady::programs_over_a_round(bench, &probe)?;
            (steady::programs_over_a_round(bench, start)?, p)
        } else {
            let r = steady::programs_over_a_round(bench, start)?;
            (r, steady::programs_over_a_round(bench, &probe)?)
        };
        let probe_ns = ns_per_connection(&probe_round.0, probe_round.1);
        let row_ns = ns_per_connection(&row.0, row.1);
        let x = multiple(row_ns, probe_ns);
        eprintln!(
            "xtask bench: {name:<22} kernel pair {}: {row_ns:>6.0} ns/conn, probe {probe_ns:>6.0} ({x:.2}x)",
            pair + 1
        );
        rounds.push((x, row));
    }
    let x_probe: Vec<f64> = rounds.iter().map(|(x, _)| *x).collect();
    let (_, (programs, connections)) = rounds.swap_remove(median_index(&x_probe));
    // The same multiple with both attached in one round: every transition runs both
    // programs, so the hour's speed, the host's neighbours and the load's rate are the same
    // for the two (each also pays for the other's cache lines).
    let mut x_probe_same_round = Vec::with_capacity(pairs);
    for round in 0..pairs {
        let (row, probe, connections) = steady::programs_beside_probe(bench, start)?;
        let (row_ns, probe_ns) = (
            ns_per_connection(&row, connections),
            ns_per_connection(&probe, connections),
        );
        let x = multiple(row_ns, probe_ns);
        eprintln!(
            "xtask bench: {name:<22} same round {}: {row_ns:>6.0} ns/conn, probe {probe_ns:>6.0} ({x:.2}x)",
            round + 1
        );
        x_probe_same_round.push(x);
    }
    Ok(KernelRounds {
        programs,
        connections,
        x_probe,
        x_probe_same_round,
    })
}

/// The index of the median of `v` (the lower one of an even count).
pub(super) fn median_index(v: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    order[(v.len().saturating_sub(1)) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_pair_is_picked_by_its_multiple() {
        assert_eq!(median_index(&[1.9, 1.4, 1.5]), 2, "1.4 < 1.5 < 1.9");
        assert_eq!(median_index(&[1.2]), 0);
        assert_eq!(median_index(&[1.6, 1.3]), 1, "the lower of two");
    }

    #[test]
    fn time_per_connection_sums_every_program() {
        let cost = |runs, ns_per_run| steady::ProgramCost {
            program: "p".into(),
            runs,
            ns_per_run,
        };
        let ns = ns_per_connection(&[cost(10_000, 400.0), cost(1_000, 200.0)], 1_000);
        assert_eq!(
            ns, 4_200.0,
            "(4,000,000 + 200,000) ns over 1,000 connections"
        );
        assert_eq!(ns_per_connection(&[], 0), 0.0, "no round, no time");
    }
}
