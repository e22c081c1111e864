//! `top`'s third table: connections grouped by workload — a pod (`namespace/pod`), else a
//! container, a systemd unit, or a bare cgroup — with the same rates and counts as the
//! destinations' and services' tables.
use std::sync::Arc;

use foldhash::HashMap;
use hdrhistogram::Histogram;

use super::{RateWindow, Row};
use crate::{
    model::tcp::{Endpoint, FlowAddrs},
    model::workload::Workload,
};

/// A workload's row key: the pod for a pod's containers, else the workload's own label.
pub fn group_label(workload: &Workload) -> Option<Arc<str>> {
    if let Some(identity) = workload.identity.as_deref() {
        if let (Some(ns), Some(pod)) = (&identity.namespace, &identity.pod) {
            return Some(format!("{ns}/{pod}").into());
        }
    }
    workload.label().map(Arc::from)
}

#[derive(Default)]
pub struct WorkloadStats {
    pub opened: RateWindow,
    pub open: u64,
    pub retransmits: u64,
    pub resets: u64,
    pub keepalive_timeouts: u64,
    pub port_failures: u64,
    pub connect: Option<Histogram<u64>>,
}

impl WorkloadStats {
    pub fn connected_in(&mut self, held_ns: u64) {
        self.connect
            .get_or_insert_with(|| Histogram::new(2).expect("2 digits is valid"))
            .record(held_ns.max(1))
            .ok();
    }

    fn idle(&self, now_s: u64) -> bool {
        self.open == 0
            && self.opened.idle(now_s)
            && self.retransmits + self.resets + self.keepalive_timeouts + self.port_failures == 0
    }
}

/// The workloads' rows, by label.
#[derive(Default)]
pub struct WorkloadTable {
    pub groups: HashMap<Arc<str>, WorkloadStats>,
    /// The TIME_WAITs a workload's connections hold (they connected, and closed first: the
    /// pod's ephemeral ports, as `tcptrace_workload_time_waits_total` counts them), by
    /// 4-tuple, until the tracker no longer has them.
    time_waits: HashMap<FlowAddrs, Arc<str>>,
}

impl WorkloadTable {
    /// The stats of a workload's row (none for an unknown cgroup).
    pub fn of(&mut self, label: &Option<Arc<str>>) -> Option<&mut WorkloadStats> {
        let label = label.as_ref()?;
        Some(self.groups.entry(label.clone()).or_default())
    }

    /// Rows with nothing left to show go (a workload holding TIME_WAITs stays).
    pub fn retain_active(&mut self, now_s: u64) {
        let holding: std::collections::HashSet<&Arc<str>> = self.time_waits.values().collect();
        self.groups
            .retain(|label, g| !g.idle(now_s) || holding.contains(label));
    }

    /// A connection of the workload `label` closed first and entered TIME_WAIT.
    pub fn entered_time_wait(&mut self, addrs: FlowAddrs, label: Arc<str>) {
        self.time_waits.insert(addrs, label);
    }

    /// Forgets the TIME_WAITs that ended (`live`: the tracker's now).
    pub fn forget_ended_time_waits<'a>(&mut self, live: impl Iterator<Item = &'a FlowAddrs>) {
        if self.time_waits.is_empty() {
            return;
        }
        let live: std::collections::HashSet<&FlowAddrs> = live.collect();
        self.time_waits.retain(|addrs, _| live.contains(addrs));
    }

    pub fn rows(&self, now_s: u64, window_s: f64) -> Vec<Row> {
        let nowhere = Endpoint::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        let mut time_waits: HashMap<&Arc<str>, u64> = HashMap::default();
        for label in self.time_waits.values() {
            *time_waits.entry(label).or_default() += 1;
        }
        self.groups
            .iter()
            .map(|(label, g)| Row {
                label: Some(label.to_string()),
                conn_per_s: g.opened.per_second(now_s, window_s),
                open: g.open,
                time_wait: time_waits.get(label).copied().unwrap_or(0),
                retransmits: g.retransmits,
                resets: g.resets,
                keepalive_timeouts: g.keepalive_timeouts,
                port_failures: g.port_failures,
                connect_p99_ns: g.connect.as_ref().map(|h| h.value_at_quantile(0.99)),
                ..Row::empty(nowhere)
            })
            .collect()
    }
}
