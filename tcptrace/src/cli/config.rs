//! The validated configuration: what the user asked for, checked, with the mode as a type
//! of its own (not clap's command enum).
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use super::{identity::IdentityConfig, modes::ModeKind, Cli, Command, FlowsAt};
pub use crate::kernel::plan::FlowMemory;
use crate::model::filter::FilterSpec;

/// What tcptrace does this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One line per transition.
    States,
    Flows,
    Retrans,
    Alerts,
    All,
    /// TIME_WAIT gauges every `interval`.
    Timewait {
        interval: Duration,
    },
    Top,
    /// The raw records into a file.
    Record(RecordOptions),
    /// Headless: the metrics endpoint only.
    Metrics,
    /// One report of idle connections, no eBPF.
    Idle {
        min_idle: Duration,
    },
}

impl Mode {
    /// The mode without its options: its row in the table of modes.
    pub fn kind(&self) -> ModeKind {
        match self {
            Mode::States => ModeKind::States,
            Mode::Flows => ModeKind::Flows,
            Mode::Retrans => ModeKind::Retrans,
            Mode::Alerts => ModeKind::Alerts,
            Mode::All => ModeKind::All,
            Mode::Timewait { .. } => ModeKind::Timewait,
            Mode::Top => ModeKind::Top,
            Mode::Record(_) => ModeKind::Record,
            Mode::Metrics => ModeKind::Metrics,
            Mode::Idle { .. } => ModeKind::Idle,
        }
    }
}

/// Where and how much `tcptrace record` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOptions {
    pub path: PathBuf,
    /// Rotate when a file reaches this size.
    pub max_size: Option<u64>,
    /// Files kept in a rotation (FILE, FILE.1, …).
    pub max_files: u32,
}

/// What the user asked for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
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
    /// When a flow holding TIME_WAIT is printed.
    pub flows_at: FlowsAt,
    pub no_drops: bool,
    pub all_drop_reasons: bool,
    pub drop_records_per_s: u64,
    pub metrics_vitals: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub filter: FilterSpec,
    /// Where identities (container, pod, unit) are read from and how they are shown.
    pub identity: IdentityConfig,
}

const PAGE: u64 = 4096;
const MAX_RING: u64 = 1 << 30;

impl TryFrom<Cli> for Config {
    type Error = anyhow::Error;
    fn try_from(cli: Cli) -> Result<Config> {
        let c = cli.common;
        if let Some(size) = c.ring_size {
            if !size.is_power_of_two() || !(PAGE..=MAX_RING).contains(&size) {
                bail!(
                    "--ring-size {} is not a power of two between 4KiB and 1GiB",
                    super::human_size(size)
                );
            }
        }
        if c.metrics_vitals && c.metrics.is_none() {
            bail!("--metrics-vitals needs --metrics ADDR (it adds to the metrics)");
        }
        if c.all_drop_reasons && c.no_drops {
            bail!("--all-drop-reasons contradicts --no-drops");
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
        let mode = match cli.command.unwrap_or(Command::States) {
            Command::States => Mode::States,
            Command::Flows => Mode::Flows,
            Command::Retrans => Mode::Retrans,
            Command::Alerts => Mode::Alerts,
            Command::All => Mode::All,
            Command::Timewait { interval } => {
                if interval < Duration::from_millis(100) {
                    bail!("--interval must be at least 100ms");
                }
                if c.no_time_wait {
                    bail!("--no-time-wait contradicts the timewait mode");
                }
                Mode::Timewait { interval }
            }
            Command::Top if c.json => {
                bail!(
                    "top draws a screen; --json is for the line modes (flows, alerts, timewait, …)"
                )
            }
            Command::Top => Mode::Top,
            Command::Metrics if c.metrics.is_none() => {
                bail!("the metrics mode needs --metrics ADDR (e.g. --metrics 127.0.0.1:9595)")
            }
            Command::Metrics => Mode::Metrics,
            Command::Record {
                output,
                max_size,
                max_files,
            } => Mode::Record(record_options(&output, max_size, max_files, c.json)?),
            Command::Idle { min_idle } => Mode::Idle { min_idle },
            other => bail!("{other:?} is not a tracing mode"),
        };
        if c.duration == Some(Duration::ZERO) {
            bail!("--duration must be longer than zero");
        }
        let identity = IdentityConfig::try_from(c.identity)?;
        let mut filter = FilterSpec::try_from(c.filter)?;
        filter.workloads.resolve(&identity.sources)?;
        let mut config = Config {
            mode,
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
            flows_at: c.flows_at.unwrap_or(FlowsAt::default_for(c.json)),
            no_drops: c.no_drops,
            all_drop_reasons: c.all_drop_reasons,
            drop_records_per_s: c.drop_records_per_s,
            metrics_vitals: c.metrics_vitals,
            metrics: c.metrics,
            filter,
            identity,
        };
        config.ring_size = c.ring_size.unwrap_or_else(|| config.default_ring_size()) as u32;
        Ok(config)
    }
}

/// `tcptrace report`: the flags that shape rendering are taken; those that shape tracing are
/// refused (they applied when recording).
pub fn report_config(cli: &Cli, mode: ModeKind, interval: Duration) -> Result<Config> {
    let c = &cli.common;
    let filter = c.filter.for_recording()?;
    if c.metrics.is_some() || c.idle_report.is_some() || c.duration.is_some() {
        bail!("--metrics, --idle-report and --duration apply to live tracing, not to report");
    }
    if mode == ModeKind::Timewait && interval < Duration::from_millis(100) {
        bail!("--interval must be at least 100ms");
    }
    let mut config = Config::for_report(mode, interval, c.json, !c.no_summary);
    config.filter = filter;
    if let Some(at) = c.flows_at {
        config.flows_at = at;
    }
    // Only how identities are shown: a report names the recording's, never this host's.
    config.identity.column = c.identity.identity_column;
    Ok(config)
}

/// Smallest rotation size: a header and a few thousand records.
const MIN_RECORDING: u64 = 1 << 20;

fn record_options(
    output: &std::path::Path,
    max_size: Option<u64>,
    max_files: u32,
    json: bool,
) -> Result<RecordOptions> {
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
    Ok(RecordOptions {
        path: output.to_path_buf(),
        max_size,
        max_files,
    })
}

impl Config {
    /// What `tcptrace report` renders with: the mode asked for, nothing traced.
    pub fn for_report(mode: ModeKind, interval: Duration, json: bool, summary: bool) -> Config {
        let mode = match mode {
            ModeKind::Timewait => Mode::Timewait { interval },
            ModeKind::Flows => Mode::Flows,
            ModeKind::Retrans => Mode::Retrans,
            ModeKind::Alerts => Mode::Alerts,
            ModeKind::All => Mode::All,
            // `report --mode` offers the line modes only.
            _ => Mode::States,
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
            flows_at: FlowsAt::default_for(json),
            no_drops: false,
            all_drop_reasons: false,
            drop_records_per_s: 10_000,
            metrics_vitals: false,
            metrics: None,
            filter: FilterSpec::default(),
            identity: IdentityConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{completions, man_page, parse_size};
    use clap::Parser as _;

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
    fn sizes_and_listen_addresses_are_said_as_given() {
        let e = config(&["--ring-size", "3MiB"]).expect_err("not a power of two");
        assert_eq!(
            e.to_string(),
            "--ring-size 3MiB is not a power of two between 4KiB and 1GiB"
        );
        let e = config(&["--ring-size", "3000"]).expect_err("not a power of two");
        assert!(e.to_string().starts_with("--ring-size 3000 is"), "{e}");
        let c = config(&["--metrics", ":9595", "metrics"]).expect("the exporters' convention");
        assert_eq!(c.metrics, Some("0.0.0.0:9595".parse().expect("an address")));
        let e = config(&["--metrics", "9595", "metrics"]).expect_err("a port alone");
        assert!(
            e.to_string().contains("examples: 127.0.0.1:9595, :9595"),
            "{e}"
        );
    }

    #[test]
    fn pids_come_comma_or_space_separated() {
        let c = config(&["-p", "1 2", "-p", "3,4", "flows"]).expect("pidof's output is valid");
        assert_eq!(c.filter.pids, [1, 2, 3, 4]);
        let e = config(&["-p", "", "flows"]).expect_err("no pid at all");
        assert!(e.to_string().contains("--pid ''"), "{e}");
    }

    #[test]
    fn defaults_trace_transitions() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.mode, Mode::States);
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
            // Every flow whole, as `flows` sends them.
            (
                &["metrics", "--metrics", "127.0.0.1:0", "--metrics-vitals"][..],
                16 << 20,
            ),
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
        assert_eq!((c.mode, c.json), (Mode::Flows, true));
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
        let c = config(&["--ring-size", "256KiB", "all"]).expect("valid");
        assert_eq!((&c.mode, c.ring_size), (&Mode::All, 256 << 10));
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
            (&["flows", "--metrics-vitals"][..], "needs --metrics ADDR"),
            (
                &["flows", "--no-drops", "--all-drop-reasons"][..],
                "contradicts",
            ),
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
