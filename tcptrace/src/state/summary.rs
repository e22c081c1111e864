//! The end-of-run summary: one value, assembled once (by the dispatcher, for a live session and
//! for `report` alike), that the text and JSON printers both render. Its field names are the
//! JSON summary's (docs/reference.md): every counter is spelled here once.
use std::fmt::Display;

use serde::{ser::SerializeMap as _, Serialize, Serializer};

use crate::{
    model::{
        cause::CloseCause,
        counters::{with_total, Lost},
        tcp::{CloseSide, Endpoint, TcpState, TimeWaitEnd},
    },
    state::{listeners::ListenTotals, quantiles::Quantiles},
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub elapsed_ns: u64,
    pub state_events: u64,
    pub retransmits: u64,
    pub records_delivered: u64,
    /// Records the kernel submitted to the ring buffer.
    pub records_submitted: u64,
    pub keepalive_probes: u64,
    /// connect()/bind() calls that failed for want of a port (EADDRNOTAVAIL, EADDRINUSE),
    /// and those of them whose address was not known (not seen entering).
    pub port_failures: u64,
    pub port_failures_unaddressed: u64,
    pub transitions: Vec<TransitionCount>,
    /// How long each state was held.
    pub held: Vec<DurationStats>,
    pub flows: FlowCounts,
    #[serde(serialize_with = "by_name")]
    pub close: Vec<(CloseSide, u64)>,
    #[serde(serialize_with = "by_name")]
    pub causes: Vec<(CloseCause, u64)>,
    #[serde(serialize_with = "by_name")]
    pub retransmits_by_state: Vec<(TcpState, u64)>,
    #[serde(serialize_with = "with_total")]
    pub lost: Lost,
    pub read_errors: u64,
    pub decode_errors: u64,
    pub truncated_paths: u64,
    pub stale_flows: u64,
    pub path_gaps: u64,
    /// Transitions that arrived while the main program ran on their CPU, handled by the
    /// second program (the kernel skips them for the first).
    pub nested_events: u64,
    /// Sockets with SO_KEEPALIVE whose owner the kernel could not index for their probes
    /// (`--flow-memory socket`, the index full).
    pub keepalive_unindexed: u64,
    /// Events the in-kernel filters dropped.
    pub filtered_events: u64,
    /// The filters in force, in words.
    pub filters: Option<String>,
    /// TIME_WAIT, where traced.
    pub time_wait: Option<TimeWaitSummary>,
    /// Handshakes listeners dropped and SYN cookies sent, where listeners were watched.
    pub listen: Option<ListenTotals>,
    /// TCP packets the kernel dropped (counted in the kernel).
    pub drops: u64,
    /// Drops counted but not sent as records (over the per-CPU rate).
    pub drops_unsent: u64,
    /// Drops by the kernel's reason, named.
    #[serde(serialize_with = "by_name")]
    pub drops_by_reason: Vec<(String, u64)>,
    /// SYN-ACKs listeners sent again.
    pub synack_retransmits: u64,
    /// Bytes and RTT of the flows whose vitals were read at CLOSE (none: no such flow).
    pub vitals: Option<VitalsSummary>,
    /// The start-up before the programs were attached, and what it missed (live only).
    pub startup: Option<StartupGap>,
    /// conntrack entries looked up for NATed flows and drops, where any namespace's table
    /// held entries.
    pub nat: Option<NatLookups>,
    /// The workload identities' cache (live, where cgroups are named).
    pub identities: Option<crate::host::identity_resolver::IdentityCache>,
}

/// What the conntrack lookups (a flow's or a drop's addresses past a NAT) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NatLookups {
    /// Namespaces whose table was looked in (those holding entries).
    pub namespaces: u64,
    pub lookups: u64,
    pub found: u64,
    /// Not made: over the budget of lookups a second.
    pub skipped: u64,
}

/// The start-up: from before the programs were loaded until they were attached. Connections
/// opened meanwhile are not traced; the kernel's own counts (`/proc/net/snmp` ActiveOpens and
/// PassiveOpens, tcptrace's network namespace) say how many there were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StartupGap {
    pub ns: u64,
    /// `None` where /proc/net/snmp could not be read.
    pub connections_opened: Option<u64>,
}

impl Summary {
    /// Everything lost.
    pub fn lost(&self) -> u64 {
        self.lost.total()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TransitionCount {
    pub old: TcpState,
    pub new: TcpState,
    pub count: u64,
}

/// Percentiles of one state's hold times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DurationStats {
    pub state: TcpState,
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowCounts {
    pub seen: u64,
    pub finished: u64,
    /// Open when tracing stopped.
    pub open: u64,
    /// Not tracked: the flow table was full.
    pub untracked: u64,
    /// Evicted from a nearly full flow table (least recently active first).
    pub evicted: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimeWaitSummary {
    pub entered: u64,
    /// TIME_WAITs held by the side that connected (clients) and by the side that accepted.
    pub client_side: u64,
    pub server_side: u64,
    #[serde(serialize_with = "by_name")]
    pub ends: Vec<(TimeWaitEnd, u64)>,
    /// Of the durations, when any ended.
    pub held: Option<Quantiles>,
    #[serde(serialize_with = "destinations")]
    pub top_destinations: Vec<(Endpoint, u64)>,
    /// Skipped: `tcp_max_tw_buckets` full.
    pub overflows: u64,
    /// Of those, the ones matched to a flow, by destination (the connecting side's remote
    /// endpoint; the accepting side's local service): the 10 most.
    #[serde(serialize_with = "destinations")]
    pub overflow_destinations: Vec<(Endpoint, u64)>,
    /// Sockets already in TIME_WAIT when tracing started.
    pub preexisting: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VitalsSummary {
    pub flows: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// The smoothed RTT at close.
    pub srtt: Option<Quantiles>,
}

/// Counts as a JSON object keyed by name, names in order.
fn by_name<K: Display, S: Serializer>(counts: &[(K, u64)], s: S) -> Result<S::Ok, S::Error> {
    let mut named: Vec<(String, u64)> = counts.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    named.sort_unstable();
    let mut map = s.serialize_map(Some(named.len()))?;
    for (name, n) in named {
        map.serialize_entry(&name, &n)?;
    }
    map.end()
}

/// Destinations as `{raddr, rport, count}`.
fn destinations<S: Serializer>(top: &[(Endpoint, u64)], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Destination {
        raddr: String,
        rport: u16,
        count: u64,
    }
    s.collect_seq(top.iter().map(|(d, n)| Destination {
        raddr: d.addr.to_string(),
        rport: d.port,
        count: *n,
    }))
}
