//! One table of modes: what each prints, what the kernel sends for it and what is traced. The
//! configuration's answers (`Config::shows_flows`, the kernel plan, the ring's default size),
//! `report --mode` and each consumer's wants are all read from this table.

/// A mode, without its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeKind {
    States,
    Flows,
    Retrans,
    Alerts,
    All,
    Timewait,
    /// The modes below are not rendered from a recording (`report --mode` offers the above).
    #[value(skip)]
    Top,
    #[value(skip)]
    Record,
    #[value(skip)]
    Metrics,
    #[value(skip)]
    Idle,
}

/// Whether TIME_WAIT is traced in a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWaitTracing {
    Never,
    /// Unless `--no-time-wait`.
    ByDefault,
    /// The mode is about it (`--no-time-wait` contradicts it).
    Always,
}

/// One mode's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeRow {
    pub kind: ModeKind,
    /// Printed: every transition, finished flows, retransmits, alerts.
    pub shows_transitions: bool,
    pub shows_flows: bool,
    pub shows_retransmits: bool,
    pub shows_alerts: bool,
    /// Lines of several kinds, each tagged (and dropped packets on lines of their own).
    pub mixed_lines: bool,
    /// The kernel sends a record for every transition, and for every retransmitted segment.
    pub every_transition: bool,
    pub every_retransmit: bool,
    /// Closes, durations and retransmits are counted in the kernel: flow records only where
    /// something else needs them.
    pub counts_in_kernel: bool,
    pub time_wait: TimeWaitTracing,
    /// Keepalive probes, dropped packets, listeners' queues and connect()/bind() port failures
    /// are traced.
    pub keepalive_probes: bool,
    pub drops: bool,
    pub listeners: bool,
    pub port_failures: bool,
    /// The ring buffer without `--ring-size`, MiB: about a second of the mode's records at
    /// 25k connections/s (a record per transition is ~13 records per connection, ~120 bytes
    /// each; flows ~5; metrics ~3 of 64 bytes).
    pub ring_mib: u64,
}

const NOTHING: ModeRow = ModeRow {
    kind: ModeKind::Idle,
    shows_transitions: false,
    shows_flows: false,
    shows_retransmits: false,
    shows_alerts: false,
    mixed_lines: false,
    every_transition: false,
    every_retransmit: false,
    counts_in_kernel: false,
    time_wait: TimeWaitTracing::Never,
    keepalive_probes: false,
    drops: false,
    listeners: false,
    port_failures: false,
    ring_mib: 16,
};

/// Every mode, in `ModeKind`'s order.
pub const MODES: [ModeRow; 10] = {
    use ModeKind::*;
    use TimeWaitTracing::*;
    [
        ModeRow {
            kind: States,
            shows_transitions: true,
            every_transition: true,
            ring_mib: 32,
            ..NOTHING
        },
        ModeRow {
            kind: Flows,
            shows_flows: true,
            time_wait: ByDefault,
            drops: true,
            ..NOTHING
        },
        ModeRow {
            kind: Retrans,
            shows_retransmits: true,
            every_retransmit: true,
            ..NOTHING
        },
        ModeRow {
            kind: Alerts,
            shows_alerts: true,
            every_retransmit: true,
            time_wait: ByDefault,
            keepalive_probes: true,
            drops: true,
            listeners: true,
            port_failures: true,
            ..NOTHING
        },
        ModeRow {
            kind: All,
            shows_transitions: true,
            shows_flows: true,
            shows_retransmits: true,
            shows_alerts: true,
            mixed_lines: true,
            every_transition: true,
            every_retransmit: true,
            time_wait: ByDefault,
            keepalive_probes: true,
            drops: true,
            listeners: true,
            port_failures: true,
            ring_mib: 32,
            ..NOTHING
        },
        ModeRow {
            kind: Timewait,
            time_wait: Always,
            ..NOTHING
        },
        ModeRow {
            kind: Top,
            every_transition: true,
            every_retransmit: true,
            time_wait: ByDefault,
            drops: true,
            listeners: true,
            port_failures: true,
            ring_mib: 32,
            ..NOTHING
        },
        ModeRow {
            kind: Record,
            every_transition: true,
            every_retransmit: true,
            time_wait: ByDefault,
            keepalive_probes: true,
            drops: true,
            port_failures: true,
            ring_mib: 32,
            ..NOTHING
        },
        ModeRow {
            kind: Metrics,
            counts_in_kernel: true,
            time_wait: ByDefault,
            drops: true,
            listeners: true,
            port_failures: true,
            ring_mib: 8,
            ..NOTHING
        },
        ModeRow {
            kind: Idle,
            ..NOTHING
        },
    ]
};

impl ModeKind {
    /// This mode's row of [`MODES`].
    pub fn row(self) -> &'static ModeRow {
        &MODES[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_has_its_own_row() {
        for (i, row) in MODES.iter().enumerate() {
            assert_eq!(row.kind as usize, i, "{row:?} out of place");
        }
    }

    #[test]
    fn report_offers_the_line_modes_only() {
        use clap::ValueEnum as _;
        let offered: Vec<ModeKind> = ModeKind::value_variants()
            .iter()
            .copied()
            .filter(|k| k.to_possible_value().is_some())
            .collect();
        assert_eq!(
            offered,
            [
                ModeKind::States,
                ModeKind::Flows,
                ModeKind::Retrans,
                ModeKind::Alerts,
                ModeKind::All,
                ModeKind::Timewait
            ]
        );
    }
}
