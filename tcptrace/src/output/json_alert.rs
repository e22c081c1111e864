//! Alerts as JSON Lines: the alert's own fields, and what each kind adds.
use serde::Serialize;

use super::json_fields::{Addrs, Hex, Owner, WorkloadFields};
use crate::{
    host::nat_rules::PortsBasis,
    model::keepalive::KeepaliveSettings,
    model::tcp::TcpState,
    state::alert::{path_text, Alert},
    state::forecast::Forecast,
    state::listeners::ListenAlert,
    state::snat::SnatForecast,
};

#[derive(Serialize)]
pub(super) struct AlertLine<'a> {
    r#type: &'static str,
    kind: &'static str,
    ts_unix_ns: u64,
    #[serde(flatten)]
    owner: Owner<'a>,
    #[serde(flatten)]
    workload: WorkloadFields<'a>,
    #[serde(flatten)]
    addrs: Addrs<'a>,
    detail: String,
    /// The flow's path so far (`SYN_SENT 1.2ms > ESTABLISHED 5.0s > CLOSE`), for ended flows.
    history: Option<String>,
    state: Option<TcpState>,
    probe: Option<u8>,
    probes_unanswered: Option<u8>,
    silent_ns: Option<u64>,
    keepalive: Option<KeepaliveSettings>,
    rtx: Option<u32>,
    err: Option<u8>,
    reset_reason: Option<&'a str>,
    skaddr: Hex,
    /// A closed flow's packets this host dropped, by reason (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    drops: Option<std::collections::BTreeMap<&'a str, u32>>,
    /// The forecast, for `port_exhaustion` alerts, and for `connect_failure` ones what it
    /// said toward the destination (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    forecast: Option<&'a Forecast>,
    /// `connect_failure` and `bind_failure` alerts only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    port_failure: Option<PortFailureFields>,
    /// `listen_drops` and `syn_cookies` alerts only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    listen: Option<ListenFields>,
    /// `snat_exhausted` and `time_wait_paws` alerts only.
    #[serde(skip_serializing_if = "Option::is_none")]
    nat: Option<NatFields>,
}

/// What a `snat_exhausted` / `time_wait_paws` alert adds (under `nat`).
#[derive(Serialize)]
struct NatFields {
    /// The namespace that dropped the SYN (the NAT's, or the TIME_WAIT's).
    netns: u32,
    /// SYNs dropped so far for the same NAT address and destination, or source address and
    /// local port.
    dropped_total: u64,
    /// snat_exhausted: the tuple the NAT tried (source first); time_wait_paws: the client
    /// behind the NAT, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    saddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    /// snat_forecast, and snat_exhausted where the NAT was followed: its ports toward the
    /// destination and how many are held.
    #[serde(skip_serializing_if = "Option::is_none")]
    snat: Option<SnatFields>,
}

/// A source NAT's ports toward one destination (under `nat.snat`).
#[derive(Serialize)]
struct SnatFields {
    /// The NAT address and the destination.
    nat_addr: String,
    daddr: String,
    dport: u16,
    /// The ports its rule gives, and where that came from: `rule`, `one_of_rules`,
    /// `kernel_default` (the rule names none), `assumed` (no nf_tables rule read).
    ports_min: u16,
    ports_max: u16,
    ports_basis: &'static str,
    /// NATed connections per second (ended, over 10 s) and their mean time open.
    rate_per_s: f64,
    open_s: f64,
    /// How long a closed connection's entry stays (nf_conntrack_tcp_timeout_time_wait).
    hold_s: f64,
    /// Entries held toward the destination (estimate), of them open connections', and over
    /// the ports.
    entries_held: f64,
    entries_held_open: f64,
    utilization: f64,
    /// Whether the kernel evicts closed entries to reuse their ports (Linux 6.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    evicts_closed: Option<bool>,
    /// Who is behind the NAT, newest first.
    sources: Vec<String>,
}

impl From<&SnatForecast> for SnatFields {
    fn from(f: &SnatForecast) -> SnatFields {
        SnatFields {
            nat_addr: f.nat.to_string(),
            daddr: f.destination.addr.to_string(),
            dport: f.destination.port,
            ports_min: f.ports.range.0,
            ports_max: f.ports.range.1,
            ports_basis: match f.ports.basis {
                PortsBasis::Rule => "rule",
                PortsBasis::OneOfRules(_) => "one_of_rules",
                PortsBasis::KernelDefault => "kernel_default",
                PortsBasis::Assumed => "assumed",
            },
            rate_per_s: f.rate_per_s,
            open_s: f.open_s,
            hold_s: f.hold_s,
            entries_held: f.held,
            entries_held_open: f.held_open,
            utilization: f.utilization,
            evicts_closed: f.evicts_closed,
            sources: f.sources.clone(),
        }
    }
}

/// What a `listen_drops` / `syn_cookies` alert adds.
#[derive(Serialize)]
struct ListenFields {
    /// The namespace (inode).
    netns: u32,
    /// listen_drops: the accept queue now, the backlog, the fullest seen; handshakes dropped
    /// since the last alert and since start; how long it has been dropping.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queue: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropping_for_ns: Option<u64>,
    /// syn_cookies: cookies sent since the last alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    syncookies_sent: Option<u64>,
}

/// What a `connect_failure` / `bind_failure` alert adds.
#[derive(Serialize)]
struct PortFailureFields {
    errno: &'static str,
    /// The caller's network namespace (inode; 0: not read).
    netns: u32,
    /// Failures of this kind (namespace, call, errno, address) since the last alert for it.
    failures: u64,
    /// connect: TIME_WAITs and open flows toward the destination in that namespace.
    time_waits: Option<u64>,
    open_flows: Option<u64>,
}

/// The JSON object of an alert (`ts_unix_ns`: its time on the wall clock).
pub(super) fn alert_line<'a>(a: &'a Alert, ts_unix_ns: u64) -> AlertLine<'a> {
    let (history, state, probe, probes_unanswered, rtx, err, reset_reason, skaddr_raw) = match a {
        Alert::Closed(f) => (
            Some(path_text(&f.lifecycle)),
            None,
            None,
            Some(f.evidence.probes),
            Some(f.lifecycle.retransmits),
            Some(f.evidence.err),
            f.evidence.reset_sent.as_deref(),
            f.skaddr,
        ),
        Alert::FinRetransmit(r) => (None, Some(r.state), None, None, None, None, None, r.skaddr),
        Alert::KeepaliveProbe(p) => (None, None, Some(p.probe), None, None, None, None, p.skaddr),
        Alert::Exhaustion(_) | Alert::PortFailure(_) | Alert::Listen(_) | Alert::Nat(_) => {
            (None, None, None, None, None, None, None, 0)
        }
    };
    let forecast = match a {
        Alert::Exhaustion(w) => Some(&w.forecast),
        Alert::PortFailure(p) => p.forecast.as_ref(),
        _ => None,
    };
    let port_failure = match a {
        Alert::PortFailure(p) => Some(PortFailureFields {
            errno: p.failure.errno.name(),
            netns: p.failure.netns,
            failures: p.failures,
            time_waits: p.time_waits,
            open_flows: p.open_flows,
        }),
        _ => None,
    };
    let listen = match a {
        Alert::Listen(ListenAlert::Drops {
            ts_ns,
            listener: l,
            dropped,
            ..
        }) => Some(ListenFields {
            netns: l.netns,
            queue: Some(l.queue),
            backlog: Some(l.backlog),
            max_queue: Some(l.max_queue),
            dropped: Some(*dropped),
            dropped_total: Some(l.dropped),
            dropping_for_ns: l.dropping_since.map(|t| ts_ns.saturating_sub(t)),
            syncookies_sent: None,
        }),
        Alert::Listen(ListenAlert::SynCookies { netns, sent, .. }) => Some(ListenFields {
            netns: *netns,
            queue: None,
            backlog: None,
            max_queue: None,
            dropped: None,
            dropped_total: None,
            dropping_for_ns: None,
            syncookies_sent: Some(*sent),
        }),
        _ => None,
    };
    let nat = match a {
        Alert::Nat(n) => Some(NatFields {
            netns: n.netns,
            dropped_total: n.count,
            saddr: n.translated.map(|t| t.local.addr.to_string()),
            sport: n.translated.map(|t| t.local.port),
            daddr: n.translated.map(|t| t.remote.addr.to_string()),
            dport: n.translated.map(|t| t.remote.port),
            snat: n.snat.as_ref().map(SnatFields::from),
        }),
        _ => None,
    };
    let drops = match a {
        Alert::Closed(f) if !f.drops.is_empty() => {
            Some(f.drops.0.iter().map(|(r, n)| (r.as_str(), *n)).collect())
        }
        _ => None,
    };
    AlertLine {
        r#type: "alert",
        kind: a.kind(),
        ts_unix_ns,
        owner: a.owner().into(),
        workload: a.workload().into(),
        addrs: a.addrs().into(),
        detail: a.detail(),
        history,
        state,
        probe,
        probes_unanswered,
        silent_ns: a.silent_ns(),
        keepalive: a.keepalive(),
        rtx,
        err,
        reset_reason,
        skaddr: Hex(skaddr_raw),
        drops,
        forecast,
        port_failure,
        listen,
        nat,
    }
}
