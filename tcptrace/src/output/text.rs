//! Aligned columns. Address columns start wide enough for any IPv4 endpoint and only ever
//! grow; when one grows, the header is printed again so that every line stays under it.
use std::{
    fmt::{self, Write as _},
    io::{self, Write},
};

use super::columns::{self, comm, held, pid};
use crate::{
    host::clock::{human_duration, Clock},
    model::cause::CloseCause,
    model::counters::KernelCounters,
    model::events::{FinishedFlow, Retransmit, Transition},
    model::tcp::{CloseSide, FlowAddrs},
    model::vitals::{HumanBytes, PacketDrop},
    model::workload::Workload,
    state::alert::{write_path, Alert, PathEnd},
    state::idle::IdleReport,
    state::summary::Summary,
    text::digits::number,
    text::stackstr::StackStr,
};

/// An endpoint formatted on the stack.
type Endpoints = StackStr<56>;

/// "255.255.255.255:65535"
const MIN_ADDR_WIDTH: usize = 21;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    State,
    Flow,
    Rtx,
    Drop,
    Alert,
}

pub struct TextPrinter<W: Write> {
    out: W,
    clock: Clock,
    local_width: usize,
    remote_width: usize,
    /// The kind whose header is in force; `None` forces a header before the next line.
    header: Option<Kind>,
    /// Several kinds share the output: lines start with their kind and no header is printed.
    tagged: bool,
    /// The line being formatted: padding and small pieces go into it, and the line reaches
    /// the writer in one piece.
    line: String,
    /// The WORKLOAD column's width, when it is shown (it only ever grows, as the addresses').
    workload_width: Option<usize>,
}

/// The WORKLOAD column's first width ("cgroup:" and a 10-digit id).
const MIN_WORKLOAD_WIDTH: usize = 18;
/// Its widest: longer labels are cut (JSON has every part in full).
const MAX_WORKLOAD_WIDTH: usize = 60;

/// A `Display` impl failed while a line was formatted.
fn fmt_failed(_: fmt::Error) -> io::Error {
    io::Error::other("formatting an output line failed")
}

impl<W: Write> TextPrinter<W> {
    /// The clock its times are read with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn new(out: W, clock: Clock, tagged: bool) -> Self {
        TextPrinter {
            out,
            clock,
            local_width: MIN_ADDR_WIDTH,
            remote_width: MIN_ADDR_WIDTH,
            header: None,
            tagged,
            line: String::with_capacity(256),
            workload_width: None,
        }
    }

    /// With the WORKLOAD column (namespace/pod/container, a unit, or the cgroup id).
    pub fn with_workload_column(mut self, shown: bool) -> Self {
        self.workload_width = shown.then_some(MIN_WORKLOAD_WIDTH);
        self
    }

    /// The workload's label for its column (`-` when unknown), widening the column if needed.
    fn workload_label(&mut self, workload: Option<&Workload>) -> Option<String> {
        let width = self.workload_width?;
        let mut label = workload
            .and_then(Workload::label)
            .unwrap_or_else(|| "-".into());
        if label.chars().count() > MAX_WORKLOAD_WIDTH {
            label = label.chars().take(MAX_WORKLOAD_WIDTH).collect();
        }
        let len = label.chars().count();
        if len > width {
            self.workload_width = Some(len);
            self.header = None;
        }
        Some(label)
    }

    /// The WORKLOAD cell and its separator, when the column is shown.
    fn push_workload(&mut self, label: &Option<String>) {
        if let (Some(label), Some(width)) = (label, self.workload_width) {
            columns::left(&mut self.line, label, width);
            self.line.push(' ');
        }
    }

    /// The WORKLOAD cell and its separator as text (empty without the column).
    fn workload_cell(&self, label: &Option<String>) -> String {
        match (label, self.workload_width) {
            (Some(label), Some(width)) => format!("{label:<width$} "),
            _ => String::new(),
        }
    }

    /// The WORKLOAD header cell, when the column is shown.
    fn workload_header(&self) -> String {
        match self.workload_width {
            Some(width) => format!("{:<width$} ", "WORKLOAD"),
            None => String::new(),
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Widens the address columns for `addrs` and prints the header for `kind` if needed;
    /// returns the endpoints, formatted once, for the line.
    fn prepare(
        &mut self,
        kind: Kind,
        addrs: &FlowAddrs,
        workload: Option<&Workload>,
    ) -> io::Result<(Endpoints, Endpoints, Option<String>)> {
        let label = self.workload_label(workload);
        let (local, remote) = (addrs.local.text(), addrs.remote.text());
        let (lw, rw) = (local.as_str().len(), remote.as_str().len());
        if lw > self.local_width || rw > self.remote_width {
            self.local_width = self.local_width.max(lw);
            self.remote_width = self.remote_width.max(rw);
            self.header = None;
        }
        self.write_header(kind)?;
        Ok((local, remote, label))
    }

    /// The tag (mixed kinds) or, when needed, the header for `kind`.
    fn write_header(&mut self, kind: Kind) -> io::Result<()> {
        if self.tagged {
            let tag = match kind {
                Kind::State => "state",
                Kind::Flow => "flow ",
                Kind::Rtx => "rtx  ",
                Kind::Drop => "drop ",
                Kind::Alert => "alert",
            };
            return write!(self.out, "{tag} ");
        }
        if self.header == Some(kind) {
            return Ok(());
        }
        self.header = Some(kind);
        let (lw, rw) = (self.local_width, self.remote_width);
        let wl = self.workload_header();
        match kind {
            Kind::State => writeln!(
                self.out,
                "{:<15} {:<16} {:>7}  {wl}{:<lw$} {:<rw$} {:>11}    {:<11} {:>8}",
                "TIME", "COMM", "PID", "LOCAL", "REMOTE", "OLD", "NEW", "OLD_HELD"
            ),
            Kind::Flow => writeln!(
                self.out,
                "{:<15} {:<16} {:>7}  {wl}{:<lw$} > {:<rw$}  LIFECYCLE",
                "TIME", "COMM", "PID", "LOCAL", "REMOTE"
            ),
            Kind::Rtx => writeln!(
                self.out,
                "{:<15} {:<16} {:>7}  {wl}{:<lw$} {:<rw$} {:<11} {:>4}",
                "TIME", "COMM", "PID", "LOCAL", "REMOTE", "STATE", "ERR"
            ),
            Kind::Drop => writeln!(
                self.out,
                "{:<15} {:<lw$} > {:<rw$} {:<11} REASON",
                "TIME", "SOURCE", "DESTINATION", "TCP_FLAGS"
            ),
            Kind::Alert => writeln!(
                self.out,
                "{:<15} {:<17} {:<16} {:>7}  {wl}{:<lw$} > {:<rw$}  DETAIL",
                "TIME", "ALERT", "COMM", "PID", "LOCAL", "REMOTE"
            ),
        }
    }
}

/// Destinations listed in the TIME_WAIT gauges, busiest first; the rest are summed on a line.
pub(super) const DESTINATIONS_SHOWN: usize = 20;

/// One method per line kind; `render` (from `printer_render!`) picks the one for each event.
impl<W: Write> TextPrinter<W> {
    pub fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let (local, remote, workload) = self.prepare(Kind::State, &t.addrs, Some(&t.workload))?;
        // "{:<15} {:<16} {:>7}  {:<lw$} {:<rw$} {:>11} -> {:<11} {:>8}", padded by hand.
        let (lw, rw) = (self.local_width, self.remote_width);
        self.line.clear();
        columns::left(
            &mut self.line,
            self.clock.time_of_day(t.ts_ns).text().as_str(),
            15,
        );
        self.line.push(' ');
        columns::left(&mut self.line, comm(&t.owner), 16);
        self.line.push(' ');
        columns::right(&mut self.line, pid(&t.owner).text().as_str(), 7);
        self.line.push_str("  ");
        self.push_workload(&workload);
        let line = &mut self.line;
        columns::left(line, local.as_str(), lw);
        line.push(' ');
        columns::left(line, remote.as_str(), rw);
        line.push(' ');
        columns::right(line, t.old.name(), 11);
        line.push_str(" -> ");
        columns::left(line, t.new.name(), 11);
        line.push(' ');
        columns::right(line, held(t.old_held_ns).text().as_str(), 8);
        line.push('\n');
        self.out.write_all(line.as_bytes())
    }

    /// A flow once it is over, its TIME_WAIT included.
    pub fn flow(&mut self, f: &FinishedFlow) -> io::Result<()> {
        let end = match &f.time_wait {
            Some(tw) => PathEnd::TimeWait(tw),
            None => PathEnd::AsIs,
        };
        self.flow_line(f, end)
    }

    /// A flow as it closes (`--flows-at close`): one that entered TIME_WAIT ends its path
    /// with `TIME_WAIT …`, and its end comes on a line of its own.
    pub fn flow_closed(&mut self, f: &FinishedFlow, time_wait_follows: bool) -> io::Result<()> {
        let end = match time_wait_follows {
            true => PathEnd::TimeWaitBegun,
            false => PathEnd::AsIs,
        };
        self.flow_line(f, end)
    }

    fn flow_line(&mut self, f: &FinishedFlow, end: PathEnd) -> io::Result<()> {
        let (local, remote, workload) =
            self.prepare(Kind::Flow, &f.addrs, Some(&f.lifecycle.workload))?;
        let (lw, rw) = (self.local_width, self.remote_width);
        let owner = &f.lifecycle.owner;
        // "{:<15} {:<16} {:>7}  {:<lw$} > {:<rw$} ", padded by hand.
        self.line.clear();
        columns::left(
            &mut self.line,
            self.clock.time_of_day(f.ts_ns).text().as_str(),
            15,
        );
        self.line.push(' ');
        columns::left(&mut self.line, comm(owner), 16);
        self.line.push(' ');
        columns::right(&mut self.line, pid(owner).text().as_str(), 7);
        self.line.push_str("  ");
        self.push_workload(&workload);
        let line = &mut self.line;
        columns::left(line, local.as_str(), lw);
        line.push_str(" > ");
        columns::left(line, remote.as_str(), rw);
        line.push_str("  ");
        write_path(line, &f.lifecycle, end).map_err(fmt_failed)?;
        line.push_str("  life ");
        line.push_str(held(f.life_ns()).text().as_str());
        line.push(' ');
        line.push_str(f.close.name());
        line.push_str(" cause=");
        line.push_str(f.cause.name());
        match (&f.evidence.reset_sent, f.cause) {
            (_, CloseCause::KeepaliveTimeout) => {
                write!(self.line, " (probes {})", f.evidence.probes).map_err(fmt_failed)?
            }
            (Some(reason), CloseCause::ResetSent) => {
                write!(self.line, " ({reason})").map_err(fmt_failed)?
            }
            _ => {}
        }
        self.line.push_str(" rtx=");
        number(&mut self.line, f.lifecycle.retransmits).map_err(fmt_failed)?;
        // A listener carries no bytes of its own.
        if let Some(v) = f.vitals.as_ref().filter(|_| f.close != CloseSide::Listener) {
            let (tx, rx) = (HumanBytes(v.bytes_acked), HumanBytes(v.bytes_received));
            write!(self.line, " tx={tx} rx={rx} rtt=").map_err(fmt_failed)?;
            match v.srtt_ns {
                Some(ns) => self.line.push_str(held(Some(ns)).text().as_str()),
                None => self.line.push('-'),
            }
        }
        if !f.drops.is_empty() {
            write!(self.line, " drops={}", f.drops).map_err(fmt_failed)?;
        }
        if let Some(nat) = &f.translated {
            write!(self.line, " via {} > {}", nat.local, nat.remote).map_err(fmt_failed)?;
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    pub fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()> {
        let (source, destination, _) = self.prepare(Kind::Drop, &d.addrs, None)?;
        let (lw, rw) = (self.local_width, self.remote_width);
        write!(
            self.out,
            "{:<15} {:<lw$} > {:<rw$} {:<11} {}",
            self.clock.time_of_day(d.ts_ns),
            source.as_str(),
            destination.as_str(),
            d.flags_text(),
            d.reason,
        )?;
        match d.conntrack.filter(|ct| ct.translates()) {
            Some(ct) => writeln!(
                self.out,
                "  conntrack {} > {} as {} > {}",
                ct.original.local,
                ct.original.remote,
                ct.translated().local,
                ct.translated().remote
            ),
            None => writeln!(self.out),
        }
    }

    pub fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        let (local, remote, workload) = self.prepare(Kind::Rtx, &r.addrs, Some(&r.workload))?;
        let (lw, rw) = (self.local_width, self.remote_width);
        let err = r.err.map_or("-".into(), |e| e.to_string());
        let wl = self.workload_cell(&workload);
        writeln!(
            self.out,
            "{:<15} {:<16} {:>7}  {wl}{:<lw$} {:<rw$} {:<11} {:>4}",
            self.clock.time_of_day(r.ts_ns),
            comm(&r.owner),
            pid(&r.owner),
            local.as_str(),
            remote.as_str(),
            r.state,
            err,
        )
    }

    pub fn alert(&mut self, a: &Alert) -> io::Result<()> {
        let (local, remote, workload) = self.prepare(Kind::Alert, a.addrs(), a.workload())?;
        let (lw, rw) = (self.local_width, self.remote_width);
        let wl = self.workload_cell(&workload);
        writeln!(
            self.out,
            "{:<15} {:<17} {:<16} {:>7}  {wl}{:<lw$} > {:<rw$}  {}",
            self.clock.time_of_day(a.ts_ns()),
            a.kind(),
            comm(a.owner()),
            pid(a.owner()),
            local.as_str(),
            remote.as_str(),
            a.detail(),
        )
    }

    pub fn idle_report(&mut self, now_ns: u64, r: &IdleReport) -> io::Result<()> {
        // A block of its own: the next tracing line prints its header again.
        self.header = None;
        let o = &mut self.out;
        writeln!(
            o,
            "--- idle report {}: {} of {} ESTABLISHED connections idle >= {} with no keepalive ---",
            self.clock.time_of_day(now_ns),
            r.total(),
            r.scanned,
            human_duration(r.min_idle.as_nanos() as u64)
        )?;
        for g in &r.groups {
            let max = g.sockets.first().map_or(0, |s| s.idle.as_nanos() as u64);
            let who = g
                .workload
                .describe()
                .map_or(String::new(), |who| format!(" ({who})"));
            writeln!(
                o,
                "{:>7} {:<16} {:>6} connections, idle up to {}{who}",
                pid(&g.owner),
                comm(&g.owner),
                g.sockets.len(),
                human_duration(max)
            )?;
            for s in &g.sockets {
                writeln!(
                    o,
                    "          {} > {}  idle {}",
                    s.addrs.local,
                    s.addrs.remote,
                    human_duration(s.idle.as_nanos() as u64)
                )?;
            }
        }
        Ok(())
    }

    /// Lost records are reported on stderr by the pipeline; columns carry data only.
    pub fn lost(
        &mut self,
        _now_ns: u64,
        _newly_lost: u64,
        _kernel: &KernelCounters,
    ) -> io::Result<()> {
        Ok(())
    }

    // Reported on stderr by the pipeline: stdout's columns carry records only.
    pub fn evicted(&mut self, _now_ns: u64, _newly: u64, _total: u64) -> io::Result<()> {
        Ok(())
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        super::text_summary::write_summary(&mut self.out, s)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[path = "text_time_wait.rs"]
mod time_wait;

#[cfg(test)]
#[path = "text_tests.rs"]
mod tests;

super::printer_render!(TextPrinter);
