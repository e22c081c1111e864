//! The line modes' consumer: columns or JSON Lines on stdout (states, flows, retrans,
//! alerts, all, timewait, and `report`), the summary at the end. Once stdout is closed it
//! prints nothing more, and its summary goes to stderr.
use std::io::{self, BufWriter, IsTerminal as _, Write};

use anyhow::{Context as _, Result};

use crate::{
    cli::{identity::ColumnWhen, Config, Mode},
    host::clock::Clock,
    model::{
        counters::KernelCounters,
        events::{Retransmit, Transition},
        vitals::PacketDrop,
    },
    output::consumer::{is_broken_pipe, Consumer, End, Wants},
    output::{JsonPrinter, Printer, Render, TextPrinter},
    state::{alert::Alert, forecast::TimeWaitView, idle::IdleReport, timewait::Finished},
};

/// Prints what its mode shows, as it arrives.
pub struct LinePrinter<W: Write> {
    printer: Printer<W>,
    transitions: bool,
    flows: bool,
    retransmits: bool,
    /// Dropped packets on lines of their own (`all`; `flows` shows them on the flow's line).
    drops: bool,
    alerts: bool,
    forecast: bool,
    /// Standard output was closed: nothing more is written.
    closed: bool,
}

impl LinePrinter<BufWriter<io::StdoutLock<'static>>> {
    /// On stdout, with a 64 KiB buffer.
    pub fn stdout(config: &Config, clock: Clock) -> Self {
        let out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
        let workload_column = match config.identity.column {
            ColumnWhen::Always => true,
            ColumnWhen::Never => false,
            ColumnWhen::Auto => stdout_columns().is_some_and(|c| c >= WIDE_TERMINAL),
        };
        LinePrinter::with_workload_column(out, config, clock, workload_column)
    }
}

/// Terminals at least this wide get the WORKLOAD column by default.
const WIDE_TERMINAL: u16 = 160;

/// The width of the terminal on stdout; `None` when stdout is not a terminal.
fn stdout_columns() -> Option<u16> {
    if !io::stdout().is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ fills a winsize we own; a failure leaves it zeroed.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above; stdout's descriptor stays open.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(size.ws_col)
}

impl<W: Write> LinePrinter<W> {
    pub fn with_workload_column(out: W, config: &Config, clock: Clock, shown: bool) -> Self {
        let printer = if config.json {
            Printer::Json(JsonPrinter::new(out, clock))
        } else {
            Printer::Text(
                TextPrinter::new(out, clock, config.mode == Mode::All).with_workload_column(shown),
            )
        };
        LinePrinter {
            printer,
            transitions: config.shows_transitions(),
            flows: config.shows_flows(),
            retransmits: config.shows_retransmits(),
            drops: config.mode == Mode::All,
            alerts: config.shows_alerts(),
            // The gauges' forecast (timewait), and its alerts where alerts are shown.
            forecast: config.gauge_interval().is_some() || config.shows_alerts(),
            closed: false,
        }
    }

    /// Writes unless stdout is closed; the first broken pipe is returned (the session
    /// stops), later writes are skipped.
    fn write(&mut self, f: impl FnOnce(&mut Printer<W>) -> io::Result<()>) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = f(&mut self.printer);
        if result.as_ref().is_err_and(is_broken_pipe) {
            self.closed = true;
        }
        result
    }
}

impl<W: Write> Consumer for LinePrinter<W> {
    type Input = std::convert::Infallible;

    fn wants(&self) -> Wants {
        Wants {
            transitions: self.transitions,
            flows: self.flows,
            alerts: self.alerts,
            forecast: self.forecast,
            kernel_log: true,
            ..Wants::default()
        }
    }

    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        match self.transitions {
            true => self.write(|p| p.transition(t)),
            false => Ok(()),
        }
    }

    fn finished(&mut self, f: &Finished) -> io::Result<()> {
        if !self.flows {
            return Ok(());
        }
        match f {
            Finished::Flow(f) => self.write(|p| p.flow(f)),
            Finished::Orphan(t) => self.write(|p| p.time_wait(t)),
        }
    }

    fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()> {
        match self.drops {
            true => self.write(|p| p.packet_drop(d)),
            false => Ok(()),
        }
    }

    fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        match self.retransmits {
            true => self.write(|p| p.retransmit(r)),
            false => Ok(()),
        }
    }

    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        match self.alerts {
            true => self.write(|p| p.alert(a)),
            false => Ok(()),
        }
    }

    fn time_wait_gauges(&mut self, now_ns: u64, view: &TimeWaitView) -> io::Result<()> {
        self.write(|p| p.time_wait_gauges(now_ns, view))
    }

    fn idle_report(&mut self, now_ns: u64, report: &IdleReport) -> io::Result<()> {
        self.write(|p| p.idle_report(now_ns, report))
    }

    fn lost(&mut self, now_ns: u64, newly: u64, kernel: &KernelCounters) -> io::Result<()> {
        self.write(|p| p.lost(now_ns, newly, kernel))
    }

    fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()> {
        self.write(|p| p.evicted(now_ns, newly, total))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write(Render::flush)
    }

    /// The summary on stdout, or on stderr once stdout is closed.
    fn finish(&mut self, end: &End) -> Result<()> {
        if self.closed {
            let Some(summary) = end.summary else {
                return Ok(());
            };
            let clock = match &self.printer {
                Printer::Text(p) => p.clock(),
                Printer::Json(p) => p.clock(),
            };
            let mut stderr = TextPrinter::new(io::stderr().lock(), clock, false);
            stderr.summary(summary)?;
            return stderr.flush().context("writing the summary");
        }
        let written = self.write(|p| {
            if let Some(summary) = end.summary {
                p.summary(summary)?;
            }
            p.flush()
        });
        match written {
            Err(e) if is_broken_pipe(&e) => Ok(()),
            other => other.context("writing output"),
        }
    }
}

/// `tcptrace idle`: one report, no eBPF.
pub fn idle_once(config: &Config, min_idle: std::time::Duration) -> Result<()> {
    let mut identities =
        crate::host::identity_resolver::IdentityResolver::new(config.identity.sources.clone());
    let report = crate::state::idle::report(min_idle, &config.filter, &mut identities)?;
    let mut lines = LinePrinter::stdout(config, Clock::now());
    match lines
        .idle_report(Clock::ktime_now(), &report)
        .and_then(|()| lines.flush())
    {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("writing output"),
        _ => Ok(()),
    }
}
