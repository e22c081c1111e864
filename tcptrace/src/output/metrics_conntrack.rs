//! The conntrack metrics, per network namespace whose table holds entries (the 64 fullest):
//! `conntrack_entries{netns}` and `conntrack_max{netns}` (gauges, as read each time the
//! namespace is read), and conntrack's own counters `conntrack_insert_failed_total`,
//! `conntrack_drops_total` (a full table among others) and `conntrack_early_drops_total`.
use std::collections::HashMap;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::host::{conntrack::ConntrackTable, netns::Namespaces};

/// Namespaces with series of their own (the fullest tables).
pub const NAMESPACES_SHOWN: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetnsLabel {
    netns: String,
}

#[derive(Default)]
pub struct ConntrackMetrics {
    entries: Family<NetnsLabel, Gauge>,
    max: Family<NetnsLabel, Gauge>,
    insert_failed: Family<NetnsLabel, Counter>,
    drops: Family<NetnsLabel, Counter>,
    early_drops: Family<NetnsLabel, Counter>,
    /// The counters already added, per namespace.
    seen: HashMap<u32, ConntrackTable>,
}

impl ConntrackMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "conntrack_entries",
            "Entries in a network namespace's conntrack table (nf_conntrack_count), for the 64 \
             fullest tables",
            self.entries.clone(),
        );
        registry.register(
            "conntrack_max",
            "The most entries a namespace's conntrack table holds (nf_conntrack_max)",
            self.max.clone(),
        );
        registry.register(
            "conntrack_insert_failed",
            "conntrack entries that could not be inserted (a clash: a NAT out of ports, among \
             others), per namespace (since boot)",
            self.insert_failed.clone(),
        );
        registry.register(
            "conntrack_drops",
            "Packets conntrack dropped (a full table, among others), per namespace (since boot)",
            self.drops.clone(),
        );
        registry.register(
            "conntrack_early_drops",
            "conntrack entries evicted early to make room in a full table, per namespace (since \
             boot)",
            self.early_drops.clone(),
        );
    }

    /// Each second, from the namespaces as last read.
    pub fn update(&mut self, namespaces: &Namespaces) {
        let mut tables: Vec<(u32, ConntrackTable)> = (namespaces.by_inode.values())
            .filter_map(|ns| Some((ns.inode, ns.conntrack?)))
            .filter(|(_, t)| t.entries > 0 || t.drop > 0 || t.insert_failed > 0)
            .collect();
        tables.sort_by_key(|(_, t)| std::cmp::Reverse(t.entries));
        self.entries.clear();
        self.max.clear();
        for (inode, t) in tables.into_iter().take(NAMESPACES_SHOWN) {
            let label = NetnsLabel {
                netns: inode.to_string(),
            };
            self.entries.get_or_create(&label).set(t.entries as i64);
            self.max.get_or_create(&label).set(t.max as i64);
            let before = self.seen.insert(inode, t).unwrap_or_default();
            let add = |family: &Family<NetnsLabel, Counter>, now: u64, then: u64| {
                family
                    .get_or_create(&label)
                    .inc_by(now.saturating_sub(then));
            };
            add(&self.insert_failed, t.insert_failed, before.insert_failed);
            add(&self.drops, t.drop, before.drop);
            add(&self.early_drops, t.early_drop, before.early_drop);
        }
    }
}
