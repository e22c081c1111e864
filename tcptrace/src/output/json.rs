//! JSON Lines with stable field names (documented in docs/reference.md).
use std::io::{self, Write};

use serde::Serialize;

use super::{
    json_events::{flow_line, hex, retransmit_line, transition_line},
    json_summary::{summary_line, Lost},
    Render,
};
use crate::{
    events::decode::{FinishedFlow, Retransmit, Transition},
    events::model::{FlowAddrs, Process, TcpState},
    host::clock::Clock,
    host::identity::{Identity, Workload},
    state::aggregate::{KernelCounters, Summary},
    state::alert::{path_text, Alert},
    state::forecast::Forecast,
    state::forecast::TimeWaitView,
    state::idle::IdleReport,
    state::keepalive::KeepaliveSettings,
    state::listeners::ListenAlert,
    state::timewait::{TimeWait, TimeWaitEnd},
};

pub struct JsonPrinter<W: Write> {
    out: W,
    clock: Clock,
    /// The per-event line being written (kept: no allocation per line).
    event_buf: Vec<u8>,
}

/// A socket's kernel address, `0x…` in lower-case hex.
struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hex(self.0).as_str())
    }
}

#[derive(Serialize)]
struct Addrs<'a> {
    family: &'a str,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
}

impl From<&FlowAddrs> for Addrs<'_> {
    fn from(a: &FlowAddrs) -> Self {
        Addrs {
            family: if a.local.addr.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            },
            laddr: a.local.addr.to_string(),
            lport: a.local.port,
            raddr: a.remote.addr.to_string(),
            rport: a.remote.port,
        }
    }
}

#[derive(Serialize)]
struct Owner<'a> {
    pid: Option<u32>,
    comm: Option<&'a str>,
}

impl<'a> From<&'a Option<Process>> for Owner<'a> {
    fn from(p: &'a Option<Process>) -> Self {
        Owner {
            pid: p.as_ref().map(|p| p.pid),
            comm: p.as_ref().map(|p| p.comm.as_str()),
        }
    }
}

/// A workload's fields, each absent when unknown (as on event lines).
#[derive(Serialize, Default)]
struct WorkloadFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_runtime: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

impl<'a> From<Option<&'a Workload>> for WorkloadFields<'a> {
    fn from(w: Option<&'a Workload>) -> Self {
        let Some(w) = w.filter(|w| w.known()) else {
            return WorkloadFields::default();
        };
        let i = w.identity.as_deref();
        let field = |f: fn(&'a Identity) -> &'a Option<String>| i.and_then(|i| f(i).as_deref());
        WorkloadFields {
            cgroup_id: Some(w.cgroup),
            container_id: field(|i| &i.container_id),
            container_runtime: field(|i| &i.runtime),
            pod_uid: field(|i| &i.pod_uid),
            namespace: field(|i| &i.namespace),
            pod: field(|i| &i.pod),
            container: field(|i| &i.container),
            unit: field(|i| &i.unit),
        }
    }
}

#[derive(Serialize)]
struct AlertLine<'a> {
    r#type: &'static str,
    kind: &'static str,
    ts_unix_ns: u64,
    #[serde(flatten)]
    owner: Owner<'a>,
    #[serde(flatten)]
    workload: WorkloadFields<'a>,
    #[serde(flatten)]
    addrs: Addrs<'a>,
    detail: String,
    /// The flow's path so far (`SYN_SENT 1.2ms > ESTABLISHED 5.0s > CLOSE`), for ended flows.
    history: Option<String>,
    state: Option<TcpState>,
    probe: Option<u8>,
    probes_unanswered: Option<u8>,
    silent_ns: Option<u64>,
    keepalive: Option<KeepaliveSettings>,
    rtx: Option<u32>,
    err: Option<u8>,
    reset_reason: Option<&'a str>,
    skaddr: Hex,
    /// The forecast, for `port_exhaustion` alerts, and for `connect_failure` ones what it
    /// said toward the destination (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    forecast: Option<&'a Forecast>,
    /// `connect_failure` and `bind_failure` alerts only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    port_failure: Option<PortFailureFields>,
    /// `listen_drops` and `syn_cookies` alerts only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    listen: Option<ListenFields>,
}

/// What a `listen_drops` / `syn_cookies` alert adds.
#[derive(Serialize)]
struct ListenFields {
    /// The namespace (inode).
    netns: u32,
    /// listen_drops: the accept queue now, the backlog, the fullest seen; handshakes dropped
    /// since the last alert and since start; how long it has been dropping.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queue: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropping_for_ns: Option<u64>,
    /// syn_cookies: cookies sent since the last alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    syncookies_sent: Option<u64>,
}

/// What a `connect_failure` / `bind_failure` alert adds.
#[derive(Serialize)]
struct PortFailureFields {
    errno: &'static str,
    /// The caller's network namespace (inode; 0: not read).
    netns: u32,
    /// Failures of this kind (namespace, call, errno, address) since the last alert for it.
    failures: u64,
    /// connect: TIME_WAITs and open flows toward the destination in that namespace.
    time_waits: Option<u64>,
    open_flows: Option<u64>,
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
struct GaugesLine<'a> {
    r#type: &'static str,
    ts_unix_ns: u64,
    total: u64,
    preexisting: u64,
    overflows: u64,
    by_destination: Vec<DestinationGauge>,
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
    lost: Lost,
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

impl<W: Write> Render for JsonPrinter<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(t.ts_ns);
        self.event_buf.clear();
        transition_line(&mut self.event_buf, ts_unix_ns, t);
        self.event_line()
    }

    fn flow(&mut self, f: &FinishedFlow) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(f.ts_ns);
        let time_wait_start = f.time_wait.as_ref().map(|t| self.clock.unix_ns(t.start_ns));
        self.event_buf.clear();
        flow_line(&mut self.event_buf, ts_unix_ns, time_wait_start, f);
        self.event_line()
    }

    fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        let ts_unix_ns = self.clock.unix_ns(r.ts_ns);
        self.event_buf.clear();
        retransmit_line(&mut self.event_buf, ts_unix_ns, r);
        self.event_line()
    }

    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        let (history, state, probe, probes_unanswered, rtx, err, reset_reason, skaddr_raw) = match a
        {
            Alert::Closed(f) => (
                Some(path_text(&f.lifecycle)),
                None,
                None,
                Some(f.evidence.probes),
                Some(f.lifecycle.retransmits),
                Some(f.evidence.err),
                f.evidence.reset_sent.as_deref(),
                f.skaddr,
            ),
            Alert::FinRetransmit(r) => {
                (None, Some(r.state), None, None, None, None, None, r.skaddr)
            }
            Alert::KeepaliveProbe(p) => {
                (None, None, Some(p.probe), None, None, None, None, p.skaddr)
            }
            Alert::Exhaustion(_) | Alert::PortFailure(_) | Alert::Listen(_) => {
                (None, None, None, None, None, None, None, 0)
            }
        };
        let forecast = match a {
            Alert::Exhaustion(w) => Some(&w.forecast),
            Alert::PortFailure(p) => p.forecast.as_ref(),
            _ => None,
        };
        let port_failure = match a {
            Alert::PortFailure(p) => Some(PortFailureFields {
                errno: p.failure.errno.name(),
                netns: p.failure.netns,
                failures: p.failures,
                time_waits: p.time_waits,
                open_flows: p.open_flows,
            }),
            _ => None,
        };
        let listen = match a {
            Alert::Listen(ListenAlert::Drops {
                ts_ns,
                listener: l,
                dropped,
                ..
            }) => Some(ListenFields {
                netns: l.netns,
                queue: Some(l.queue),
                backlog: Some(l.backlog),
                max_queue: Some(l.max_queue),
                dropped: Some(*dropped),
                dropped_total: Some(l.dropped),
                dropping_for_ns: l.dropping_since.map(|t| ts_ns.saturating_sub(t)),
                syncookies_sent: None,
            }),
            Alert::Listen(ListenAlert::SynCookies { netns, sent, .. }) => Some(ListenFields {
                netns: *netns,
                queue: None,
                backlog: None,
                max_queue: None,
                dropped: None,
                dropped_total: None,
                dropping_for_ns: None,
                syncookies_sent: Some(*sent),
            }),
            _ => None,
        };
        let line = AlertLine {
            r#type: "alert",
            kind: a.kind(),
            ts_unix_ns: self.clock.unix_ns(a.ts_ns()),
            owner: a.owner().into(),
            workload: a.workload().into(),
            addrs: a.addrs().into(),
            detail: a.detail(),
            history,
            state,
            probe,
            probes_unanswered,
            silent_ns: a.silent_ns(),
            keepalive: a.keepalive(),
            rtx,
            err,
            reset_reason,
            skaddr: Hex(skaddr_raw),
            forecast,
            port_failure,
            listen,
        };
        self.line(&line)
    }

    fn idle_report(&mut self, now_ns: u64, r: &IdleReport) -> io::Result<()> {
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

    fn time_wait(&mut self, t: &TimeWait) -> io::Result<()> {
        let line = TimeWaitLine {
            r#type: "time_wait",
            addrs: (&t.addrs).into(),
            time_wait: TimeWaitField {
                start_unix_ns: self.clock.unix_ns(t.start_ns),
                held_ns: t.held_ns,
                end: t.end,
            },
        };
        self.line(&line)
    }

    fn time_wait_gauges(&mut self, now_ns: u64, v: &TimeWaitView) -> io::Result<()> {
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

    fn lost(&mut self, now_ns: u64, newly_lost: u64, kernel: &KernelCounters) -> io::Result<()> {
        use tcptrace_common::stat;
        let line = LostLine {
            r#type: "lost",
            ts_unix_ns: self.clock.unix_ns(now_ns),
            new: newly_lost,
            lost: Lost {
                transitions: kernel.stat(stat::LOST_TRANSITION),
                flows: kernel.stat(stat::LOST_FLOW_END),
                retransmits: kernel.stat(stat::LOST_RETRANSMIT),
                probes: kernel.stat(stat::LOST_PROBE),
                time_wait: kernel.stat(stat::LOST_TIME_WAIT),
                port_failures: kernel.stat(stat::LOST_PORT_FAILURE),
                undecided: kernel.stat(stat::LOST_UNDECIDED),
                missed_events: kernel.missed,
                total: kernel.lost(),
            },
        };
        self.line(&line)
    }

    fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()> {
        self.line(&EvictedLine {
            r#type: "evicted",
            ts_unix_ns: self.clock.unix_ns(now_ns),
            new: newly,
            total,
        })
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.line(&summary_line(s))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
