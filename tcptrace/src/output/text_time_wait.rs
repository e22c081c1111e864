//! The TIME_WAIT lines of the columns: a TIME_WAIT's end, and the gauges of `timewait`.
use std::io::{self, Write};

use super::{Kind, TextPrinter, DESTINATIONS_SHOWN};
use crate::{
    host::clock::HumanDuration,
    model::events::FinishedFlow,
    model::tcp::Endpoint,
    output::columns::{comm, pid},
    state::forecast::TimeWaitView,
    state::timewait::{TimeWait, TimeWaitEnd},
};

impl<W: Write> TextPrinter<W> {
    /// A TIME_WAIT whose flow was not seen, when it ends.
    pub fn time_wait(&mut self, t: &TimeWait) -> io::Result<()> {
        self.time_wait_line(t, None)
    }

    /// The end of the TIME_WAIT of a flow printed at its close, under that flow's owner (or
    /// that it had none after all: `tcp_max_tw_buckets` was full).
    pub fn time_wait_ended(&mut self, f: &FinishedFlow) -> io::Result<()> {
        match &f.time_wait {
            Some(t) => self.time_wait_line(t, Some(f)),
            None => Ok(()),
        }
    }

    /// `… > TIME_WAIT 60.0s (expired)`, at the time it ended (lines stay in time order).
    fn time_wait_line(&mut self, t: &TimeWait, flow: Option<&FinishedFlow>) -> io::Result<()> {
        let workload = flow.map(|f| &f.lifecycle.workload);
        let (local, remote, workload) = self.prepare(Kind::Flow, &t.addrs, workload)?;
        let (lw, rw) = (self.local_width, self.remote_width);
        let wl = self.workload_cell(&workload);
        // Its flow's owner; `-` for both where the flow was not seen.
        let unseen = None;
        let owner = flow.map_or(&unseen, |f| &f.lifecycle.owner);
        writeln!(
            self.out,
            "{:<15} {:<16} {:>7}  {wl}{:<lw$} > {:<rw$}  … > {}{}",
            self.clock.time_of_day(t.start_ns + t.held_ns),
            comm(owner),
            pid(owner).text().as_str(),
            local.as_str(),
            remote.as_str(),
            match t.end {
                TimeWaitEnd::Overflow => "no TIME_WAIT (tcp_max_tw_buckets full)".to_string(),
                end => format!("TIME_WAIT {} ({})", HumanDuration(t.held_ns), end.name()),
            },
            if flow.is_some() {
                ""
            } else {
                " (flow not seen)"
            }
        )
    }

    pub fn time_wait_gauges(&mut self, now_ns: u64, v: &TimeWaitView) -> io::Result<()> {
        let o = &mut self.out;
        writeln!(
            o,
            "--- TIME_WAIT {}: {} sockets ({} were there at start), {} skipped (tcp_max_tw_buckets full) ---",
            self.clock.time_of_day(now_ns),
            v.gauges.total,
            v.preexisting,
            v.overflows
        )?;
        gauge_rows(o, "DESTINATION", "destinations", &v.gauges.by_destination)?;
        if !v.gauges.by_service.is_empty() {
            // The accepting side's (a server that closed first): by the service, never by
            // each client's ephemeral port.
            gauge_rows(
                o,
                "LOCAL SERVICE (closed first)",
                "services",
                &v.gauges.by_service,
            )?;
        }
        writeln!(o, "{:<47} {:>9}", "LOCAL ADDRESS", "TIME_WAIT")?;
        for (addr, count) in &v.gauges.by_local {
            writeln!(o, "{:<47} {:>9}", addr, count)?;
        }
        for f in &v.forecasts {
            writeln!(
                o,
                "forecast netns {} {} -> {}:{}: {:.0}/s of {:.1}/s ({:.0}%) [{}]",
                f.netns_label(),
                f.laddr,
                f.raddr,
                f.rport,
                f.rate_per_s,
                f.capacity_per_s,
                f.utilization * 100.0,
                f.basis()
            )?;
            if let Some(w) = &f.warning {
                writeln!(o, "WARNING: {w}")?;
            }
        }
        self.header = None;
        Ok(())
    }
}

/// A gauge table: a header, the busiest rows, and what the rows leave out.
fn gauge_rows<W: Write>(
    o: &mut W,
    header: &str,
    plural: &str,
    rows: &[(Endpoint, (u64, f64))],
) -> io::Result<()> {
    writeln!(o, "{:<47} {:>9} {:>8}", header, "TIME_WAIT", "NEW/s")?;
    let mut rows = rows.to_vec();
    rows.sort_by_key(|d| std::cmp::Reverse(d.1 .0));
    for (endpoint, (count, rate)) in rows.iter().take(DESTINATIONS_SHOWN) {
        writeln!(o, "{:<47} {:>9} {:>8.1}", endpoint, count, rate)?;
    }
    if let Some(rest) = rows.get(DESTINATIONS_SHOWN..).filter(|r| !r.is_empty()) {
        let sockets: u64 = rest.iter().map(|(_, (count, _))| count).sum();
        let more = format!("(and {} more {plural})", rest.len());
        writeln!(o, "{more:<47} {sockets:>9}")?;
    }
    Ok(())
}
