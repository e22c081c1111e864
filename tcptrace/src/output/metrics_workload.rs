//! Metrics by workload (`--metrics-pod-labels`): connections per destination and per local
//! service, closes by cause, TIME_WAITs entered per destination, and port failures, each
//! with `k8s_namespace`, `k8s_pod` and `k8s_container` labels (`workload` names what is not
//! a pod: a container id, a systemd unit, a cgroup). Prefixed: a scrape target's own
//! `namespace`, `pod` and `container` labels are the tcptrace agent's, and Prometheus would
//! rename ours to `exported_*`. Cardinality is capped twice: the first
//! `--metrics-max-workloads` workloads get their own labels, later ones count under
//! `k8s_pod="other"`; the first [`PEERS`] destinations and services get their own, later ones
//! `other`.
use std::collections::{HashMap, HashSet};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    host::identity_resolver::IdentityResolver,
    model::{
        events::FinishedFlow,
        port_failure::{Call, PortFailure},
        tcp::{CloseSide, TcpState},
        workload::Workload,
    },
    output::metrics_listen::LISTENERS_SHOWN,
    state::listeners::{Listener, ListenerWatch},
};

/// Destinations and local services with a series of their own.
pub const PEERS: usize = 64;

/// The workload's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub k8s_namespace: String,
    pub k8s_pod: String,
    pub k8s_container: String,
    /// The compact label (`namespace/pod/container`, a container id, a unit, `cgroup:ID`).
    pub workload: String,
}

impl WorkloadLabels {
    fn of(w: &Workload) -> WorkloadLabels {
        let i = w.identity.as_deref();
        let field = |f: fn(&crate::model::workload::Identity) -> Option<&String>| {
            i.and_then(f).cloned().unwrap_or_default()
        };
        WorkloadLabels {
            k8s_namespace: field(|i| i.namespace.as_ref()),
            k8s_pod: field(|i| i.pod.as_ref()),
            k8s_container: field(|i| i.container.as_ref()),
            workload: w.label().unwrap_or_else(|| "unknown".into()),
        }
    }

    fn other() -> WorkloadLabels {
        WorkloadLabels {
            k8s_namespace: "other".into(),
            k8s_pod: "other".into(),
            k8s_container: "other".into(),
            workload: "other".into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Connection {
    /// `outbound` (connect: `peer` is the destination) or `inbound` (accepted: `peer` is the
    /// local service).
    direction: &'static str,
    peer: String,
    #[prometheus(flatten)]
    workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Closed {
    cause: &'static str,
    #[prometheus(flatten)]
    workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeWaits {
    destination: String,
    #[prometheus(flatten)]
    workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortFailed {
    call: &'static str,
    errno: &'static str,
    address: String,
    #[prometheus(flatten)]
    workload: WorkloadLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerOf {
    listener: String,
    #[prometheus(flatten)]
    workload: WorkloadLabels,
}

pub struct WorkloadMetrics {
    listen_depth: Family<ListenerOf, Gauge>,
    listen_drops: Family<ListenerOf, Counter>,
    /// Each listener's drops already counted (by namespace, endpoint and socket).
    listen_dropped: HashMap<(u32, String, u32), u64>,
    connections: Family<Connection, Counter>,
    closed: Family<Closed, Counter>,
    time_waits: Family<TimeWaits, Counter>,
    port_failures: Family<PortFailed, Counter>,
    max_workloads: usize,
    workloads: HashSet<WorkloadLabels>,
    peers: HashSet<String>,
}

/// Whether a connecting flow that closed enters TIME_WAIT: it began with connect() and closed
/// first (FIN_WAIT2 or CLOSING last). Only those hold a 4-tuple of the pod's ephemeral ports
/// toward a destination (an accepting side's TIME_WAIT is keyed by its client's port).
fn enters_time_wait(f: &FinishedFlow) -> bool {
    let path = &f.lifecycle.path;
    path.first().map(|s| s.state) == Some(TcpState::SynSent)
        && f.close == CloseSide::Active
        && path.len() >= 2
        && matches!(
            path[path.len() - 2].state,
            TcpState::FinWait2 | TcpState::Closing | TcpState::TimeWait
        )
}

impl WorkloadMetrics {
    pub fn new(max_workloads: usize) -> WorkloadMetrics {
        WorkloadMetrics {
            listen_depth: Family::default(),
            listen_drops: Family::default(),
            listen_dropped: HashMap::new(),
            connections: Family::default(),
            closed: Family::default(),
            time_waits: Family::default(),
            port_failures: Family::default(),
            max_workloads,
            workloads: HashSet::new(),
            peers: HashSet::new(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "workload_connections",
            "Connections that ended, by direction, peer (destination or local service; 64, \
             then other) and workload (namespace, pod, container)",
            self.connections.clone(),
        );
        registry.register(
            "workload_flows_closed",
            "Flows ended, by close cause and workload",
            self.closed.clone(),
        );
        registry.register(
            "workload_time_waits",
            "TIME_WAITs entered by connections this side opened and closed first, by \
             destination and workload: over 60 s of TIME_WAIT, the 4-tuples of its ephemeral \
             ports a pod holds toward each destination",
            self.time_waits.clone(),
        );
        registry.register(
            "workload_listen_queue_depth",
            "Connections waiting in a listener's accept queue, by listener and the workload \
             that listens (the 64 fullest listeners)",
            self.listen_depth.clone(),
        );
        registry.register(
            "workload_listen_drops",
            "Handshakes a listener dropped (its sk_drops), by listener and workload",
            self.listen_drops.clone(),
        );
        registry.register(
            "workload_port_failures",
            "connect()/bind() calls that failed for want of a port, by call, errno, address \
             and workload",
            self.port_failures.clone(),
        );
    }

    /// The workload's labels while under the cap, else `other`.
    fn labels(&mut self, w: &Workload) -> WorkloadLabels {
        let labels = WorkloadLabels::of(w);
        if self.workloads.contains(&labels) || self.workloads.len() < self.max_workloads {
            self.workloads.insert(labels.clone());
            labels
        } else {
            WorkloadLabels::other()
        }
    }

    fn peer(&mut self, peer: String) -> String {
        if self.peers.contains(&peer) || self.peers.len() < PEERS {
            self.peers.insert(peer.clone());
            peer
        } else {
            "other".into()
        }
    }

    pub fn flow_closed(&mut self, f: &FinishedFlow) {
        let workload = self.labels(&f.lifecycle.workload);
        let direction = match f.lifecycle.path.first().map(|s| s.state) {
            Some(TcpState::SynSent) => Some(("outbound", f.addrs.remote)),
            Some(TcpState::SynRecv) => Some(("inbound", f.addrs.local)),
            _ => None,
        };
        if let Some((direction, peer)) = direction {
            let peer = self.peer(peer.to_string());
            self.connections
                .get_or_create(&Connection {
                    direction,
                    peer,
                    workload: workload.clone(),
                })
                .inc();
        }
        if enters_time_wait(f) {
            let destination = self.peer(f.addrs.remote.to_string());
            self.time_waits
                .get_or_create(&TimeWaits {
                    destination,
                    workload: workload.clone(),
                })
                .inc();
        }
        self.closed
            .get_or_create(&Closed {
                cause: f.cause.name(),
                workload,
            })
            .inc();
    }

    /// Once a second: each listener's queue and drops, under the workload that listens.
    pub fn listeners(&mut self, watch: &ListenerWatch, identities: &IdentityResolver) {
        let mut listeners: Vec<&Listener> = watch.listeners().filter(|l| l.cgroup != 0).collect();
        listeners.sort_by_key(|l| std::cmp::Reverse((l.queue, l.dropped)));
        self.listen_depth.clear();
        let mut seen = HashMap::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let workload = self.labels(&identities.cached(l.cgroup));
            let label = ListenerOf {
                listener: l.endpoint.to_string(),
                workload,
            };
            if i < LISTENERS_SHOWN {
                self.listen_depth
                    .get_or_create(&label)
                    .set(i64::from(l.queue));
            }
            let key = (l.netns, label.listener.clone(), l.inode);
            let before = self.listen_dropped.get(&key).copied().unwrap_or(l.dropped);
            if l.dropped > before {
                self.listen_drops
                    .get_or_create(&label)
                    .inc_by(l.dropped - before);
            } else {
                let _ = self.listen_drops.get_or_create(&label);
            }
            seen.insert(key, l.dropped);
        }
        // Listeners gone are forgotten (their counters stay, as counters do).
        self.listen_dropped = seen;
    }

    pub fn port_failure(&mut self, p: &PortFailure) {
        let workload = self.labels(&p.workload);
        let address = self.peer(p.asked.map_or_else(|| "unknown".into(), |e| e.to_string()));
        self.port_failures
            .get_or_create(&PortFailed {
                call: match p.call {
                    Call::Connect => "connect",
                    Call::Bind => "bind",
                },
                errno: p.errno.name(),
                address,
                workload,
            })
            .inc();
    }

    #[cfg(test)]
    pub fn closed_count(&self, cause: &'static str, pod: &str) -> u64 {
        let mut total = 0;
        for labels in &self.workloads {
            if labels.k8s_pod == pod {
                total += self
                    .closed
                    .get_or_create(&Closed {
                        cause,
                        workload: labels.clone(),
                    })
                    .get();
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{model::cause::CloseCause, model::workload::Identity, output::fixtures};

    fn in_pod(pod: &str) -> Workload {
        Workload::resolved(
            7,
            Arc::new(Identity {
                cgroup_id: 7,
                namespace: Some("shop".into()),
                pod: Some(pod.into()),
                container: Some("server".into()),
                ..Identity::default()
            }),
        )
    }

    #[test]
    fn closes_count_by_pod_and_workloads_beyond_the_cap_under_other() {
        let mut m = WorkloadMetrics::new(2);
        for pod in ["a", "b", "c", "a"] {
            let mut f = fixtures::client_flow();
            f.cause = CloseCause::KeepaliveTimeout;
            f.lifecycle.workload = in_pod(pod);
            m.flow_closed(&f);
        }
        assert_eq!(m.closed_count("keepalive_timeout", "a"), 2);
        assert_eq!(m.closed_count("keepalive_timeout", "b"), 1);
        assert_eq!(
            m.closed_count("keepalive_timeout", "c"),
            0,
            "beyond the cap"
        );
        let other = m
            .closed
            .get_or_create(&Closed {
                cause: "keepalive_timeout",
                workload: WorkloadLabels::other(),
            })
            .get();
        assert_eq!(other, 1);
        let mut text = String::new();
        let mut registry = Registry::default();
        m.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(
                r#"k8s_namespace="shop",k8s_pod="a",k8s_container="server",workload="shop/a/server""#
            ),
            "{text}"
        );
    }
}
