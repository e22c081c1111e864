//! Prometheus metrics (`--metrics ADDR`), with the prometheus-client crate: counters, close
//! causes, retransmits by state and state-duration histograms follow what the kernel counts
//! per CPU (no record per flow is needed for them); TIME_WAIT gauges follow the tracker (top
//! destinations plus `other`, so cardinality stays bounded).
use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    kernel::histogram::KernelHistogram,
    model::cause::CloseCause,
    model::counters::KernelCounters,
    model::tcp::{Endpoint, TcpState},
    output::metrics_listen::ListenMetrics,
    output::metrics_ports::PortFailureMetrics,
    output::metrics_vitals::VitalsMetrics,
    output::metrics_workload::WorkloadMetrics,
    state::timewait::Gauges,
};
use tcptrace_common::{close_cause, stat, DurationHistogram};

/// TIME_WAIT destinations with their own label; the rest are summed under `other`.
const TOP_DESTINATIONS: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Destination {
    destination: String,
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

pub struct Metrics {
    registry: Arc<Registry>,
    transitions: Family<Transition, Counter>,
    state_seconds: Family<State, KernelHistogram>,
    flows_opened: Counter,
    flows_closed: Family<Cause, Counter>,
    retransmits: Counter,
    retransmits_by_state: Family<State, Counter>,
    time_wait_sockets: Family<Destination, Gauge>,
    time_wait_seconds: Histogram,
    time_wait_forecast: Family<FourTupleSpace, Gauge<f64, std::sync::atomic::AtomicU64>>,
    time_wait_overflows: Family<NetworkNamespace, Counter>,
    keepalive_timeouts: Counter,
    lost: Family<Reason, Counter>,
    untracked_flows: Counter,
    keepalive_unindexed: Counter,
    filtered_events: Counter,
    evicted_flows: Counter,
    port_failures: PortFailureMetrics,
    /// RTT at close, bytes per service and destination, drops by reason.
    vitals: VitalsMetrics,
    synack_retransmits: Counter,
    drops_unsent: Counter,
    listen: ListenMetrics,
    /// By workload (`--metrics-pod-labels`).
    workloads: Option<WorkloadMetrics>,
    /// The kernel counters already added.
    seen: KernelCounters,
}

impl Metrics {
    /// The metrics; with `workload_labels` (`--metrics-pod-labels`), also those by workload,
    /// for at most that many workloads.
    pub fn new(workload_labels: Option<usize>) -> Metrics {
        let mut registry = Registry::with_prefix("tcptrace");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            transitions: Family::default(),
            state_seconds: Family::default(),
            flows_opened: Counter::default(),
            flows_closed: Family::default(),
            retransmits: Counter::default(),
            retransmits_by_state: Family::default(),
            time_wait_sockets: Family::default(),
            time_wait_seconds: Histogram::new(exponential_buckets(0.5, 2.0, 10)),
            time_wait_forecast: Family::default(),
            time_wait_overflows: Family::default(),
            keepalive_timeouts: Counter::default(),
            lost: Family::default(),
            untracked_flows: Counter::default(),
            keepalive_unindexed: Counter::default(),
            filtered_events: Counter::default(),
            evicted_flows: Counter::default(),
            port_failures: PortFailureMetrics::default(),
            vitals: VitalsMetrics::default(),
            synack_retransmits: Counter::default(),
            drops_unsent: Counter::default(),
            listen: ListenMetrics::default(),
            workloads: workload_labels.map(WorkloadMetrics::new),
            seen: KernelCounters::default(),
        };
        registry.register(
            "transitions",
            "TCP state transitions",
            m.transitions.clone(),
        );
        registry.register(
            "state_duration_seconds",
            "Time flows held each state",
            m.state_seconds.clone(),
        );
        registry.register(
            "flows_opened",
            "Flows seen starting",
            m.flows_opened.clone(),
        );
        registry.register(
            "flows_closed",
            "Flows ended, by close cause",
            m.flows_closed.clone(),
        );
        registry.register(
            "retransmits",
            "Retransmitted segments",
            m.retransmits.clone(),
        );
        registry.register(
            "flow_retransmits",
            "Retransmits, by the state the connection was in",
            m.retransmits_by_state.clone(),
        );
        registry.register(
            "time_wait_sockets",
            "Sockets in TIME_WAIT now, by destination (top 10, then other)",
            m.time_wait_sockets.clone(),
        );
        registry.register(
            "time_wait_duration_seconds",
            "How long TIME_WAITs lasted",
            m.time_wait_seconds.clone(),
        );
        registry.register(
            "time_wait_forecast_ratio",
            "4-tuple exhaustion forecast: new connections per second over what the ephemeral \
             ports sustain with 60 s of TIME_WAIT, per (local address, destination); top 10",
            m.time_wait_forecast.clone(),
        );
        registry.register(
            "time_wait_overflows",
            "TIME_WAITs the kernel skipped because net.ipv4.tcp_max_tw_buckets was full, per \
             network namespace (inode)",
            m.time_wait_overflows.clone(),
        );
        registry.register(
            "keepalive_timeouts",
            "Connections killed by keepalive",
            m.keepalive_timeouts.clone(),
        );
        registry.register("lost_events", "Events lost, by reason", m.lost.clone());
        registry.register(
            "untracked_flows",
            "Flows not tracked because the flow table was full (--max-flows)",
            m.untracked_flows.clone(),
        );
        registry.register(
            "keepalive_unindexed_sockets",
            "Sockets with SO_KEEPALIVE whose owner could not be indexed for their keepalive \
             probes (--flow-memory socket, index of --max-flows full): their probes carry no owner",
            m.keepalive_unindexed.clone(),
        );
        registry.register(
            "filtered_events",
            "Events dropped by the in-kernel filters",
            m.filtered_events.clone(),
        );
        registry.register(
            "drop_records_unsent",
            "Drops counted (in drops_total) but not sent as records (over --drop-records-per-s)",
            m.drops_unsent.clone(),
        );
        registry.register(
            "synack_retransmits",
            "SYN-ACKs listeners sent again (the handshake's last ACK did not come)",
            m.synack_retransmits.clone(),
        );
        registry.register(
            "evicted_flows",
            "Flows evicted from the nearly full flow table, least recently active first",
            m.evicted_flows.clone(),
        );
        m.port_failures.register(&mut registry);
        m.vitals.register(&mut registry);
        m.listen.register(&mut registry);
        if let Some(workloads) = &m.workloads {
            workloads.register(&mut registry);
        }
        // Every cause and state from the start, at zero: a rate over a series that does not
        // exist yet is no answer at all (a dashboard's "retransmits by state" stayed empty).
        for cause in CloseCause::ALL {
            m.flows_closed_by(cause);
        }
        for state in TcpState::ALL {
            let _ = m.retransmits_by_state.get_or_create(&State {
                state: state.name(),
            });
        }
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The listeners' queues and drops, once a second (by workload too, where asked for).
    pub fn listeners(
        &mut self,
        watch: &crate::state::listeners::ListenerWatch,
        identities: &crate::host::identity_resolver::IdentityResolver,
    ) {
        self.listen.update(watch);
        if let Some(workloads) = self.workloads.as_mut() {
            workloads.listeners(watch, identities);
        }
    }

    /// connect() or bind() failed for want of a port.
    pub fn port_failure(&mut self, p: &crate::model::port_failure::PortFailure) {
        self.port_failures.failed(p);
        if let Some(workloads) = self.workloads.as_mut() {
            workloads.port_failure(p);
        }
    }

    /// A flow ended: its RTT and bytes, and by workload where asked for.
    pub fn flow_closed(&mut self, f: &crate::model::events::FinishedFlow) {
        self.vitals.flow_closed(f);
        if let Some(workloads) = self.workloads.as_mut() {
            workloads.flow_closed(f);
        }
    }

    /// The kernel's drops by reason number, named as `host` names them.
    pub fn kernel_drops(&mut self, counts: &[u64], host: &crate::model::facts::HostFacts) {
        self.vitals.kernel_drops(counts, host);
    }

    /// Flows evicted from the flow table by userspace.
    pub fn evicted(&self, flows: u64) {
        self.evicted_flows.inc_by(flows);
    }

    /// Adds what the kernel counted since the last call.
    pub fn kernel(&mut self, now: &KernelCounters) {
        for (i, delta) in growth(&now.transitions, &mut self.seen.transitions) {
            let (old, new) = tcptrace_common::transition_of_slot(i);
            let states = (TcpState::try_from(old), TcpState::try_from(new));
            if let (Ok(from), Ok(to)) = states {
                self.transitions
                    .get_or_create(&Transition {
                        from: from.name(),
                        to: to.name(),
                    })
                    .inc_by(delta);
            }
        }
        let add = |index: u32, counter: &Counter| {
            let delta = now.stat(index).saturating_sub(self.seen.stat(index));
            counter.inc_by(delta);
        };
        add(stat::FLOWS_SEEN, &self.flows_opened);
        add(stat::RETRANSMITS, &self.retransmits);
        add(stat::FLOW_TABLE_FULL, &self.untracked_flows);
        add(stat::KEEPALIVE_UNINDEXED, &self.keepalive_unindexed);
        add(stat::FILTERED, &self.filtered_events);
        add(stat::SYNACK_RETRANSMITS, &self.synack_retransmits);
        add(stat::DROPS_UNSENT, &self.drops_unsent);
        for (index, reason) in [
            (stat::LOST_TRANSITION, "ring_full_transition"),
            (stat::LOST_FLOW_END, "ring_full_flow"),
            (stat::LOST_RETRANSMIT, "ring_full_retransmit"),
            (stat::LOST_PROBE, "ring_full_probe"),
            (stat::LOST_TIME_WAIT, "ring_full_time_wait"),
            (stat::LOST_PORT_FAILURE, "ring_full_port_failure"),
            (stat::LOST_DROP, "ring_full_drop"),
            (stat::LOST_UNDECIDED, "flow_table_full_undecided"),
        ] {
            add(index, &self.lost.get_or_create(&Reason { reason }));
        }
        for (raw, delta) in growth(&now.closes, &mut self.seen.closes) {
            self.flows_closed_by(CloseCause::from_kernel(raw as u8))
                .inc_by(delta);
            if raw == usize::from(close_cause::KEEPALIVE_TIMEOUT) {
                self.keepalive_timeouts.inc_by(delta);
            }
        }
        for (raw, delta) in growth(&now.rtx_by_state, &mut self.seen.rtx_by_state) {
            if let Ok(state) = TcpState::try_from(raw as u8) {
                self.retransmits_by_state
                    .get_or_create(&State {
                        state: state.name(),
                    })
                    .inc_by(delta);
            }
        }
        let skipped = now.missed.saturating_sub(self.seen.missed);
        self.lost
            .get_or_create(&Reason {
                reason: "skipped_by_kernel",
            })
            .inc_by(skipped);
        self.seen.stats = now.stats;
        self.seen.missed = now.missed;
    }

    /// The kernel's state-duration histograms (by kernel state number), summed over CPUs.
    pub fn durations(&self, histograms: &[DurationHistogram]) {
        for state in TcpState::ALL {
            let Some(h) = histograms.get(usize::from(state.raw())) else {
                continue;
            };
            if h.buckets.iter().any(|&n| n > 0) {
                self.state_seconds
                    .get_or_create(&State {
                        state: state.name(),
                    })
                    .set(h);
            }
        }
    }

    fn flows_closed_by(&self, cause: CloseCause) -> Counter {
        self.flows_closed
            .get_or_create(&Cause {
                cause: cause.name(),
            })
            .clone()
    }

    pub fn time_wait_ended(&self, held_ns: u64) {
        self.time_wait_seconds.observe(held_ns as f64 / 1e9);
    }

    pub fn time_wait_gauges(&self, gauges: &Gauges) {
        let mut dests = gauges.by_destination.clone();
        dests.sort_by_key(|d| std::cmp::Reverse(d.1 .0));
        self.time_wait_sockets.clear();
        let mut other = 0;
        for (i, (dest, (count, _))) in dests.iter().enumerate() {
            if i < TOP_DESTINATIONS {
                self.time_wait_sockets
                    .get_or_create(&Destination {
                        destination: dest.to_string(),
                    })
                    .set(*count as i64);
            } else {
                other += count;
            }
        }
        self.time_wait_sockets
            .get_or_create(&Destination {
                destination: "other".into(),
            })
            .set(other as i64);
    }

    /// The exhaustion forecast's busiest 4-tuple spaces (the caller passes the top ones).
    pub fn time_wait_forecasts(&self, forecasts: &[crate::state::forecast::Forecast]) {
        self.time_wait_forecast.clear();
        for f in forecasts {
            self.time_wait_forecast
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
    pub fn time_wait_overflowed(&self, netns: u32, newly: u64) {
        self.time_wait_overflows
            .get_or_create(&NetworkNamespace {
                netns: netns.to_string(),
            })
            .inc_by(newly);
    }

    /// The exposition text.
    #[cfg(test)]
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Serves GET /metrics on `addr` until the runtime ends.
    pub async fn serve(registry: Arc<Registry>, listener: TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let mut len = 0;
                while len < request.len() {
                    match stream.read(&mut request[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&request[..len]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let response = if head.starts_with("GET ") && path == "/metrics" {
                    let mut body = String::new();
                    let _ = encode(&mut body, &registry);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; \
                         version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: \
                         close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

/// The entries of `now` that grew since `seen`, with how much (`seen` becomes `now`): what
/// a per-index kernel counter adds to its Prometheus counter.
fn growth(now: &[u64], seen: &mut Vec<u64>) -> Vec<(usize, u64)> {
    seen.resize(now.len(), 0);
    let grown = now
        .iter()
        .zip(seen.iter())
        .enumerate()
        .filter(|(_, (total, before))| total > before)
        .map(|(i, (total, before))| (i, total - before))
        .collect();
    seen.copy_from_slice(now);
    grown
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
