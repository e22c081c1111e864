//! Why a flow ended: decided from its path and what the kernel left on the socket at CLOSE
//! (`sk_err`, resets sent and received, keepalive and user-timeout settings, retransmits).
use std::fmt;

use serde::Serialize;

use crate::model::tcp::TcpState;

use tcptrace_common::{close_cause, CloseFacts, FlowState, NO_RESET_REASON};

#[cfg(test)]
const EPIPE: u8 = 32;
#[cfg(test)]
const ECONNRESET: u8 = 104;
#[cfg(test)]
const ETIMEDOUT: u8 = 110;
#[cfg(test)]
const ECONNREFUSED: u8 = 111;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CloseCause {
    /// FIN exchange (the close side says who sent the first FIN).
    Normal = close_cause::NORMAL,
    /// The peer reset the connection.
    ResetReceived = close_cause::RESET_RECEIVED,
    /// This side reset it (the kernel's reason is in `reset_reason`).
    ResetSent = close_cause::RESET_SENT,
    /// connect() was refused (RST in SYN_SENT).
    Refused = close_cause::REFUSED,
    /// connect() timed out: SYNs unanswered (tcp_syn_retries).
    SynTimeout = close_cause::SYN_TIMEOUT,
    /// Retransmissions exhausted (tcp_retries2): the peer went silent with data in flight.
    Rto = close_cause::RTO,
    /// Keepalive probes unanswered (tcp_keepalive_probes).
    KeepaliveTimeout = close_cause::KEEPALIVE_TIMEOUT,
    /// TCP_USER_TIMEOUT expired.
    UserTimeout = close_cause::USER_TIMEOUT,
    /// Closed locally with a reset: SO_LINGER 0, unread data at close, or connect abandoned.
    Aborted = close_cause::ABORTED,
    /// A listening socket was closed.
    ListenerClosed = close_cause::LISTENER_CLOSED,
    Unknown = close_cause::UNKNOWN,
}

impl CloseCause {
    pub fn name(self) -> &'static str {
        match self {
            CloseCause::Normal => "normal",
            CloseCause::ResetReceived => "reset_received",
            CloseCause::ResetSent => "reset_sent",
            CloseCause::Refused => "refused",
            CloseCause::SynTimeout => "syn_timeout",
            CloseCause::Rto => "rto",
            CloseCause::KeepaliveTimeout => "keepalive_timeout",
            CloseCause::UserTimeout => "user_timeout",
            CloseCause::Aborted => "aborted",
            CloseCause::ListenerClosed => "listener_closed",
            CloseCause::Unknown => "unknown",
        }
    }

    /// Whether an operator wants to hear about it.
    pub fn is_anomaly(self) -> bool {
        !matches!(self, CloseCause::Normal | CloseCause::ListenerClosed)
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What the kernel left on the socket at CLOSE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseEvidence {
    /// `sk_err` (0: none).
    pub err: u8,
    pub reset_received: bool,
    /// The reset this socket sent, by the kernel's reason name (`TCP_KEEPALIVE_TIMEOUT`, …);
    /// `Some("")` when the kernel gives no reason.
    pub reset_sent: Option<String>,
    pub keepalive_on: bool,
    pub user_timeout: bool,
    /// Keepalive probes unanswered.
    pub probes: u8,
    pub retransmits: u32,
}

impl CloseEvidence {
    /// What a flow record says of its close, read with the kernel programs' own code
    /// (`CloseFacts::of`); the reset sent named with `reset_reason_name`.
    pub fn of(flow: &FlowState, reset_reason_name: impl FnOnce(u8) -> String) -> CloseEvidence {
        let facts = CloseFacts::of(flow, NO_RESET_REASON);
        CloseEvidence {
            err: facts.err,
            reset_received: facts.reset_received,
            reset_sent: facts
                .reset_sent
                .then(|| reset_reason_name(flow.reset_reason)),
            keepalive_on: facts.keepalive_on,
            user_timeout: facts.user_timeout,
            probes: facts.probes,
            retransmits: facts.retransmits,
        }
    }
}

/// Classifies a finished path (its last state is CLOSE), with the kernel programs' own code
/// (`tcptrace_common::CloseFacts`): a flow's cause is the same whether the kernel counted it
/// or userspace read its record.
pub fn classify(states: &[TcpState], ev: &CloseEvidence) -> CloseCause {
    let before = states.len().checked_sub(2).map(|i| states[i]);
    CloseCause::from_kernel(facts_of(before, ev).cause())
}

/// Whether a finished path, whose state before CLOSE was `before`, handed its 4-tuple to a
/// timewait socket, with the kernel programs' own code (`CloseFacts::holds_time_wait`, which
/// decides whether they send its start).
pub fn holds_time_wait(before: Option<TcpState>, ev: &CloseEvidence) -> bool {
    facts_of(before, ev).holds_time_wait()
}

/// The kernel's view of a finished path (its state before CLOSE) and its evidence.
fn facts_of(before: Option<TcpState>, ev: &CloseEvidence) -> CloseFacts {
    CloseFacts {
        before: before.map(TcpState::raw),
        err: ev.err,
        reset_received: ev.reset_received,
        reset_sent: ev.reset_sent.is_some(),
        reset_was_keepalive: ev.reset_sent.as_deref() == Some("TCP_KEEPALIVE_TIMEOUT"),
        keepalive_on: ev.keepalive_on,
        user_timeout: ev.user_timeout,
        probes: ev.probes,
        retransmits: ev.retransmits,
    }
}

impl CloseCause {
    /// Every cause (each one's discriminant is the kernel's number).
    pub const ALL: [CloseCause; close_cause::COUNT] = [
        CloseCause::Normal,
        CloseCause::ResetReceived,
        CloseCause::ResetSent,
        CloseCause::Refused,
        CloseCause::SynTimeout,
        CloseCause::Rto,
        CloseCause::KeepaliveTimeout,
        CloseCause::UserTimeout,
        CloseCause::Aborted,
        CloseCause::ListenerClosed,
        CloseCause::Unknown,
    ];

    /// The cause the kernel numbered `raw` (`Unknown` for a number it does not have).
    pub fn from_kernel(raw: u8) -> CloseCause {
        Self::ALL
            .into_iter()
            .find(|&cause| cause as u8 == raw)
            .unwrap_or(CloseCause::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    fn ev(err: u8) -> CloseEvidence {
        CloseEvidence {
            err,
            ..Default::default()
        }
    }

    #[test]
    fn causes_follow_the_kernel_evidence() {
        let normal_active = [SynSent, Established, FinWait1, FinWait2, Close];
        let normal_passive = [SynRecv, Established, CloseWait, LastAck, Close];
        let died = [SynSent, Established, Close];
        let keepalive = CloseEvidence {
            err: ETIMEDOUT,
            reset_sent: Some("TCP_KEEPALIVE_TIMEOUT".into()),
            keepalive_on: true,
            probes: 3,
            ..Default::default()
        };
        let old_kernel_keepalive = CloseEvidence {
            reset_sent: None,
            ..keepalive.clone()
        };
        let rto = CloseEvidence {
            err: ETIMEDOUT,
            retransmits: 5,
            ..Default::default()
        };
        let user = CloseEvidence {
            user_timeout: true,
            ..rto.clone()
        };
        let cases: Vec<(&[TcpState], CloseEvidence, CloseCause)> = vec![
            (&normal_active, ev(0), CloseCause::Normal),
            (&normal_passive, ev(0), CloseCause::Normal),
            (&[SynSent, Close], ev(ECONNREFUSED), CloseCause::Refused),
            (&[SynSent, Close], ev(ETIMEDOUT), CloseCause::SynTimeout),
            (&[SynSent, Close], ev(0), CloseCause::Aborted),
            (&died, keepalive, CloseCause::KeepaliveTimeout),
            (&died, old_kernel_keepalive, CloseCause::KeepaliveTimeout),
            (&died, rto.clone(), CloseCause::Rto),
            (&[FinWait1, Close], rto, CloseCause::Rto),
            (&died, user, CloseCause::UserTimeout),
            (&died, ev(ECONNRESET), CloseCause::ResetReceived),
            (
                &[Established, CloseWait, Close],
                ev(EPIPE),
                CloseCause::ResetReceived,
            ),
            (&died, ev(0), CloseCause::Aborted),
            (
                &died,
                CloseEvidence {
                    reset_sent: Some("NOT_SPECIFIED".into()),
                    ..ev(0)
                },
                CloseCause::ResetSent,
            ),
            (&[Listen, Close], ev(0), CloseCause::ListenerClosed),
            (&[Close], ev(0), CloseCause::Unknown),
        ];
        for (path, evidence, expected) in cases {
            assert_eq!(classify(path, &evidence), expected, "{path:?} {evidence:?}");
        }
    }

    #[test]
    fn the_kernels_numbers_name_the_same_causes() {
        for (raw, cause) in CloseCause::ALL.iter().enumerate() {
            assert_eq!(CloseCause::from_kernel(raw as u8), *cause);
            assert_eq!(
                *cause as usize, raw,
                "declaration order is the kernel's numbering"
            );
        }
        assert_eq!(
            CloseCause::from_kernel(close_cause::KEEPALIVE_TIMEOUT),
            CloseCause::KeepaliveTimeout
        );
        assert_eq!(CloseCause::from_kernel(200), CloseCause::Unknown);
    }

    #[test]
    fn anomalies_exclude_normal_ends() {
        assert!(!CloseCause::Normal.is_anomaly());
        assert!(!CloseCause::ListenerClosed.is_anomaly());
        assert!(CloseCause::KeepaliveTimeout.is_anomaly());
        assert!(CloseCause::Refused.is_anomaly());
    }
}
