//! TIME_WAIT made visible: every timewait socket's start, end and end cause, joined to the flow
//! that closed first; live gauges per destination and local address; the 4-tuple exhaustion
//! forecast.
use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

// A fast hasher with a per-process seed: keys are addresses and ports peers choose.
use foldhash::HashMap;
use hdrhistogram::Histogram;

use crate::{
    model::events::{FinishedFlow, TimeWaitFlow},
    model::tcp::{Endpoint, FlowAddrs, TcpState},
};

/// A cancel not followed by an expiry within this long ended TIME_WAIT early.
const SETTLE_NS: u64 = 20_000_000;
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
    cancel: Option<(u64, bool)>,
    /// Whether the accepting side holds it, as its flow said when joined (`None`: flow not
    /// seen). The accepting side's is counted under its local service, not under the
    /// client's ephemeral port.
    accepted: Option<bool>,
}

/// What the tracker hands back to be printed.
pub enum Finished {
    /// A flow whose TIME_WAIT ended (or that never had one).
    Flow(Box<FinishedFlow>),
    /// A TIME_WAIT whose flow was not seen (it closed before tracing, or was untracked).
    Orphan(TimeWait),
}

#[derive(Default)]
pub struct TimeWaitTracker {
    active: HashMap<u64, Active>,
    /// Cancels in the order they came (time, timer): settled from the front, so that a
    /// settle pass costs what it settles, not the number of sockets in TIME_WAIT.
    cancels: VecDeque<(u64, u64)>,
    /// START seen, its flow's CLOSE not yet: the flow joins by 4-tuple.
    awaiting_flow: HashMap<FlowAddrs, u64>,
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

/// A start this soon after a cancel of the same timer, for the same 4-tuple and not inside a
/// connect(), is the same TIME_WAIT re-armed (mod_timer), not a new one.
const REARM_NS: u64 = 1_000_000;

fn is_rearm(
    a: &Active,
    addrs: &FlowAddrs,
    cancelled_ns: u64,
    in_connect: bool,
    ts_ns: u64,
) -> bool {
    !in_connect && a.addrs == *addrs && ts_ns.saturating_sub(cancelled_ns) < REARM_NS
}

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

/// Whether a finished flow is one that enters TIME_WAIT (it closed first and the FIN exchange
/// completed).
fn enters_time_wait(flow: &FinishedFlow) -> bool {
    let path = &flow.lifecycle.path;
    path.len() >= 2
        && matches!(
            path[path.len() - 2].state,
            TcpState::FinWait2 | TcpState::Closing
        )
}

impl TimeWaitTracker {
    pub fn new() -> Self {
        Self::default()
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

    /// Whether a start at `timer` re-arms a TIME_WAIT already running there (a FIN
    /// retransmitted into TIME_WAIT) rather than starting a new one.
    pub fn rearms(&self, timer: u64, addrs: &FlowAddrs, ts_ns: u64) -> bool {
        self.active.get(&timer).is_some_and(|a| match a.cancel {
            None => true,
            Some((cancelled_ns, in_connect)) => is_rearm(a, addrs, cancelled_ns, in_connect, ts_ns),
        })
    }

    /// The 4-tuples of every socket in TIME_WAIT now, those from before tracing included
    /// (call [`Self::expire_preexisting`] first), each with whether the accepting side
    /// holds it (`Some(true)`), the connecting side (`Some(false)`), or its flow was not seen.
    pub fn live_addrs(&self) -> impl Iterator<Item = (&FlowAddrs, Option<bool>)> {
        self.active
            .values()
            .map(|a| (&a.addrs, a.accepted))
            .chain(self.preexisting.iter().map(|(addrs, _)| (addrs, None)))
    }

    /// A TIME_WAIT starts; returns an earlier one at the same timer address that was
    /// cancelled and had not settled yet (its memory was reused: it ended).
    pub fn start(
        &mut self,
        timer: u64,
        addrs: FlowAddrs,
        netns: u32,
        ts_ns: u64,
    ) -> Option<Finished> {
        let mut ended = None;
        if let Some(existing) = self.active.get_mut(&timer) {
            let Some((cancelled_ns, in_connect)) = existing.cancel else {
                return None; // re-armed (a FIN retransmitted into TIME_WAIT): the start stands
            };
            if is_rearm(existing, &addrs, cancelled_ns, in_connect, ts_ns) {
                // mod_timer on a pending timer: the kernel reports a cancel, then the start
                // (FIN_WAIT2 becoming TIME_WAIT, a FIN retransmitted into it). It goes on.
                existing.cancel = None;
                return None;
            }
            let end = TimeWaitEnd::early(in_connect);
            if let Some(old) = self.active.remove(&timer) {
                ended = Some(self.end(timer, old, cancelled_ns, end));
            }
        }
        self.active.insert(
            timer,
            Active {
                addrs,
                netns,
                start_ns: ts_ns,
                flow: None,
                cancel: None,
                accepted: None,
            },
        );
        self.awaiting_flow.insert(addrs, timer);
        let queue = self
            .entries
            .entry((netns, addrs.local.addr, addrs.remote))
            .or_default();
        queue.push_back(ts_ns);
        forget_old_entries(queue, ts_ns);
        *self.by_destination.entry(addrs.remote).or_default() += 1;
        self.entered += 1;
        *self
            .live_by_destination
            .entry((netns, addrs.remote))
            .or_default() += 1;
        *self.live_by_local.entry(addrs.local.addr).or_default() += 1;
        *self.live_by_netns.entry(netns).or_default() += 1;
        ended
    }

    /// A flow reached CLOSE: returned at once, or held until its TIME_WAIT ends. Where flows
    /// are not printed (`keep` false), only its side is counted: nothing is held. (The
    /// dispatcher does the two steps apart: it prints the flow in between.)
    #[cfg(test)]
    pub fn flow(&mut self, flow: Box<FinishedFlow>, keep: bool) -> Option<Box<FinishedFlow>> {
        match self.join_flow(&flow) {
            None => Some(flow),
            Some(timer) => {
                if keep {
                    self.hold(timer, flow);
                }
                None
            }
        }
    }

    /// A flow reached CLOSE: joins the TIME_WAIT it entered (its side is counted), and
    /// returns that TIME_WAIT's timer; `None` where it entered none that is traced.
    pub fn join_flow(&mut self, flow: &FinishedFlow) -> Option<u64> {
        if !enters_time_wait(flow) {
            return None;
        }
        self.join(&flow.addrs, flow.lifecycle.accepted())
    }

    /// Holds a joined flow until its TIME_WAIT ends (handed back then, by its end).
    pub fn hold(&mut self, timer: u64, flow: Box<FinishedFlow>) {
        if let Some(active) = self.active.get_mut(&timer) {
            active.flow = Some(flow);
        }
    }

    /// A flow entering TIME_WAIT, sent in brief (`tcptrace metrics`): its side is counted.
    pub fn brief_flow(&mut self, flow: &TimeWaitFlow) {
        let _ = self.join(&flow.addrs, flow.accepted);
    }

    /// Joins a flow entering TIME_WAIT to its timewait socket: `None` when there is none to
    /// join (no timewait socket: tcp_max_tw_buckets overflow, or untraced; or that TIME_WAIT
    /// holds a flow already — its timer address and 4-tuple came back before its end was
    /// seen — and this one is printed now rather than replace it), else the TIME_WAIT's timer.
    fn join(&mut self, addrs: &FlowAddrs, accepted: bool) -> Option<u64> {
        let timer = self.awaiting_flow.remove(addrs)?;
        let active = self.active.get_mut(&timer)?;
        if active.flow.is_some() {
            return None;
        }
        let (addrs, netns, start_ns) = (active.addrs, active.netns, active.start_ns);
        active.accepted = Some(accepted);
        if accepted {
            self.server_side += 1;
            self.not_a_destination(&addrs, netns, start_ns);
        } else {
            self.client_side += 1;
        }
        Some(timer)
    }

    /// The accepting side's TIME_WAIT: its entry time and count leave the per-destination
    /// maps (entry rates and forecasts are the connecting side's: its ephemeral ports run
    /// out) for its local service's, where it stays until it ends.
    fn not_a_destination(&mut self, addrs: &FlowAddrs, netns: u32, start_ns: u64) {
        decrement(&mut self.live_by_destination, (netns, addrs.remote));
        *self
            .live_by_service
            .entry((netns, addrs.local))
            .or_default() += 1;
        let queue = self
            .service_entries
            .entry((netns, addrs.local))
            .or_default();
        queue.push_back(start_ns);
        forget_old_entries(queue, start_ns);
        let key = (netns, addrs.local.addr, addrs.remote);
        if let Some(queue) = self.entries.get_mut(&key) {
            if let Some(at) = queue.iter().rposition(|&t| t == start_ns) {
                queue.remove(at);
            }
            if queue.is_empty() {
                self.entries.remove(&key);
            }
        }
        decrement(&mut self.by_destination, addrs.remote);
    }

    pub fn cancel(&mut self, timer: u64, ts_ns: u64, in_connect: bool) {
        if let Some(active) = self.active.get_mut(&timer) {
            active.cancel = Some((ts_ns, in_connect));
            self.cancels.push_back((ts_ns, timer));
        }
    }

    pub fn expire(&mut self, timer: u64, ts_ns: u64) -> Option<Finished> {
        let active = self.active.remove(&timer)?;
        Some(self.end(timer, active, ts_ns, TimeWaitEnd::Expired))
    }

    /// Ends the TIME_WAITs whose cancel was not followed by an expiry.
    pub fn settle(&mut self, now_ns: u64) -> Vec<Finished> {
        let mut ended = Vec::new();
        while let Some(&(ts, timer)) = self.cancels.front() {
            if ts + SETTLE_NS >= now_ns {
                break;
            }
            self.cancels.pop_front();
            // Still cancelled at that time (not expired since, nor a new TIME_WAIT on the
            // same timer address).
            let current = self
                .active
                .get(&timer)
                .is_some_and(|a| a.cancel.is_some_and(|(t, _)| t == ts));
            if !current {
                continue;
            }
            let Some(active) = self.active.remove(&timer) else {
                continue;
            };
            let end = TimeWaitEnd::early(active.cancel.is_some_and(|(_, c)| c));
            ended.push(self.end(timer, active, ts, end));
        }
        ended
    }

    /// Everything still in TIME_WAIT when tracing stops.
    pub fn drain_in_progress(&mut self, now_ns: u64) -> Vec<Finished> {
        let active: Vec<(u64, Active)> = self.active.drain().collect();
        active
            .into_iter()
            .map(|(t, a)| self.end(t, a, now_ns, TimeWaitEnd::InProgress))
            .collect()
    }

    fn end(&mut self, timer: u64, active: Active, end_ns: u64, end: TimeWaitEnd) -> Finished {
        let held_ns = end_ns.saturating_sub(active.start_ns);
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
        if end != TimeWaitEnd::InProgress {
            self.held
                .get_or_insert_with(|| Histogram::new(2).expect("valid precision"))
                .record(held_ns.max(1))
                .ok();
            *self.ends.entry(end).or_default() += 1;
        }
        if self.awaiting_flow.get(&active.addrs) == Some(&timer) {
            self.awaiting_flow.remove(&active.addrs);
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

#[path = "timewait_gauges.rs"]
mod gauges;
pub use gauges::Gauges;

#[cfg(test)]
#[path = "timewait_tests.rs"]
mod tests;
