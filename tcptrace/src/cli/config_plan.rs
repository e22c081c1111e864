//! What a configuration asks of the kernel side and the consumers: which records the kernel
//! sends, which hooks are attached, what is shown.
use std::time::Duration;

use super::{Config, Mode};
use crate::kernel::plan::KernelPlan;

impl Config {
    pub fn shows_transitions(&self) -> bool {
        matches!(self.mode, Mode::States | Mode::All)
    }
    pub fn shows_flows(&self) -> bool {
        matches!(self.mode, Mode::Flows | Mode::All)
    }
    pub fn shows_retransmits(&self) -> bool {
        matches!(self.mode, Mode::Retrans | Mode::All)
    }
    pub fn shows_alerts(&self) -> bool {
        matches!(self.mode, Mode::Alerts | Mode::All)
    }
    fn records(&self) -> bool {
        matches!(self.mode, Mode::Record(_))
    }
    /// The kernel sends a record per transition (printed, recorded, or counted per
    /// destination).
    pub fn emits_transitions(&self) -> bool {
        self.shows_transitions() || self.mode == Mode::Top || self.records()
    }
    /// The ring buffer when `--ring-size` is not given: about a second of this mode's records
    /// at 25k connections/s (a record per transition is ~13 records per connection, ~120
    /// bytes each; flows ~5; metrics ~3 of 64 bytes), so that a reader held off the CPU for a
    /// moment by a saturating load loses nothing.
    pub(super) fn default_ring_size(&self) -> u64 {
        if self.emits_transitions() {
            32 << 20
        } else if self.mode == Mode::Metrics {
            8 << 20
        } else {
            16 << 20
        }
    }
    /// The kernel sends a record per retransmitted segment.
    pub fn emits_retransmits(&self) -> bool {
        self.shows_retransmits() || self.shows_alerts() || self.mode == Mode::Top || self.records()
    }
    /// Which flows the kernel sends a record for when they close. `tcptrace metrics` counts
    /// closes, durations and retransmits in the kernel, and needs only the flows whose
    /// TIME_WAIT it follows (every flow with `--metrics-pod-labels` or `--metrics-vitals`); every other mode
    /// prints, records or aggregates every flow.
    pub fn flow_ends(&self) -> u8 {
        use tcptrace_common::emit_flow_ends;
        match self.mode {
            // By workload: every flow's end, with its cgroup.
            Mode::Metrics if self.identity.metrics_labels || self.metrics_vitals => {
                emit_flow_ends::ALL
            }
            Mode::Metrics if self.traces_time_wait() => emit_flow_ends::TIME_WAIT,
            Mode::Metrics => emit_flow_ends::NONE,
            _ => emit_flow_ends::ALL,
        }
    }
    /// Keepalive probes are traced (timer hooks around the keepalive timer).
    pub fn traces_keepalive_probes(&self) -> bool {
        self.shows_alerts() || self.records()
    }
    /// TIME_WAIT is traced (timer hooks) where flows or gauges are shown.
    pub fn traces_time_wait(&self) -> bool {
        match self.mode {
            Mode::Timewait { .. } => true,
            // alerts: the exhaustion forecast crossing its threshold is an alert.
            Mode::Flows
            | Mode::Alerts
            | Mode::All
            | Mode::Metrics
            | Mode::Top
            | Mode::Record(_) => !self.no_time_wait,
            _ => false,
        }
    }
    /// Dropped TCP packets are traced where flows, alerts, `top` or metrics show them.
    pub fn traces_drops(&self) -> bool {
        let shown = matches!(
            self.mode,
            Mode::Flows | Mode::Alerts | Mode::All | Mode::Metrics | Mode::Top | Mode::Record(_)
        );
        shown && !self.no_drops
    }
    /// What the kernel side loads and attaches for this configuration.
    pub fn plan(&self) -> KernelPlan {
        KernelPlan {
            btf: self.btf.clone(),
            ring_size: self.ring_size,
            flow_memory: self.flow_memory,
            max_flows: self.max_flows,
            emit_transitions: self.emits_transitions(),
            emit_retransmits: self.emits_retransmits(),
            flow_ends: self.flow_ends(),
            keepalive_probes: self.traces_keepalive_probes(),
            time_wait: self.traces_time_wait(),
            drops: self.traces_drops(),
            all_drop_reasons: self.all_drop_reasons,
            drop_records_per_s: self.drop_records_per_s,
            port_failures: self.traces_port_failures(),
            filter: self.filter.clone(),
        }
    }

    /// Whether listeners' queues, drops and SYN cookies are watched (each second, sock_diag
    /// and the TcpExt counters of every namespace): where alerts, `top` or metrics show them.
    pub fn watches_listeners(&self) -> bool {
        matches!(
            self.mode,
            Mode::Alerts | Mode::All | Mode::Top | Mode::Metrics
        )
    }

    /// Whether connect()/bind() failing for want of a port is traced: where alerts, `top`'s
    /// column or the metric show it, and in recordings.
    pub fn traces_port_failures(&self) -> bool {
        matches!(
            self.mode,
            Mode::Alerts | Mode::All | Mode::Top | Mode::Metrics | Mode::Record(_)
        )
    }

    /// How often TIME_WAIT gauges are printed, in the timewait mode.
    pub fn gauge_interval(&self) -> Option<Duration> {
        match self.mode {
            Mode::Timewait { interval } => Some(interval),
            _ => None,
        }
    }
}
