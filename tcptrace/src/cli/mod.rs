//! Command line (clap's types) → validated [`Config`] (`config.rs`).
mod config;
mod config_plan;
pub mod filter;
pub mod identity;
pub mod modes;

pub use config::{report_config, Config, FlowMemory, Mode, RecordOptions};
pub use modes::ModeKind;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    cli::{filter::FilterArgs, identity::IdentityArgs},
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
    /// One line per flow as it closes: every state with the time held, lifetime, close side,
    /// cause, bytes and RTT. A flow that closed first holds TIME_WAIT for 60 s: its line ends
    /// `TIME_WAIT …`, and the TIME_WAIT's end follows on a line of its own (--flows-at end:
    /// one line, once it ends; --no-time-wait: not followed).
    Flows,
    /// One line per retransmitted segment, with the state it happened in.
    Retrans,
    /// Only anomalies: keepalive, retransmission, SYN and user timeouts, resets, refused and
    /// aborted connections, FIN retransmits (half-open peers), keepalive probes, the
    /// 4-tuple exhaustion forecast crossing 80%, connect()/bind() failing for want of a port,
    /// listeners dropping handshakes, SYN cookies sent.
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
    /// alerts. Keys: q quit, t cycles destinations → local services → workloads, 1-9 and 0
    /// sort by a shown column, r reverse, / filter, ? or h what the columns mean.
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
        mode: ModeKind,
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
    #[cfg(feature = "bench")]
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

/// When a flow that holds TIME_WAIT is printed (`--flows-at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowsAt {
    /// As it closes; the TIME_WAIT's end on a line of its own.
    Close,
    /// Once its TIME_WAIT ends, on one line with it.
    End,
}

impl FlowsAt {
    /// Columns are read by a person as they come; JSON Lines by a program that wants one
    /// record per flow.
    pub fn default_for(json: bool) -> FlowsAt {
        match json {
            true => FlowsAt::End,
            false => FlowsAt::Close,
        }
    }
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Print JSON Lines (one object per record) instead of columns.
    #[arg(long, global = true)]
    pub json: bool,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Ring-buffer memory, shared by the rings CPUs write into (CPU n into ring n % 4): a power
    /// of two of at least 4KiB (e.g. 256KiB, 8MiB). Default: about
    /// a second of records at 25k connections/s — 32MiB where every transition is a record
    /// (states, all, top, record), 16MiB for flows, retrans, alerts and timewait, 8MiB for
    /// metrics (16MiB with --metrics-vitals or --metrics-pod-labels: every flow sent whole).
    #[arg(long, global = true, value_name = "BYTES", value_parser = parse_size)]
    pub ring_size: Option<u64>,
    /// Longest time records wait in the ring buffer before they are read (1ms..10s).
    #[arg(long, global = true, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Most flows tracked at once in the kernel (~200 bytes each). At 90% full, the least
    /// recently active flows are evicted down to 80% (counted, live and in the summary);
    /// flows arriving faster than that are counted as untracked.
    #[arg(long, global = true, value_name = "N", default_value_t = 131_072)]
    pub max_flows: u32,
    /// Where the kernel keeps flows: `prealloc`, a table taking all its memory at start (~200
    /// bytes × --max-flows, 26 MB for the default: a fixed ceiling and the least kernel time
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
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9595, or :9595 for
    /// every IPv4 address), beside any mode.
    #[arg(long, global = true, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// When a flow that closed first (and so holds TIME_WAIT for 60 s) is printed: `close`,
    /// as it closes, its path ending `TIME_WAIT …`, and the TIME_WAIT's end on a line of its
    /// own when it comes (the default in columns); `end`, once its TIME_WAIT ends, on one line
    /// with it (the default with --json: one record per flow).
    #[arg(long, global = true, value_enum, value_name = "WHEN")]
    pub flows_at: Option<FlowsAt>,
    /// Do not trace TIME_WAIT (its timer hooks) in the flows, alerts, all, top, metrics and
    /// record modes (no TIME_WAIT gauges, no exhaustion forecast).
    #[arg(long, global = true)]
    pub no_time_wait: bool,
    /// Do not trace dropped packets (the skb:kfree_skb hook, which runs on every packet the
    /// kernel frees with a reason) in the flows, alerts, all, top, metrics and record modes.
    #[arg(long, global = true)]
    pub no_drops: bool,
    /// Also count the frees that are rarely drops: NOT_SPECIFIED (mostly segments consumed
    /// at teardown) and QUEUE_PURGE (a closed socket's queues, about one per connection).
    #[arg(long, global = true)]
    pub all_drop_reasons: bool,
    /// Drop records one CPU sends per second at most (0: no limit); drops beyond are counted
    /// by reason, not sent (a flood into a DROP rule must not crowd transitions out).
    #[arg(long, global = true, value_name = "N", default_value_t = 10_000)]
    pub drop_records_per_s: u64,
    /// In `tcptrace metrics`: the RTT at close and bytes per local service and destination
    /// too (the kernel then sends every flow's end; other modes decode every flow anyway).
    #[arg(long, global = true)]
    pub metrics_vitals: bool,
    /// Do not print the summary on exit.
    #[arg(long, global = true)]
    pub no_summary: bool,
    /// Kernel BTF to read struct offsets and tracepoint prototypes from.
    #[arg(long, global = true, value_name = "PATH", default_value = VMLINUX_BTF)]
    pub btf: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

/// A size in the largest binary unit it is a whole number of (`3MiB`, `4097` bytes as `4097`).
pub(crate) fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `--metrics`' address: `HOST:PORT`, or `:PORT` for every IPv4 address (the exporters'
/// convention).
pub(crate) fn parse_listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    full.parse().map_err(|_| {
        format!("'{text}' is not an address to listen on (examples: 127.0.0.1:9595, :9595)")
    })
}

/// Sizes like `4096`, `256K`, `256KiB`, `8M`, `8MiB`, `1G` (binary multiples).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
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
