//! TIME_WAIT made visible: every timewait socket's start (its flow's close on the state
//! tracepoint), end (its timer's expiry; a reuse, seen as a new flow of the same 4-tuple; a
//! kill or an overflow, inferred from sock_diag reads) and end cause, joined to the flow that
//! closed first; live gauges per destination and local address; the 4-tuple exhaustion
//! forecast.
use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

// A fast hasher with a per-process seed: keys are addresses and ports peers choose.
use foldhash::HashMap;
use hdrhistogram::Histogram;

use crate::{
    model::events::FinishedFlow,
    model::tcp::{Endpoint, FlowAddrs},
};

/// Recordings before layout 7: a cancel not followed by an expiry within this long ended
/// TIME_WAIT early.
const SETTLE_NS: u64 = 20_000_000;
/// A flow that closed into TIME_WAIT whose start did not follow within this long (its record
/// was lost to a full ring) is handed on without one.
const START_LOST_NS: u64 = 1_000_000_000;
/// The window over which entry rates are measured.
pub const RATE_WINDOW_NS: u64 = 10_000_000_000;

// The types a TIME_WAIT is described with live beside the other typed views (decode uses
// them too), so decode and this module do not import each other.
pub use crate::model::tcp::{TimeWait, TimeWaitEnd};

struct Active {
    addrs: FlowAddrs,
    /// The timewait socket's network namespace (its inode; 0: not known).
    netns: u32,
    start_ns: u64,
    /// Boxed as decoded (a flow is ~460 bytes, and most entries of the map and its spare
    /// capacity hold none); handed on as it is when the TIME_WAIT ends.
    flow: Option<Box<FinishedFlow>>,
    /// Whether the accepting side holds it, as its flow said when joined (`None`: flow not
    /// seen). The accepting side's is counted under its local service, not under the
    /// client's ephemeral port.
    accepted: Option<bool>,
    /// Seen in a sock_diag read of its namespace: it exists (not a `tcp_max_tw_buckets`
    /// overflow).
    confirmed: bool,
    /// Recordings before layout 7: the timer's address, and its cancel (time, whether inside
    /// a connect()).
    timer: u64,
    cancel: Option<(u64, bool)>,
}

/// A flow that closed into TIME_WAIT, waiting for the start sent right after it.
struct Closing {
    skaddr: u64,
    ts_ns: u64,
    accepted: bool,
    flow: Option<Box<FinishedFlow>>,
}

/// What the tracker hands back to be printed.
pub enum Finished {
    /// A flow whose TIME_WAIT ended (or that never had one).
    Flow(Box<FinishedFlow>),
    /// A TIME_WAIT whose flow was not seen (it closed before tracing, or was untracked).
    Orphan(TimeWait),
}

/// The TIME_WAITs of one network namespace, by 4-tuple.
pub type TimeWaitKey = (u32, FlowAddrs);

#[derive(Default)]
pub struct TimeWaitTracker {
    /// By 4-tuple: the newest TIME_WAIT of each, whatever its namespace (flows carry none);
    /// one map, as many entries as sockets in TIME_WAIT.
    active: HashMap<FlowAddrs, Active>,
    /// The same 4-tuple's TIME_WAITs in other namespaces meanwhile (rare: loopback in two).
    elsewhere: HashMap<TimeWaitKey, Active>,
    /// Flows that closed into TIME_WAIT, until their start comes (right after them).
    closing: HashMap<FlowAddrs, Closing>,
    /// Flows whose start never came (a newer flow of the 4-tuple closed meanwhile).
    start_lost: Vec<Finished>,
    /// Recordings before layout 7: TIME_WAITs by timer address, and cancels in the order
    /// they came (time, id), settled from the front.
    keyed_by_timer: bool,
    by_timer: HashMap<u64, TimeWaitKey>,
    cancels: VecDeque<(u64, TimeWaitKey)>,
    /// Reconciliation with sock_diag (see `timewait_reconcile.rs`).
    suspects: Vec<reconcile::Suspect>,
    overflow_unmatched: HashMap<u32, u64>,
    /// Overflows matched to a flow, by destination (see `TimeWaitSummary`).
    overflow_destinations: HashMap<Endpoint, u64>,
    /// Entry times per (network namespace, local addr, remote endpoint), for rates: each
    /// namespace has its own ephemeral ports.
    entries: HashMap<RateKey, VecDeque<u64>>,
    /// Sockets in TIME_WAIT now per network namespace.
    live_by_netns: HashMap<u32, u64>,
    held: Option<Histogram<u64>>,
    ends: BTreeMap<TimeWaitEnd, u64>,
    /// TIME_WAITs entered per destination, for the summary. A TIME_WAIT held by the
    /// accepting side leaves it (and `entries`) once its flow says so: its remote endpoint is
    /// a client's ephemeral port, and counting every one would grow without bound on a server
    /// that closes first.
    by_destination: HashMap<Endpoint, u64>,
    entered: u64,
    /// Sockets in TIME_WAIT now (those in `active`), kept as they start and end so that the
    /// gauges cost the number of destinations, not of sockets.
    live_by_destination: HashMap<(u32, Endpoint), u64>,
    /// The accepting side's sockets in TIME_WAIT now, by local service (namespace, local
    /// endpoint), and their entry times for rates.
    live_by_service: HashMap<(u32, Endpoint), u64>,
    service_entries: HashMap<(u32, Endpoint), VecDeque<u64>>,
    live_by_local: HashMap<IpAddr, u64>,
    client_side: u64,
    server_side: u64,
    pub overflows: u64,
    /// Sockets already in TIME_WAIT at start, with when they expire (kernel time).
    /// In expiry order; counted in the live maps until they expire.
    preexisting: VecDeque<(FlowAddrs, u64)>,
    /// The namespace they were read in (tracing's own).
    preexisting_netns: u32,
    preexisting_total: u64,
}

/// A 4-tuple space: network namespace (inode), local address, destination.
pub type RateKey = (u32, IpAddr, Endpoint);

/// Entries within the rate window (the queue is in time order).
fn recent_entries(queue: &VecDeque<u64>, now_ns: u64) -> usize {
    queue.len() - queue.partition_point(|&t| t + RATE_WINDOW_NS < now_ns)
}

/// Drops the entry times that left the rate window (the queue is in time order).
fn forget_old_entries(queue: &mut VecDeque<u64>, now_ns: u64) {
    while queue.front().is_some_and(|&t| t + RATE_WINDOW_NS < now_ns) {
        queue.pop_front();
    }
}

/// Removes one entry time (the newest equal to `t`); the key goes with its last.
fn remove_entry<K: std::hash::Hash + Eq>(queues: &mut HashMap<K, VecDeque<u64>>, key: K, t: u64) {
    if let Some(queue) = queues.get_mut(&key) {
        if let Some(at) = queue.iter().rposition(|&e| e == t) {
            queue.remove(at);
        }
        if queue.is_empty() {
            queues.remove(&key);
        }
    }
}

/// Recordings before layout 7: a start this soon after a cancel of the same timer, for the
/// same 4-tuple and not inside a connect(), is the same TIME_WAIT re-armed (mod_timer).
const REARM_NS: u64 = 1_000_000;

/// Maps smaller than this are left as they are.
const SPARSE_FROM: usize = 4096;

/// Shrinks a map to twice its length when it is under a quarter full.
fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) -> bool {
    if map.capacity() > SPARSE_FROM && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
        true
    } else {
        false
    }
}

/// One fewer under `key`; the key goes at zero.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u64>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

impl TimeWaitTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reading a recording made before layout 7: TIME_WAITs are the timer hooks' (a start
    /// before its flow's close, keyed by the timer's address; a cancel before every end).
    pub fn keyed_by_timer(&mut self) {
        self.keyed_by_timer = true;
    }

    /// Counts sockets already in TIME_WAIT at start until their remaining time runs out.
    pub fn preexisting(&mut self, netns: u32, sockets: impl IntoIterator<Item = (FlowAddrs, u64)>) {
        let mut sockets: Vec<(FlowAddrs, u64)> = sockets.into_iter().collect();
        sockets.sort_unstable_by_key(|&(_, expires)| expires);
        self.preexisting_netns = netns;
        for (addrs, _) in &sockets {
            *self
                .live_by_destination
                .entry((netns, addrs.remote))
                .or_default() += 1;
            *self.live_by_local.entry(addrs.local.addr).or_default() += 1;
        }
        self.preexisting_total += sockets.len() as u64;
        self.preexisting.extend(sockets);
    }

    /// Sockets already in TIME_WAIT when tracing started.
    pub fn preexisting_count(&self) -> u64 {
        self.preexisting_total
    }

    /// Forgets the pre-existing TIME_WAITs whose time ran out by `now_ns`.
    pub fn expire_preexisting(&mut self, now_ns: u64) {
        while let Some(&(addrs, expires)) = self.preexisting.front() {
            if expires > now_ns {
                break;
            }
            self.preexisting.pop_front();
            decrement(
                &mut self.live_by_destination,
                (self.preexisting_netns, addrs.remote),
            );
            decrement(&mut self.live_by_local, addrs.local.addr);
        }
    }

    /// Whether a start is a new TIME_WAIT to announce (not, in a recording before layout 7,
    /// a running one re-armed by a FIN retransmitted into it).
    pub fn is_new(&self, timer: u64, addrs: &FlowAddrs, ts_ns: u64) -> bool {
        if !self.keyed_by_timer {
            return true;
        }
        let running = (self.by_timer.get(&timer)).and_then(|&key| self.get(key));
        !running.is_some_and(|a| match a.cancel {
            None => true,
            Some((cancelled_ns, in_connect)) => {
                !in_connect && a.addrs == *addrs && ts_ns.saturating_sub(cancelled_ns) < REARM_NS
            }
        })
    }

    /// The 4-tuples of every socket in TIME_WAIT now, those from before tracing included
    /// (call [`Self::expire_preexisting`] first), each with whether the accepting side
    /// holds it (`Some(true)`), the connecting side (`Some(false)`), or its flow was not seen.
    pub fn live_addrs(&self) -> impl Iterator<Item = (&FlowAddrs, Option<bool>)> {
        (self.active.values())
            .chain(self.elsewhere.values())
            .map(|a| (&a.addrs, a.accepted))
            .chain(self.preexisting.iter().map(|(addrs, _)| (addrs, None)))
    }

    /// A TIME_WAIT starts (`sk`: the closing socket's address; before layout 7, the timer's).
    /// Returns what it ended: an earlier TIME_WAIT of the same 4-tuple still running (it was
    /// reused: where no flow said so first, seen at the 4-tuple's next close).
    pub fn start(&mut self, sk: u64, addrs: FlowAddrs, netns: u32, ts_ns: u64) -> Vec<Finished> {
        let mut ended = Vec::new();
        if self.keyed_by_timer {
            if let Some(&key) = self.by_timer.get(&sk) {
                if !self.is_new(sk, &addrs, ts_ns) {
                    if let Some(a) = self.get_mut(key) {
                        a.cancel = None; // re-armed: it goes on
                    }
                    return ended;
                }
                if let Some(old) = self.take(key) {
                    let end_ns = old.cancel.map_or(ts_ns, |(t, _)| t);
                    let end = TimeWaitEnd::early(old.cancel.is_some_and(|(_, c)| c));
                    ended.push(self.end(old, end_ns, end));
                }
            }
        }
        let key = (netns, addrs);
        // Its flow came first (sent just before it by the same run): joined at once, so that
        // an accepting side's TIME_WAIT is counted under its service from the start, never
        // under the client's ephemeral port.
        let closing = match self.closing.entry(addrs) {
            std::collections::hash_map::Entry::Occupied(e) if e.get().skaddr == sk => {
                Some(e.remove())
            }
            _ => None,
        };
        let accepted = closing.as_ref().map(|c| c.accepted);
        let replaced = self.replace(Active {
            addrs,
            netns,
            start_ns: ts_ns,
            flow: closing.and_then(|c| c.flow),
            accepted,
            confirmed: false,
            timer: sk,
            cancel: None,
        });
        if let Some(old) = replaced {
            ended.push(self.end(old, ts_ns, TimeWaitEnd::Reused));
        }
        if self.keyed_by_timer {
            self.by_timer.insert(sk, key);
        }
        self.entered += 1;
        *self.live_by_local.entry(addrs.local.addr).or_default() += 1;
        *self.live_by_netns.entry(netns).or_default() += 1;
        if let Some(accepted) = accepted {
            self.count_side(accepted);
        }
        if accepted == Some(true) {
            self.count_service_entry(netns, addrs.local, ts_ns);
        } else {
            self.count_destination_entry(netns, &addrs, ts_ns);
        }
        ended
    }

    /// Recordings before layout 7: the timer was removed.
    pub fn cancel(&mut self, timer: u64, ts_ns: u64, in_connect: bool) {
        let Some(&key) = self.by_timer.get(&timer) else {
            return;
        };
        if let Some(active) = self.get_mut(key) {
            active.cancel = Some((ts_ns, in_connect));
            self.cancels.push_back((ts_ns, key));
        }
    }

    /// The timer ran out: the TIME_WAIT of `addrs` in `netns` (before layout 7, of the timer
    /// at `timer`).
    pub fn expire(
        &mut self,
        addrs: Option<FlowAddrs>,
        netns: u32,
        timer: u64,
        ts_ns: u64,
    ) -> Option<Finished> {
        let key = match addrs {
            Some(addrs) => (netns, addrs),
            None => *self.by_timer.get(&timer)?,
        };
        let active = self.take(key)?;
        Some(self.end(active, ts_ns, TimeWaitEnd::Expired))
    }

    /// Flows whose TIME_WAIT's start was lost are handed on without one; in recordings before
    /// layout 7, TIME_WAITs whose cancel was not followed by an expiry ended early.
    pub fn settle(&mut self, now_ns: u64) -> Vec<Finished> {
        let mut ended: Vec<Finished> = std::mem::take(&mut self.start_lost);
        let lost: Vec<FlowAddrs> = (self.closing.iter())
            .filter(|(_, c)| c.ts_ns + START_LOST_NS < now_ns)
            .map(|(a, _)| *a)
            .collect();
        for addrs in lost {
            if let Some(flow) = self.closing.remove(&addrs).and_then(|c| c.flow) {
                ended.push(Finished::Flow(flow));
            }
        }
        while let Some(&(ts, key)) = self.cancels.front() {
            if ts + SETTLE_NS >= now_ns {
                break;
            }
            self.cancels.pop_front();
            // Still cancelled at that time (not expired since, nor re-armed).
            let current = (self.get(key)).is_some_and(|a| a.cancel.is_some_and(|(t, _)| t == ts));
            if !current {
                continue;
            }
            let Some(active) = self.take(key) else {
                continue;
            };
            let end = TimeWaitEnd::early(active.cancel.is_some_and(|(_, c)| c));
            ended.push(self.end(active, ts, end));
        }
        ended
    }

    /// Everything still in TIME_WAIT when tracing stops (after the reads' last verdicts),
    /// and the flows whose start never came.
    pub fn drain_in_progress(&mut self, now_ns: u64) -> Vec<Finished> {
        let mut finished = self.apply_suspects(&std::collections::HashMap::new());
        finished.extend(self.match_overflows_at_end());
        let mut active: Vec<Active> = self.active.drain().map(|(_, a)| a).collect();
        active.extend(self.elsewhere.drain().map(|(_, a)| a));
        finished.extend(
            active
                .into_iter()
                .map(|a| self.end(a, now_ns, TimeWaitEnd::InProgress)),
        );
        let closing: Vec<Closing> = self.closing.drain().map(|(_, c)| c).collect();
        finished.extend(
            closing
                .into_iter()
                .filter_map(|c| Some(Finished::Flow(c.flow?))),
        );
        finished
    }

    /// Removes a TIME_WAIT (taken out) from the live counts and the timer index.
    fn unlink(&mut self, active: &Active) {
        match active.accepted == Some(true) {
            true => decrement(
                &mut self.live_by_service,
                (active.netns, active.addrs.local),
            ),
            false => decrement(
                &mut self.live_by_destination,
                (active.netns, active.addrs.remote),
            ),
        }
        decrement(&mut self.live_by_local, active.addrs.local.addr);
        decrement(&mut self.live_by_netns, active.netns);
        if self.by_timer.get(&active.timer) == Some(&(active.netns, active.addrs)) {
            self.by_timer.remove(&active.timer);
        }
    }

    /// A TIME_WAIT taken out ends: its counts go, its flow (if held) is handed back.
    fn end(&mut self, active: Active, end_ns: u64, end: TimeWaitEnd) -> Finished {
        let held_ns = end_ns.saturating_sub(active.start_ns);
        self.unlink(&active);
        if end != TimeWaitEnd::InProgress {
            self.held
                .get_or_insert_with(|| Histogram::new(2).expect("valid precision"))
                .record(held_ns.max(1))
                .ok();
            *self.ends.entry(end).or_default() += 1;
        }
        let tw = TimeWait {
            addrs: active.addrs,
            start_ns: active.start_ns,
            held_ns,
            end,
        };
        match active.flow {
            Some(mut flow) => {
                flow.time_wait = Some(tw);
                Finished::Flow(flow)
            }
            None => Finished::Orphan(tw),
        }
    }
}

#[path = "timewait_index.rs"]
mod index;

#[path = "timewait_flows.rs"]
mod flows;
pub use flows::holds_time_wait;

#[path = "timewait_reconcile.rs"]
mod reconcile;

#[path = "timewait_gauges.rs"]
mod gauges;
pub use gauges::Gauges;

#[cfg(test)]
#[path = "timewait_tests.rs"]
mod tests;
