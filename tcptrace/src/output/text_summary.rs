//! The summary in columns: what a session saw, every count and what was lost.
use std::io::{self, Write};

use crate::{
    host::clock::{human_duration, HumanDuration},
    state::aggregate::Summary,
};

/// Writes the summary block.
pub(super) fn write_summary(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    writeln!(o)?;
    writeln!(
        o,
        "--- tcptrace summary: {} traced, {} transitions, {} retransmits, {} lost ---",
        human_duration(s.elapsed_ns),
        s.state_events,
        s.retransmits,
        s.lost()
    )?;
    writeln!(
        o,
        "flows: {} seen, {} finished, {} still open, {} evicted, {} untracked (flow table full)",
        s.flows_seen, s.flows_finished, s.flows_open, s.flows_evicted, s.flows_untracked
    )?;
    if let Some(filters) = &s.filters {
        writeln!(
            o,
            "filters: {filters}; {} events filtered out in the kernel",
            s.filtered_events
        )?;
    }
    let close: Vec<String> = s.close.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(
        o,
        "close: {}",
        if close.is_empty() {
            "-".into()
        } else {
            close.join(", ")
        }
    )?;
    let rtx: Vec<String> = s
        .rtx_by_state
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    writeln!(
        o,
        "retransmits by state: {}",
        if rtx.is_empty() {
            "-".into()
        } else {
            rtx.join(", ")
        }
    )?;
    writeln!(
        o,
        "lost: {} (ring buffer full: transitions {}, flows {}, retransmits {}, probes {}, time_wait {}, port failures {}, drops {}; \
         held first transitions (flow table full) {}; events the kernel skipped: {}); \
         read errors {}, decode errors {}, path gaps {}, stale flows {}",
        s.lost(),
        s.lost_transitions,
        s.lost_flows,
        s.lost_retransmits,
        s.lost_probes,
        s.lost_time_wait,
        s.lost_port_failures,
        s.lost_drops,
        s.lost_undecided,
        s.missed_events,
        s.read_errors,
        s.decode_errors,
        s.path_gaps,
        s.stale_flows
    )?;
    if s.keepalive_unindexed > 0 {
        writeln!(
            o,
            "keepalive: {} sockets' owners not indexed (--max-flows full): their probes carry no owner",
            s.keepalive_unindexed
        )?;
    }
    if let Some(l) = &s.listen {
        writeln!(
            o,
            "listeners: {} handshakes dropped (accept queue full {}, other {}); SYN cookies sent {}",
            l.accept_queue_full + l.other_drops,
            l.accept_queue_full,
            l.other_drops,
            l.syncookies_sent
        )?;
    }
    write_packets(o, s)?;
    if s.port_failures > 0 {
        writeln!(
            o,
            "port failures: {} connect()/bind() calls failed with EADDRNOTAVAIL or EADDRINUSE ({} without a known address)",
            s.port_failures, s.port_failures_unaddressed
        )?;
    }
    if let Some(tw) = &s.time_wait {
        let ends: Vec<String> = tw
            .ends
            .iter()
            .map(|(e, n)| format!("{} {n}", e.name()))
            .collect();
        writeln!(
            o,
            "time_wait: {} entered ({} by the connecting side, {} by the accepting side), ended: {}; \
             {} already there at start; {} skipped (tcp_max_tw_buckets full)",
            tw.entered,
            tw.client_side,
            tw.server_side,
            if ends.is_empty() { "-".into() } else { ends.join(", ") },
            s.time_wait_preexisting,
            tw.overflows
        )?;
        if let Some([p50, p90, p99, max]) = tw.held {
            writeln!(
                o,
                "time_wait held: p50 {} p90 {} p99 {} max {}",
                HumanDuration(p50),
                HumanDuration(p90),
                HumanDuration(p99),
                HumanDuration(max)
            )?;
        }
        let top: Vec<String> = tw
            .top_destinations
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        if !top.is_empty() {
            writeln!(o, "time_wait top destinations: {}", top.join(", "))?;
        }
    }
    if !s.transitions.is_empty() {
        writeln!(o, "transitions:")?;
        for (old, new, n) in &s.transitions {
            writeln!(o, "  {old:>11} -> {new:<11} {n:>10}")?;
        }
    }
    if !s.durations.is_empty() {
        writeln!(
            o,
            "time held per state:  {:>10} {:>8} {:>8} {:>8} {:>8}",
            "count", "p50", "p90", "p99", "max"
        )?;
        for d in &s.durations {
            writeln!(
                o,
                "  {:<19} {:>10} {:>8} {:>8} {:>8} {:>8}",
                d.state,
                d.count,
                human_duration(d.p50_ns),
                human_duration(d.p90_ns),
                human_duration(d.p99_ns),
                human_duration(d.max_ns)
            )?;
        }
    }
    Ok(())
}

/// Drops by reason, SYN-ACK retransmits, and the bytes and RTT of the flows read at CLOSE.
fn write_packets(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    let Some(p) = &s.packets else {
        return Ok(());
    };
    if s.drops > 0 || s.synack_retransmits > 0 {
        let reasons: Vec<String> = p
            .drops_by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        writeln!(
            o,
            "drops: {} TCP packets dropped by this host ({}), {} of them not sent as records \
             (over --drop-records-per-s); SYN-ACK retransmits {}",
            s.drops,
            if reasons.is_empty() {
                "-".into()
            } else {
                reasons.join(", ")
            },
            s.drops_unsent,
            s.synack_retransmits
        )?;
    }
    if p.flows_with_vitals > 0 {
        write!(
            o,
            "vitals: {} flows sent {} and received {}",
            p.flows_with_vitals,
            crate::model::vitals::HumanBytes(p.bytes_acked),
            crate::model::vitals::HumanBytes(p.bytes_received)
        )?;
        match p.srtt_ns {
            Some([p50, p90, p99, max]) => writeln!(
                o,
                "; RTT at close p50 {} p90 {} p99 {} max {}",
                HumanDuration(p50),
                HumanDuration(p90),
                HumanDuration(p99),
                HumanDuration(max)
            )?,
            None => writeln!(o)?,
        }
    }
    Ok(())
}
