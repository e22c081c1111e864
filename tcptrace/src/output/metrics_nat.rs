//! The NAT metrics: connections per destination and the backend a destination NAT sent them
//! to (`nat_connections_total{destination,backend}`: a Service address and its pods), and the
//! source NATs' port forecast for their 10 busiest destinations
//! (`snat_ports_held_ratio` and `snat_entries_held`, per NAT namespace, address and
//! destination). Both come from flows' conntrack entries, looked up as the flows end.
use std::collections::HashSet;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{model::events::FinishedFlow, state::snat::SnatForecast};

/// (destination, backend) pairs with series of their own; beyond, counted under
/// `backend="other"`.
pub const BACKENDS_SHOWN: usize = 1_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    destination: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnatLabels {
    netns: String,
    nat_address: String,
    destination: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Default)]
pub struct NatMetrics {
    backends: Family<BackendLabels, Counter>,
    shown: HashSet<BackendLabels>,
    held_ratio: Family<SnatLabels, FloatGauge>,
    held: Family<SnatLabels, FloatGauge>,
}

impl NatMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "nat_connections",
            "Connections this host opened whose destination conntrack translated (DNAT: a \
             Service address), by the destination they asked for and the backend they reached \
             (the first 1000 pairs; the rest under backend=\"other\")",
            self.backends.clone(),
        );
        registry.register(
            "snat_ports_held_ratio",
            "A source NAT's ports toward one destination held by conntrack entries (open \
             connections, and closed ones for nf_conntrack_tcp_timeout_time_wait) over the \
             ports its rule gives: past 1, SYNs through it are dropped or evict closed entries \
             (the 10 busiest)",
            self.held_ratio.clone(),
        );
        registry.register(
            "snat_entries_held",
            "conntrack entries a source NAT holds toward one destination (estimated from the \
             connections it translated: rate x (time open + TIME_WAIT timeout))",
            self.held.clone(),
        );
    }

    /// A flow ended: counted under its backend where a destination NAT translated it.
    pub fn flow_closed(&mut self, f: &FinishedFlow) {
        let Some(t) = f.translated.filter(|t| t.remote != f.addrs.remote) else {
            return;
        };
        let mut labels = BackendLabels {
            destination: f.addrs.remote.to_string(),
            backend: t.remote.to_string(),
        };
        if !self.shown.contains(&labels) {
            if self.shown.len() >= BACKENDS_SHOWN {
                labels.backend = "other".into();
            } else {
                self.shown.insert(labels.clone());
            }
        }
        self.backends.get_or_create(&labels).inc();
    }

    /// Each second: the busiest source NAT destinations' forecast.
    pub fn snat(&self, forecasts: &[SnatForecast]) {
        self.held_ratio.clear();
        self.held.clear();
        for f in forecasts {
            let labels = SnatLabels {
                netns: f.netns.to_string(),
                nat_address: f.nat.to_string(),
                destination: f.destination.to_string(),
            };
            self.held_ratio.get_or_create(&labels).set(f.utilization);
            self.held.get_or_create(&labels).set(f.held);
        }
    }
}
