//! The columns of `top`'s table: titles, widths, cells, order and what each means.
use std::cmp::Ordering;

use ratatui::layout::Constraint;

use super::super::model::{GroupKind, Row};
use crate::host::clock::HumanDuration;

/// The table's columns, in order (keys 1–9 and 0 sort by them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Endpoint,
    ConnPerS,
    Open,
    TimeWait,
    Forecast,
    Retransmits,
    Resets,
    KeepaliveTimeouts,
    PortFailures,
    ConnectP99,
    Rtt,
    Drops,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Endpoint,
        Column::ConnPerS,
        Column::Open,
        Column::TimeWait,
        Column::Forecast,
        Column::Retransmits,
        Column::Resets,
        Column::KeepaliveTimeouts,
        Column::PortFailures,
        Column::ConnectP99,
        Column::Rtt,
        Column::Drops,
    ];

    pub(super) fn title(self, kind: GroupKind) -> &'static str {
        match self {
            Column::Endpoint => match kind {
                GroupKind::Destination => "DESTINATION",
                GroupKind::Service => "LOCAL SERVICE",
                GroupKind::Workload => "POD / WORKLOAD",
            },
            Column::ConnPerS => "CONN/s",
            Column::Open => "OPEN",
            Column::TimeWait => "TW",
            // Local services: their listener's accept queue (now/backlog) and drops.
            Column::Forecast => match kind {
                GroupKind::Destination | GroupKind::Workload => "FCST%",
                GroupKind::Service => "ACCQ",
            },
            Column::Retransmits => "RTX",
            Column::Resets => "RST",
            Column::KeepaliveTimeouts => "KA_TO",
            Column::PortFailures => match kind {
                GroupKind::Destination | GroupKind::Workload => "EADDR",
                GroupKind::Service => "DRP/s",
            },
            Column::ConnectP99 => "P99",
            Column::Rtt => "RTT50",
            Column::Drops => "DROP",
        }
    }

    /// A column's width: its widest title and the sort arrow (`KA_TO▼`: 6), at least 5 for
    /// the numbers; 21 for the longest IPv4 endpoint. The first ten fill 80 (71 and 9 of
    /// spacing); RTT and drops follow on wider terminals. A workload's label gets what the
    /// table has to spare.
    fn cells(self) -> u16 {
        match self {
            Column::Endpoint => 21,
            other => {
                let titles = [
                    GroupKind::Destination,
                    GroupKind::Service,
                    GroupKind::Workload,
                ]
                .map(|k| other.title(k).chars().count());
                (titles.into_iter().max().unwrap_or(4) as u16 + 1).max(5)
            }
        }
    }

    pub(super) fn width(self, kind: GroupKind) -> Constraint {
        match self {
            Column::Endpoint if kind == GroupKind::Workload => Constraint::Min(21),
            other => Constraint::Length(other.cells()),
        }
    }

    /// How many columns a table `width` wide shows: all that fit, in order (80 at least).
    pub fn shown_in(width: u16) -> usize {
        let mut used = 0u16;
        Column::ALL
            .into_iter()
            .take_while(|c| {
                used += c.cells() + u16::from(used > 0);
                used <= width.max(80)
            })
            .count()
    }

    /// What the column holds, for the legend (`?`).
    pub(super) fn meaning(self, kind: GroupKind) -> &'static str {
        match (self, kind) {
            (Column::Endpoint, GroupKind::Destination) => "remote endpoint this host connects to",
            (Column::Endpoint, GroupKind::Service) => "local endpoint this host accepts on",
            (Column::Endpoint, GroupKind::Workload) => "pod/container, or systemd unit",
            (Column::ConnPerS, _) => "new connections a second (last 10 s)",
            (Column::Open, _) => "connections open now",
            (Column::TimeWait, _) => "sockets in TIME_WAIT now",
            (Column::Forecast, GroupKind::Service) => {
                "the listener's accept queue now / its backlog"
            }
            (Column::Forecast, _) => {
                "4-tuple exhaustion forecast: new connections/s over what the ephemeral ports \
                 sustain with TIME_WAIT (100: connect() starts failing)"
            }
            (Column::Retransmits, _) => "segments retransmitted",
            (Column::Resets, _) => "connections ended by a reset: sent, received, refused, aborted",
            (Column::KeepaliveTimeouts, _) => "connections killed by unanswered keepalive probes",
            (Column::PortFailures, GroupKind::Service) => {
                "handshakes the listener dropped a second (accept queue full, other)"
            }
            (Column::PortFailures, _) => "connect() failures for want of a port (EADDRNOTAVAIL)",
            (Column::ConnectP99, _) => {
                "99th percentile of connect time (SYN_SENT held; accepted: SYN_RECV)"
            }
            (Column::Rtt, _) => "median smoothed RTT of flows at close",
            (Column::Drops, _) => {
                "packets the kernel dropped (lost: not NO_SOCKET, which a reset answers)"
            }
        }
    }

    pub(super) fn compare(self, a: &Row, b: &Row) -> Ordering {
        let float = |x: f64, y: f64| x.total_cmp(&y);
        match self {
            Column::Endpoint => a.label.cmp(&b.label).then(a.endpoint.cmp(&b.endpoint)),
            Column::ConnPerS => float(a.conn_per_s, b.conn_per_s),
            Column::Open => a.open.cmp(&b.open),
            Column::TimeWait => a.time_wait.cmp(&b.time_wait),
            Column::Forecast => float(
                a.forecast_pct.unwrap_or(-1.0),
                b.forecast_pct.unwrap_or(-1.0),
            )
            .then(a.listen.map(|l| l.queue).cmp(&b.listen.map(|l| l.queue))),
            Column::Retransmits => a.retransmits.cmp(&b.retransmits),
            Column::Resets => a.resets.cmp(&b.resets),
            Column::KeepaliveTimeouts => a.keepalive_timeouts.cmp(&b.keepalive_timeouts),
            Column::PortFailures => a.port_failures.cmp(&b.port_failures).then(float(
                a.listen.map_or(-1.0, |l| l.drops_per_s),
                b.listen.map_or(-1.0, |l| l.drops_per_s),
            )),
            Column::ConnectP99 => a.connect_p99_ns.cmp(&b.connect_p99_ns),
            Column::Rtt => a.rtt_p50_ns.cmp(&b.rtt_p50_ns),
            Column::Drops => a.drops.cmp(&b.drops),
        }
    }

    pub(super) fn cell(self, row: &Row) -> String {
        match self {
            Column::Endpoint => match &row.label {
                Some(label) => label.clone(),
                None => row.endpoint.to_string(),
            },
            Column::ConnPerS => format!("{:.1}", row.conn_per_s),
            Column::Open => row.open.to_string(),
            Column::TimeWait => row.time_wait.to_string(),
            Column::Forecast => match (row.listen, row.forecast_pct) {
                (Some(l), _) => {
                    let both = format!("{}/{}", l.queue, l.backlog);
                    if both.len() <= 5 {
                        both
                    } else {
                        format!(
                            "{}%",
                            u64::from(l.queue) * 100 / u64::from(l.backlog.max(1))
                        )
                    }
                }
                (None, Some(p)) if p.is_finite() => format!("{p:.0}"),
                (None, Some(_)) => "inf".into(),
                (None, None) => "-".into(),
            },
            Column::Retransmits => row.retransmits.to_string(),
            Column::Resets => row.resets.to_string(),
            Column::KeepaliveTimeouts => row.keepalive_timeouts.to_string(),
            Column::PortFailures => match row.listen {
                Some(l) => format!("{:.1}", l.drops_per_s),
                None => row.port_failures.to_string(),
            },
            Column::ConnectP99 => row
                .connect_p99_ns
                .map_or("-".into(), |ns| HumanDuration(ns).to_string()),
            Column::Rtt => row
                .rtt_p50_ns
                .map_or("-".into(), |ns| HumanDuration(ns).to_string()),
            Column::Drops => row.drops.to_string(),
        }
    }
}
