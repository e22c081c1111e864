//! The tracker's gauges (sockets in TIME_WAIT now by destination, by local service and by
//! local address, entry rates) and its summary.
use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
};

use super::{
    forget_old_entries, recent_entries, shrink_if_sparse, RateKey, TimeWaitTracker, RATE_WINDOW_NS,
    SPARSE_FROM,
};
use crate::{
    model::tcp::Endpoint,
    state::{quantiles::summary_quantiles, summary::TimeWaitSummary},
};

impl TimeWaitTracker {
    /// Sockets in TIME_WAIT now, by destination, by local service and by local address
    /// (call [`Self::expire_preexisting`] first).
    pub fn gauges(&self, now_ns: u64) -> Gauges {
        let by_local: BTreeMap<IpAddr, u64> =
            self.live_by_local.iter().map(|(&l, &n)| (l, n)).collect();
        // Pre-existing sockets count until `expire_preexisting` is called past their expiry.
        let total = (self.active.len() + self.elsewhere.len() + self.preexisting.len()) as u64;
        Gauges {
            total,
            by_service: endpoint_rows(
                self.live_by_service
                    .iter()
                    .map(|(&(_, local), &n)| (local, n)),
                self.service_entries
                    .iter()
                    .map(|((_, local), q)| (*local, q)),
                now_ns,
            ),
            by_destination: endpoint_rows(
                self.live_by_destination.iter().map(|(&(_, d), &n)| (d, n)),
                self.entries.iter().map(|((_, _, remote), q)| (*remote, q)),
                now_ns,
            ),
            by_local: by_local.into_iter().collect(),
        }
    }

    pub fn summary(&self) -> TimeWaitSummary {
        let top_ten = |counts: &foldhash::HashMap<Endpoint, u64>| {
            let mut top: Vec<(Endpoint, u64)> = counts.iter().map(|(&k, &v)| (k, v)).collect();
            top.sort_by_key(|&(e, n)| (std::cmp::Reverse(n), e));
            top.truncate(10);
            top
        };
        let top = top_ten(&self.by_destination);
        TimeWaitSummary {
            entered: self.entered,
            client_side: self.client_side,
            server_side: self.server_side,
            ends: self.ends.iter().map(|(&k, &v)| (k, v)).collect(),
            held: self.held.as_ref().map(summary_quantiles),
            top_destinations: top,
            overflows: self.overflows,
            overflow_destinations: top_ten(&self.overflow_destinations),
            preexisting: self.preexisting_count(),
        }
    }
}

/// Upkeep and the per-destination views the forecast and the port-failure alerts read.
impl TimeWaitTracker {
    /// Forgets the entry times that left the rate window, and the pairs left with none (a
    /// server's TIME_WAITs are keyed by each client's ephemeral port: without this the pairs
    /// would accumulate, and every gauge would visit them all).
    pub fn prune_entry_rates(&mut self, now_ns: u64) {
        self.entries.retain(|_, queue| {
            forget_old_entries(queue, now_ns);
            !queue.is_empty()
        });
        self.service_entries.retain(|_, queue| {
            forget_old_entries(queue, now_ns);
            !queue.is_empty()
        });
    }

    /// Gives memory back after a burst: the maps that a burst grew and that are now mostly
    /// empty are shrunk (a hash map keeps its capacity otherwise: a server's burst of
    /// TIME_WAITs keyed by client ports left ~90 MB behind in the soak). Returns whether any
    /// was.
    pub fn shrink_sparse_maps(&mut self) -> bool {
        let mut shrunk = shrink_if_sparse(&mut self.entries);
        shrunk |= shrink_if_sparse(&mut self.active);
        shrunk |= shrink_if_sparse(&mut self.elsewhere);
        shrunk |= shrink_if_sparse(&mut self.closing);
        shrunk |= shrink_if_sparse(&mut self.by_timer);
        shrunk |= shrink_if_sparse(&mut self.live_by_destination);
        shrunk |= shrink_if_sparse(&mut self.live_by_service);
        shrunk |= shrink_if_sparse(&mut self.service_entries);
        shrunk |= shrink_if_sparse(&mut self.by_destination);
        shrunk |= shrink_if_sparse(&mut self.live_by_local);
        shrunk |= shrink_if_sparse(&mut self.live_by_netns);
        if self.cancels.capacity() > SPARSE_FROM && self.cancels.len() < self.cancels.capacity() / 4
        {
            self.cancels.shrink_to(self.cancels.len() * 2);
            shrunk = true;
        }
        shrunk
    }

    /// Sockets in TIME_WAIT now toward `remote` in namespace `netns`.
    pub fn time_waits_toward(&self, netns: u32, remote: Endpoint) -> u64 {
        self.live_by_destination
            .get(&(netns, remote))
            .copied()
            .unwrap_or(0)
    }

    /// The network namespaces holding TIME_WAITs now (tracked since start).
    pub fn namespaces_in_use(&self) -> impl Iterator<Item = u32> + '_ {
        self.live_by_netns.keys().copied()
    }

    /// New TIME_WAITs per second for each (namespace, local addr, remote addr:port).
    pub fn entry_rates(&self, now_ns: u64) -> Vec<(RateKey, f64)> {
        self.entries
            .iter()
            .map(|(&key, queue)| {
                let recent = recent_entries(queue, now_ns);
                (key, recent as f64 / (RATE_WINDOW_NS as f64 / 1e9))
            })
            .filter(|(_, rate)| *rate > 0.0)
            .collect()
    }
}

/// Endpoint → (sockets in TIME_WAIT now, new ones per second), summed over namespaces (and
/// local addresses), the endpoints with neither left out.
fn endpoint_rows<'a>(
    live: impl Iterator<Item = (Endpoint, u64)>,
    entries: impl Iterator<Item = (Endpoint, &'a VecDeque<u64>)>,
    now_ns: u64,
) -> Vec<(Endpoint, (u64, f64))> {
    let mut rows: BTreeMap<Endpoint, (u64, f64)> = BTreeMap::new();
    for (endpoint, n) in live {
        rows.entry(endpoint).or_default().0 += n;
    }
    for (endpoint, queue) in entries {
        let recent = recent_entries(queue, now_ns);
        rows.entry(endpoint).or_default().1 += recent as f64 / (RATE_WINDOW_NS as f64 / 1e9);
    }
    rows.into_iter()
        .filter(|(_, (count, rate))| *count > 0 || *rate > 0.0)
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gauges {
    pub total: u64,
    /// Remote endpoint → (sockets in TIME_WAIT, new TIME_WAITs per second): the connecting
    /// side's, and those whose flow was not seen.
    pub by_destination: Vec<(Endpoint, (u64, f64))>,
    /// Local service → (sockets in TIME_WAIT, new per second): the accepting side's (a server
    /// that closed first), never keyed by its clients' ephemeral ports.
    pub by_service: Vec<(Endpoint, (u64, f64))>,
    pub by_local: Vec<(IpAddr, u64)>,
}
