//! The results table printed at the end of `cargo xtask bench`.
use super::{ModeRow, Results};

/// Runs of all the mode's programs per connection in its bpf_stats round.
fn runs_per_connection(m: &ModeRow) -> Option<f64> {
    if m.kernel_round_connections == 0 || m.kernel_by_program.is_empty() {
        return None;
    }
    let runs: u64 = m.kernel_by_program.iter().map(|p| p.runs).sum();
    Some(runs as f64 / m.kernel_round_connections as f64)
}

/// Each mode's kernel time per connection, and its program runs per connection, as multiples
/// of the empty hook's in the same run; its time of the hash-state probe's: the median of its
/// pairs of rounds beside the probe, else (a row measured alone) of the probe's row.
pub(super) fn relate_to_empty_hook(modes: &mut [ModeRow]) {
    let floor = modes.iter().find(|m| m.mode == super::modes::FLOOR_ROW);
    let floor_ns = floor.and_then(|m| m.kernel_ns_per_connection);
    let floor_runs = floor.and_then(runs_per_connection);
    let probe = modes
        .iter()
        .find(|m| m.mode == super::modes::HASH_PROBE_ROW);
    let probe_ns = probe.and_then(|m| m.kernel_ns_per_connection);
    for m in modes.iter_mut() {
        m.kernel_x_empty_hook = multiple(m.kernel_ns_per_connection, floor_ns);
        m.kernel_x_hash_probe = match m.kernel_x_probe_pairs.as_slice() {
            [] => multiple(m.kernel_ns_per_connection, probe_ns),
            pairs => Some(pairs[super::kernel_rounds::median_index(pairs)]),
        };
        m.kernel_runs_per_connection = runs_per_connection(m);
        m.kernel_runs_x_empty_hook = multiple(m.kernel_runs_per_connection, floor_runs);
    }
}

/// `value` as a multiple of `floor`, when both are known and the floor is not zero.
fn multiple(value: Option<f64>, floor: Option<f64>) -> Option<f64> {
    value
        .zip(floor)
        .filter(|(_, f)| *f > 0.0)
        .map(|(v, f)| v / f)
}

/// The range of a row's multiples of the probe over its pairs of rounds: ` (1.41-1.62)`.
fn spread(pairs: &[f64]) -> String {
    if pairs.len() < 2 {
        return String::new();
    }
    let min = pairs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = pairs.iter().copied().fold(0.0, f64::max);
    format!(" ({min:.2}-{max:.2})")
}

/// The multiples of the probe attached beside the row in the same rounds: median and range,
/// `, same round 1.52x (1.50-1.55)`.
fn same_round(rounds: &[f64]) -> String {
    if rounds.is_empty() {
        return String::new();
    }
    let median = rounds[super::kernel_rounds::median_index(rounds)];
    format!(", same round {median:.2}x{}", spread(rounds))
}

/// Programs' runs and ns per run, one a line, names padded to `width`.
fn print_runs(programs: &[super::steady::ProgramCost], width: usize) {
    for p in programs {
        println!(
            "  {:<width$} {:>10} runs {:>8.1} ns/run",
            p.program, p.runs, p.ns_per_run
        );
    }
}

pub(super) fn print_table(r: &Results) {
    println!("machine: {} | kernel {}", r.machine, r.kernel);
    println!(
        "{:<22} {:>6} {:>9} {:>15} {:>12} {:>10} {:>9} {:>12} {:>9}",
        "mode",
        "pairs",
        "ratio",
        "spread",
        "events/s",
        "lost ring",
        "skipped",
        "user ns/ev",
        "peak RSS"
    );
    for m in &r.modes {
        println!(
            "{:<22} {:>6} {:>9.3} {:>7.3}..{:<6.3} {:>12.0} {:>10} {:>9} {:>12.0} {:>6} MiB",
            m.mode,
            m.pairs,
            m.ratio_median,
            m.ratio_min,
            m.ratio_max,
            m.state_events_per_s,
            m.lost_ring.map_or("n/a".into(), |v| v.to_string()),
            m.lost_skipped.map_or("n/a".into(), |v| v.to_string()),
            m.user_cpu_ns_per_event,
            m.peak_rss_kib / 1024
        );
    }
    println!(
        "kernel per connection (bpf_stats, flat-out rounds; x the empty hook's in this run; x the hash-state probe's: median (range) of pairs of rounds, the row's and the probe's alternated, then of rounds with the probe attached beside the row):"
    );
    for m in &r.modes {
        let Some(ns) = m.kernel_ns_per_connection else {
            continue;
        };
        let connections = m.kernel_round_connections.max(1) as f64;
        println!(
            "  {:<24} {:>9.0} ns/conn {:>7} {:>13}{}",
            m.mode,
            ns,
            m.kernel_x_empty_hook
                .map_or("".into(), |x| format!("{x:.1}x")),
            m.kernel_x_hash_probe.map_or("".into(), |x| format!(
                "{x:.2}x probe{}{}",
                spread(&m.kernel_x_probe_pairs),
                same_round(&m.kernel_x_probe_same_round)
            )),
            m.kernel_runs_per_connection
                .zip(m.kernel_runs_x_empty_hook)
                .map_or("".into(), |(r, x)| format!(
                    "   {r:.1} program runs/conn: {x:.1}x the empty hook's runs"
                ))
        );
        for p in &m.kernel_by_program {
            println!(
                "      {:<27} {:>6.2} runs/conn {:>8.1} ns/run {:>8.0} ns/conn",
                p.program,
                p.runs as f64 / connections,
                p.ns_per_run,
                p.runs as f64 * p.ns_per_run / connections
            );
        }
    }
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.1} {unit}"));
    println!(
        "kernel per event:        {} (all hooks); {} per transition (both inet_sock_set_state programs), {} with --flow-memory on-demand, {} with --flow-memory socket",
        opt(r.kernel_ns_per_event, "ns"),
        opt(r.kernel_ns_per_transition, "ns"),
        opt(r.kernel_ns_per_transition_on_demand, "ns"),
        opt(r.kernel_ns_per_transition_socket, "ns")
    );
    print_runs(&r.kernel_programs, 27);
    if !r.flow_state_probes.is_empty() {
        println!("flow state alone (probes, flat out; empty hook first):");
        print_runs(&r.flow_state_probes, 32);
    }
    for l in &r.lossless {
        match (l.conn_per_s, l.events_per_s) {
            (Some(c), Some(e)) => println!(
                "lossless up to:          {c:.0} conn/s, {e:.0} events/s ({})",
                l.mode
            ),
            _ => println!(
                "lossless up to:          below every rate tried ({})",
                l.mode
            ),
        }
    }
    for c in &r.steady_cpu {
        println!(
            "CPU at {:.0} conn/s:    {:.2} % of one core ({}, after {:.0} s warm-up)",
            c.rate_conn_per_s, c.cpu_percent, c.mode, c.warmup_s
        );
    }
    println!(
        "memory per tracked flow: {} (table on demand, 100k live flows); {} per slot preallocated (default); {} per socket in socket storage",
        opt(r.bytes_per_tracked_flow, "B"),
        opt(r.bytes_per_preallocated_flow, "B"),
        opt(r.bytes_per_socket_flow, "B")
    );
    println!(
        "aggregation (replay):    {}",
        opt(r.replay_events_per_s.map(|v| v / 1e6), "M events/s")
    );
    println!(
        "report of a recording:   {} as flows, {} printing every record ({} B per record on disk)",
        opt(r.report_flows_records_per_s.map(|v| v / 1e6), "M records/s"),
        opt(
            r.report_states_records_per_s.map(|v| v / 1e6),
            "M records/s"
        ),
        r.record_bytes_per_record
            .map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    println!(
        "rendering all (replay):  {}",
        opt(
            r.replay_render_all_events_per_s.map(|v| v / 1e6),
            "M events/s"
        )
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::steady::ProgramCost;

    fn row(mode: &str, ns: f64, connections: u64, runs: &[u64]) -> ModeRow {
        ModeRow {
            mode: mode.into(),
            command: String::new(),
            pairs: 0,
            off_conn_per_s: Vec::new(),
            on_conn_per_s: Vec::new(),
            ratio_median: 0.0,
            ratio_min: 0.0,
            ratio_max: 0.0,
            state_events_per_s: 0.0,
            lost_ring: None,
            lost_skipped: None,
            user_cpu_ns_per_event: 0.0,
            peak_rss_kib: 0,
            kernel_ns_per_connection: Some(ns),
            kernel_x_empty_hook: None,
            kernel_x_hash_probe: None,
            kernel_x_probe_pairs: Vec::new(),
            kernel_x_probe_same_round: Vec::new(),
            kernel_runs_per_connection: None,
            kernel_runs_x_empty_hook: None,
            kernel_by_program: runs
                .iter()
                .map(|&runs| ProgramCost {
                    program: "p".into(),
                    runs,
                    ns_per_run: 1.0,
                })
                .collect(),
            kernel_round_connections: connections,
        }
    }

    #[test]
    fn kernel_time_and_program_runs_are_multiples_of_the_empty_hooks() {
        let mut modes = [
            row("metrics only", 6_000.0, 1_000, &[10_000, 10_000, 6_000]),
            row(crate::bench::modes::FLOOR_ROW, 600.0, 2_000, &[20_000]),
            row("no bpf_stats round", 0.0, 0, &[]),
            row(
                crate::bench::modes::HASH_PROBE_ROW,
                3_000.0,
                2_000,
                &[20_000],
            ),
        ];
        relate_to_empty_hook(&mut modes);
        let metrics = &modes[0];
        assert_eq!(metrics.kernel_x_empty_hook, Some(10.0), "6,000 / 600 ns");
        assert_eq!(metrics.kernel_x_hash_probe, Some(2.0), "6,000 / 3,000 ns");
        modes[0].kernel_x_probe_pairs = vec![1.9, 1.4, 1.5];
        relate_to_empty_hook(&mut modes);
        assert_eq!(
            modes[0].kernel_x_hash_probe,
            Some(1.5),
            "the median of its pairs beside the probe, not its round against the probe's row"
        );
        assert_eq!(spread(&modes[0].kernel_x_probe_pairs), " (1.40-1.90)");
        assert_eq!(
            same_round(&[]),
            "",
            "a row measured alone has no same-round multiple"
        );
        assert_eq!(
            same_round(&[1.62, 1.55, 1.58]),
            ", same round 1.58x (1.55-1.62)",
            "the median and the range"
        );
        let metrics = &modes[0];
        assert_eq!(
            metrics.kernel_runs_per_connection,
            Some(26.0),
            "26,000 runs / 1,000"
        );
        assert_eq!(
            metrics.kernel_runs_x_empty_hook,
            Some(2.6),
            "26 runs against the empty hook's 10"
        );
        assert_eq!(modes[1].kernel_runs_x_empty_hook, Some(1.0));
        assert_eq!(
            modes[2].kernel_runs_per_connection, None,
            "no round, no runs"
        );
        assert_eq!(modes[2].kernel_runs_x_empty_hook, None);
    }
}
