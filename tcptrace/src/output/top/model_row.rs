//! One row of `top`'s tables, as the view shows it, and the rows of each table.
use foldhash::HashMap;

use super::{rate_window, seconds, GroupKind, ListenCell, TopModel};
use crate::model::tcp::{Endpoint, FlowAddrs, TcpState};

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub endpoint: Endpoint,
    /// The workload's label, in the workloads' table (its rows have no endpoint).
    pub label: Option<String>,
    pub conn_per_s: f64,
    pub open: u64,
    pub time_wait: u64,
    /// Highest use of a (local address, remote endpoint) 4-tuple space, in percent.
    pub forecast_pct: Option<f64>,
    pub retransmits: u64,
    pub resets: u64,
    pub keepalive_timeouts: u64,
    /// connect()/bind() failures for want of a port (EADDRNOTAVAIL, EADDRINUSE), since start.
    pub port_failures: u64,
    pub connect_p99_ns: Option<u64>,
    /// A local service's listener: its accept queue and drops.
    pub listen: Option<ListenCell>,
    /// The median smoothed RTT (closed flows over the last minute, open ones sampled).
    pub rtt_p50_ns: Option<u64>,
    /// Packets of its finished flows this host dropped.
    pub drops: u64,
}

impl Row {
    /// A row with nothing counted yet.
    pub fn empty(endpoint: Endpoint) -> Row {
        Row {
            endpoint,
            label: None,
            conn_per_s: 0.0,
            open: 0,
            time_wait: 0,
            forecast_pct: None,
            retransmits: 0,
            resets: 0,
            keepalive_timeouts: 0,
            port_failures: 0,
            connect_p99_ns: None,
            listen: None,
            rtt_p50_ns: None,
            drops: 0,
        }
    }
}

impl TopModel {
    /// The rows of one table; `time_wait` gives the live TIME_WAIT sockets' 4-tuples.
    pub fn rows<'a>(
        &self,
        kind: GroupKind,
        now_ns: u64,
        time_wait: impl Iterator<Item = (&'a FlowAddrs, Option<bool>)>,
    ) -> Vec<Row> {
        let now_s = seconds(now_ns);
        let window_s = rate_window::window_s(self.started_ns, now_ns);
        if kind == GroupKind::Workload {
            return self.workloads.rows(now_s, window_s);
        }
        let mut tw_counts: HashMap<Endpoint, u64> = HashMap::default();
        for (addrs, accepted) in time_wait {
            // The side its flow said; a TIME_WAIT whose flow was not seen is the accepting
            // side's when its local port listens.
            let first = accepted.map(|a| match a {
                true => TcpState::SynRecv,
                false => TcpState::SynSent,
            });
            let group = self.group_of(addrs, first);
            if group.kind == kind {
                *tw_counts.entry(group.endpoint).or_default() += 1;
            }
        }
        let mut rows: Vec<Row> = self
            .groups
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(k, g)| {
                let forecast_pct = self
                    .busiest_space(k, g, now_s, window_s)
                    .map(|f| f.utilization * 100.0);
                Row {
                    endpoint: k.endpoint,
                    label: None,
                    conn_per_s: g.opened.per_second(now_s, window_s),
                    open: g.open,
                    time_wait: tw_counts.remove(&k.endpoint).unwrap_or(0),
                    forecast_pct,
                    retransmits: g.retransmits,
                    resets: g.resets,
                    keepalive_timeouts: g.keepalive_timeouts,
                    port_failures: g.port_failures,
                    connect_p99_ns: g.connect.as_ref().map(|h| h.value_at_quantile(0.99)),
                    listen: None,
                    rtt_p50_ns: g.rtt.p50_ns(now_s),
                    drops: g.drops,
                }
            })
            .collect();
        // TIME_WAITs left from before tracing, with no traffic seen since.
        rows.extend(tw_counts.into_iter().map(|(endpoint, time_wait)| Row {
            time_wait,
            ..Row::empty(endpoint)
        }));
        if kind == GroupKind::Service {
            self.attach_listeners(&mut rows, now_s, window_s);
        }
        rows
    }
}
