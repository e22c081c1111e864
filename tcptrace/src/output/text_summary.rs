//! The summary in columns: what a session saw, every count and what was lost.
use std::io::{self, Write};

use crate::{
    host::clock::{human_duration, HumanDuration},
    model::vitals::HumanBytes,
    state::{quantiles::Quantiles, summary::Summary},
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
        s.flows.seen, s.flows.finished, s.flows.open, s.flows.evicted, s.flows.untracked
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
        .retransmits_by_state
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
        s.lost.transitions,
        s.lost.flows,
        s.lost.retransmits,
        s.lost.probes,
        s.lost.time_wait,
        s.lost.port_failures,
        s.lost.drops,
        s.lost.undecided,
        s.lost.missed_events,
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
            tw.preexisting,
            tw.overflows
        )?;
        if let Some(held) = &tw.held {
            writeln!(o, "time_wait held: {}", QuantilesText(held))?;
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
        for t in &s.transitions {
            writeln!(o, "  {:>11} -> {:<11} {:>10}", t.old, t.new, t.count)?;
        }
    }
    if !s.held.is_empty() {
        writeln!(
            o,
            "time held per state:  {:>10} {:>8} {:>8} {:>8} {:>8}",
            "count", "p50", "p90", "p99", "max"
        )?;
        for d in &s.held {
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
    if s.drops > 0 || s.synack_retransmits > 0 {
        let reasons: Vec<String> = s
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
    if let Some(v) = &s.vitals {
        write!(
            o,
            "vitals: {} flows sent {} and received {}",
            v.flows,
            HumanBytes(v.bytes_acked),
            HumanBytes(v.bytes_received)
        )?;
        match &v.srtt {
            Some(srtt) => writeln!(o, "; RTT at close {}", QuantilesText(srtt))?,
            None => writeln!(o)?,
        }
    }
    Ok(())
}

/// `p50 … p90 … p99 … max …`, each as a duration.
struct QuantilesText<'a>(&'a Quantiles);

impl std::fmt::Display for QuantilesText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.0;
        write!(
            f,
            "p50 {} p90 {} p99 {} max {}",
            HumanDuration(q.p50_ns),
            HumanDuration(q.p90_ns),
            HumanDuration(q.p99_ns),
            HumanDuration(q.max_ns)
        )
    }
}
