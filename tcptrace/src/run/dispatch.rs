//! decode → state → consumer: each record read (from the ring or a recording) is decoded,
//! counted, joined with its TIME_WAIT, turned into alerts, and pushed to the consumer — the
//! same way for every mode, live or replayed.
use std::io;

use tcptrace_common::time_wait;

use crate::{
    decode::{record_time, transition_time, Decoder},
    host::{
        clock::Clock, conntrack::ConntrackLookup, identity_resolver::IdentityResolver,
        netns::Namespaces,
    },
    kernel::rings::EventRings,
    model::{
        counters::KernelCounters, events::Event, facts::HostFacts, filter::FilterSpec,
        tcp::Endpoint,
    },
    output::consumer::{Consumer, Seen, Wants},
    state::{
        aggregate::Aggregator,
        alert::Alert,
        forecast::{time_wait_view, TimeWaitView},
        nat::NatWatch,
        packets::PacketLedger,
        port_failures::{PortFailureAlert, PortFailureWatch},
        snat::SnatTracker,
        summary::{NatLookups, Summary},
        timewait::{holds_time_wait, Finished, TimeWaitTracker},
    },
};

/// Port-failure alerts that count the flows open toward their destination (a sock_diag dump
/// each, from inside the namespace), per second: a scan failing toward many destinations
/// must not stall the drain; the alerts beyond say no count.
const OPEN_FLOW_COUNTS_PER_S: u32 = 5;

const NS_PER_S: u64 = 1_000_000_000;

/// At most this many decode errors are logged one by one.
const DECODE_ERRORS_LOGGED: u64 = 5;

/// At the end of the records, cancels settle as if this much later: past every cancel's
/// window (`state::timewait`'s 20 ms), with room for records stamped after the end.
const SETTLE_AT_END_NS: u64 = 1_000_000_000;

/// A bug met while handling records (a panic, caught): the driver detaches, sums up what it
/// has and exits with the error.
#[derive(Debug)]
pub struct InternalError(String);

impl std::fmt::Display for InternalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "internal error while handling records: {}", self.0)
    }
}

impl std::error::Error for InternalError {}

pub fn is_internal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<InternalError>())
}

/// `TCPTRACE_TEST_PANIC_IN_DRAIN=1` makes the drain panic once, at its first record: how the
/// tests check that a bug there still detaches every program and prints the summary.
fn panic_requested() -> bool {
    static REQUESTED: std::sync::OnceLock<std::sync::atomic::AtomicBool> =
        std::sync::OnceLock::new();
    let requested = REQUESTED.get_or_init(|| {
        std::sync::atomic::AtomicBool::new(
            std::env::var_os("TCPTRACE_TEST_PANIC_IN_DRAIN").is_some(),
        )
    });
    // A plain load on every record; the swap only the once.
    requested.load(std::sync::atomic::Ordering::Relaxed)
        && requested.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Counts the flows open toward a destination in a namespace (sock_diag), where that can be
/// read: live, not in a report.
pub type OpenFlowCounter = fn(u32, Endpoint) -> Option<u64>;

#[path = "dispatch_nat.rs"]
mod nat;

/// The state events add up to, and what the consumer asked for.
pub struct Dispatcher {
    pub agg: Aggregator,
    pub tw: TimeWaitTracker,
    /// The namespaces the forecast takes its capacities from (the session's, each second).
    pub namespaces: Namespaces,
    /// Set live: port-failure alerts say the flows open toward the destination.
    pub open_flows: Option<OpenFlowCounter>,
    /// Who each cgroup is: read from this host live, learnt from the recording in a report.
    pub identities: IdentityResolver,
    /// Drops and SYN-ACK retransmits waiting for their flow's end; bytes and RTT summed.
    pub packets: PacketLedger,
    /// conntrack entries looked up where a flow or a drop needs its NAT (see
    /// `translate_flow`, `translate_drop`).
    pub conntrack: ConntrackLookup,
    /// SYNs dropped at the NAT boundary, as alerts.
    nat: NatWatch,
    /// Source NATs' ports per destination, from the connections they translated.
    pub snat: SnatTracker,
    ports: PortFailureWatch,
    /// Open-flow counts left this second (see [`OPEN_FLOW_COUNTS_PER_S`]).
    open_counts_left: u32,
    decoder: Decoder,
    wants: Wants,
    traces_time_wait: bool,
    /// `tcptrace report FILE -D 5432`: the events a recording holds that pass these filters
    /// (live, the kernel has filtered already).
    pub record_filter: Option<FilterSpec>,
}

impl Dispatcher {
    /// `host`: the facts of the machine that traced (this one, or a recording's).
    pub fn new(host: HostFacts, wants: Wants, traces_time_wait: bool) -> Dispatcher {
        Dispatcher {
            agg: Aggregator::new(),
            tw: TimeWaitTracker::new(),
            namespaces: Namespaces::default(),
            open_flows: None,
            identities: IdentityResolver::recorded(),
            packets: PacketLedger::default(),
            conntrack: ConntrackLookup::default(),
            nat: NatWatch::default(),
            snat: SnatTracker::default(),
            ports: PortFailureWatch::default(),
            open_counts_left: OPEN_FLOW_COUNTS_PER_S,
            decoder: Decoder::new(host),
            wants,
            traces_time_wait,
            record_filter: None,
        }
    }

    /// What the consumer asked for.
    pub fn wants(&self) -> Wants {
        self.wants
    }

    /// Whether TIME_WAIT is followed (traced, and the records decoded).
    pub fn traces_time_wait(&self) -> bool {
        self.traces_time_wait
    }

    /// The facts of the machine that traced, as the decoder uses them.
    pub fn host(&self) -> &HostFacts {
        &self.decoder.host
    }

    /// Drains up to `limit` records from the rings, in time order; returns whether more may
    /// be pending. `all`: after detaching, every record read is handed on. A panic while
    /// handling them comes back as an [`InternalError`].
    pub fn drain<C: Consumer>(
        &mut self,
        rings: &mut EventRings,
        consumer: &mut C,
        limit: usize,
        all: bool,
    ) -> io::Result<bool> {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.drain_batch(rings, consumer, limit, all)
        }));
        caught.unwrap_or_else(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(io::Error::other(InternalError(what)))
        })
    }

    fn drain_batch<C: Consumer>(
        &mut self,
        rings: &mut EventRings,
        consumer: &mut C,
        limit: usize,
        all: bool,
    ) -> io::Result<bool> {
        let mut newest = 0;
        let drained = rings.drain(limit, Clock::ktime_now(), all, record_time, |item| {
            if panic_requested() {
                panic!("TCPTRACE_TEST_PANIC_IN_DRAIN is set");
            }
            if self.wants.raw {
                consumer.seen(Seen::Raw(item))?;
            } else if let Some(ts) = self.consume(consumer, item)? {
                newest = newest.max(ts);
            }
            Ok(())
        })?;
        // A cancelled TIME_WAIT ended early only if no expiry followed within the settle
        // time: judged against what has been read — up to the time the rings were read when
        // all was taken, else up to the newest record (under load, records wait in the rings
        // for up to --poll-interval, and an expiry read in the next batch must still find its
        // cancelled TIME_WAIT). Nothing is pending where records are handed on raw.
        let read_up_to = if drained.more {
            newest
        } else {
            drained.up_to_ns.min(Clock::ktime_now())
        };
        self.settle(consumer, read_up_to)?;
        consumer.flush()?;
        Ok(drained.more)
    }

    /// One record as the kernel wrote it: decoded and handed on. Returns its kernel timestamp,
    /// when it decoded.
    pub fn consume<C: Consumer>(
        &mut self,
        consumer: &mut C,
        record: &[u8],
    ) -> io::Result<Option<u64>> {
        self.agg.delivered();
        // Transitions nobody looks at are only checked (a recording holds one per transition),
        // unless a filter must judge them.
        let decoded = if self.wants.transitions || self.record_filter.is_some() {
            self.decoder.decode(record)
        } else {
            match transition_time(record) {
                Some(Ok(ts)) => return Ok(Some(ts)),
                Some(Err(e)) => Err(e),
                None => self.decoder.decode(record),
            }
        };
        match decoded {
            Ok(event) => {
                let ts = event.ts_ns();
                if self
                    .record_filter
                    .as_ref()
                    .is_none_or(|f| f.admits_event(&event))
                {
                    self.handle(consumer, event)?;
                }
                Ok(Some(ts))
            }
            Err(e) => {
                self.agg.decode_error();
                if self.agg.decode_errors() <= DECODE_ERRORS_LOGGED {
                    log::warn!("undecodable record: {e:#}");
                }
                Ok(None)
            }
        }
    }

    /// Once a second: port-failure kinds quiet for a minute are forgotten.
    pub fn forget_quiet_failures(&mut self, now_ns: u64) {
        self.rearm_snat_forecasts(now_ns / NS_PER_S);
        self.ports.forget_quiet(now_ns);
        self.packets.expire(now_ns);
        self.open_counts_left = OPEN_FLOW_COUNTS_PER_S;
    }

    /// The TIME_WAIT gauges and forecast at `now_ns` (the timewait mode's, live and in a
    /// report), after the TIME_WAITs found at start that must have ended.
    pub fn time_wait_gauges(&mut self, now_ns: u64) -> TimeWaitView {
        self.tw.expire_preexisting(now_ns);
        time_wait_view(&self.tw, now_ns, &self.namespaces)
    }

    /// The summary, assembled the same way for a live session and a report: what was
    /// aggregated, the kernel's counters, TIME_WAIT (`time_wait`: where traced) and the
    /// packets' figures. The driver adds what only it knows (filters, evictions, listeners).
    pub fn summary(&self, kernel: &KernelCounters, elapsed_ns: u64, time_wait: bool) -> Summary {
        let packets = self.packets.summary(&kernel.drop_reasons, self.host());
        Summary {
            time_wait: time_wait.then(|| self.tw.summary()),
            drops_by_reason: packets.drops_by_reason,
            vitals: packets.vitals,
            nat: (self.conntrack.most_namespaces > 0).then_some(NatLookups {
                namespaces: self.conntrack.most_namespaces as u64,
                lookups: self.conntrack.lookups,
                found: self.conntrack.found,
                skipped: self.conntrack.skipped,
            }),
            ..self.agg.finish(kernel, elapsed_ns)
        }
    }

    /// TIME_WAITs cancelled long enough before `now_ns` ended early.
    pub fn settle<C: Consumer>(&mut self, consumer: &mut C, now_ns: u64) -> io::Result<()> {
        for finished in self.tw.settle(now_ns) {
            consumer.seen(Seen::Finished(&finished))?;
        }
        Ok(())
    }

    /// The end of the records: cancels still waiting for an expiry settle now, and what
    /// remains in TIME_WAIT is handed on as in progress.
    pub fn finish_time_waits<C: Consumer>(
        &mut self,
        consumer: &mut C,
        now_ns: u64,
    ) -> io::Result<()> {
        self.settle(consumer, now_ns + SETTLE_AT_END_NS)?;
        for finished in self.tw.drain_in_progress(now_ns) {
            consumer.seen(Seen::Finished(&finished))?;
        }
        consumer.flush()
    }

    fn handle<C: Consumer>(&mut self, consumer: &mut C, mut event: Event) -> io::Result<()> {
        if let Some(workload) = event.workload_mut().filter(|w| w.known()) {
            *workload = self.identities.resolve(workload.cgroup).0;
        }
        match event {
            Event::Transition(t) => consumer.seen(Seen::Transition(&t))?,
            Event::FlowEnd(mut f) => {
                self.packets.flow_ended(&mut f);
                if let Some(alert) = self.translate_flow(&mut f) {
                    consumer.seen(Seen::Alert(&Alert::Nat(&alert)))?;
                }
                self.agg.finished_flow(&f);
                let time_wait = self.traces_time_wait && holds_time_wait(&f);
                if self.traces_time_wait {
                    // A TIME_WAIT of this 4-tuple from before the flow began ended as it began.
                    if let Some(reused) = self.tw.reused_by(&f) {
                        consumer.seen(Seen::Finished(&reused))?;
                    }
                }
                consumer.seen(Seen::FlowClosed {
                    flow: &f,
                    time_wait,
                })?;
                if let Some(alert) = Alert::closed(&f).filter(|_| self.wants.alerts) {
                    consumer.seen(Seen::Alert(&alert))?;
                }
                // A flow that closed first is handed on again when its TIME_WAIT ends (its
                // start follows it in the ring).
                let handed = match time_wait {
                    true => self.tw.closed_into(f, self.wants.flows),
                    false => Some(f),
                };
                if let Some(f) = handed {
                    consumer.seen(Seen::Finished(&Finished::Flow(f)))?;
                }
            }
            // Sent only where flows are counted in the kernel: the side of a TIME_WAIT.
            Event::TimeWaitFlow(f) => {
                if self.traces_time_wait {
                    self.tw.brief_flow(&f);
                }
            }
            Event::TimeWait(r) => match r.what {
                time_wait::START => {
                    if let Some(addrs) = r.addrs {
                        if self.wants.time_wait_entries && self.tw.is_new(r.timer, &addrs, r.ts_ns)
                        {
                            consumer.seen(Seen::TimeWaitEntered {
                                addrs: &addrs,
                                netns: r.netns,
                                ts_ns: r.ts_ns,
                            })?;
                        }
                        for ended in self.tw.start(r.timer, addrs, r.netns, r.ts_ns) {
                            consumer.seen(Seen::Finished(&ended))?;
                        }
                    }
                }
                time_wait::CANCEL => self.tw.cancel(r.timer, r.ts_ns, r.in_connect),
                _ => {
                    if let Some(finished) = self.tw.expire(r.addrs, r.netns, r.timer, r.ts_ns) {
                        consumer.seen(Seen::Finished(&finished))?;
                    }
                }
            },
            Event::Retransmit(r) => {
                if r.synack {
                    self.packets.synack(&r);
                }
                consumer.seen(Seen::Retransmit(&r))?;
                if let Some(alert) = Alert::retransmit(&r).filter(|_| self.wants.alerts) {
                    consumer.seen(Seen::Alert(&alert))?;
                }
            }
            Event::KeepaliveProbe(p) => {
                if self.wants.alerts {
                    consumer.seen(Seen::Alert(&Alert::KeepaliveProbe(&p)))?;
                }
            }
            Event::Drop(d) => {
                self.translate_drop(&d);
                self.packets.dropped(&d);
                consumer.seen(Seen::PacketDrop(&d))?;
                if self.wants.alerts {
                    let behind = self.packets.original_of(&d.addrs);
                    if let Some(mut alert) = self.nat.admit(&d, behind) {
                        self.follow_snat_drop(&d, &mut alert);
                        consumer.seen(Seen::Alert(&Alert::Nat(&alert)))?;
                    }
                }
            }
            Event::PortFailure(p) => {
                consumer.seen(Seen::PortFailure(&p))?;
                if !self.wants.alerts {
                    return Ok(());
                }
                if let Some(failures) = self.ports.admit(&p) {
                    let open_flows = self.open_flows.filter(|_| self.open_counts_left > 0);
                    self.open_counts_left = self.open_counts_left.saturating_sub(1);
                    let alert = PortFailureAlert::new(
                        p,
                        failures,
                        &self.tw,
                        &self.namespaces,
                        |netns, dest| open_flows.and_then(|count| count(netns, dest)),
                    );
                    consumer.seen(Seen::Alert(&Alert::PortFailure(&alert)))?;
                }
            }
        }
        Ok(())
    }
}
