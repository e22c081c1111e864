//! What `tcptrace top` shows, aggregated from decoded events: per-destination and
//! per-local-service connection rates, open flows, TIME_WAIT, the 4-tuple exhaustion forecast,
//! retransmits, resets, keepalive timeouts and connect times; the header's host-wide rates and
//! flows open by state; the latest alerts.
use std::{
    collections::{HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use crate::host::netns::Namespaces;

use foldhash::HashMap;
use hdrhistogram::Histogram;

use crate::{
    model::cause::CloseCause,
    model::counters::KernelCounters,
    model::events::{FinishedFlow, Retransmit, Transition},
    model::port_failure::{Call, PortFailure},
    model::tcp::{Endpoint, FlowAddrs, TcpState},
};
use tcptrace_common::{stat, tcp_state};

use super::rate_window;
pub use super::rate_window::RateWindow;
/// Alerts kept for the pane.
const ALERTS_KEPT: usize = 200;
/// Flows followed at once for the open counts; beyond this, new flows are counted as
/// `untracked_flows` and not followed (memory stays bounded if CLOSE records are lost).
const FLOWS_FOLLOWED: usize = 1 << 20;

/// Which table a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// Remote endpoints this host connects to.
    Destination,
    /// Local endpoints this host accepts connections on.
    Service,
    /// Who the connections belong to: pods, containers, units.
    Workload,
}

impl GroupKind {
    /// The next table (`t`): destinations, local services, workloads.
    pub fn toggled(self) -> GroupKind {
        match self {
            GroupKind::Destination => GroupKind::Service,
            GroupKind::Service => GroupKind::Workload,
            GroupKind::Workload => GroupKind::Destination,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub kind: GroupKind,
    pub endpoint: Endpoint,
}

#[derive(Default)]
struct GroupStats {
    opened: RateWindow,
    open: u64,
    retransmits: u64,
    resets: u64,
    keepalive_timeouts: u64,
    /// connect() to it (destinations) or bind() to it (services) failed for want of a port.
    port_failures: u64,
    /// Handshake times (SYN_SENT or SYN_RECV held), since start.
    connect: Option<Histogram<u64>>,
    /// New TIME_WAITs per network namespace and peer address (the rest of the 4-tuple
    /// space), for the forecast.
    time_wait_entries: HashMap<(u32, IpAddr), RateWindow>,
    /// Smoothed RTTs of closed and open flows; packets of its closed flows this host dropped.
    rtt: RttSamples,
    drops: u64,
}

/// The header's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    pub transitions_per_s: f64,
    pub new_flows_per_s: f64,
    pub retransmits_per_s: f64,
    /// Flows open by state (sock_diag at start, then every transition).
    pub open_by_state: Vec<(TcpState, u64)>,
    pub time_wait: u64,
    /// TIME_WAITs the kernel skipped (tcp_max_tw_buckets full).
    pub time_wait_skipped: u64,
    /// The busiest 4-tuple space's forecast, with its namespace, in words.
    pub busiest_forecast: Option<String>,
    /// The fullest conntrack table, with its namespace, in words (where one holds entries).
    pub conntrack: Option<String>,
    /// The source NAT destination whose ports are the most held, in words.
    pub busiest_snat: Option<String>,
    pub lost: u64,
    pub untracked: u64,
}

#[derive(Clone)]
struct Followed {
    group: GroupKey,
    /// Its workload's row.
    workload: Option<Arc<str>>,
}

pub struct TopModel {
    /// When tracing started (kernel time): rates are over the time traced until the window
    /// is full.
    started_ns: u64,
    groups: HashMap<GroupKey, GroupStats>,
    workloads: WorkloadTable,
    flows: HashMap<u64, Followed>,
    listen_ports: HashSet<u16>,
    /// The namespaces the forecast takes its capacities from (the session's, each tick).
    namespaces: Namespaces,
    /// The listeners, by their local endpoint (each tick, where watched).
    listen: HashMap<Endpoint, ListenRow>,
    alerts: VecDeque<AlertLine>,
    /// Kernel counters at the previous tick, and when.
    previous: Option<(KernelCounters, u64)>,
    /// Open flows by kernel state number: the seed plus every transition since.
    open_seed: [i64; tcp_state::LIMIT as usize],
    counters_at_seed: Option<KernelCounters>,
    pub header: Header,
    pub untracked_flows: u64,
}

fn seconds(ts_ns: u64) -> u64 {
    ts_ns / 1_000_000_000
}

impl TopModel {
    pub fn new() -> TopModel {
        TopModel::started_at(crate::host::clock::Clock::ktime_now())
    }

    /// A model whose tracing started at `started_ns` (kernel time).
    pub fn started_at(started_ns: u64) -> TopModel {
        TopModel {
            started_ns,
            groups: HashMap::default(),
            workloads: WorkloadTable::default(),
            flows: HashMap::default(),
            listen_ports: HashSet::new(),
            namespaces: Namespaces::default(),
            listen: HashMap::default(),
            alerts: VecDeque::new(),
            previous: None,
            open_seed: [0; tcp_state::LIMIT as usize],
            counters_at_seed: None,
            header: Header::default(),
            untracked_flows: 0,
        }
    }

    /// Sockets open at start (sock_diag: state and 4-tuple) and the kernel counters read then.
    pub fn seed(
        &mut self,
        sockets: impl IntoIterator<Item = (u8, FlowAddrs)>,
        counters: KernelCounters,
    ) {
        let sockets: Vec<(u8, FlowAddrs)> = sockets.into_iter().collect();
        for &(state, addrs) in &sockets {
            if state == tcp_state::LISTEN {
                self.listen_ports.insert(addrs.local.port);
            }
        }
        for (state, addrs) in sockets {
            if let Some(slot) = self.open_seed.get_mut(usize::from(state)) {
                *slot += 1;
            }
            if state != tcp_state::LISTEN {
                self.group_mut(self.group_of(&addrs, None)).open += 1;
            }
        }
        self.counters_at_seed = Some(counters);
    }

    /// Which row a flow belongs to: a connect() is counted under its destination, an accepted
    /// connection under the local service; a flow first seen later is an accepted one when
    /// its local port is listening.
    fn group_of(&self, addrs: &FlowAddrs, first: Option<TcpState>) -> GroupKey {
        let service = match first {
            Some(TcpState::SynSent) => false,
            Some(TcpState::SynRecv) => true,
            _ => self.listen_ports.contains(&addrs.local.port),
        };
        if service {
            GroupKey {
                kind: GroupKind::Service,
                endpoint: addrs.local,
            }
        } else {
            GroupKey {
                kind: GroupKind::Destination,
                endpoint: addrs.remote,
            }
        }
    }

    fn group_mut(&mut self, key: GroupKey) -> &mut GroupStats {
        self.groups.entry(key).or_default()
    }

    pub fn transition(&mut self, t: &Transition) {
        let now_s = seconds(t.ts_ns);
        if t.new == TcpState::Listen {
            self.listen_ports.insert(t.addrs.local.port);
            return;
        }
        if t.old == TcpState::Listen {
            if t.new == TcpState::SynRecv {
                self.opened(t, TcpState::SynRecv, now_s);
            }
            return;
        }
        if t.old == TcpState::Close && t.new == TcpState::SynSent {
            self.opened(t, TcpState::SynSent, now_s);
            return;
        }
        if matches!(
            (t.old, t.new),
            (TcpState::SynSent | TcpState::SynRecv, TcpState::Established)
        ) {
            if let (Some(held), Some(f)) = (t.old_held_ns, self.flows.get(&t.skaddr)) {
                self.groups
                    .entry(f.group)
                    .or_default()
                    .connect
                    .get_or_insert_with(|| Histogram::new(2).expect("2 digits is valid"))
                    .record(held.max(1))
                    .ok();
                if let Some(w) = self.workloads.of(&f.workload) {
                    w.connected_in(held);
                }
            }
        }
        if t.new == TcpState::Close {
            let group = match self.flows.remove(&t.skaddr) {
                Some(f) => {
                    if let Some(w) = self.workloads.of(&f.workload) {
                        w.open = w.open.saturating_sub(1);
                    }
                    f.group
                }
                // Open before tracing started: counted in the seed under its 4-tuple.
                None => self.group_of(&t.addrs, None),
            };
            if let Some(g) = self.groups.get_mut(&group) {
                g.open = g.open.saturating_sub(1);
            }
        }
    }

    fn opened(&mut self, t: &Transition, first: TcpState, now_s: u64) {
        let group = self.group_of(&t.addrs, Some(first));
        let stats = self.group_mut(group);
        stats.opened.add(now_s);
        stats.open += 1;
        let workload = group_label(&t.workload);
        if let Some(w) = self.workloads.of(&workload) {
            w.opened.add(now_s);
            w.open += 1;
        }
        if self.flows.len() < FLOWS_FOLLOWED {
            self.flows.insert(t.skaddr, Followed { group, workload });
        } else {
            self.untracked_flows += 1;
        }
    }

    /// The workloads' TIME_WAITs the tracker no longer has (`live`: those it has).
    pub fn forget_ended_time_waits<'a>(&mut self, live: impl Iterator<Item = &'a FlowAddrs>) {
        self.workloads.forget_ended_time_waits(live);
    }

    /// A flow closed; `time_wait`: it entered a TIME_WAIT the tracker follows.
    pub fn flow_end(&mut self, f: &FinishedFlow, time_wait: bool) {
        let connected = f.lifecycle.path.first().map(|s| s.state) == Some(TcpState::SynSent);
        if time_wait && connected {
            if let Some(label) = group_label(&f.lifecycle.workload) {
                self.workloads.entered_time_wait(f.addrs, label);
            }
        }
        let first = f.lifecycle.path.first().map(|s| s.state);
        let group = self.group_of(&f.addrs, first);
        // A refused connect() is a reset received in SYN_SENT.
        let reset = matches!(
            f.cause,
            CloseCause::ResetReceived
                | CloseCause::ResetSent
                | CloseCause::Aborted
                | CloseCause::Refused
        );
        let keepalive = f.cause == CloseCause::KeepaliveTimeout;
        let now_s = seconds(f.ts_ns);
        let stats = self.group_mut(group);
        // Packets lost; a refused connect's NO_SOCKET was answered with a reset (RST shows it).
        stats.drops += f.drops.lost();
        if let Some(srtt) = f.vitals.and_then(|v| v.srtt_ns) {
            stats.rtt.closed(now_s, srtt);
        }
        if reset || keepalive {
            let stats = self.group_mut(group);
            stats.resets += u64::from(reset);
            stats.keepalive_timeouts += u64::from(keepalive);
            if let Some(w) = self.workloads.of(&group_label(&f.lifecycle.workload)) {
                w.resets += u64::from(reset);
                w.keepalive_timeouts += u64::from(keepalive);
            }
        }
    }

    pub fn retransmit(&mut self, r: &Retransmit) {
        let (group, workload) = match self.flows.get(&r.skaddr) {
            Some(f) => (f.group, f.workload.clone()),
            None => (self.group_of(&r.addrs, None), group_label(&r.workload)),
        };
        self.group_mut(group).retransmits += 1;
        if let Some(w) = self.workloads.of(&workload) {
            w.retransmits += 1;
        }
    }

    /// connect() toward a destination, or bind() to a local address, failed for want of a
    /// port.
    pub fn port_failure(&mut self, p: &PortFailure) {
        if let Some(w) = self.workloads.of(&group_label(&p.workload)) {
            w.port_failures += 1;
        }
        let Some(endpoint) = p.asked else {
            return;
        };
        let kind = match p.call {
            Call::Connect => GroupKind::Destination,
            Call::Bind => GroupKind::Service,
        };
        self.group_mut(GroupKey { kind, endpoint }).port_failures += 1;
    }

    /// A new TIME_WAIT (not a re-armed one).
    pub fn time_wait_entered(&mut self, addrs: &FlowAddrs, netns: u32, ts_ns: u64) {
        let group = self.group_of(addrs, None);
        let peer = match group.kind {
            GroupKind::Destination | GroupKind::Workload => addrs.local.addr,
            GroupKind::Service => addrs.remote.addr,
        };
        self.group_mut(group)
            .time_wait_entries
            .entry((netns, peer))
            .or_default()
            .add(seconds(ts_ns));
    }

    /// Once a second: the header's rates and open flows from the kernel counters.
    pub fn tick(&mut self, counters: KernelCounters, now_ns: u64, time_wait: (u64, u64)) {
        let delta = |index: u32, then: &KernelCounters, secs: f64| {
            counters.stat(index).saturating_sub(then.stat(index)) as f64 / secs
        };
        if let Some((then, at)) = &self.previous {
            let secs = (now_ns.saturating_sub(*at) as f64 / 1e9).max(1e-3);
            self.header.transitions_per_s = delta(stat::STATE_EVENTS, then, secs);
            self.header.new_flows_per_s = delta(stat::FLOWS_SEEN, then, secs);
            self.header.retransmits_per_s = delta(stat::RETRANSMITS, then, secs);
        }
        let mut open = self.open_seed;
        if let Some(seed) = &self.counters_at_seed {
            for (i, (&now, &then)) in counters
                .transitions
                .iter()
                .zip(&seed.transitions)
                .enumerate()
            {
                let n = now.saturating_sub(then) as i64;
                let (old, new) = tcptrace_common::transition_of_slot(i);
                let (old, new) = (usize::from(old), usize::from(new));
                // A SYN_RECV child is a new socket: its listener stays in LISTEN.
                let child = old == usize::from(tcp_state::LISTEN)
                    && new == usize::from(tcp_state::SYN_RECV);
                if old != usize::from(tcp_state::CLOSE) && !child {
                    open[old] -= n;
                }
                if new != usize::from(tcp_state::CLOSE) {
                    open[new] += n;
                }
            }
        }
        self.header.open_by_state = TcpState::ALL
            .iter()
            .filter(|s| {
                !matches!(
                    s,
                    TcpState::Close
                        | TcpState::TimeWait
                        | TcpState::NewSynRecv
                        | TcpState::BoundInactive
                )
            })
            .map(|&s| (s, open[usize::from(s.raw())].max(0) as u64))
            .collect();
        (self.header.time_wait, self.header.time_wait_skipped) = time_wait;
        self.header.busiest_forecast = self.busiest_forecast(
            seconds(now_ns),
            rate_window::window_s(self.started_ns, now_ns),
        );
        self.header.conntrack = fullest_conntrack(&self.namespaces);
        self.header.lost = counters.lost();
        self.header.untracked = counters.stat(stat::FLOW_TABLE_FULL) + self.untracked_flows;
        // Rows with nothing left to show go.
        let now_s = seconds(now_ns);
        self.groups.retain(|_, g| {
            g.time_wait_entries.retain(|_, w| !w.idle(now_s));
            g.open > 0
                || !g.opened.idle(now_s)
                || !g.time_wait_entries.is_empty()
                || g.retransmits + g.resets + g.keepalive_timeouts + g.port_failures > 0
        });
        self.workloads.retain_active(now_s);
        self.previous = Some((counters, now_ns));
    }
}

#[path = "model_alerts.rs"]
mod alerts;
#[path = "model_forecast.rs"]
mod forecast;
#[path = "model_listen.rs"]
mod listen;
#[path = "model_row.rs"]
mod row;
#[path = "model_vitals.rs"]
mod vitals;
#[path = "model_workload.rs"]
mod workload;
pub use alerts::AlertLine;
pub use listen::{ListenCell, ListenRow};
pub use row::Row;
use vitals::RttSamples;
pub use vitals::OPEN_SAMPLE_EVERY_S;
use workload::{group_label, WorkloadTable};

impl Default for TopModel {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
pub(crate) mod tests;

/// `conntrack 92% (92/100) netns 4026532770 "r"`: the fullest table of a namespace.
fn fullest_conntrack(namespaces: &Namespaces) -> Option<String> {
    let (ns, t) = (namespaces.by_inode.values())
        .filter_map(|ns| Some((ns, ns.conntrack.filter(|t| t.entries > 0)?)))
        .max_by(|a, b| a.1.fill().total_cmp(&b.1.fill()))?;
    Some(format!(
        "conntrack {:.0}% ({}/{}) netns {}",
        t.fill() * 100.0,
        t.entries,
        t.max,
        ns.label()
    ))
}
