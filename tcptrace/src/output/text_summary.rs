//! The summary in columns: what a session saw, every count and what was lost.
use std::io::{self, Write};

use crate::{
    host::clock::{human_duration, HumanDuration},
    model::vitals::HumanBytes,
    state::{quantiles::Quantiles, summary::Summary},
};

/// Writes the summary block: the counts, what was lost, packets, TIME_WAIT, then the tables.
pub(super) fn write_summary(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    write_counts(o, s)?;
    write_lost(o, s)?;
    write_listeners(o, s)?;
    write_nat(o, s)?;
    write_identities(o, s)?;
    write_packets(o, s)?;
    write_port_failures(o, s)?;
    write_time_wait(o, s)?;
    write_tables(o, s)
}

/// `a 1, b 2`, or `-` for none.
fn listed<K: std::fmt::Display>(counts: &[(K, u64)]) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    let items: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    items.join(", ")
}

/// The headline, flows, filters, close sides and causes, and retransmits by state.
fn write_counts(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    writeln!(o)?;
    writeln!(
        o,
        "--- tcptrace summary: {} traced, {} transitions, {} retransmits, {} lost ---",
        human_duration(s.elapsed_ns),
        s.state_events,
        s.retransmits,
        s.lost()
    )?;
    let f = &s.flows;
    writeln!(
        o,
        "flows: {} seen, {} finished, {} still open, {} evicted, {} untracked (flow table full)",
        f.seen, f.finished, f.open, f.evicted, f.untracked
    )?;
    if let Some(filters) = &s.filters {
        writeln!(
            o,
            "filters: {filters}; {} events filtered out in the kernel",
            s.filtered_events
        )?;
    }
    if let Some(startup) = &s.startup {
        let missed = match startup.connections_opened {
            Some(n) => format!("{n} connections opened meanwhile in this namespace, not traced"),
            None => "connections opened meanwhile unknown (/proc/net/snmp unreadable)".into(),
        };
        writeln!(
            o,
            "start-up: {} to load and attach; {missed}",
            human_duration(startup.ns)
        )?;
    }
    writeln!(o, "close: {}", listed(&s.close))?;
    writeln!(o, "causes: {}", listed(&s.causes))?;
    writeln!(
        o,
        "retransmits by state: {}",
        listed(&s.retransmits_by_state)
    )
}

/// What was lost and why, and the reading's own errors.
fn write_lost(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    let l = &s.lost;
    writeln!(
        o,
        "lost: {} (ring buffer full: transitions {}, flows {}, retransmits {}, probes {}, time_wait {}, port failures {}, drops {}; \
         held first transitions (flow table full) {}; events the kernel skipped: {}); \
         read errors {}, decode errors {}, path gaps {}, stale flows {}",
        l.total(),
        l.transitions,
        l.flows,
        l.retransmits,
        l.probes,
        l.time_wait,
        l.port_failures,
        l.drops,
        l.undecided,
        l.missed_events,
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
    Ok(())
}

/// conntrack lookups for NATed flows and drops, where any table held entries.
/// The identities' cache, where it forgot or could not hold some (nothing lost silently).
fn write_identities(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    match &s.identities {
        Some(i) if i.forgotten > 0 || i.not_cached > 0 => writeln!(
            o,
            "identities: {} cached ({} of cgroups gone), {} of gone cgroups forgotten, {} not \
             cached (at most {})",
            i.cached, i.gone, i.forgotten, i.not_cached, i.limit
        ),
        _ => Ok(()),
    }
}

fn write_nat(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    if let Some(n) = &s.nat {
        writeln!(
            o,
            "nat: {} conntrack lookups in up to {} namespaces, {} found, {} not made (over {}/s)",
            n.lookups,
            n.namespaces,
            n.found,
            n.skipped,
            crate::host::conntrack::LOOKUPS_PER_S
        )?;
    }
    Ok(())
}

/// Listeners' drops and SYN cookies, where watched.
fn write_listeners(o: &mut impl Write, s: &Summary) -> io::Result<()> {
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
    Ok(())
}

/// connect()/bind() calls that failed for want of a port.
fn write_port_failures(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    if s.port_failures > 0 {
        writeln!(
            o,
            "port failures: {} connect()/bind() calls failed with EADDRNOTAVAIL or EADDRINUSE ({} without a known address)",
            s.port_failures, s.port_failures_unaddressed
        )?;
    }
    Ok(())
}

/// TIME_WAIT, where traced: entries, ends, time held, top destinations.
fn write_time_wait(o: &mut impl Write, s: &Summary) -> io::Result<()> {
    let Some(tw) = &s.time_wait else {
        return Ok(());
    };
    writeln!(
        o,
        "time_wait: {} entered ({} by the connecting side, {} by the accepting side), ended: {}; \
         {} already there at start; {} skipped (tcp_max_tw_buckets full)",
        tw.entered,
        tw.client_side,
        tw.server_side,
        listed(&tw.ends),
        tw.preexisting,
        tw.overflows
    )?;
    if let Some(held) = &tw.held {
        writeln!(o, "time_wait held: {}", QuantilesText(held))?;
    }
    if !tw.top_destinations.is_empty() {
        writeln!(
            o,
            "time_wait top destinations: {}",
            listed(&tw.top_destinations)
        )?;
    }
    if !tw.overflow_destinations.is_empty() {
        writeln!(
            o,
            "time_wait skipped, by destination: {}",
            listed(&tw.overflow_destinations)
        )?;
    }
    Ok(())
}

/// Transitions by kind, and the time held per state.
fn write_tables(o: &mut impl Write, s: &Summary) -> io::Result<()> {
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
        writeln!(
            o,
            "drops: {} TCP packets dropped by this host ({}), {} of them not sent as records \
             (over --drop-records-per-s); SYN-ACK retransmits {}",
            s.drops,
            listed(&s.drops_by_reason),
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
