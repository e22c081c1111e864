//! JSON Lines with stable field names (documented in docs/reference.md).
use std::io::{self, Write};

use serde::Serialize;

use super::{
    json_alert::alert_line,
    json_events::{drop_line, flow_line, retransmit_line, transition_line},
    json_fields::{Addrs, Hex, Owner, WorkloadFields},
};
use crate::{
    host::clock::Clock,
    model::counters::{with_total, KernelCounters, Lost},
    model::events::{FinishedFlow, Retransmit, Transition},
    model::vitals::PacketDrop,
    state::alert::Alert,
    state::forecast::Forecast,
    state::forecast::TimeWaitView,
    state::idle::IdleReport,
    state::summary::Summary,
    state::timewait::{TimeWait, TimeWaitEnd},
};

pub struct JsonPrinter<W: Write> {
    out: W,
    clock: Clock,
    /// The per-event line being written (kept: no allocation per line).
    event_buf: Vec<u8>,
}

#[derive(Serialize)]
struct IdleSocketLine<'a> {
    #[serde(flatten)]
    addrs: Addrs<'a>,
    idle_ns: u64,
}

#[derive(Serialize)]
struct IdleGroupLine<'a> {
    #[serde(flatten)]
    owner: Owner<'a>,
    #[serde(flatten)]
    workload: WorkloadFields<'a>,
    count: usize,
    max_idle_ns: u64,
    sockets: Vec<IdleSocketLine<'a>>,
}

#[derive(Serialize)]
struct IdleReportLine<'a> {
    r#type: &'static str,
    ts_unix_ns: u64,
    min_idle_ns: u64,
    scanned: usize,
    total: usize,
    groups: Vec<IdleGroupLine<'a>>,
}

#[derive(Serialize)]
struct TimeWaitField {
    start_unix_ns: u64,
    held_ns: u64,
    end: TimeWaitEnd,
}

#[derive(Serialize)]
struct TimeWaitLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    addrs: Addrs<'a>,
    #[serde(flatten)]
    time_wait: TimeWaitField,
    /// Its flow was printed at its close (`--flows-at close`; `skaddr` joins the two), or
    /// not seen at all.
    flow_seen: bool,
    skaddr: Option<Hex>,
}

#[derive(Serialize)]
struct DestinationGauge {
    raddr: String,
    rport: u16,
    count: u64,
    new_per_s: f64,
}

#[derive(Serialize)]
struct LocalGauge {
    laddr: String,
    count: u64,
}

#[derive(Serialize)]
struct ServiceGauge {
    laddr: String,
    lport: u16,
    count: u64,
    new_per_s: f64,
}

#[derive(Serialize)]
struct GaugesLine<'a> {
    r#type: &'static str,
    ts_unix_ns: u64,
    total: u64,
    preexisting: u64,
    overflows: u64,
    by_destination: Vec<DestinationGauge>,
    /// The accepting side's TIME_WAITs, by local service.
    by_service: Vec<ServiceGauge>,
    by_local: Vec<LocalGauge>,
    forecast: &'a [Forecast],
}

#[derive(Serialize)]
struct EvictedLine {
    r#type: &'static str,
    ts_unix_ns: u64,
    new: u64,
    total: u64,
}

#[derive(Serialize)]
struct LostLine {
    r#type: &'static str,
    ts_unix_ns: u64,
    new: u64,
    #[serde(serialize_with = "with_total")]
    lost: Lost,
}

/// The summary line: its type, then the summary's own fields.
#[derive(Serialize)]
struct SummaryLine<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    summary: &'a Summary,
}

impl<W: Write> JsonPrinter<W> {
    /// The clock its times are read with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn new(out: W, clock: Clock) -> Self {
        JsonPrinter {
            out,
            clock,
            event_buf: Vec::with_capacity(1024),
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    /// The per-event line written into `self.event_buf`, with its newline.
    fn event_line(&mut self) -> io::Result<()> {
        self.event_buf.push(b'\n');
        self.out.write_all(&self.event_buf)
    }

    fn line<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value).map_err(io::Error::from)?;
        self.out.write_all(b"\n")
    }
}

/// One method per line kind; `render` (from `printer_render!`) picks the one for each event.
impl<W: Write> JsonPrinter<W> {
    pub fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(t.ts_ns);
        self.event_buf.clear();
        transition_line(&mut self.event_buf, ts_unix_ns, t);
        self.event_line()
    }

    /// A flow once it is over, its TIME_WAIT included.
    pub fn flow(&mut self, f: &FinishedFlow) -> io::Result<()> {
        self.flow_closed(f, false)
    }

    /// A flow as it closes: `time_wait_follows` says a `time_wait` record comes for it when
    /// its TIME_WAIT ends (`--flows-at close`).
    pub fn flow_closed(&mut self, f: &FinishedFlow, time_wait_follows: bool) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(f.ts_ns);
        let time_wait_start = f.time_wait.as_ref().map(|t| self.clock.unix_ns(t.start_ns));
        self.event_buf.clear();
        flow_line(
            &mut self.event_buf,
            ts_unix_ns,
            time_wait_start,
            time_wait_follows,
            f,
        );
        self.event_line()
    }

    pub fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(r.ts_ns);
        self.event_buf.clear();
        retransmit_line(&mut self.event_buf, ts_unix_ns, r);
        self.event_line()
    }

    pub fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(d.ts_ns);
        self.event_buf.clear();
        drop_line(&mut self.event_buf, ts_unix_ns, d);
        self.event_line()
    }

    pub fn alert(&mut self, a: &Alert) -> io::Result<()> {
        let line = alert_line(a, self.clock.unix_ns(a.ts_ns()));
        self.line(&line)
    }

    pub fn idle_report(&mut self, now_ns: u64, r: &IdleReport) -> io::Result<()> {
        let line = IdleReportLine {
            r#type: "idle_report",
            ts_unix_ns: self.clock.unix_ns(now_ns),
            min_idle_ns: r.min_idle.as_nanos() as u64,
            scanned: r.scanned,
            total: r.total(),
            groups: r
                .groups
                .iter()
                .map(|g| IdleGroupLine {
                    owner: (&g.owner).into(),
                    workload: Some(&g.workload).into(),
                    count: g.sockets.len(),
                    max_idle_ns: g.sockets.first().map_or(0, |s| s.idle.as_nanos() as u64),
                    sockets: g
                        .sockets
                        .iter()
                        .map(|s| IdleSocketLine {
                            addrs: (&s.addrs).into(),
                            idle_ns: s.idle.as_nanos() as u64,
                        })
                        .collect(),
                })
                .collect(),
        };
        self.line(&line)
    }

    /// A TIME_WAIT whose flow was not seen.
    pub fn time_wait(&mut self, t: &TimeWait) -> io::Result<()> {
        self.time_wait_record(t, None)
    }

    /// The end of the TIME_WAIT of a flow printed at its close.
    pub fn time_wait_ended(&mut self, f: &FinishedFlow) -> io::Result<()> {
        match &f.time_wait {
            Some(t) => self.time_wait_record(t, Some(f.skaddr)),
            None => Ok(()),
        }
    }

    fn time_wait_record(&mut self, t: &TimeWait, flow_skaddr: Option<u64>) -> io::Result<()> {
        let line = TimeWaitLine {
            r#type: "time_wait",
            addrs: (&t.addrs).into(),
            time_wait: TimeWaitField {
                start_unix_ns: self.clock.unix_ns(t.start_ns),
                held_ns: t.held_ns,
                end: t.end,
            },
            flow_seen: flow_skaddr.is_some(),
            skaddr: flow_skaddr.map(Hex),
        };
        self.line(&line)
    }

    pub fn time_wait_gauges(&mut self, now_ns: u64, v: &TimeWaitView) -> io::Result<()> {
        let line = GaugesLine {
            r#type: "time_wait_gauges",
            ts_unix_ns: self.clock.unix_ns(now_ns),
            total: v.gauges.total,
            preexisting: v.preexisting,
            overflows: v.overflows,
            by_destination: v
                .gauges
                .by_destination
                .iter()
                .map(|(d, (count, rate))| DestinationGauge {
                    raddr: d.addr.to_string(),
                    rport: d.port,
                    count: *count,
                    new_per_s: *rate,
                })
                .collect(),
            by_service: v
                .gauges
                .by_service
                .iter()
                .map(|(l, (count, rate))| ServiceGauge {
                    laddr: l.addr.to_string(),
                    lport: l.port,
                    count: *count,
                    new_per_s: *rate,
                })
                .collect(),
            by_local: v
                .gauges
                .by_local
                .iter()
                .map(|(a, count)| LocalGauge {
                    laddr: a.to_string(),
                    count: *count,
                })
                .collect(),
            forecast: &v.forecasts,
        };
        self.line(&line)
    }

    pub fn lost(
        &mut self,
        now_ns: u64,
        newly_lost: u64,
        kernel: &KernelCounters,
    ) -> io::Result<()> {
        let line = LostLine {
            r#type: "lost",
            ts_unix_ns: self.clock.unix_ns(now_ns),
            new: newly_lost,
            lost: kernel.losses(),
        };
        self.line(&line)
    }

    pub fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()> {
        self.line(&EvictedLine {
            r#type: "evicted",
            ts_unix_ns: self.clock.unix_ns(now_ns),
            new: newly,
            total,
        })
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.line(&SummaryLine {
            r#type: "summary",
            summary: s,
        })
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;

super::printer_render!(JsonPrinter);
