//! One row of `top`'s tables, as the view shows it.
use super::ListenCell;
use crate::model::tcp::Endpoint;

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
