//! The TIME_WAIT metrics: sockets now by destination (the connecting side's) and by local
//! service (the accepting side's: a server that closed first, never one series per client
//! port), how long they lasted, the exhaustion forecast and the overflows.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{
    model::tcp::Endpoint,
    state::{forecast::Forecast, timewait::Gauges},
};

/// Destinations (and services) with a series of their own; the rest sum under `other`.
pub const TOP_DESTINATIONS: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Destination {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FourTupleSpace {
    /// The network namespace's inode, and its name under /run/netns ("" without one).
    netns: String,
    netns_name: String,
    local: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkNamespace {
    netns: String,
}

pub struct TimeWaitMetrics {
    sockets: Family<Destination, Gauge>,
    service_sockets: Family<Service, Gauge>,
    seconds: Histogram,
    forecast: Family<FourTupleSpace, Gauge<f64, std::sync::atomic::AtomicU64>>,
    overflows: Family<NetworkNamespace, Counter>,
}

impl Default for TimeWaitMetrics {
    fn default() -> Self {
        let m = TimeWaitMetrics {
            sockets: Family::default(),
            service_sockets: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.5, 2.0, 10)),
            forecast: Family::default(),
            overflows: Family::default(),
        };
        // Present from the first scrape: nothing in TIME_WAIT yet is a 0, not a missing series.
        m.gauges(&Gauges::default());
        m
    }
}

impl TimeWaitMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "time_wait_sockets",
            "Sockets in TIME_WAIT now held by the connecting side (and those whose flow was not \
             seen), by destination (top 10, then other)",
            self.sockets.clone(),
        );
        registry.register(
            "time_wait_service_sockets",
            "Sockets in TIME_WAIT now held by the accepting side (a server that closed first), \
             by local service (top 10, then other)",
            self.service_sockets.clone(),
        );
        registry.register(
            "time_wait_duration_seconds",
            "How long TIME_WAITs lasted",
            self.seconds.clone(),
        );
        registry.register(
            "time_wait_forecast_ratio",
            "4-tuple exhaustion forecast: new connections per second over what the ephemeral \
             ports sustain with 60 s of TIME_WAIT, per (local address, destination); top 10",
            self.forecast.clone(),
        );
        registry.register(
            "time_wait_overflows",
            "TIME_WAITs the kernel skipped because net.ipv4.tcp_max_tw_buckets was full, per \
             network namespace (inode)",
            self.overflows.clone(),
        );
    }

    pub fn ended(&self, held_ns: u64) {
        self.seconds.observe(held_ns as f64 / 1e9);
    }

    /// The sockets in TIME_WAIT now: the busiest destinations and services, then `other`.
    pub fn gauges(&self, gauges: &Gauges) {
        self.sockets.clear();
        self.service_sockets.clear();
        top_then_other(&gauges.by_destination, |label, n| {
            self.sockets
                .get_or_create(&Destination { destination: label })
                .set(n)
        });
        top_then_other(&gauges.by_service, |label, n| {
            self.service_sockets
                .get_or_create(&Service { service: label })
                .set(n)
        });
    }

    /// The exhaustion forecast's busiest 4-tuple spaces (the caller passes the top ones).
    pub fn forecasts(&self, forecasts: &[Forecast]) {
        self.forecast.clear();
        for f in forecasts {
            self.forecast
                .get_or_create(&FourTupleSpace {
                    netns: f.netns.to_string(),
                    netns_name: f.netns_name.clone().unwrap_or_default(),
                    local: f.laddr.to_string(),
                    destination: Endpoint::new(f.raddr, f.rport).to_string(),
                })
                .set(f.utilization);
        }
    }

    /// TIME_WAITs skipped by a full tcp_max_tw_buckets in a namespace since the last call.
    pub fn overflowed(&self, netns: u32, newly: u64) {
        self.overflows
            .get_or_create(&NetworkNamespace {
                netns: netns.to_string(),
            })
            .inc_by(newly);
    }
}

/// The busiest [`TOP_DESTINATIONS`] rows under their own label, the rest summed under
/// `other` (always set, 0 when there is no rest).
fn top_then_other(rows: &[(Endpoint, (u64, f64))], mut set: impl FnMut(String, i64) -> i64) {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|d| std::cmp::Reverse(d.1 .0));
    let mut other = 0;
    for (i, (endpoint, (count, _))) in rows.iter().enumerate() {
        if i < TOP_DESTINATIONS {
            set(endpoint.to_string(), *count as i64);
        } else {
            other += count;
        }
    }
    set("other".into(), other as i64);
}
