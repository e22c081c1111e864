//! TIME_WAIT made visible: every timewait socket's start, end and end cause, joined to the flow
//! that closed first; live gauges per destination and local address; the 4-tuple exhaustion
//! forecast.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    decode::FinishedFlow,
    model::{Endpoint, FlowAddrs, TcpState},
};

/// A cancel not followed by an expiry within this long ended TIME_WAIT early.
const SETTLE_NS: u64 = 20_000_000;
/// The window over which entry rates are measured.
pub const RATE_WINDOW_NS: u64 = 10_000_000_000;
/// The kernel's TIME_WAIT length (TCP_TIMEWAIT_LEN).
pub const TIME_WAIT_LEN_S: f64 = 60.0;

/// How a TIME_WAIT ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWaitEnd {
    /// The timer ran out.
    Expired,
    /// A new connection took the 4-tuple (tcp_tw_reuse).
    Reused,
    /// Removed early: RST or SYN in TIME_WAIT, the socket destroyed, the namespace gone.
    Killed,
    /// Still running when tracing stopped.
    InProgress,
}

impl TimeWaitEnd {
    pub fn name(self) -> &'static str {
        match self {
            TimeWaitEnd::Expired => "expired",
            TimeWaitEnd::Reused => "reused",
            TimeWaitEnd::Killed => "killed",
            TimeWaitEnd::InProgress => "in_progress",
        }
    }
}

/// One TIME_WAIT, measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWait {
    pub addrs: FlowAddrs,
    pub start_ns: u64,
    pub held_ns: u64,
    pub end: TimeWaitEnd,
}

struct Active {
    addrs: FlowAddrs,
    start_ns: u64,
    flow: Option<FinishedFlow>,
    cancel: Option<(u64, bool)>,
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
    /// START seen, its flow's CLOSE not yet: the flow joins by 4-tuple.
    awaiting_flow: HashMap<FlowAddrs, u64>,
    /// Entry times per (local addr, remote endpoint), for rates.
    entries: HashMap<(IpAddr, Endpoint), VecDeque<u64>>,
    held: Option<Histogram<u64>>,
    ends: BTreeMap<TimeWaitEnd, u64>,
    /// TIME_WAITs entered per destination, for the summary.
    by_destination: HashMap<Endpoint, u64>,
    client_side: u64,
    server_side: u64,
    pub overflows: u64,
    /// Sockets already in TIME_WAIT at start, with when they expire (kernel time).
    preexisting: Vec<(FlowAddrs, u64)>,
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
    pub fn preexisting(&mut self, sockets: impl IntoIterator<Item = (FlowAddrs, u64)>) {
        self.preexisting.extend(sockets);
    }

    pub fn preexisting_count(&self) -> u64 {
        self.preexisting.len() as u64
    }

    pub fn start(&mut self, timer: u64, addrs: FlowAddrs, ts_ns: u64) {
        if self.active.contains_key(&timer) {
            return; // re-armed (a FIN retransmitted into TIME_WAIT): the start stands
        }
        self.active.insert(
            timer,
            Active {
                addrs,
                start_ns: ts_ns,
                flow: None,
                cancel: None,
            },
        );
        self.awaiting_flow.insert(addrs, timer);
        let queue = self
            .entries
            .entry((addrs.local.addr, addrs.remote))
            .or_default();
        queue.push_back(ts_ns);
        while queue.front().is_some_and(|&t| t + RATE_WINDOW_NS < ts_ns) {
            queue.pop_front();
        }
        *self.by_destination.entry(addrs.remote).or_default() += 1;
    }

    /// A flow reached CLOSE: returned at once, or held until its TIME_WAIT ends.
    pub fn flow(&mut self, flow: FinishedFlow) -> Option<FinishedFlow> {
        if !enters_time_wait(&flow) {
            return Some(flow);
        }
        let Some(timer) = self.awaiting_flow.remove(&flow.addrs) else {
            return Some(flow); // no timewait socket: tcp_max_tw_buckets overflow, or untraced
        };
        match self.active.get_mut(&timer) {
            Some(active) => {
                let first = flow.lifecycle.path.first().map(|s| s.state);
                if first == Some(TcpState::SynRecv) {
                    self.server_side += 1;
                } else {
                    self.client_side += 1;
                }
                active.flow = Some(flow);
                None
            }
            None => Some(flow),
        }
    }

    pub fn cancel(&mut self, timer: u64, ts_ns: u64, in_connect: bool) {
        if let Some(active) = self.active.get_mut(&timer) {
            active.cancel = Some((ts_ns, in_connect));
        }
    }

    pub fn expire(&mut self, timer: u64, ts_ns: u64) -> Option<Finished> {
        let active = self.active.remove(&timer)?;
        Some(self.end(timer, active, ts_ns, TimeWaitEnd::Expired))
    }

    /// Ends the TIME_WAITs whose cancel was not followed by an expiry.
    pub fn settle(&mut self, now_ns: u64) -> Vec<Finished> {
        let done: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, a)| a.cancel.is_some_and(|(t, _)| t + SETTLE_NS < now_ns))
            .map(|(&timer, _)| timer)
            .collect();
        done.into_iter()
            .filter_map(|timer| {
                let active = self.active.remove(&timer)?;
                let (ts, in_connect) = active.cancel?;
                let end = if in_connect {
                    TimeWaitEnd::Reused
                } else {
                    TimeWaitEnd::Killed
                };
                Some(self.end(timer, active, ts, end))
            })
            .collect()
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
        if end != TimeWaitEnd::InProgress {
            self.held
                .get_or_insert_with(|| Histogram::new(3).expect("valid precision"))
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
                Finished::Flow(Box::new(flow))
            }
            None => Finished::Orphan(tw),
        }
    }

    /// Sockets in TIME_WAIT now, by destination and by local address.
    pub fn gauges(&self, now_ns: u64) -> Gauges {
        let mut by_destination: BTreeMap<Endpoint, (u64, f64)> = BTreeMap::new();
        let mut by_local: BTreeMap<IpAddr, u64> = BTreeMap::new();
        let live = self.active.values().map(|a| &a.addrs).chain(
            self.preexisting
                .iter()
                .filter(|(_, expires)| *expires > now_ns)
                .map(|(addrs, _)| addrs),
        );
        let mut total = 0;
        for addrs in live {
            total += 1;
            by_destination.entry(addrs.remote).or_default().0 += 1;
            *by_local.entry(addrs.local.addr).or_default() += 1;
        }
        for ((_, remote), queue) in &self.entries {
            let recent = queue
                .iter()
                .filter(|&&t| t + RATE_WINDOW_NS >= now_ns)
                .count();
            by_destination.entry(*remote).or_default().1 +=
                recent as f64 / (RATE_WINDOW_NS as f64 / 1e9);
        }
        Gauges {
            total,
            by_destination: by_destination
                .into_iter()
                .filter(|(_, (count, rate))| *count > 0 || *rate > 0.0)
                .collect(),
            by_local: by_local.into_iter().collect(),
        }
    }

    /// New TIME_WAITs per second for each (local addr, remote addr:port).
    pub fn entry_rates(&self, now_ns: u64) -> Vec<((IpAddr, Endpoint), f64)> {
        self.entries
            .iter()
            .map(|(&key, queue)| {
                let recent = queue
                    .iter()
                    .filter(|&&t| t + RATE_WINDOW_NS >= now_ns)
                    .count();
                (key, recent as f64 / (RATE_WINDOW_NS as f64 / 1e9))
            })
            .filter(|(_, rate)| *rate > 0.0)
            .collect()
    }

    pub fn summary(&self) -> TimeWaitSummary {
        let mut top: Vec<(Endpoint, u64)> =
            self.by_destination.iter().map(|(&k, &v)| (k, v)).collect();
        top.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        top.truncate(10);
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
        TimeWaitSummary {
            entered: self.by_destination.values().sum(),
            client_side: self.client_side,
            server_side: self.server_side,
            ends: self.ends.iter().map(|(&k, &v)| (k, v)).collect(),
            held: self
                .held
                .as_ref()
                .map(|h| [q(h, 0.5), q(h, 0.9), q(h, 0.99), h.max()]),
            top_destinations: top,
            overflows: self.overflows,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gauges {
    pub total: u64,
    /// Remote endpoint → (sockets in TIME_WAIT, new TIME_WAITs per second).
    pub by_destination: Vec<(Endpoint, (u64, f64))>,
    pub by_local: Vec<(IpAddr, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWaitSummary {
    pub entered: u64,
    /// TIME_WAITs held by the side that connected (clients) and by the side that accepted.
    pub client_side: u64,
    pub server_side: u64,
    pub ends: Vec<(TimeWaitEnd, u64)>,
    /// p50, p90, p99, max of the durations, when any ended.
    pub held: Option<[u64; 4]>,
    pub top_destinations: Vec<(Endpoint, u64)>,
    pub overflows: u64,
}

#[cfg(test)]
#[path = "timewait_tests.rs"]
mod tests;
