//! Typed views of what the kernel sends: states, endpoints, flows and their close side.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use tcptrace_common::{close_side, side_of_path, PATH_SLOTS};

use crate::{text::digits, text::stackstr::StackStr};
use tcptrace_common::tcp_state;

/// A TCP state, named as the kernel and `ss` name it (without the `TCP_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
}

impl TcpState {
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
            TcpState::BoundInactive => "BOUND_INACTIVE",
        }
    }

    /// The kernel's number for this state.
    pub fn raw(self) -> u8 {
        match self {
            TcpState::Established => tcp_state::ESTABLISHED,
            TcpState::SynSent => tcp_state::SYN_SENT,
            TcpState::SynRecv => tcp_state::SYN_RECV,
            TcpState::FinWait1 => tcp_state::FIN_WAIT1,
            TcpState::FinWait2 => tcp_state::FIN_WAIT2,
            TcpState::TimeWait => tcp_state::TIME_WAIT,
            TcpState::Close => tcp_state::CLOSE,
            TcpState::CloseWait => tcp_state::CLOSE_WAIT,
            TcpState::LastAck => tcp_state::LAST_ACK,
            TcpState::Listen => tcp_state::LISTEN,
            TcpState::Closing => tcp_state::CLOSING,
            TcpState::NewSynRecv => tcp_state::NEW_SYN_RECV,
            TcpState::BoundInactive => tcp_state::BOUND_INACTIVE,
        }
    }
}

impl TryFrom<u8> for TcpState {
    type Error = u8;
    fn try_from(raw: u8) -> Result<Self, u8> {
        TcpState::ALL
            .iter()
            .copied()
            .find(|state| state.raw() == raw)
            .ok_or(raw)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One side of a connection. IPv4-mapped IPv6 addresses are shown as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        Endpoint { addr, port }
    }
}

impl Endpoint {
    /// `1.2.3.4:80` or `[::1]:80`, formatted on the stack.
    pub fn text(&self) -> StackStr<56> {
        match self.addr {
            IpAddr::V4(v4) => {
                // Written without `core::fmt` (the printers' hot path).
                let mut text = StackStr::new();
                let _ = digits::ipv4(&mut text, v4)
                    .and_then(|()| fmt::Write::write_char(&mut text, ':'))
                    .and_then(|()| digits::number(&mut text, self.port));
                text
            }
            IpAddr::V6(v6) => StackStr::format(format_args!("[{v6}]:{}", self.port)),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.text().as_str())
    }
}

/// The 4-tuple of a flow, seen from the traced socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowAddrs {
    pub local: Endpoint,
    pub remote: Endpoint,
}

/// Address family code from the kernel (`AF_INET` / `AF_INET6`).
pub const AF_INET: u16 = tcptrace_common::family::INET;
pub const AF_INET6: u16 = tcptrace_common::family::INET6;

impl TryFrom<&tcptrace_common::Tuple> for FlowAddrs {
    type Error = String;
    fn try_from(tuple: &tcptrace_common::Tuple) -> Result<Self, String> {
        let (local, remote) = match tuple.family {
            AF_INET => {
                let s = Ipv4Addr::new(
                    tuple.saddr[0],
                    tuple.saddr[1],
                    tuple.saddr[2],
                    tuple.saddr[3],
                );
                let d = Ipv4Addr::new(
                    tuple.daddr[0],
                    tuple.daddr[1],
                    tuple.daddr[2],
                    tuple.daddr[3],
                );
                (IpAddr::V4(s), IpAddr::V4(d))
            }
            AF_INET6 => (
                IpAddr::V6(Ipv6Addr::from(tuple.saddr)),
                IpAddr::V6(Ipv6Addr::from(tuple.daddr)),
            ),
            other => return Err(format!("unknown address family {other}")),
        };
        Ok(FlowAddrs {
            local: Endpoint::new(local, tuple.sport),
            remote: Endpoint::new(remote, tuple.dport),
        })
    }
}

/// The socket's owning process, when known.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

pub fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// One state held by a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStep {
    pub state: TcpState,
    /// How long the state was held; `None` for the final state and for a state whose start
    /// was not seen (the flow predates the tracer, or the path was truncated before it).
    pub held_ns: Option<u64>,
    pub retransmits: u16,
}

/// Which side ended the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CloseSide {
    /// We sent the first FIN (ESTABLISHED → FIN_WAIT1).
    Active = close_side::ACTIVE,
    /// The peer sent the first FIN (ESTABLISHED → CLOSE_WAIT).
    Passive = close_side::PASSIVE,
    /// An established or half-open connection went straight to CLOSE.
    Reset = close_side::RESET,
    /// A connect that never got established (refused or timed out): SYN_SENT → CLOSE.
    ConnectFailed = close_side::CONNECT_FAILED,
    /// A listening socket was closed.
    Listener = close_side::LISTENER,
    /// Not enough of the path was seen to say.
    Unknown = close_side::UNKNOWN,
}

impl CloseSide {
    /// Every side (each one's discriminant is the kernel's number).
    pub const ALL: [CloseSide; tcptrace_common::close_side::COUNT] = [
        CloseSide::Active,
        CloseSide::Passive,
        CloseSide::Reset,
        CloseSide::ConnectFailed,
        CloseSide::Listener,
        CloseSide::Unknown,
    ];

    /// The side the kernel numbered `raw` (`Unknown` for a number it does not have).
    pub fn from_kernel(raw: u8) -> CloseSide {
        Self::ALL
            .into_iter()
            .find(|&side| side as u8 == raw)
            .unwrap_or(CloseSide::Unknown)
    }

    pub fn name(self) -> &'static str {
        match self {
            CloseSide::Active => "active",
            CloseSide::Passive => "passive",
            CloseSide::Reset => "reset",
            CloseSide::ConnectFailed => "connect_failed",
            CloseSide::Listener => "listener",
            CloseSide::Unknown => "unknown",
        }
    }

    /// Classifies a finished path (whose last state is CLOSE; at most `PATH_SLOTS` states),
    /// with the kernel programs' own code: a flow's side is the same whether the kernel
    /// counted it or userspace read its record.
    pub fn of_path(states: &[TcpState]) -> CloseSide {
        let mut raw = [0u8; PATH_SLOTS];
        for (slot, state) in raw.iter_mut().zip(states) {
            *slot = state.raw();
        }
        CloseSide::from_kernel(side_of_path(&raw, states.len()))
    }
}

impl fmt::Display for CloseSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// How a TIME_WAIT ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWaitEnd {
    /// The timer ran out.
    Expired,
    /// A new connection took the 4-tuple (tcp_tw_reuse).
    Reused,
    /// Removed early: RST or SYN in TIME_WAIT, the socket destroyed, the namespace gone.
    Killed,
    /// Still running when tracing stopped.
    InProgress,
    /// None was made: the namespace's `tcp_max_tw_buckets` was full (`TCPTimeWaitOverflow`);
    /// held 0, and not counted as a TIME_WAIT.
    Overflow,
}

impl TimeWaitEnd {
    /// A TIME_WAIT cancelled before its expiry: reused when the cancel came from inside a
    /// connect() of the same task, killed otherwise.
    pub(crate) fn early(in_connect: bool) -> TimeWaitEnd {
        if in_connect {
            TimeWaitEnd::Reused
        } else {
            TimeWaitEnd::Killed
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimeWaitEnd::Expired => "expired",
            TimeWaitEnd::Reused => "reused",
            TimeWaitEnd::Killed => "killed",
            TimeWaitEnd::InProgress => "in_progress",
            TimeWaitEnd::Overflow => "overflow",
        }
    }
}

impl fmt::Display for TimeWaitEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One TIME_WAIT, measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWait {
    pub addrs: FlowAddrs,
    pub start_ns: u64,
    pub held_ns: u64,
    pub end: TimeWaitEnd,
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;

    /// `CloseSide::from_kernel` reads the kernel's numbers (`of_path` is the kernel's code).
    #[test]
    fn close_sides_are_numbered_as_the_kernel_numbers_them() {
        for (raw, side) in CloseSide::ALL.iter().enumerate() {
            assert_eq!(
                *side as usize, raw,
                "declaration order is the kernel's numbering"
            );
        }
    }

    #[test]
    fn states_round_trip_and_reject_unknown_numbers() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::try_from(state.raw()), Ok(state));
        }
        assert_eq!(TcpState::try_from(0), Err(0));
        assert_eq!(TcpState::try_from(14), Err(14));
        assert_eq!(FinWait1.to_string(), "FIN_WAIT1");
    }

    #[test]
    fn v4_mapped_addresses_print_as_v4() {
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().expect("valid address");
        let endpoint = Endpoint::new(IpAddr::V6(mapped), 443);
        assert_eq!(endpoint.to_string(), "10.0.0.1:443");
        let v6 = Endpoint::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 80);
        assert_eq!(v6.to_string(), "[::1]:80");
    }

    #[test]
    fn tuple_decodes_both_families_and_rejects_others() {
        let mut tuple = tcptrace_common::Tuple {
            family: AF_INET,
            sport: 51234,
            dport: 443,
            ..Default::default()
        };
        tuple.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        tuple.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let addrs = FlowAddrs::try_from(&tuple).expect("ipv4 tuple decodes");
        assert_eq!(addrs.local.to_string(), "10.0.0.1:51234");
        assert_eq!(addrs.remote.to_string(), "10.0.0.2:443");
        tuple.family = AF_INET6;
        tuple.saddr = Ipv6Addr::LOCALHOST.octets();
        let addrs = FlowAddrs::try_from(&tuple).expect("ipv6 tuple decodes");
        assert_eq!(addrs.local.to_string(), "[::1]:51234");
        tuple.family = 1;
        assert!(FlowAddrs::try_from(&tuple).is_err());
    }

    #[test]
    fn close_side_follows_the_path() {
        let cases: [(&[TcpState], CloseSide); 8] = [
            (
                &[SynSent, Established, FinWait1, FinWait2, Close],
                CloseSide::Active,
            ),
            (
                &[SynRecv, Established, CloseWait, LastAck, Close],
                CloseSide::Passive,
            ),
            (&[FinWait1, Closing, Close], CloseSide::Active),
            (&[SynSent, Established, Close], CloseSide::Reset),
            (&[SynRecv, Close], CloseSide::Reset),
            (&[SynSent, Close], CloseSide::ConnectFailed),
            (&[Listen, Close], CloseSide::Listener),
            (&[Close], CloseSide::Unknown),
        ];
        for (path, expected) in cases {
            assert_eq!(CloseSide::of_path(path), expected, "path {path:?}");
        }
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_to_string(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm_to_string(b"0123456789abcdef"), "0123456789abcdef");
    }
}
