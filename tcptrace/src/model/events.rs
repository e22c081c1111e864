//! The decoded events: what a ring-buffer record says, in the tracer's own types (every
//! consumer and every state tracker reads these; `decode` makes them).
use arrayvec::ArrayVec;
use tcptrace_common::{Keepalive, PATH_SLOTS};

use crate::model::{
    cause::{CloseCause, CloseEvidence},
    facts::HostFacts,
    keepalive::{jiffies_ns, settings, KeepaliveSettings},
    port_failure::PortFailure,
    tcp::{CloseSide, FlowAddrs, PathStep, Process, TcpState, TimeWait},
    vitals::{DropTally, FlowVitals, PacketDrop},
    workload::Workload,
};

/// Keepalive as it stood on a socket: the settings in force and how long the peer had been
/// silent (resolved with the tracing machine's HZ and sysctls when decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveInForce {
    pub settings: KeepaliveSettings,
    pub silent_ns: Option<u64>,
}

impl KeepaliveInForce {
    pub fn of(raw: &Keepalive, host: &HostFacts) -> KeepaliveInForce {
        KeepaliveInForce {
            settings: settings(raw, host),
            silent_ns: jiffies_ns(raw.silent_j, host.hz),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old`, when the flow was seen entering it.
    pub old_held_ns: Option<u64>,
    pub addrs: FlowAddrs,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
    /// The flow table was full: this flow is not tracked.
    pub untracked: bool,
}

/// A flow's path as the kernel kept it (at most `PATH_SLOTS` states, held inline: no
/// allocation per flow read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub path: ArrayVec<PathStep, PATH_SLOTS>,
    /// When the first state was entered, if seen.
    pub start_ns: Option<u64>,
    /// When the current (last) state was entered.
    pub last_entered_ns: Option<u64>,
    pub start_seen: bool,
    pub truncated: bool,
    pub retransmits: u32,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedFlow {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub addrs: FlowAddrs,
    pub lifecycle: Lifecycle,
    pub close: CloseSide,
    pub cause: CloseCause,
    pub evidence: CloseEvidence,
    /// Keepalive settings and the peer's silence at CLOSE, when SO_KEEPALIVE was on.
    pub keepalive: Option<KeepaliveInForce>,
    /// The TIME_WAIT that followed, when this side closed first (filled by the tracker).
    pub time_wait: Option<TimeWait>,
    /// Bytes, segments and RTT at CLOSE (a TCP socket's; none in recordings before layout 5).
    pub vitals: Option<FlowVitals>,
    /// Its packets the kernel dropped, by reason (joined by the dispatcher).
    pub drops: DropTally,
    /// The flow's addresses on the other side of a NAT, local first (known from the
    /// conntrack entry of a packet of its that was dropped): a client's translated source
    /// and real destination; a server's real client.
    pub translated: Option<FlowAddrs>,
}

/// A timewait socket's timer armed, cancelled or fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWaitRecord {
    pub what: u8,
    pub in_connect: bool,
    pub ts_ns: u64,
    pub timer: u64,
    pub addrs: Option<FlowAddrs>,
    /// The timewait socket's network namespace (inode; on START, 0 in layout-1 recordings).
    pub netns: u32,
}

/// A flow reached CLOSE and enters TIME_WAIT, in brief (`tcptrace metrics`, which counts
/// everything else in the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWaitFlow {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub addrs: FlowAddrs,
    /// The accepting (server) side: its path began in SYN_RECV.
    pub accepted: bool,
}

/// A keepalive probe went out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepaliveProbe {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub addrs: FlowAddrs,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
    /// This probe's number (1 for the first unanswered probe).
    pub probe: u8,
    pub keepalive: KeepaliveInForce,
}

impl FinishedFlow {
    /// Total lifetime, when the start was seen.
    pub fn life_ns(&self) -> Option<u64> {
        let start = self.lifecycle.start_ns?;
        self.ts_ns.checked_sub(start)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retransmit {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub state: TcpState,
    pub addrs: FlowAddrs,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
    pub err: Option<i32>,
    pub untracked: bool,
    /// A listener's SYN-ACK sent again (`skaddr` is the request socket; the child's flow
    /// counts it in SYN_RECV when it ends).
    pub synack: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    /// Boxed (~460 bytes, its path inline): moved as a pointer from here to the printer, or
    /// into the TIME_WAIT tracker that holds it until its TIME_WAIT ends.
    FlowEnd(Box<FinishedFlow>),
    Retransmit(Retransmit),
    KeepaliveProbe(KeepaliveProbe),
    TimeWait(TimeWaitRecord),
    TimeWaitFlow(TimeWaitFlow),
    PortFailure(PortFailure),
    Drop(PacketDrop),
}

impl Event {
    /// The workload the event names, to resolve (none for TIME_WAIT records).
    pub fn workload_mut(&mut self) -> Option<&mut Workload> {
        match self {
            Event::Transition(t) => Some(&mut t.workload),
            Event::FlowEnd(f) => Some(&mut f.lifecycle.workload),
            Event::Retransmit(r) => Some(&mut r.workload),
            Event::KeepaliveProbe(p) => Some(&mut p.workload),
            Event::PortFailure(p) => Some(&mut p.workload),
            Event::TimeWait(_) | Event::TimeWaitFlow(_) | Event::Drop(_) => None,
        }
    }

    /// When it happened (kernel time).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Transition(t) => t.ts_ns,
            Event::FlowEnd(f) => f.ts_ns,
            Event::Retransmit(r) => r.ts_ns,
            Event::KeepaliveProbe(p) => p.ts_ns,
            Event::TimeWait(t) => t.ts_ns,
            Event::TimeWaitFlow(f) => f.ts_ns,
            Event::PortFailure(p) => p.ts_ns,
            Event::Drop(d) => d.ts_ns,
        }
    }
}

impl Lifecycle {
    /// The accepting side's flow: its path began in SYN_RECV (a listener's child). The kernel
    /// sends the same of a flow in brief (`time_wait_flow::ACCEPTED`).
    pub fn accepted(&self) -> bool {
        self.path.first().map(|s| s.state) == Some(TcpState::SynRecv)
    }
}
