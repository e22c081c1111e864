//! The summary as one JSON object.
use serde::Serialize;

use crate::{model::tcp::TcpState, state::aggregate::Summary};

#[derive(Serialize)]
pub(super) struct Lost {
    pub(super) transitions: u64,
    pub(super) flows: u64,
    pub(super) retransmits: u64,
    pub(super) probes: u64,
    pub(super) time_wait: u64,
    pub(super) port_failures: u64,
    pub(super) drops: u64,
    pub(super) undecided: u64,
    pub(super) missed_events: u64,
    pub(super) total: u64,
}

#[derive(Serialize)]
struct TimeWaitSummaryLine {
    entered: u64,
    client_side: u64,
    server_side: u64,
    ends: std::collections::BTreeMap<&'static str, u64>,
    held: Option<HeldQuantiles>,
    top_destinations: Vec<DestinationCount>,
    overflows: u64,
    preexisting: u64,
}

#[derive(Serialize)]
struct HeldQuantiles {
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

#[derive(Serialize)]
struct DestinationCount {
    raddr: String,
    rport: u16,
    count: u64,
}

#[derive(Serialize)]
struct TransitionCount {
    old: TcpState,
    new: TcpState,
    count: u64,
}

#[derive(Serialize)]
struct HeldStats {
    state: TcpState,
    count: u64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

#[derive(Serialize)]
struct Flows {
    seen: u64,
    finished: u64,
    open: u64,
    untracked: u64,
    evicted: u64,
}

#[derive(Serialize)]
struct SummaryLine {
    r#type: &'static str,
    elapsed_ns: u64,
    state_events: u64,
    retransmits: u64,
    records_delivered: u64,
    records_submitted: u64,
    keepalive_probes: u64,
    /// connect()/bind() failed for want of a port, and of those, without a known address.
    port_failures: u64,
    port_failures_unaddressed: u64,
    transitions: Vec<TransitionCount>,
    held: Vec<HeldStats>,
    flows: Flows,
    close: std::collections::BTreeMap<&'static str, u64>,
    causes: std::collections::BTreeMap<&'static str, u64>,
    retransmits_by_state: std::collections::BTreeMap<&'static str, u64>,
    lost: Lost,
    read_errors: u64,
    decode_errors: u64,
    truncated_paths: u64,
    stale_flows: u64,
    path_gaps: u64,
    nested_events: u64,
    keepalive_unindexed: u64,
    filtered_events: u64,
    filters: Option<String>,
    time_wait: Option<TimeWaitSummaryLine>,
    /// `{accept_queue_full, other_drops, syncookies_sent}` where listeners were watched.
    listen: Option<crate::state::listeners::ListenTotals>,
    /// TCP packets the kernel dropped, and by reason (the reasons of those decoded).
    drops: u64,
    /// Of those, counted but not sent as records (over the per-CPU rate).
    drops_unsent: u64,
    drops_by_reason: std::collections::BTreeMap<String, u64>,
    synack_retransmits: u64,
    /// Bytes and RTT of the flows whose vitals were read at CLOSE.
    vitals: Option<VitalsSummaryLine>,
}

#[derive(Serialize)]
struct VitalsSummaryLine {
    flows: u64,
    bytes_acked: u64,
    bytes_received: u64,
    srtt: Option<HeldQuantiles>,
}

fn quantiles([p50, p90, p99, max]: [u64; 4]) -> HeldQuantiles {
    HeldQuantiles {
        p50_ns: p50,
        p90_ns: p90,
        p99_ns: p99,
        max_ns: max,
    }
}

pub(super) fn summary_line(s: &Summary) -> impl Serialize {
    SummaryLine {
        r#type: "summary",
        elapsed_ns: s.elapsed_ns,
        state_events: s.state_events,
        retransmits: s.retransmits,
        records_delivered: s.delivered,
        records_submitted: s.submitted,
        keepalive_probes: s.keepalive_probes,
        port_failures: s.port_failures,
        port_failures_unaddressed: s.port_failures_unaddressed,
        transitions: s
            .transitions
            .iter()
            .map(|&(old, new, count)| TransitionCount { old, new, count })
            .collect(),
        held: s
            .durations
            .iter()
            .map(|d| HeldStats {
                state: d.state,
                count: d.count,
                p50_ns: d.p50_ns,
                p90_ns: d.p90_ns,
                p99_ns: d.p99_ns,
                max_ns: d.max_ns,
            })
            .collect(),
        flows: Flows {
            seen: s.flows_seen,
            finished: s.flows_finished,
            open: s.flows_open,
            untracked: s.flows_untracked,
            evicted: s.flows_evicted,
        },
        close: s.close.iter().map(|(k, n)| (k.name(), *n)).collect(),
        causes: s.causes.iter().map(|(k, n)| (k.name(), *n)).collect(),
        retransmits_by_state: s.rtx_by_state.iter().map(|(k, n)| (k.name(), *n)).collect(),
        lost: Lost {
            transitions: s.lost_transitions,
            flows: s.lost_flows,
            retransmits: s.lost_retransmits,
            probes: s.lost_probes,
            time_wait: s.lost_time_wait,
            port_failures: s.lost_port_failures,
            drops: s.lost_drops,
            undecided: s.lost_undecided,
            missed_events: s.missed_events,
            total: s.lost(),
        },
        read_errors: s.read_errors,
        decode_errors: s.decode_errors,
        truncated_paths: s.truncated_paths,
        stale_flows: s.stale_flows,
        path_gaps: s.path_gaps,
        nested_events: s.nested_events,
        keepalive_unindexed: s.keepalive_unindexed,
        filtered_events: s.filtered_events,
        filters: s.filters.clone(),
        listen: s.listen,
        drops: s.drops,
        drops_unsent: s.drops_unsent,
        drops_by_reason: s
            .packets
            .iter()
            .flat_map(|p| p.drops_by_reason.iter().cloned())
            .collect(),
        synack_retransmits: s.synack_retransmits,
        vitals: s
            .packets
            .as_ref()
            .filter(|p| p.flows_with_vitals > 0)
            .map(|p| VitalsSummaryLine {
                flows: p.flows_with_vitals,
                bytes_acked: p.bytes_acked,
                bytes_received: p.bytes_received,
                srtt: p.srtt_ns.map(quantiles),
            }),
        time_wait: s.time_wait.as_ref().map(|tw| TimeWaitSummaryLine {
            entered: tw.entered,
            client_side: tw.client_side,
            server_side: tw.server_side,
            ends: tw.ends.iter().map(|(e, n)| (e.name(), *n)).collect(),
            held: tw.held.map(quantiles),
            top_destinations: tw
                .top_destinations
                .iter()
                .map(|(d, n)| DestinationCount {
                    raddr: d.addr.to_string(),
                    rport: d.port,
                    count: *n,
                })
                .collect(),
            overflows: tw.overflows,
            preexisting: s.time_wait_preexisting,
        }),
    }
}
