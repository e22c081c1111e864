//! The listen-queue metrics: `listen_queue_depth{netns,listener}` and
//! `listen_backlog{netns,listener}` (gauges of the 64 fullest listeners, set each second),
//! `listen_drops_total{reason}` (`accept_queue_full`: ListenOverflows; `other`: the rest of
//! ListenDrops, summed over namespaces) and `syncookies_sent_total`.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::state::listeners::{ListenTotals, ListenerWatch};

/// Listeners with gauges of their own (the fullest, then those that dropped most).
pub const LISTENERS_SHOWN: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    netns: String,
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReason {
    reason: &'static str,
}

#[derive(Default)]
pub struct ListenMetrics {
    depth: Family<ListenerLabel, Gauge>,
    backlog: Family<ListenerLabel, Gauge>,
    drops: Family<DropReason, Counter>,
    cookies: Counter,
    seen: ListenTotals,
}

impl ListenMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "listen_queue_depth",
            "Connections waiting in a listener's accept queue (ss -lt Recv-Q), for the 64 \
             fullest listeners",
            self.depth.clone(),
        );
        registry.register(
            "listen_backlog",
            "A listener's backlog (ss -lt Send-Q), for the same listeners",
            self.backlog.clone(),
        );
        registry.register(
            "listen_drops",
            "Handshakes listeners dropped: accept_queue_full (ListenOverflows) or other (the \
             rest of ListenDrops: a full SYN queue without cookies, …)",
            self.drops.clone(),
        );
        registry.register(
            "syncookies_sent",
            "SYN cookies sent (a SYN queue full, or net.ipv4.tcp_syncookies=2)",
            self.cookies.clone(),
        );
        for reason in ["accept_queue_full", "other"] {
            let _ = self.drops.get_or_create(&DropReason { reason });
        }
    }

    /// Once a second, from the watch.
    pub fn update(&mut self, watch: &ListenerWatch) {
        let mut listeners: Vec<_> = watch.listeners().collect();
        listeners.sort_by_key(|l| std::cmp::Reverse((l.queue, l.dropped)));
        self.depth.clear();
        self.backlog.clear();
        for l in listeners.into_iter().take(LISTENERS_SHOWN) {
            let label = ListenerLabel {
                netns: l.netns.to_string(),
                listener: l.endpoint.to_string(),
            };
            self.depth.get_or_create(&label).set(i64::from(l.queue));
            self.backlog.get_or_create(&label).set(i64::from(l.backlog));
        }
        let now = watch.totals;
        let add = |family: &Family<DropReason, Counter>, reason, now: u64, then: u64| {
            family
                .get_or_create(&DropReason { reason })
                .inc_by(now.saturating_sub(then));
        };
        add(
            &self.drops,
            "accept_queue_full",
            now.accept_queue_full,
            self.seen.accept_queue_full,
        );
        add(&self.drops, "other", now.other_drops, self.seen.other_drops);
        self.cookies.inc_by(
            now.syncookies_sent
                .saturating_sub(self.seen.syncookies_sent),
        );
        self.seen = now;
    }
}
