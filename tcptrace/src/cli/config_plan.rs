//! What a configuration asks of the kernel side and the consumers: which records the kernel
//! sends, which hooks are attached, what is shown.
use std::time::Duration;

use super::{
    modes::{ModeKind, ModeRow, TimeWaitTracing},
    Config, Mode,
};
use crate::kernel::plan::KernelPlan;

impl Config {
    /// This mode's row of the table of modes.
    pub fn row(&self) -> &'static ModeRow {
        self.mode.kind().row()
    }
    pub fn shows_transitions(&self) -> bool {
        self.row().shows_transitions
    }
    pub fn shows_flows(&self) -> bool {
        self.row().shows_flows
    }
    pub fn shows_retransmits(&self) -> bool {
        self.row().shows_retransmits
    }
    pub fn shows_alerts(&self) -> bool {
        self.row().shows_alerts
    }
    /// The ring buffer when `--ring-size` is not given: the mode's, or `flows`' where
    /// `metrics` sends every flow whole (`--metrics-vitals`, pod labels) as `flows` does.
    pub(super) fn default_ring_size(&self) -> u64 {
        let mib = match self.row().counts_in_kernel
            && self.flow_ends() == tcptrace_common::emit_flow_ends::ALL
        {
            true => self.row().ring_mib.max(ModeKind::Flows.row().ring_mib),
            false => self.row().ring_mib,
        };
        mib << 20
    }
    /// Which flows the kernel sends a record for when they close. A mode that counts in the
    /// kernel (`tcptrace metrics`) needs only the flows whose TIME_WAIT it follows (every flow
    /// with `--metrics-pod-labels` or `--metrics-vitals`); every other mode prints, records or
    /// aggregates every flow.
    pub fn flow_ends(&self) -> u8 {
        use tcptrace_common::emit_flow_ends;
        match self.row().counts_in_kernel {
            false => emit_flow_ends::ALL,
            // By workload: every flow's end, with its cgroup.
            true if self.identity.metrics_labels || self.metrics_vitals => emit_flow_ends::ALL,
            true if self.traces_time_wait() => emit_flow_ends::TIME_WAIT,
            true => emit_flow_ends::NONE,
        }
    }
    /// TIME_WAIT is traced (its start and expiry) where flows, gauges, alerts (the exhaustion
    /// forecast), `top`, metrics or a recording show it.
    pub fn traces_time_wait(&self) -> bool {
        match self.row().time_wait {
            TimeWaitTracing::Never => false,
            TimeWaitTracing::ByDefault => !self.no_time_wait,
            TimeWaitTracing::Always => true,
        }
    }
    /// Dropped TCP packets are traced where flows, alerts, `top` or metrics show them.
    pub fn traces_drops(&self) -> bool {
        self.row().drops && !self.no_drops
    }
    /// What the kernel side loads and attaches for this configuration.
    pub fn plan(&self) -> KernelPlan {
        KernelPlan {
            btf: self.btf.clone(),
            ring_size: self.ring_size,
            flow_memory: self.flow_memory,
            max_flows: self.max_flows,
            emit_transitions: self.row().every_transition,
            emit_retransmits: self.row().every_retransmit,
            flow_ends: self.flow_ends(),
            keepalive_probes: self.row().keepalive_probes,
            time_wait: self.traces_time_wait(),
            drops: self.traces_drops(),
            all_drop_reasons: self.all_drop_reasons,
            drop_records_per_s: self.drop_records_per_s,
            port_failures: self.row().port_failures,
            filter: self.filter.clone(),
        }
    }

    /// Whether listeners' queues, drops and SYN cookies are watched (each second, sock_diag
    /// and the TcpExt counters of every namespace): where alerts, `top` or metrics show them.
    pub fn watches_listeners(&self) -> bool {
        self.row().listeners
    }

    /// How often TIME_WAIT gauges are printed, in the timewait mode.
    pub fn gauge_interval(&self) -> Option<Duration> {
        match self.mode {
            Mode::Timewait { interval } => Some(interval),
            _ => None,
        }
    }
}
