//! `cargo xtask bench`: connections/s with the tracer off and on, alternating in one run, for
//! each output mode; kernel ns per event, userspace CPU per event, peak RSS, lost records;
//! memory per tracked flow; aggregation throughput; bpftrace as the reference row.
mod bulk;
mod conntrack;
mod kernel_rounds;
mod loadgen;
mod memory;
mod modes;
mod pipeline;
mod recording;
mod reference;
mod steady;
mod table;
mod tracer;

pub use memory::hold;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use loadgen::LoadResult;
pub use loadgen::{load_only, raise_nofile, run_clients, Server};
use tracer::{RunningTracer, TracerCost};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Off/on pairs per mode (at least 5 for the table in docs/performance.md).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Pairs of bpf_stats rounds per row, the row's and the hash-state probe's alternated:
    /// its multiple of the probe is the median pair's.
    #[arg(long, default_value_t = 3)]
    kernel_pairs: usize,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 3.0)]
    round_secs: f64,
    /// Client threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// Warm-up before the CPU at a fixed rate is measured (longer than TIME_WAIT's 60 s, so
    /// that the TIME_WAIT population and the tracer's tables stop growing).
    #[arg(long, default_value_t = 65.0)]
    warmup_secs: f64,
    /// How long the CPU at a fixed rate is measured, after the warm-up.
    #[arg(long, default_value_t = 20.0)]
    steady_secs: f64,
    /// Live connections for the memory-per-flow measurement.
    #[arg(long, default_value_t = 100_000)]
    live_connections: usize,
    /// Skip the bpftrace reference row.
    #[arg(long)]
    no_bpftrace: bool,
    /// Only the bulk-transfer rows (each mode's program runs a second while long flows move
    /// data and none opens or closes), written to target/bench/bulk.json.
    #[arg(long)]
    bulk_only: bool,
    /// Which rows to run (comma-separated): transitions, flows, flows-no-tw, flows-no-drops,
    /// flows-conntrack (a 1M-entry conntrack table looked in at each flow's end), json, metrics, metrics-no-drops, metrics-vitals, record, flows-on-demand,
    /// metrics-on-demand, flows-socket, metrics-socket (flows in socket storage), filtered,
    /// floor, storage (flow-state probes), ring-probe (the hash probe and a record per
    /// transition, into one ring or a ring per CPU), libbpf-tools (Debian's tcpstates and tcplife,
    /// installed if missing), bpftrace, bulk (long flows, no connection opened or closed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "transitions,flows,flows-no-tw,flows-no-drops,flows-conntrack,json,metrics,metrics-no-drops,metrics-vitals,record,flows-on-demand,metrics-on-demand,flows-socket,metrics-socket,filtered,floor,storage,ring-probe,libbpf-tools,bpftrace,bulk"
    )]
    modes: Vec<String>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

mod results;
use results::{ModeRow, Results};

/// Kernel time per transition: both `inet_sock_set_state` programs run for each (the second
/// returns at once unless the first is interrupted); the kernel truncates both names to
/// `inet_sock_set_s`.
fn per_transition(costs: &[steady::ProgramCost]) -> Option<f64> {
    let set_state: Vec<_> = costs
        .iter()
        .filter(|c| c.program.starts_with("inet_sock_set"))
        .collect();
    let runs = set_state.iter().map(|c| c.runs).max()?;
    let ns: f64 = set_state.iter().map(|c| c.ns_per_run * c.runs as f64).sum();
    (runs > 0).then(|| ns / runs as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Reads (transitions, retransmits, lost) from a tracer's output file ([`summary_numbers`]).
type SummaryParser<'a> = dyn Fn(&Path) -> Result<(u64, u64, u64)> + 'a;

/// Numbers from tcptrace's text summary line
/// `--- tcptrace summary: 3.0s traced, N transitions, R retransmits, L lost ---`, or from the
/// JSON summary object.
pub(crate) fn summary_numbers(out: &Path) -> Result<(u64, u64, u64)> {
    let mut text = fs::read_to_string(out).with_context(|| format!("read {}", out.display()))?;
    // A line mode's summary goes to stderr.
    text.push_str(&fs::read_to_string(tracer::stderr_path(out)).unwrap_or_default());
    if let Some(line) = text
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"type\":\"summary\""))
    {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let skipped = v["lost"]["missed_events"].as_u64().unwrap_or(0);
        return Ok((
            v["state_events"].as_u64().unwrap_or(0),
            v["lost"]["total"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(skipped),
            skipped,
        ));
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("--- tcptrace summary:"))
        .context("no summary in the tracer's output")?;
    let events = line
        .split(", ")
        .find(|p| p.ends_with("transitions"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let lost: u64 = line
        .split(", ")
        .find(|p| p.contains("lost"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let skipped = text
        .lines()
        .find_map(|l| l.split("events the kernel skipped: ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok((events, lost.saturating_sub(skipped), skipped))
}

pub(crate) struct Bench<'a> {
    pub(crate) args: &'a BenchArgs,
    bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) server: Server,
}

impl Bench<'_> {
    fn load(&self, rate: Option<f64>) -> Result<LoadResult> {
        let r = run_clients(
            &self.server.ports,
            self.args.threads,
            Duration::from_secs_f64(self.args.round_secs),
            false,
            rate,
        )?;
        if r.errors > r.connections / 100 {
            bail!(
                "load generator: {} errors for {} connections",
                r.errors,
                r.connections
            );
        }
        Ok(r)
    }

    pub(crate) fn tcptrace(&self, args: &[&str], out: &Path) -> Result<RunningTracer> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        RunningTracer::start(cmd, out, "tcptrace: tracing")
    }

    /// Alternates rounds with the tracer off and on. `parse` reads (events, lost to a full
    /// ring, skipped by the kernel) from the tracer's output.
    fn mode(
        &self,
        name: &str,
        start: &dyn Fn(&Path) -> Result<RunningTracer>,
        command: &str,
        parse: Option<&SummaryParser<'_>>,
    ) -> Result<ModeRow> {
        let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut events, mut cpu, mut wall, mut rss) = (0u64, 0u64, 0u64, 0u64);
        let (mut lost_ring, mut lost_skipped) = (0u64, 0u64);
        for pair in 0..self.args.pairs {
            let base = self.load(None)?;
            let out = self
                .dir
                .join(format!("{}-{pair}.out", name.replace(' ', "-")));
            let tracer = start(&out)?;
            let loaded = self.load(None)?;
            let cost: TracerCost = tracer.stop()?;
            if let Some(parse) = parse {
                let (e, ring, skipped) = parse(&out)?;
                events += e;
                lost_ring += ring;
                lost_skipped += skipped;
            } else {
                events += loaded.connections * 10;
            }
            cpu += cost.cpu_ns;
            wall += cost.wall_ns;
            rss = rss.max(cost.peak_rss_kib);
            let _ = fs::remove_file(&out);
            eprintln!(
                "xtask bench: {name:<22} pair {}: off {:>8.0} conn/s, on {:>8.0} conn/s ({:.3})",
                pair + 1,
                base.rate(),
                loaded.rate(),
                loaded.rate() / base.rate()
            );
            ratios.push(loaded.rate() / base.rate());
            off.push(base.rate());
            on.push(loaded.rate());
        }
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        let kernel = kernel_rounds::measure(self, name, start, self.args.kernel_pairs)?;
        let (programs, connections) = (kernel.programs, kernel.connections);
        let kernel_ns = kernel_rounds::ns_per_connection(&programs, connections);
        Ok(ModeRow {
            mode: name.into(),
            command: command.into(),
            pairs: self.args.pairs,
            off_conn_per_s: off,
            on_conn_per_s: on,
            ratio_median: median(&mut ratios),
            ratio_min: min,
            ratio_max: max,
            state_events_per_s: events as f64 / (wall as f64 / 1e9),
            lost_ring: parse.map(|_| lost_ring),
            lost_skipped: parse.map(|_| lost_skipped),
            user_cpu_ns_per_event: if events > 0 {
                cpu as f64 / events as f64
            } else {
                0.0
            },
            peak_rss_kib: rss,
            kernel_ns_per_connection: (connections > 0).then_some(kernel_ns),
            kernel_x_empty_hook: None,
            kernel_x_hash_probe: None,
            kernel_x_probe_pairs: kernel.x_probe,
            kernel_x_probe_same_round: kernel.x_probe_same_round,
            kernel_runs_per_connection: None,
            kernel_runs_x_empty_hook: None,
            kernel_by_program: programs,
            kernel_round_connections: connections,
        })
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// Refuses a `--modes` row this benchmark does not have (before anything is built).
pub fn check_rows(args: &BenchArgs) -> Result<()> {
    modes::check(&args.modes)
}

pub fn run(args: &BenchArgs, bin: PathBuf) -> Result<()> {
    let dir = crate::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let server = Server::start(false)?;
    let bench = Bench {
        args,
        bin: bin.clone(),
        dir: dir.clone(),
        server,
    };
    let mut results = Results {
        machine: format!(
            "{} cores, {}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            first_line(
                Command::new("sh")
                    .args(["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])
            )
            .trim()
        ),
        kernel: first_line(Command::new("uname").arg("-r")),
        ..Default::default()
    };
    if args.bulk_only {
        let rows = bulk::rows(&bench)?;
        bulk::print(&rows);
        let path = dir.join("bulk.json");
        fs::write(
            &path,
            serde_json::to_string_pretty(&(&results.kernel, &rows))?,
        )?;
        return Ok(());
    }
    // Warm up: bring TIME_WAIT to its steady state so that early rounds are not favoured.
    run_clients(
        &bench.server.ports,
        args.threads,
        Duration::from_secs(10),
        false,
        None,
    )?;

    let modes = modes::MODES;
    let wanted = |key: &str| args.modes.iter().any(|m| m == key);
    for (key, name, mode_args) in modes {
        if !wanted(key) {
            continue;
        }
        let _table = match key {
            "flows-conntrack" => Some(conntrack::FilledTable::new(1_000_000)?),
            _ => None,
        };
        let start = |out: &Path| bench.tcptrace(mode_args, out);
        let command = format!("tcptrace {}", mode_args.join(" "));
        let parse: &SummaryParser<'_> = &summary_numbers;
        results.modes.push(bench.mode(
            name,
            &start,
            command.trim(),
            (!modes::is_probe(mode_args)).then_some(parse),
        )?);
    }
    if wanted("record") {
        let reports = std::cell::RefCell::new(recording::Reports::default());
        let start = |out: &Path| {
            let file = out.with_extension("rec");
            bench.tcptrace(&["record", "-o", &file.to_string_lossy()], out)
        };
        let parse =
            |out: &Path| recording::report_rates(&bin, &out.with_extension("rec"), &reports);
        results.modes.push(bench.mode(
            "record -> file",
            &start,
            "tcptrace record -o FILE",
            Some(&parse),
        )?);
        let reports = reports.into_inner();
        results.report_flows_records_per_s = reports.flows_per_s();
        results.report_states_records_per_s = reports.states_per_s();
        results.record_bytes_per_record = reports.bytes_per_record();
    }

    // The reference rows: libbpf-tools' tcpstates and tcplife, bpftrace.
    if wanted("libbpf-tools") {
        results.modes.extend(reference::libbpf_tools(&bench)?);
    }
    if !args.no_bpftrace && wanted("bpftrace") {
        results.modes.push(reference::bpftrace(&bench)?);
    }

    // Each mode's kernel time and program runs per connection as multiples of the empty
    // hook's (same run).
    table::relate_to_empty_hook(&mut results.modes);

    // Kernel ns per program run (bpf_stats on for this round only), flows mode.
    let costs = steady::program_costs(&bench, &["flows"])?;
    let (ns, runs) = costs.iter().fold((0.0, 0u64), |(ns, runs), c| {
        (ns + c.ns_per_run * c.runs as f64, runs + c.runs)
    });
    if runs > 0 {
        results.kernel_ns_per_event = Some(ns / runs as f64);
    }
    results.kernel_ns_per_transition = per_transition(&costs);
    results.kernel_programs = costs;
    let on_demand = steady::program_costs(
        &bench,
        &[
            "flows",
            "--flow-memory",
            "on-demand",
            "--max-flows",
            "1048576",
        ],
    )?;
    results.kernel_ns_per_transition_on_demand = per_transition(&on_demand);
    let socket = steady::program_costs(&bench, &["flows", "--flow-memory", "socket"])?;
    results.kernel_ns_per_transition_socket = per_transition(&socket);

    // Kernel ns per transition of the flow-state probes, beside the empty hook's.
    if wanted("storage") {
        for variant in ["empty", "sk-storage", "hash"] {
            // The kernel keeps 15 characters of a program's name: named by variant instead.
            let costs = steady::program_costs(&bench, &["hook-floor", "--variant", variant])?;
            results
                .flow_state_probes
                .extend(costs.into_iter().map(|c| steady::ProgramCost {
                    program: format!("--variant {variant}"),
                    ..c
                }));
        }
    }

    // Tracer CPU at a fixed 10k connections/s, in steady state: flows and metrics-only.
    let (warmup, steady) = (
        Duration::from_secs_f64(args.warmup_secs),
        Duration::from_secs_f64(args.steady_secs),
    );
    for mode in [&["flows"][..], &["metrics", "--metrics", "127.0.0.1:0"][..]] {
        let cpu = steady::steady_cpu(&bench, mode, 10_000.0, warmup, steady)?;
        eprintln!(
            "xtask bench: {} at {:.0} conn/s (after {:.0} s): {:.2}% of one core",
            cpu.mode, cpu.rate_conn_per_s, cpu.warmup_s, cpu.cpu_percent
        );
        results.steady_cpu.push(cpu);
    }
    results.cpu_percent_at_10k = results.steady_cpu.first().map(|c| c.cpu_percent);

    // The highest rate each mode keeps up with, losing nothing (neither records to a full
    // ring nor events the kernel skipped).
    let rates = [60_000.0, 50_000.0, 40_000.0, 30_000.0, 20_000.0, 10_000.0];
    let lossless_modes: [(&str, &[&str]); 4] = [
        ("metrics", &["metrics", "--metrics", "127.0.0.1:0"]),
        ("flows", &["flows"]),
        ("transitions", &[]),
        ("json", &["--json"]),
    ];
    for (key, mode) in lossless_modes {
        if wanted(key) {
            results
                .lossless
                .push(steady::lossless_rate(&bench, mode, &rates)?);
        }
    }

    results.bytes_per_tracked_flow = Some(memory::memory_per_flow(&bench, args.live_connections)?);
    results.bytes_per_preallocated_flow = Some(memory::preallocated_bytes_per_slot(&bench)?);
    results.bytes_per_socket_flow = Some(memory::socket_storage_per_flow(
        &bench,
        args.live_connections,
    )?);
    if wanted("bulk") {
        results.bulk = bulk::rows(&bench)?;
    }
    let (aggregate, render_all) = pipeline::replay(&bin)?;
    results.replay_events_per_s = Some(aggregate);
    results.replay_render_all_events_per_s = Some(render_all);

    table::print_table(&results);
    bulk::print(&results.bulk);
    let json_path = crate::workspace_root().join(&args.json);
    if let Some(parent) = json_path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    eprintln!("xtask bench: results written to {}", json_path.display());
    Ok(())
}
