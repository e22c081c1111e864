//! What lies beside the state machine, as metrics: the smoothed RTT of every flow at close
//! (a histogram), the bytes each local service and destination carried, and the packets the
//! kernel dropped by its reason. Labels are bounded as the other per-destination metrics': the
//! first [`LABELLED`] services and destinations get series of their own, later ones count
//! under `other` (and the flows so folded are counted).
use std::collections::HashSet;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{model::events::FinishedFlow, model::facts::HostFacts};

/// Services and destinations with a series of their own.
pub const LABELLED: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceBytes {
    service: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationBytes {
    destination: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReason {
    reason: String,
}

pub struct VitalsMetrics {
    rtt_seconds: Histogram,
    service_bytes: Family<ServiceBytes, Counter>,
    destination_bytes: Family<DestinationBytes, Counter>,
    unlabelled_flows: Counter,
    drops: Family<DropReason, Counter>,
    /// The labels given out: services, destinations.
    labelled: [HashSet<String>; 2],
    /// The kernel's drop counts by reason number already added.
    drops_seen: Vec<u64>,
}

/// The drop reasons of the incidents tcptrace is for, present at 0 from the first scrape (a
/// rate over them needs the series before the first drop); others appear as they happen.
const DROP_REASONS_FROM_START: [&str; 8] = [
    "NO_SOCKET",
    "NETFILTER_DROP",
    "TCP_RFC7323_PAWS",
    "TCP_RFC7323_TW_PAWS",
    "TCP_LISTEN_OVERFLOW",
    "SOCKET_BACKLOG",
    "TCP_INVALID_SEQUENCE",
    "TCP_RESET",
];

impl Default for VitalsMetrics {
    fn default() -> Self {
        let drops: Family<DropReason, Counter> = Family::default();
        for reason in DROP_REASONS_FROM_START {
            drop(drops.get_or_create(&DropReason {
                reason: reason.into(),
            }));
        }
        VitalsMetrics {
            // 50 µs to ~6.5 s.
            rtt_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            service_bytes: Family::default(),
            destination_bytes: Family::default(),
            unlabelled_flows: Counter::default(),
            drops,
            labelled: Default::default(),
            drops_seen: Vec::new(),
        }
    }
}

impl VitalsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "flow_rtt_seconds",
            "Smoothed RTT of each flow when it closed (flows that took an RTT sample)",
            self.rtt_seconds.clone(),
        );
        registry.register(
            "service_bytes",
            "Bytes carried by the flows a local service accepted, by direction (sent: acked by \
             the peer; the first 64 services, later ones under \"other\")",
            self.service_bytes.clone(),
        );
        registry.register(
            "destination_bytes",
            "Bytes carried by the flows to a destination, by direction (the first 64 \
             destinations, later ones under \"other\")",
            self.destination_bytes.clone(),
        );
        registry.register(
            "bytes_unlabelled_flows",
            "Flows whose bytes were counted under \"other\" (the service or destination cap)",
            self.unlabelled_flows.clone(),
        );
        registry.register(
            "drops",
            "TCP packets the kernel dropped, by its reason (enum skb_drop_reason)",
            self.drops.clone(),
        );
    }

    /// The label for `endpoint` in table `i` (0 services, 1 destinations): itself while under
    /// the cap, else `other`.
    fn label(&mut self, i: usize, endpoint: String) -> String {
        let seen = &mut self.labelled[i];
        if seen.contains(&endpoint) || seen.len() < LABELLED {
            seen.insert(endpoint.clone());
            endpoint
        } else {
            self.unlabelled_flows.inc();
            "other".into()
        }
    }

    pub fn flow_closed(&mut self, f: &FinishedFlow) {
        let Some(v) = &f.vitals else {
            return;
        };
        if let Some(srtt) = v.srtt_ns {
            self.rtt_seconds.observe(srtt as f64 / 1e9);
        }
        if v.bytes_acked == 0 && v.bytes_received == 0 {
            return; // a listener, a refused or timed-out connect
        }
        let both = [("sent", v.bytes_acked), ("received", v.bytes_received)];
        if f.lifecycle.accepted() {
            let service = self.label(0, f.addrs.local.to_string());
            for (direction, bytes) in both {
                let key = ServiceBytes {
                    service: service.clone(),
                    direction,
                };
                self.service_bytes.get_or_create(&key).inc_by(bytes);
            }
        } else {
            let destination = self.label(1, f.addrs.remote.to_string());
            for (direction, bytes) in both {
                let key = DestinationBytes {
                    destination: destination.clone(),
                    direction,
                };
                self.destination_bytes.get_or_create(&key).inc_by(bytes);
            }
        }
    }

    /// The kernel's drops by reason number (exact, whatever records were sent), named as
    /// `host` names them (from its kernel's BTF).
    pub fn kernel_drops(&mut self, counts: &[u64], host: &HostFacts) {
        self.drops_seen.resize(counts.len(), 0);
        for (reason, (&now, seen)) in counts.iter().zip(self.drops_seen.iter_mut()).enumerate() {
            if now <= *seen {
                continue;
            }
            let reason = host.drop_reason_name(reason as u32);
            self.drops
                .get_or_create(&DropReason { reason })
                .inc_by(now - *seen);
            *seen = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode::tests::finished,
        model::{
            tcp::{Endpoint, FlowAddrs},
            vitals::FlowVitals,
        },
    };

    #[test]
    fn bytes_count_per_destination_up_to_the_cap_then_under_other() {
        let mut m = VitalsMetrics::default();
        for port in 0..(LABELLED as u16 + 3) {
            let mut f = finished(FlowAddrs {
                local: Endpoint::new("10.0.0.1".parse().expect("ip"), 40_000),
                remote: Endpoint::new("10.0.0.9".parse().expect("ip"), port),
            });
            f.vitals = Some(FlowVitals {
                bytes_acked: 100,
                bytes_received: 7,
                srtt_ns: Some(2_000_000),
                ..FlowVitals::default()
            });
            m.flow_closed(&f);
        }
        let other = DestinationBytes {
            destination: "other".into(),
            direction: "sent",
        };
        assert_eq!(m.destination_bytes.get_or_create(&other).get(), 300);
        assert_eq!(m.unlabelled_flows.get(), 3);
        let first = DestinationBytes {
            destination: "10.0.0.9:0".into(),
            direction: "received",
        };
        assert_eq!(m.destination_bytes.get_or_create(&first).get(), 7);
    }
}
