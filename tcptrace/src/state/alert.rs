//! The operator's view: only anomalies, each with the flow's short history on one line.
use std::fmt;

use crate::{
    host::clock::{human_duration, HumanDuration},
    model::cause::CloseCause,
    model::drop_reasons,
    model::events::{FinishedFlow, KeepaliveInForce, KeepaliveProbe, Lifecycle, Retransmit},
    model::keepalive::KeepaliveSettings,
    model::port_failure::Call,
    model::tcp::{Endpoint, FlowAddrs, Process, TcpState},
    model::workload::Workload,
    state::forecast::Forecast,
    state::listeners::ListenAlert,
    state::nat::NatAlert,
    state::port_failures::PortFailureAlert,
    state::timewait::TimeWait,
    text::digits::number,
};

pub enum Alert<'a> {
    /// A flow ended abnormally (timeouts, resets, refused, aborted).
    Closed(&'a FinishedFlow),
    /// Our FIN is being retransmitted: we closed and the peer is silent (half-open).
    FinRetransmit(&'a Retransmit),
    /// A keepalive probe went unanswered so far: the connection may be dying.
    KeepaliveProbe(&'a KeepaliveProbe),
    /// A 4-tuple space's exhaustion forecast crossed its warning threshold.
    Exhaustion(&'a ExhaustionWarning),
    /// connect() or bind() failed for want of a port.
    PortFailure(&'a PortFailureAlert),
    /// A listener dropped handshakes, or a namespace sent SYN cookies.
    Listen(&'a ListenAlert),
    /// A SYN dropped at the NAT boundary: no free source-NAT port, or a TIME_WAIT's PAWS.
    Nat(&'a NatAlert),
}

/// A forecast over [`crate::state::forecast::WARN_AT`], as an alert: said once when it
/// crosses, again only after it fell back under.
#[derive(Clone, Debug, PartialEq)]
pub struct ExhaustionWarning {
    pub ts_ns: u64,
    /// The local address (port 0: any) and the destination.
    pub addrs: FlowAddrs,
    pub forecast: Forecast,
}

impl ExhaustionWarning {
    pub fn new(ts_ns: u64, forecast: Forecast) -> ExhaustionWarning {
        ExhaustionWarning {
            ts_ns,
            addrs: FlowAddrs {
                local: Endpoint::new(forecast.laddr, 0),
                remote: Endpoint::new(forecast.raddr, forecast.rport),
            },
            forecast,
        }
    }
}

/// No process: an exhaustion warning is about a 4-tuple space, not one socket.
static NO_OWNER: Option<Process> = None;

impl<'a> Alert<'a> {
    pub fn closed(flow: &'a FinishedFlow) -> Option<Alert<'a>> {
        flow.cause.is_anomaly().then_some(Alert::Closed(flow))
    }

    pub fn retransmit(r: &'a Retransmit) -> Option<Alert<'a>> {
        matches!(
            r.state,
            TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
        )
        .then_some(Alert::FinRetransmit(r))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Alert::Closed(f) => f.cause.name(),
            Alert::FinRetransmit(_) => "fin_retransmit",
            Alert::KeepaliveProbe(_) => "keepalive_probe",
            Alert::Exhaustion(_) => "port_exhaustion",
            Alert::PortFailure(p) => match p.failure.call {
                Call::Connect => "connect_failure",
                Call::Bind => "bind_failure",
            },
            Alert::Listen(l) => l.kind(),
            Alert::Nat(n) => n.kind(),
        }
    }

    pub fn ts_ns(&self) -> u64 {
        match self {
            Alert::Closed(f) => f.ts_ns,
            Alert::FinRetransmit(r) => r.ts_ns,
            Alert::KeepaliveProbe(p) => p.ts_ns,
            Alert::Exhaustion(w) => w.ts_ns,
            Alert::PortFailure(p) => p.failure.ts_ns,
            Alert::Listen(l) => l.ts_ns(),
            Alert::Nat(n) => n.ts_ns,
        }
    }

    pub fn owner(&self) -> &Option<Process> {
        match self {
            Alert::Closed(f) => &f.lifecycle.owner,
            Alert::FinRetransmit(r) => &r.owner,
            Alert::KeepaliveProbe(p) => &p.owner,
            Alert::Exhaustion(_) | Alert::Nat(_) => &NO_OWNER,
            Alert::PortFailure(p) => &p.owner,
            Alert::Listen(l) => l.owner(),
        }
    }

    /// The socket's (or caller's) workload; none for a 4-tuple space's forecast.
    pub fn workload(&self) -> Option<&Workload> {
        match self {
            Alert::Closed(f) => Some(&f.lifecycle.workload),
            Alert::FinRetransmit(r) => Some(&r.workload),
            Alert::KeepaliveProbe(p) => Some(&p.workload),
            Alert::Exhaustion(_) | Alert::Nat(_) => None,
            Alert::PortFailure(p) => Some(&p.failure.workload),
            Alert::Listen(l) => l.workload(),
        }
    }

    pub fn addrs(&self) -> &FlowAddrs {
        match self {
            Alert::Closed(f) => &f.addrs,
            Alert::FinRetransmit(r) => &r.addrs,
            Alert::KeepaliveProbe(p) => &p.addrs,
            Alert::Exhaustion(w) => &w.addrs,
            Alert::PortFailure(p) => &p.addrs,
            Alert::Listen(l) => l.addrs(),
            Alert::Nat(n) => &n.addrs,
        }
    }

    fn keepalive_in_force(&self) -> Option<&KeepaliveInForce> {
        match self {
            Alert::Closed(f) => f.keepalive.as_ref(),
            Alert::KeepaliveProbe(p) => Some(&p.keepalive),
            Alert::FinRetransmit(_)
            | Alert::Exhaustion(_)
            | Alert::PortFailure(_)
            | Alert::Listen(_)
            | Alert::Nat(_) => None,
        }
    }

    /// Keepalive settings in force, for keepalive alerts.
    pub fn keepalive(&self) -> Option<KeepaliveSettings> {
        self.keepalive_in_force().map(|k| k.settings)
    }

    /// How long the peer has been silent, for keepalive alerts.
    pub fn silent_ns(&self) -> Option<u64> {
        self.keepalive_in_force()?.silent_ns
    }

    /// One line of explanation, naming the workload (pod, container or unit) where known.
    pub fn detail(&self) -> String {
        let text = self.explanation();
        match self.workload().and_then(Workload::describe) {
            Some(who) => format!("{text}; {who}"),
            None => text,
        }
    }

    fn explanation(&self) -> String {
        let keepalive = self.keepalive().map(|k| {
            format!(
                "keepalive idle {} intvl {} cnt {} ({})",
                k.idle_ns.map_or("?".into(), human_duration),
                k.intvl_ns.map_or("?".into(), human_duration),
                k.probes,
                k.source
            )
        });
        let silent = self.silent_ns().map_or("?".into(), human_duration);
        match self {
            Alert::Closed(f) => {
                let mut text = path_text(&f.lifecycle);
                match f.cause {
                    CloseCause::KeepaliveTimeout => text.push_str(&format!(
                        "; peer silent {silent}, {} probes unanswered; {}",
                        f.evidence.probes,
                        keepalive.unwrap_or_default()
                    )),
                    CloseCause::Rto | CloseCause::SynTimeout | CloseCause::UserTimeout => text
                        .push_str(&format!(
                            "; {} retransmits unanswered",
                            f.lifecycle.retransmits
                        )),
                    CloseCause::ResetSent => text.push_str(&format!(
                        "; reset sent: {}",
                        f.evidence.reset_sent.as_deref().unwrap_or("?")
                    )),
                    _ => {}
                }
                if f.evidence.err != 0 {
                    text.push_str(&format!("; error {}", f.evidence.err));
                }
                if !f.drops.is_empty() {
                    text.push_str(&format!("; dropped on this host: {}", f.drops.text()));
                    let meanings: Vec<String> = (f.drops.0.iter())
                        .filter_map(|(r, _)| Some(format!("{r}: {}", drop_reasons::meaning(r)?)))
                        .collect();
                    if !meanings.is_empty() {
                        text.push_str(&format!(" ({})", meanings.join("; ")));
                    }
                }
                if let Some(nat) = &f.translated {
                    text.push_str(&format!("; across the NAT: {} > {}", nat.local, nat.remote));
                }
                text
            }
            Alert::FinRetransmit(r) => format!(
                "FIN retransmitted in {}: we closed and the peer is silent (half-open?)",
                r.state
            ),
            Alert::KeepaliveProbe(p) => {
                let cnt = self.keepalive().map_or(0, |k| k.probes);
                format!(
                    "probe {}/{cnt} unanswered, peer silent {silent}; {}",
                    p.probe,
                    keepalive.unwrap_or_default()
                )
            }
            Alert::Exhaustion(w) => {
                let f = &w.forecast;
                format!(
                    "netns {}: {:.0} new connections/s, {:.0}% of the {:.1}/s its ports \
                     sustain ({}): connect() will fail with EADDRNOTAVAIL",
                    f.netns_label(),
                    f.rate_per_s,
                    f.utilization * 100.0,
                    f.capacity_per_s,
                    f.basis()
                )
            }
            Alert::PortFailure(p) => p.detail(),
            Alert::Listen(l) => l.detail(),
            Alert::Nat(n) => n.detail(),
        }
    }
}

/// `SYN_SENT 1.2ms > ESTABLISHED 176ms > CLOSE`, with retransmits per state and `?` for
/// unknown times; `…` marks a truncated path.
pub fn path_text(lifecycle: &Lifecycle) -> String {
    Path(lifecycle).to_string()
}

/// [`path_text`] without allocating.
pub struct Path<'a>(pub &'a Lifecycle);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_path(f, self.0, PathEnd::AsIs)
    }
}

/// How a path's final `CLOSE` (with no retransmits) is written.
#[derive(Clone, Copy)]
pub enum PathEnd<'a> {
    /// `CLOSE`.
    AsIs,
    /// The TIME_WAIT that followed: `TIME_WAIT 60.0s (expired)`.
    TimeWait(&'a TimeWait),
    /// A TIME_WAIT that has just begun (its end is printed when it comes): `TIME_WAIT …`.
    TimeWaitBegun,
}

/// The path, its end as `end` says.
/// Written without `core::fmt`'s machinery (the printers' hot path).
pub fn write_path<W: fmt::Write + ?Sized>(
    f: &mut W,
    lifecycle: &Lifecycle,
    end: PathEnd,
) -> fmt::Result {
    let last = lifecycle.path.len().saturating_sub(1);
    for (i, step) in lifecycle.path.iter().enumerate() {
        if i > 0 {
            f.write_str(" > ")?;
        }
        if i == last && lifecycle.truncated {
            f.write_str("… > ")?;
        }
        let closed = i == last && step.state == TcpState::Close && step.retransmits == 0;
        match end {
            PathEnd::TimeWait(tw)
                if closed && tw.end == crate::model::tcp::TimeWaitEnd::Overflow =>
            {
                return f.write_str("CLOSE (no TIME_WAIT: tcp_max_tw_buckets full)");
            }
            PathEnd::TimeWait(tw) if closed => {
                f.write_str("TIME_WAIT ")?;
                HumanDuration(tw.held_ns).write_to(f)?;
                f.write_str(" (")?;
                f.write_str(tw.end.name())?;
                return f.write_char(')');
            }
            PathEnd::TimeWaitBegun if closed => return f.write_str("TIME_WAIT …"),
            _ => f.write_str(step.state.name())?,
        }
        if i != last {
            match step.held_ns {
                Some(ns) => {
                    f.write_char(' ')?;
                    HumanDuration(ns).write_to(f)?;
                }
                None => f.write_str(" ?")?,
            }
        }
        if step.retransmits > 0 {
            f.write_str(" (rtx ")?;
            number(f, step.retransmits)?;
            f.write_char(')')?;
        }
    }
    Ok(())
}
