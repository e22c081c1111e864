//! The contract between the kernel programs (`tcptrace-ebpf`) and userspace (`tcptrace`).
//!
//! Every type here is `#[repr(C)]`, `Copy`, made of fixed-width fields with explicit padding,
//! and its size is asserted at compile time so that both sides agree byte for byte.
//! Userspace never transmutes a record: it checks the length, reads unaligned and converts
//! with `TryFrom` (see `tcptrace::decode`).
#![no_std]

/// Length of a task's `comm`, as the kernel defines `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// How many states one flow's path holds. A TCP flow passes through at most seven states on
/// the usual paths; when a path is longer, the last slot keeps being overwritten and
/// [`flow_flags::TRUNCATED`] is set.
pub const PATH_SLOTS: usize = 8;

/// The version of the ring records' layout (`TransitionEvent`, `FlowEndEvent`, …): raised
/// whenever one changes, so that a recording (`tcptrace record`) is read only by a build that
/// understands it. Layout 2 added `TimeWaitEvent::netns` (72 bytes, was 64), layout 3 the
/// `PortFailureEvent`, layout 4 the owner's cgroup id (`cgroup`) in every record that names
/// an owner, layout 5 a flow's [`Vitals`] at the end of `FlowEndEvent` and the `DropEvent`,
/// layout 6 the dropped packet's conntrack entry at the end of `DropEvent`, layout 7 (no size
/// changed) TIME_WAIT from the state tracepoint and its expiry with the 4-tuple instead of
/// the timer hooks' start and cancel; recordings of layouts 1 to 6 are still read (layout 1's TIME_WAITs carry namespace 0: the
/// recording host's; records before layout 4 carry cgroup 0: unknown; flows before layout 5
/// carry no vitals; drops before layout 6 carry no conntrack entry).
pub const RECORD_LAYOUT_VERSION: u32 = 7;

/// Kernel TCP states (`include/net/tcp_states.h`); the same numbers on every kernel.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    pub const BOUND_INACTIVE: u8 = 13;
    /// One past the largest state number we accept; anything at or above is rejected.
    pub const LIMIT: u8 = 16;
}

/// The first field of every ring-buffer record.
pub mod record_kind {
    pub const TRANSITION: u32 = 1;
    pub const FLOW_END: u32 = 2;
    pub const RETRANSMIT: u32 = 3;
    pub const KEEPALIVE_PROBE: u32 = 4;
    pub const TIME_WAIT: u32 = 5;
    /// A flow entering TIME_WAIT, in brief ([`TimeWaitFlowEvent`]): sent instead of a
    /// `FLOW_END` when userspace asked only for those (`emit_flow_ends::TIME_WAIT`).
    pub const TIME_WAIT_FLOW: u32 = 6;
    /// A connect() or bind() failed for want of a port ([`PortFailureEvent`]).
    pub const PORT_FAILURE: u32 = 7;
    /// The kernel dropped a TCP packet ([`DropEvent`]).
    pub const DROP: u32 = 8;
}

/// What a [`TimeWaitEvent`] reports of a timewait socket's timer.
pub mod time_wait {
    /// A flow that closed first handed its 4-tuple to a timewait socket (sent from the state
    /// tracepoint's `FIN_WAIT2`/`CLOSING -> CLOSE`, which runs inside `tcp_time_wait()`; its
    /// `timer` is the full socket's address).
    pub const START: u8 = 1;
    /// Recordings made before layout 7 only: the timer was removed (with an expiry right
    /// after, the normal end; alone, an early end).
    pub const CANCEL: u8 = 2;
    /// The timer fired: TIME_WAIT ran out (its 4-tuple and namespace read from the timewait
    /// socket; before layout 7, only the timer's address).
    pub const EXPIRE: u8 = 3;
    /// Flag (recordings before layout 7): the cancel happened inside a connect() of the same
    /// task (the 4-tuple was reused).
    pub const IN_CONNECT: u8 = 1;
}

/// Bits of [`FlowState::flags`].
pub mod flow_flags {
    /// The flow's first state was entered while we watched (its duration is known).
    pub const START_SEEN: u8 = 1 << 0;
    /// The path had more states than [`super::PATH_SLOTS`]; the last slot was overwritten.
    pub const TRUNCATED: u8 = 1 << 1;
    /// `pid`/`comm` hold the socket's owner.
    pub const OWNER_KNOWN: u8 = 1 << 2;
    /// The owner was inherited from the listening socket and may be refined in process context.
    pub const OWNER_FROM_LISTENER: u8 = 1 << 3;
    /// Entered SYN_SENT before its local port was bound while a local-port filter is in
    /// force: decided (and its first transition sent) at the flow's next event.
    pub const FILTER_PENDING: u8 = 1 << 4;
    /// Flows kept in socket-local storage: the socket had SO_KEEPALIVE on when it became
    /// ESTABLISHED and its owner is in `KEEPALIVE_OWNERS` (removed at CLOSE).
    pub const KEEPALIVE_INDEXED: u8 = 1 << 5;
}

/// Where the kernel keeps flows ([`ProgramConfig::flow_memory`], `--flow-memory`).
pub mod flow_memory {
    /// A hash keyed by the socket's address, allocated as flows appear (`FLOWS`).
    pub const ON_DEMAND: u8 = 0;
    /// The same hash, preallocated (`FLOWS_PREALLOC`).
    pub const PREALLOC: u8 = 1;
    /// Socket-local storage (`FLOWS_SOCKET`, `BPF_MAP_TYPE_SK_STORAGE`): created with a
    /// socket's first transition, freed with the socket.
    pub const SOCKET: u8 = 2;
}

/// Bits of [`FlowState::close_flags`]: what the socket went through before CLOSE.
pub mod close_flags {
    /// A reset arrived (tcp:tcp_receive_reset).
    pub const RESET_RECEIVED: u8 = 1 << 0;
    /// This socket sent a reset (tcp:tcp_send_reset); `reset_reason` says why.
    pub const RESET_SENT: u8 = 1 << 1;
    /// SO_KEEPALIVE was on at CLOSE.
    pub const KEEPALIVE_ON: u8 = 1 << 2;
    /// TCP_USER_TIMEOUT was set at CLOSE.
    pub const USER_TIMEOUT: u8 = 1 << 3;
    /// The flow-end record carries the socket's [`super::Vitals`] (a TCP socket's, read at
    /// CLOSE).
    pub const VITALS: u8 = 1 << 4;
}

/// Values of [`ProgramConfig::emit_flow_ends`].
pub mod emit_flow_ends {
    /// Every flow (flows are printed, recorded, or aggregated by userspace).
    pub const ALL: u8 = 0;
    /// Only the flows that enter TIME_WAIT, as a [`super::TimeWaitFlowEvent`] (their side and
    /// 4-tuple join the TIME_WAIT tracker); everything else is counted in the kernel.
    pub const TIME_WAIT: u8 = 1;
    /// None.
    pub const NONE: u8 = 2;
}

/// Bits of [`TransitionEvent::flags`] and [`RetransmitEvent::flags`].
pub mod event_flags {
    /// `old_state_ns` is valid: the flow was seen entering the old state.
    pub const OLD_DURATION_KNOWN: u8 = 1 << 0;
    /// `pid`/`comm` hold the socket's owner.
    pub const OWNER_KNOWN: u8 = 1 << 1;
    /// `err` is valid (tcp_retransmit_skb with the 6.17+ layout).
    pub const ERR_VALID: u8 = 1 << 2;
    /// The flow could not be tracked (flow table full): durations are unknown.
    pub const UNTRACKED: u8 = 1 << 3;
    /// A SYN-ACK retransmitted by a listener (`tcp:tcp_retransmit_synack`): `skaddr` is the
    /// request socket, the tuple the handshake's; counted on the accepted child's flow.
    pub const SYNACK: u8 = 1 << 4;
}

/// A flow's addresses. Ports are in host order; addresses in network order, IPv4 in the
/// first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Tuple>() == 40);

/// What the kernel keeps per socket (map `FLOWS`, keyed by the socket's address, or the
/// socket's own storage in `FLOWS_SOCKET`) and sends whole when the flow ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns()` when `states[i]` was entered; 0 when not seen.
    pub entered_ns: [u64; PATH_SLOTS],
    pub states: [u8; PATH_SLOTS],
    /// Retransmits while in `states[i]` (saturating).
    pub rtx: [u16; PATH_SLOTS],
    pub rtx_total: u32,
    /// Valid slots in `states`.
    pub len: u8,
    pub flags: u8,
    /// `sk_err` when the flow reached CLOSE (an errno: 110 ETIMEDOUT, 111 ECONNREFUSED, …).
    pub err: u8,
    /// The kernel's reason (`enum sk_rst_reason`) for the last reset this socket sent.
    pub reset_reason: u8,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    /// Keepalive probes sent without answer (`icsk_probes_out`) when the flow reached CLOSE.
    pub probes: u8,
    /// Bits of [`close_flags`].
    pub close_flags: u8,
    pub _pad1: [u8; 2],
    /// The socket's cgroup (v2) id, with the owner (the listener's for an accepted child);
    /// 0: unknown.
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 128);
const _: () = assert!(core::mem::align_of::<FlowState>() == 8);
// A flow's owner is read in place as an `Owner` (the kernel's keepalive index): pid, comm and
// cgroup lie where `Owner` has them (`probes`, `close_flags` and `_pad1` fill its padding).
const _: () = assert!(
    core::mem::offset_of!(FlowState, comm) == core::mem::offset_of!(FlowState, pid) + 4
        && core::mem::offset_of!(FlowState, cgroup) == core::mem::offset_of!(FlowState, pid) + 24
        && core::mem::offset_of!(FlowState, pid) % 8 == 0
);

impl FlowState {
    pub const EMPTY: FlowState = FlowState {
        entered_ns: [0; PATH_SLOTS],
        states: [0; PATH_SLOTS],
        rtx: [0; PATH_SLOTS],
        rtx_total: 0,
        len: 0,
        flags: 0,
        err: 0,
        reset_reason: 0,
        pid: 0,
        comm: [0; COMM_LEN],
        probes: 0,
        close_flags: 0,
        _pad1: [0; 2],
        cgroup: 0,
    };
}

/// One TCP state transition (sent only when live transitions are requested).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    pub kind: u32,
    pub old_state: u8,
    pub new_state: u8,
    pub flags: u8,
    pub _pad0: u8,
    pub ts_ns: u64,
    /// Time spent in `old_state`, valid with `OLD_DURATION_KNOWN`.
    pub old_state_ns: u64,
    pub skaddr: u64,
    pub tuple: Tuple,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    pub _pad1: [u8; 4],
    /// The owner's cgroup id (0: unknown); absent before layout 4.
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<TransitionEvent>() == 104);

/// Keepalive settings of a socket, in jiffies as the kernel keeps them (0: the sysctl applies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// `tcp_sock.keepalive_time` (jiffies).
    pub idle_j: u32,
    /// `tcp_sock.keepalive_intvl` (jiffies).
    pub intvl_j: u32,
    /// `tcp_sock.keepalive_probes`.
    pub probes: u8,
    pub _pad: [u8; 3],
    /// Jiffies since the peer was last heard from (`jiffies - tcp_sock.rcv_tstamp`).
    pub silent_j: u32,
}
const _: () = assert!(core::mem::size_of::<Keepalive>() == 16);

/// A flow reached CLOSE: its whole path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEndEvent {
    pub kind: u32,
    pub _pad0: u32,
    pub ts_ns: u64,
    pub skaddr: u64,
    pub tuple: Tuple,
    pub flow: FlowState,
    /// Filled when SO_KEEPALIVE was on at CLOSE.
    pub keepalive: Keepalive,
    /// Bytes, segments and RTT at CLOSE, valid with `close_flags::VITALS`; absent before
    /// layout 5.
    pub vitals: Vitals,
}
const _: () = assert!(core::mem::size_of::<FlowEndEvent>() == 248);

/// A flow reached CLOSE and a TIME_WAIT follows: what the TIME_WAIT tracker needs of it (its
/// 4-tuple, and whether it was the accepting side), when userspace counts nothing else per
/// flow (`tcptrace metrics`). Never in a recording: `record` asks for every flow whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitFlowEvent {
    pub kind: u32,
    /// Bits of [`time_wait_flow`].
    pub flags: u8,
    pub _pad0: [u8; 3],
    /// When the flow entered CLOSE.
    pub ts_ns: u64,
    pub skaddr: u64,
    pub tuple: Tuple,
}
const _: () = assert!(core::mem::size_of::<TimeWaitFlowEvent>() == 64);

/// Bits of [`TimeWaitFlowEvent::flags`].
pub mod time_wait_flow {
    /// The flow's path began in SYN_RECV: the accepting (server) side.
    pub const ACCEPTED: u8 = 1 << 0;
}

/// A keepalive probe went out (seen around `tcp_keepalive_timer`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveProbeEvent {
    pub kind: u32,
    /// This probe's number (`icsk_probes_out` after the timer ran).
    pub probe: u8,
    pub flags: u8,
    pub _pad0: [u8; 2],
    pub ts_ns: u64,
    pub skaddr: u64,
    pub tuple: Tuple,
    pub keepalive: Keepalive,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    pub _pad1: [u8; 4],
    /// The owner's cgroup id (0: unknown); absent before layout 4.
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<KeepaliveProbeEvent>() == 112);

/// A TIME_WAIT's start (from the state tracepoint) or expiry (timer:timer_expire_entry for
/// `tw_timer_handler`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitEvent {
    pub kind: u32,
    /// `time_wait::START` or `EXPIRE` (`CANCEL` in older recordings).
    pub what: u8,
    pub flags: u8,
    pub _pad0: [u8; 2],
    pub ts_ns: u64,
    /// START: the closing full socket's address; EXPIRE: the timer's address.
    pub timer: u64,
    /// The 4-tuple (on EXPIRE from layout 7 on: before, only on START).
    pub tuple: Tuple,
    /// The inode number of the timewait socket's network namespace (as the tuple; 0 in
    /// recordings of layout 1, which did not carry it).
    pub netns: u32,
    pub _pad1: u32,
}
const _: () = assert!(core::mem::size_of::<TimeWaitEvent>() == 72);

/// What `timer_expire_entry` saw, for `timer_expire_exit` on the same CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerEntry {
    pub timer: u64,
    pub probes_before: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<TimerEntry>() == 16);

/// One retransmitted segment (sent only when live retransmits are requested).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub kind: u32,
    pub state: u8,
    pub flags: u8,
    pub _pad0: [u8; 2],
    pub ts_ns: u64,
    pub skaddr: u64,
    pub tuple: Tuple,
    /// The transmit result (6.17+ kernels), valid with `ERR_VALID`.
    pub err: i32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    /// The owner's cgroup id (0: unknown); absent before layout 4.
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<RetransmitEvent>() == 96);

/// Key of the `LISTENERS` map: the listening socket's network namespace and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);

/// Who listens: copied into every child flow accepted on that listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    pub _pad: [u8; 4],
    /// The socket's cgroup (v2) id; 0: unknown.
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<Owner>() == 32);

/// A ring-buffer record. Every record begins with its `u32` kind (asserted below), so the
/// kernel writes, and userspace reads, the head of every kind the same way.
pub trait Record: Copy {
    /// Its [`record_kind`].
    const KIND: u32;
    /// The `stat::LOST_*` counter that counts it when the ring is full.
    const LOST: u32;
}

macro_rules! records {
    ($($ty:ty => $kind:expr, $lost:expr;)*) => {
        $(
            impl Record for $ty {
                const KIND: u32 = $kind;
                const LOST: u32 = $lost;
            }
            const _: () = assert!(core::mem::offset_of!($ty, kind) == 0);
        )*
    };
}

records! {
    TransitionEvent => record_kind::TRANSITION, stat::LOST_TRANSITION;
    FlowEndEvent => record_kind::FLOW_END, stat::LOST_FLOW_END;
    TimeWaitFlowEvent => record_kind::TIME_WAIT_FLOW, stat::LOST_FLOW_END;
    RetransmitEvent => record_kind::RETRANSMIT, stat::LOST_RETRANSMIT;
    KeepaliveProbeEvent => record_kind::KEEPALIVE_PROBE, stat::LOST_PROBE;
    TimeWaitEvent => record_kind::TIME_WAIT, stat::LOST_TIME_WAIT;
    PortFailureEvent => record_kind::PORT_FAILURE, stat::LOST_PORT_FAILURE;
    DropEvent => record_kind::DROP, stat::LOST_DROP;
}

mod aggregate;
mod config;
mod counters;
mod filter;
mod flow;
pub mod names;
mod offsets;
mod syscalls;
mod vitals;
pub use aggregate::{
    bucket_bounds, close_cause, close_side, duration_bucket, side_of_path, CloseFacts,
    DurationHistogram, CLOSE_SLOTS, DURATION_BUCKETS, DURATION_ENTRIES, NO_RESET_REASON,
    SUB_BUCKET_BITS,
};
pub use config::{learn, ProgramConfig};
pub use counters::{
    slot, stat, transition_of_slot, transition_slot, Counters, STAT_SLOTS, TRANSITION_SLOTS,
};
pub use filter::{
    filter_kind, mapped_v4, port_bits, AddrKey, FilterConfig, TimeWaitKey, CGROUP_MAX_DEPTH,
    FILTER_SLOTS,
};
pub use flow::{in_owner_context, starts_a_socket};
pub use names::family;
pub use offsets::{SkbOffsets, SockOffsets, TcpSockOffsets};
pub use syscalls::{port_failure, CallArgs, PortFailureEvent};
pub use vitals::{
    ct_status, drop_flags, drop_ignore_bit, ConntrackEntry, DropBudget, DropCounts, DropEvent,
    Vitals, DROP_BUDGET_WINDOW_NS, DROP_IGNORE_WORDS, DROP_REASON_SLOTS,
};

#[cfg(feature = "user")]
mod user;
