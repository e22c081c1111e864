//! Command line → validated [`Config`].
pub mod filter;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    cli::filter::{FilterArgs, FilterSpec},
    kernel::btf::VMLINUX_BTF,
};

#[derive(Parser, Debug)]
#[command(
    name = "tcptrace",
    version,
    about = "Trace TCP state transitions, per-flow lifecycles and retransmits with eBPF",
    after_help = "Without a subcommand, tcptrace prints one line per TCP state transition.\n\
                  Ctrl-C or SIGTERM stops tracing and prints a summary."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// One line per TCP state transition (the default).
    States,
    /// One line per finished flow: every state with the time held, lifetime, close side.
    Flows,
    /// One line per retransmitted segment, with the state it happened in.
    Retrans,
    /// Only anomalies: keepalive, retransmission, SYN and user timeouts, resets, refused and
    /// aborted connections, FIN retransmits (half-open peers), keepalive probes.
    Alerts,
    /// Transitions, finished flows, retransmits and alerts together (most useful with --json).
    All,
    /// TIME_WAIT gauges every --interval: sockets in TIME_WAIT per destination and local
    /// address, entry rates, the 4-tuple exhaustion forecast, overflows.
    Timewait {
        /// How often the gauges are printed.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// A live full-screen view, refreshed every second: rates, flows open by state,
    /// TIME_WAIT, destinations or local services (connections/s, open, TIME_WAIT, exhaustion
    /// forecast, retransmits, resets, keepalive timeouts, p99 connect time) and the latest
    /// alerts. Keys: q quit, t destinations/services, 1-9 sort, r reverse, / filter.
    Top,
    /// Record the raw event stream (every transition, flow, retransmit, keepalive probe and
    /// TIME_WAIT) to a file at ring-buffer speed, to render later with `tcptrace report`.
    Record {
        /// The file to write (`--max-size` rotates it to FILE.1, FILE.2, …).
        #[arg(short = 'o', long, value_name = "FILE")]
        output: PathBuf,
        /// Start a new file when this one reaches this size (e.g. 100MiB); the oldest beyond
        /// --max-files is removed, so at most SIZE × N of disk is used.
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Files kept when rotating (FILE and FILE.1 … FILE.N-1).
        #[arg(long, value_name = "N", default_value_t = 4)]
        max_files: u32,
    },
    /// Render a recording (`tcptrace record`) in any line mode, with --json if wanted.
    Report {
        /// The recording.
        file: PathBuf,
        /// What to render.
        #[arg(long, value_enum, default_value = "states")]
        mode: ReportMode,
        /// How often TIME_WAIT gauges are printed, in recorded time (--mode timewait).
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Headless: no per-event output, only the Prometheus metrics (needs --metrics).
    Metrics,
    /// Report ESTABLISHED connections idle longer than --min-idle with no keepalive armed,
    /// grouped by process, and exit (no eBPF needed).
    Idle {
        /// Idle time (no data either way) from which a connection is listed.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        min_idle: Duration,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
    /// Attach only an empty program to inet_sock_set_state (the hook's own cost, for
    /// `cargo xtask bench`), or one that keeps a small flow state (`--variant`).
    #[command(hide = true)]
    HookFloor {
        #[arg(long, value_enum, default_value_t = crate::kernel::floor::Variant::Empty)]
        variant: crate::kernel::floor::Variant,
    },
    /// Benchmark the userspace pipeline on synthetic records (used by `cargo xtask bench`).
    #[command(hide = true)]
    ReplayBench {
        #[arg(long, default_value_t = 5_000_000)]
        records: u64,
    },
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Print JSON Lines (one object per record) instead of columns.
    #[arg(long, global = true)]
    pub json: bool,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Ring-buffer size: a power of two of at least 4KiB (e.g. 256KiB, 8MiB). Default: about
    /// a second of records at 25k connections/s — 32MiB where every transition is a record
    /// (states, all, top, record), 16MiB for flows, retrans, alerts and timewait, 8MiB for
    /// metrics.
    #[arg(long, global = true, value_name = "BYTES", value_parser = parse_size)]
    pub ring_size: Option<u64>,
    /// Longest time records wait in the ring buffer before they are read (1ms..10s).
    #[arg(long, global = true, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Most flows tracked at once in the kernel (~190 bytes each). At 90% full, the least
    /// recently active flows are evicted down to 80% (counted, live and in the summary);
    /// flows arriving faster than that are counted as untracked.
    #[arg(long, global = true, value_name = "N", default_value_t = 131_072)]
    pub max_flows: u32,
    /// Where the kernel keeps flows: `prealloc`, a table taking all its memory at start (~190
    /// bytes × --max-flows, 25 MB for the default: a fixed ceiling and the least kernel time
    /// per transition); `on-demand`, the same table allocating as flows appear (about 40% more
    /// kernel time per transition, for a high --max-flows that is rarely reached); `socket`,
    /// each socket's own storage (no table to fill or evict; freed with the socket;
    /// --max-flows then bounds only the sockets with SO_KEEPALIVE indexed for their probes).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value = "prealloc"
    )]
    pub flow_memory: FlowMemory,
    /// Every INTERVAL, report ESTABLISHED connections idle at least that long with no
    /// keepalive armed (as `tcptrace idle`), beside the tracing output.
    #[arg(long, global = true, value_name = "INTERVAL", value_parser = parse_duration)]
    pub idle_report: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9595), beside any mode.
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Do not trace TIME_WAIT (its timer hooks) in the flows and all modes.
    #[arg(long, global = true)]
    pub no_time_wait: bool,
    /// Do not print the summary on exit.
    #[arg(long, global = true)]
    pub no_summary: bool,
    /// Kernel BTF to read struct offsets and tracepoint prototypes from.
    #[arg(long, global = true, value_name = "PATH", default_value = VMLINUX_BTF)]
    pub btf: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// The line modes a recording renders in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportMode {
    States,
    Flows,
    Retrans,
    Alerts,
    All,
    Timewait,
}

/// When the kernel's flow table takes its memory (`--flow-memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowMemory {
    /// All of it at start.
    Prealloc,
    /// As flows appear.
    OnDemand,
    /// In each socket's own storage (`BPF_MAP_TYPE_SK_STORAGE`).
    Socket,
}

/// What the user asked for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Command,
    pub json: bool,
    pub duration: Option<Duration>,
    pub ring_size: u32,
    pub poll_interval: Duration,
    pub max_flows: u32,
    pub flow_memory: FlowMemory,
    pub summary: bool,
    pub btf: PathBuf,
    pub idle_report: Option<Duration>,
    pub no_time_wait: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub filter: FilterSpec,
    /// `tcptrace record`: where the raw records go.
    pub record: Option<crate::events::recording::RecordOptions>,
}

impl Config {
    pub fn shows_transitions(&self) -> bool {
        matches!(self.mode, Command::States | Command::All)
    }
    pub fn shows_flows(&self) -> bool {
        matches!(self.mode, Command::Flows | Command::All)
    }
    pub fn shows_retransmits(&self) -> bool {
        matches!(self.mode, Command::Retrans | Command::All)
    }
    pub fn shows_alerts(&self) -> bool {
        matches!(self.mode, Command::Alerts | Command::All)
    }
    fn records(&self) -> bool {
        matches!(self.mode, Command::Record { .. })
    }
    /// The kernel sends a record per transition (printed, recorded, or counted per
    /// destination).
    pub fn emits_transitions(&self) -> bool {
        self.shows_transitions() || self.mode == Command::Top || self.records()
    }
    /// The ring buffer when `--ring-size` is not given: about a second of this mode's records
    /// at 25k connections/s (a record per transition is ~13 records per connection, ~120
    /// bytes each; flows ~5; metrics ~3 of 64 bytes), so that a reader held off the CPU for a
    /// moment by a saturating load loses nothing.
    fn default_ring_size(&self) -> u64 {
        if self.emits_transitions() {
            32 << 20
        } else if self.mode == Command::Metrics {
            8 << 20
        } else {
            16 << 20
        }
    }
    /// The kernel sends a record per retransmitted segment.
    pub fn emits_retransmits(&self) -> bool {
        self.shows_retransmits()
            || self.shows_alerts()
            || self.mode == Command::Top
            || self.records()
    }
    /// Which flows the kernel sends a record for when they close. `tcptrace metrics` counts
    /// closes, durations and retransmits in the kernel, and needs only the flows whose
    /// TIME_WAIT it follows; every other mode prints, records or aggregates every flow.
    pub fn flow_ends(&self) -> u8 {
        use tcptrace_common::emit_flow_ends;
        match self.mode {
            Command::Metrics if self.traces_time_wait() => emit_flow_ends::TIME_WAIT,
            Command::Metrics => emit_flow_ends::NONE,
            _ => emit_flow_ends::ALL,
        }
    }
    /// Keepalive probes are traced (timer hooks around the keepalive timer).
    pub fn traces_keepalive_probes(&self) -> bool {
        self.shows_alerts() || self.records()
    }
    /// TIME_WAIT is traced (timer hooks) where flows or gauges are shown.
    pub fn traces_time_wait(&self) -> bool {
        match self.mode {
            Command::Timewait { .. } => true,
            Command::Flows
            | Command::All
            | Command::Metrics
            | Command::Top
            | Command::Record { .. } => !self.no_time_wait,
            _ => false,
        }
    }
    /// How often TIME_WAIT gauges are printed, in the timewait mode.
    pub fn gauge_interval(&self) -> Option<Duration> {
        match self.mode {
            Command::Timewait { interval } => Some(interval),
            _ => None,
        }
    }
}

const PAGE: u64 = 4096;
const MAX_RING: u64 = 1 << 30;

impl TryFrom<Cli> for Config {
    type Error = anyhow::Error;
    fn try_from(cli: Cli) -> Result<Config> {
        let c = cli.common;
        if let Some(size) = c.ring_size {
            if !size.is_power_of_two() || !(PAGE..=MAX_RING).contains(&size) {
                bail!("--ring-size {size} is not a power of two between 4KiB and 1GiB");
            }
        }
        if c.poll_interval < Duration::from_millis(1) || c.poll_interval > Duration::from_secs(10) {
            bail!("--poll-interval must be between 1ms and 10s");
        }
        if c.max_flows == 0 || c.max_flows > 1 << 24 {
            bail!("--max-flows must be between 1 and 16777216");
        }
        if c.idle_report.is_some_and(|d| d < Duration::from_secs(1)) {
            bail!("--idle-report must be at least 1s");
        }
        if let Some(Command::Timewait { interval }) = cli.command {
            if interval < Duration::from_millis(100) {
                bail!("--interval must be at least 100ms");
            }
            if c.no_time_wait {
                bail!("--no-time-wait contradicts the timewait mode");
            }
        }
        if cli.command == Some(Command::Top) && c.json {
            bail!("top draws a screen; --json is for the line modes (flows, alerts, timewait, …)");
        }
        if cli.command == Some(Command::Metrics) && c.metrics.is_none() {
            bail!("the metrics mode needs --metrics ADDR (e.g. --metrics 127.0.0.1:9595)");
        }
        if c.duration == Some(Duration::ZERO) {
            bail!("--duration must be longer than zero");
        }
        let record = match &cli.command {
            Some(Command::Record {
                output,
                max_size,
                max_files,
            }) => Some(record_options(output, *max_size, *max_files, c.json)?),
            _ => None,
        };
        let mut config = Config {
            mode: cli.command.unwrap_or(Command::States),
            json: c.json,
            duration: c.duration,
            ring_size: 0,
            poll_interval: c.poll_interval,
            max_flows: c.max_flows,
            flow_memory: c.flow_memory,
            summary: !c.no_summary,
            btf: c.btf,
            idle_report: c.idle_report,
            no_time_wait: c.no_time_wait,
            metrics: c.metrics,
            filter: FilterSpec::try_from(c.filter)?,
            record,
        };
        config.ring_size = c.ring_size.unwrap_or_else(|| config.default_ring_size()) as u32;
        Ok(config)
    }
}

/// `tcptrace report`: the flags that shape rendering are taken; those that shape tracing are
/// refused (they applied when recording).
pub fn report_config(cli: &Cli, mode: ReportMode, interval: Duration) -> Result<Config> {
    let c = &cli.common;
    if !c.filter.is_empty() {
        bail!("report renders what was recorded: give filters to `tcptrace record`");
    }
    if c.metrics.is_some() || c.idle_report.is_some() || c.duration.is_some() {
        bail!("--metrics, --idle-report and --duration apply to live tracing, not to report");
    }
    if mode == ReportMode::Timewait && interval < Duration::from_millis(100) {
        bail!("--interval must be at least 100ms");
    }
    Ok(Config::for_report(mode, interval, c.json, !c.no_summary))
}

/// Smallest rotation size: a header and a few thousand records.
const MIN_RECORDING: u64 = 1 << 20;

fn record_options(
    output: &std::path::Path,
    max_size: Option<u64>,
    max_files: u32,
    json: bool,
) -> Result<crate::events::recording::RecordOptions> {
    if json {
        bail!("record writes a binary file; --json is for `tcptrace report FILE --json`");
    }
    if output.as_os_str().is_empty() || output.is_dir() {
        bail!("-o {}: give a file to record into", output.display());
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "-o {}: the directory {} does not exist",
                output.display(),
                parent.display()
            );
        }
    }
    // Writable now, before anything is loaded (the recorder truncates it again at start).
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(output)
        .map_err(|e| anyhow::anyhow!("-o {}: cannot write there: {e}", output.display()))?;
    if max_size.is_some_and(|m| m < MIN_RECORDING) {
        bail!("--max-size must be at least 1MiB");
    }
    if max_files == 0 || max_files > 1000 {
        bail!("--max-files must be between 1 and 1000");
    }
    Ok(crate::events::recording::RecordOptions {
        path: output.to_path_buf(),
        max_size,
        max_files,
    })
}

impl Config {
    /// What `tcptrace report` renders with: the mode asked for, nothing traced.
    pub fn for_report(mode: ReportMode, interval: Duration, json: bool, summary: bool) -> Config {
        let mode = match mode {
            ReportMode::States => Command::States,
            ReportMode::Flows => Command::Flows,
            ReportMode::Retrans => Command::Retrans,
            ReportMode::Alerts => Command::Alerts,
            ReportMode::All => Command::All,
            ReportMode::Timewait => Command::Timewait { interval },
        };
        Config {
            mode,
            json,
            duration: None,
            ring_size: PAGE as u32,
            poll_interval: Duration::from_millis(100),
            max_flows: 1,
            flow_memory: FlowMemory::OnDemand,
            summary,
            btf: PathBuf::new(),
            idle_report: None,
            no_time_wait: false,
            metrics: None,
            filter: FilterSpec::default(),
            record: None,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

/// Sizes like `4096`, `256K`, `256KiB`, `8M`, `8MiB`, `1G` (binary multiples).
fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 256KiB, 8MiB)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit (use KiB, MiB or GiB)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Shell completions for `shell`, generated from the command-line definition.
pub fn completions(shell: clap_complete::Shell, out: &mut impl std::io::Write) {
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "tcptrace",
        out,
    );
}

/// The man page (roff), generated from the command-line definition.
pub fn man_page(out: &mut impl std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_page_come_from_the_definition() {
        let mut bash = Vec::new();
        completions(clap_complete::Shell::Bash, &mut bash);
        let bash = String::from_utf8(bash).expect("utf-8");
        assert!(
            bash.contains("tcptrace") && bash.contains("--ring-size"),
            "{bash}"
        );
        let mut man = Vec::new();
        man_page(&mut man).expect("renders");
        let man = String::from_utf8(man).expect("utf-8");
        assert!(
            man.contains(".TH tcptrace") && man.contains("ring\\-size"),
            "{man}"
        );
    }

    fn config(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["tcptrace"];
        argv.extend_from_slice(args);
        Config::try_from(Cli::try_parse_from(argv)?)
    }

    #[test]
    fn defaults_trace_transitions() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.mode, Command::States);
        assert!(c.shows_transitions() && !c.shows_flows() && !c.shows_retransmits());
        assert_eq!(c.ring_size, 32 << 20, "a record per transition");
        assert!(c.summary && !c.json);
        assert!(c.flow_memory == FlowMemory::Prealloc && c.max_flows == 131_072);
        let c = config(&["--flow-memory", "on-demand"]).expect("valid");
        assert_eq!(c.flow_memory, FlowMemory::OnDemand);
        let c = config(&["--flow-memory", "socket"]).expect("valid");
        assert_eq!(c.flow_memory, FlowMemory::Socket);
        let e = config(&["--flow-memory", "sockets"]).expect_err("not a place");
        assert!(e.to_string().contains("socket"), "{e}");
    }

    #[test]
    fn the_default_ring_holds_about_a_second_of_the_mode_s_records() {
        // Parsing `record` checks that its file can be written (and creates it).
        let recording =
            std::env::temp_dir().join(format!("tcptrace-cli-{}.tcpt", std::process::id()));
        let recording = recording.to_str().expect("a UTF-8 temporary path");
        for (args, size) in [
            (&["record", "-o", recording][..], 32 << 20),
            (&["top"][..], 32 << 20),
            (&["all"][..], 32 << 20),
            (&["flows"][..], 16 << 20),
            (&["alerts"][..], 16 << 20),
            (&["metrics", "--metrics", "127.0.0.1:0"][..], 8 << 20),
            (
                &[
                    "metrics",
                    "--metrics",
                    "127.0.0.1:0",
                    "--ring-size",
                    "64KiB",
                ][..],
                64 << 10,
            ),
        ] {
            let c = config(args).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
            assert_eq!(c.ring_size, size, "{args:?}");
        }
        let _ = std::fs::remove_file(recording);
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let c = config(&["flows", "--json", "--duration", "2s"]).expect("valid");
        assert_eq!((c.mode, c.json), (Command::Flows, true));
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
        let c = config(&["--ring-size", "256KiB", "all"]).expect("valid");
        assert_eq!((&c.mode, c.ring_size), (&Command::All, 256 << 10));
        assert!(c.shows_transitions() && c.shows_flows() && c.shows_retransmits());
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (args, needle) in [
            (&["--ring-size", "3000"][..], "power of two"),
            (&["--ring-size", "2GiB"][..], "power of two"),
            (&["--ring-size", "8Mo"][..], "unknown unit"),
            (&["--poll-interval", "0ms"][..], "between 1ms and 10s"),
            (&["--max-flows", "0"][..], "--max-flows"),
            (&["--flow-memory", "lazy"][..], "--flow-memory"),
            (&["--duration", "0s"][..], "longer than zero"),
            (&["--duration", "soon"][..], "examples"),
            (&["timewait", "--interval", "10ms"][..], "--interval"),
            (&["timewait", "--no-time-wait"][..], "contradicts"),
            (&["metrics"][..], "--metrics ADDR"),
            (&["top", "--json"][..], "draws a screen"),
            (&["--metrics", "9595"][..], "--metrics"),
            (&["flow"][..], "unrecognized subcommand"),
            (&["-L", "99999"][..], "--local-port '99999'"),
            (
                &["flows", "--remote-addr", "10.0.0.0/40"][..],
                "--remote-addr",
            ),
            (&["-4", "-6"][..], "cannot be used with"),
        ] {
            let err = config(args).expect_err("must be refused");
            assert!(format!("{err:#}").contains(needle), "{args:?}: {err:#}");
        }
    }

    #[test]
    fn filters_take_bcc_flags_lists_and_repeats() {
        let c = config(&[
            "flows",
            "-L",
            "80,443",
            "-L",
            "8000-8100",
            "-D",
            "5432",
            "-4",
        ])
        .expect("valid");
        assert_eq!(
            c.filter.local_ports,
            vec![(80, 80), (443, 443), (8000, 8100)]
        );
        assert_eq!(c.filter.remote_ports, vec![(5432, 5432)]);
        assert_eq!(c.filter.family, Some(2));
        let me = std::process::id().to_string();
        let c = config(&["-p", &me, "--remote-addr", "127.0.0.1,::1"]).expect("valid");
        assert_eq!(c.filter.pids, vec![std::process::id()]);
        assert_eq!(c.filter.remote_addrs.len(), 2);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
