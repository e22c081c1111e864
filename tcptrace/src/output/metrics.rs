//! Prometheus metrics (`--metrics ADDR`), with the prometheus-client crate: counters, close
//! causes, retransmits by state and state-duration histograms follow what the kernel counts
//! per CPU (no record per flow is needed for them); TIME_WAIT gauges follow the tracker (top
//! destinations plus `other`, so cardinality stays bounded).
use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::{
    kernel::histogram::KernelHistogram, model::cause::CloseCause, model::counters::KernelCounters,
    model::tcp::TcpState, output::metrics_conntrack::ConntrackMetrics,
    output::metrics_listen::ListenMetrics, output::metrics_ports::PortFailureMetrics,
    output::metrics_time_wait::TimeWaitMetrics, output::metrics_vitals::VitalsMetrics,
    output::metrics_workload::WorkloadMetrics,
};
use tcptrace_common::{close_cause, stat, DurationHistogram};

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

pub struct Metrics {
    registry: Arc<Registry>,
    transitions: Family<Transition, Counter>,
    state_seconds: Family<State, KernelHistogram>,
    flows_opened: Counter,
    flows_closed: Family<Cause, Counter>,
    retransmits: Counter,
    retransmits_by_state: Family<State, Counter>,
    pub time_wait: TimeWaitMetrics,
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
    conntrack: ConntrackMetrics,
    /// Backends behind destination NATs, source NATs' ports.
    nat: crate::output::metrics_nat::NatMetrics,
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
            time_wait: TimeWaitMetrics::default(),
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
            conntrack: ConntrackMetrics::default(),
            nat: Default::default(),
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
        registry.register(
            "build",
            "The tcptrace build: its version and the kernel it runs on",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("kernel", crate::host::facts::kernel_release()),
            ]),
        );
        // Every state's histogram from the first scrape (empty until flows hold it).
        for state in TcpState::ALL {
            drop(m.state_seconds.get_or_create(&State {
                state: state.name(),
            }));
        }
        m.time_wait.register(&mut registry);
        m.port_failures.register(&mut registry);
        m.vitals.register(&mut registry);
        m.listen.register(&mut registry);
        m.conntrack.register(&mut registry);
        m.nat.register(&mut registry);
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

    /// The namespaces' conntrack tables, once a second.
    pub fn conntrack(&mut self, namespaces: &crate::host::netns::Namespaces) {
        self.conntrack.update(namespaces);
    }

    /// The source NATs' busiest destinations, once a second.
    pub fn snat(&self, forecasts: &[crate::state::snat::SnatForecast]) {
        self.nat.snat(forecasts);
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
        self.nat.flow_closed(f);
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

    /// The exposition text.
    #[cfg(test)]
    pub fn render(&self) -> String {
        crate::output::metrics_http::exposition(
            &self.registry,
            crate::output::metrics_http::Format::OpenMetrics,
        )
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
