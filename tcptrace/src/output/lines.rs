//! The line modes' consumer: columns or JSON Lines on stdout (states, flows, retrans,
//! alerts, all, timewait, and `report`), the summary at the end: on stderr in columns, a
//! `summary` record in JSON Lines. Once stdout is closed it prints nothing more.
use std::io::{self, BufWriter, IsTerminal as _, Write};

use anyhow::{Context as _, Result};

use crate::{
    cli::{identity::ColumnWhen, Config, FlowsAt},
    host::clock::Clock,
    output::consumer::{is_broken_pipe, Consumer, End, Seen, Wants},
    output::{JsonPrinter, Printer, TextPrinter},
    state::timewait::Finished,
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
    /// Flows are printed as they close, a TIME_WAIT's end on a line of its own
    /// (`--flows-at close`), rather than once their TIME_WAIT ends.
    flows_at_close: bool,
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
                TextPrinter::new(out, clock, config.row().mixed_lines).with_workload_column(shown),
            )
        };
        LinePrinter {
            printer,
            transitions: config.shows_transitions(),
            flows: config.shows_flows(),
            retransmits: config.shows_retransmits(),
            drops: config.row().mixed_lines,
            alerts: config.shows_alerts(),
            // The gauges' forecast (timewait), and its alerts where alerts are shown.
            forecast: config.gauge_interval().is_some() || config.shows_alerts(),
            flows_at_close: config.flows_at == FlowsAt::Close,
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

    fn seen(&mut self, event: Seen) -> io::Result<()> {
        if self.flows && self.flows_at_close {
            match event {
                Seen::FlowClosed { flow, time_wait } => {
                    return self.write(|p| p.flow_closed(flow, time_wait));
                }
                // Printed at its close: only a TIME_WAIT's end is left to say.
                Seen::Finished(Finished::Flow(flow)) => {
                    return self.write(|p| p.time_wait_ended(flow));
                }
                _ => {}
            }
        }
        let shown = match event {
            Seen::Transition(_) => self.transitions,
            Seen::Finished(_) => self.flows,
            Seen::PacketDrop(_) => self.drops,
            Seen::Retransmit(_) => self.retransmits,
            Seen::Alert(_) => self.alerts,
            Seen::TimeWaitGauges { .. }
            | Seen::IdleReport { .. }
            | Seen::Lost { .. }
            | Seen::Evicted { .. } => true,
            Seen::Raw(_)
            | Seen::FlowClosed { .. }
            | Seen::PortFailure(_)
            | Seen::TimeWaitEntered { .. }
            | Seen::TimeWaitOverflowed { .. } => false,
        };
        match shown {
            true => self.write(|p| p.render(event)),
            false => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write(Printer::flush)
    }

    /// The summary: columns say it on stderr (stdout carries the lines only, `flows > file`
    /// gets the flows and nothing else); JSON Lines end with a `summary` record on stdout,
    /// or say it in words on stderr once stdout is closed.
    fn finish(&mut self, end: &End) -> Result<()> {
        let on_stderr = self.closed || matches!(self.printer, Printer::Text(_));
        if on_stderr {
            if !self.closed {
                match self.write(Printer::flush) {
                    Err(e) if is_broken_pipe(&e) => {}
                    other => other.context("writing output")?,
                }
            }
            let Some(summary) = end.summary else {
                return Ok(());
            };
            let mut stderr = TextPrinter::new(io::stderr().lock(), self.printer.clock(), false);
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
    let seen = Seen::IdleReport {
        now_ns: Clock::ktime_now(),
        report: &report,
    };
    match lines.seen(seen).and_then(|()| lines.flush()) {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("writing output"),
        _ => Ok(()),
    }
}
