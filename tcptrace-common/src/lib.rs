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
}

/// Indexes into the per-CPU `STATS` array.
pub mod stat {
    /// TCP state transitions seen by the kernel program.
    pub const STATE_EVENTS: u32 = 0;
    /// Retransmits seen by the kernel program.
    pub const RETRANSMITS: u32 = 1;
    /// Ring-buffer reservations that failed, by record kind.
    pub const LOST_TRANSITION: u32 = 2;
    pub const LOST_FLOW_END: u32 = 3;
    pub const LOST_RETRANSMIT: u32 = 4;
    /// A new flow could not be inserted into the flow table (full): it is not tracked.
    pub const FLOW_TABLE_FULL: u32 = 5;
    /// Paths longer than `PATH_SLOTS`.
    pub const PATH_TRUNCATED: u32 = 6;
    /// Flows seen for the first time (tracked or not).
    pub const FLOWS_SEEN: u32 = 7;
    /// Records submitted with a forced wakeup (the pending data passed the threshold).
    pub const FORCED_WAKEUPS: u32 = 8;
    /// Reads of kernel memory that failed (the event was dropped).
    pub const READ_ERRORS: u32 = 9;
    /// Records submitted to the ring buffer (all kinds).
    pub const SUBMITTED: u32 = 10;
    /// A flow's entry outlived its socket (its CLOSE was missed) and was restarted when the
    /// address was reused.
    pub const STALE_FLOWS: u32 = 11;
    /// A transition left a state the flow was not known to be in (one was missed): the
    /// missing state was inserted with an unknown start.
    pub const PATH_GAPS: u32 = 12;
    /// Keepalive probes seen going out.
    pub const KEEPALIVE_PROBES: u32 = 13;
    /// Ring-buffer reservations that failed for keepalive-probe records.
    pub const LOST_PROBE: u32 = 14;
    pub const COUNT: u32 = 15;
}

/// Entries of [`Counters::transitions`]: `old * LIMIT + new`.
pub const TRANSITION_SLOTS: u32 = (tcp_state::LIMIT as u32) * (tcp_state::LIMIT as u32);

/// Slots of [`Counters::stats`] (room to grow past `stat::COUNT`).
pub const STAT_SLOTS: usize = 16;

/// Every kernel-side counter, in the single entry of the per-CPU `COUNTERS` array: one map
/// lookup per event serves them all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `stat::*`.
    pub stats: [u64; STAT_SLOTS],
    /// Indexed `old * tcp_state::LIMIT + new`.
    pub transitions: [u64; TRANSITION_SLOTS as usize],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * (16 + 256));
const _: () = assert!((stat::COUNT as usize) <= STAT_SLOTS);

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

/// What the kernel keeps per socket (map `FLOWS`, keyed by the socket's address) and sends
/// whole when the flow ends.
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
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 120);

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
}
const _: () = assert!(core::mem::size_of::<TransitionEvent>() == 96);

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
}
const _: () = assert!(core::mem::size_of::<FlowEndEvent>() == 200);

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
}
const _: () = assert!(core::mem::size_of::<KeepaliveProbeEvent>() == 104);

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
}
const _: () = assert!(core::mem::size_of::<RetransmitEvent>() == 88);

/// Offsets into kernel structs, resolved by userspace from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.__sk_common.skc_family` (u16).
    pub family: u32,
    /// `sock.sk_protocol` (u16).
    pub protocol: u32,
    /// `sock.__sk_common.skc_state` (u8).
    pub state: u32,
    /// `sock.__sk_common.skc_dport` (be16).
    pub dport: u32,
    /// `inet_sock.inet_sport` (be16).
    pub sport: u32,
    /// `sock.__sk_common.skc_num` (u16, host order; the bound local port).
    pub num: u32,
    /// `sock.__sk_common.skc_daddr` (be32).
    pub daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (be32).
    pub saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub v6_saddr: u32,
    /// `sock.__sk_common.skc_net` (a `struct net *`).
    pub net: u32,
    /// `net.ns.inum` (u32).
    pub net_inum: u32,
    /// `sock.sk_err` (int).
    pub err: u32,
    /// `sock.__sk_common.skc_flags` (unsigned long).
    pub sk_flags: u32,
    /// The bit of `SOCK_KEEPOPEN` in `skc_flags` (`enum sock_flags`).
    pub keepopen_bit: u32,
    /// `inet_connection_sock.icsk_probes_out` (u8).
    pub probes_out: u32,
    /// `inet_connection_sock.icsk_user_timeout` (u32).
    pub user_timeout: u32,
    /// `tcp_sock.keepalive_time`, `keepalive_intvl` (u32), `keepalive_probes` (u8).
    pub keepalive_time: u32,
    pub keepalive_intvl: u32,
    pub keepalive_probes: u32,
    /// `tcp_sock.rcv_tstamp` (u32 jiffies).
    pub rcv_tstamp: u32,
    /// `sock.sk_timer` (the keepalive timer) and `timer_list.function`.
    pub sk_timer: u32,
    pub timer_function: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 92);

/// Run-time settings of the kernel programs, written into `.rodata` by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    pub offsets: SockOffsets,
    pub _pad0: u32,
    /// The address of `tcp_keepalive_timer` (from /proc/kallsyms).
    pub keepalive_timer_fn: u64,
    /// Pending bytes in the ring buffer above which a record wakes the reader.
    pub wakeup_bytes: u64,
    /// Send a `TransitionEvent` per transition.
    pub emit_transitions: u8,
    /// Send a `RetransmitEvent` per retransmit.
    pub emit_retransmits: u8,
    /// Send a `KeepaliveProbeEvent` per keepalive probe.
    pub emit_probes: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<ProgramConfig>() == 120);

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
}
const _: () = assert!(core::mem::size_of::<Owner>() == 20);

const SLOT_MASK: usize = PATH_SLOTS - 1;
const _: () = assert!(PATH_SLOTS.is_power_of_two());

impl FlowState {
    /// The flow seen for the first time at the transition `old → new` at `now`.
    ///
    /// A socket leaving CLOSE (connect, listen) or a child leaving LISTEN is new: its path
    /// starts at `new` with a known start. Anything else predates the tracer: its path starts
    /// at `old` with an unknown start.
    #[inline(always)]
    pub fn start(old: u8, new: u8, now: u64) -> FlowState {
        let mut flow = FlowState::EMPTY;
        if old == tcp_state::CLOSE || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV) {
            flow.states[0] = new;
            flow.entered_ns[0] = now;
            flow.len = 1;
            flow.flags = flow_flags::START_SEEN;
        } else {
            flow.states[0] = old;
            flow.states[1] = new;
            flow.entered_ns[1] = now;
            flow.len = 2;
        }
        flow
    }

    /// A flow first seen in `state` (by a retransmit) with no transition observed yet.
    #[inline(always)]
    pub fn unseen(state: u8) -> FlowState {
        let mut flow = FlowState::EMPTY;
        flow.states[0] = state;
        flow.len = 1;
        flow
    }

    /// The index of the current state.
    #[inline(always)]
    pub fn last(&self) -> usize {
        (self.len as usize).wrapping_sub(1) & SLOT_MASK
    }

    /// Enters `new` at `now`; returns the time held in the previous state when its start was
    /// seen.
    #[inline(always)]
    pub fn enter(&mut self, new: u8, now: u64) -> Option<u64> {
        let previous = self.entered_ns[self.last()];
        let held = if previous != 0 && now >= previous {
            Some(now - previous)
        } else {
            None
        };
        let slot = if (self.len as usize) < PATH_SLOTS {
            self.len += 1;
            self.last()
        } else {
            self.flags |= flow_flags::TRUNCATED;
            SLOT_MASK
        };
        self.states[slot] = new;
        self.entered_ns[slot] = now;
        self.rtx[slot] = 0;
        held
    }

    /// The current state.
    #[inline(always)]
    pub fn current(&self) -> u8 {
        self.states[self.last()]
    }

    /// Records `state` as entered at an unknown time (a transition into it was missed).
    #[inline(always)]
    pub fn enter_unseen(&mut self, state: u8) {
        self.enter(state, 0);
    }

    /// Counts a retransmit against the current state.
    #[inline(always)]
    pub fn count_retransmit(&mut self) {
        let slot = self.last();
        self.rtx[slot] = self.rtx[slot].saturating_add(1);
        self.rtx_total = self.rtx_total.saturating_add(1);
    }

    /// Records the socket's owner. A process-context owner replaces one inherited from the
    /// listener; an inherited owner never replaces a known one.
    #[inline(always)]
    pub fn set_owner(&mut self, owner: &Owner, from_listener: bool) {
        let known = self.flags & flow_flags::OWNER_KNOWN != 0;
        let inherited = self.flags & flow_flags::OWNER_FROM_LISTENER != 0;
        if from_listener {
            if known {
                return;
            }
            self.flags |= flow_flags::OWNER_FROM_LISTENER;
        } else {
            if known && !inherited {
                return;
            }
            self.flags &= !flow_flags::OWNER_FROM_LISTENER;
        }
        self.flags |= flow_flags::OWNER_KNOWN;
        self.pid = owner.pid;
        self.comm = owner.comm;
    }
}

/// Transitions that only happen in the owning process's context (connect, listen, close,
/// shutdown), where the current task is the socket's owner. Everything else may run in softirq
/// on behalf of an unrelated task.
#[inline(always)]
pub fn in_owner_context(old: u8, new: u8) -> bool {
    use tcp_state::*;
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (ESTABLISHED, FIN_WAIT1)
            | (SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: every type below is #[repr(C)], Copy, made only of integers and integer arrays with
    // explicit padding fields, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for Tuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProgramConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Owner {}
    // SAFETY: as above (arrays of u64 only).
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TimerEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcp_state::*;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: [b'x'; COMM_LEN],
        }
    }

    #[test]
    fn new_sockets_start_with_a_known_start() {
        let connect = FlowState::start(CLOSE, SYN_SENT, 10);
        assert_eq!(
            (connect.len, connect.states[0], connect.entered_ns[0]),
            (1, SYN_SENT, 10)
        );
        assert_eq!(
            connect.flags & flow_flags::START_SEEN,
            flow_flags::START_SEEN
        );
        let child = FlowState::start(LISTEN, SYN_RECV, 10);
        assert_eq!((child.len, child.states[0]), (1, SYN_RECV));
        assert_eq!(child.flags & flow_flags::START_SEEN, flow_flags::START_SEEN);
    }

    #[test]
    fn older_flows_start_unknown() {
        let old = FlowState::start(ESTABLISHED, FIN_WAIT1, 10);
        assert_eq!(
            (old.len, old.states[0], old.entered_ns[0]),
            (2, ESTABLISHED, 0)
        );
        assert_eq!(old.flags & flow_flags::START_SEEN, 0);
        // A listener closing that was open before tracing: not a child.
        let listener = FlowState::start(LISTEN, CLOSE, 10);
        assert_eq!((listener.len, listener.states[0]), (2, LISTEN));
        let unseen = FlowState::unseen(ESTABLISHED);
        assert_eq!((unseen.len, unseen.current()), (1, ESTABLISHED));
    }

    #[test]
    fn enter_returns_the_time_held_and_counts_retransmits_per_state() {
        let mut flow = FlowState::start(CLOSE, SYN_SENT, 100);
        flow.count_retransmit();
        assert_eq!(flow.enter(ESTABLISHED, 350), Some(250));
        flow.count_retransmit();
        flow.count_retransmit();
        assert_eq!(flow.rtx[..2], [1, 2]);
        assert_eq!(flow.rtx_total, 3);
        flow.enter_unseen(FIN_WAIT1);
        assert_eq!(
            flow.enter(FIN_WAIT2, 500),
            None,
            "unseen start, no duration"
        );
        assert_eq!(flow.current(), FIN_WAIT2);
    }

    #[test]
    fn long_paths_truncate_into_the_last_slot() {
        let mut flow = FlowState::start(CLOSE, SYN_SENT, 1);
        for i in 0..20 {
            flow.enter(if i % 2 == 0 { FIN_WAIT1 } else { CLOSING }, 2 + i);
        }
        assert_eq!(flow.len as usize, PATH_SLOTS);
        assert_eq!(flow.flags & flow_flags::TRUNCATED, flow_flags::TRUNCATED);
        assert_eq!(flow.current(), CLOSING);
        assert_eq!(flow.states[0], SYN_SENT, "the start is kept");
    }

    #[test]
    fn owners_from_process_context_win() {
        let mut flow = FlowState::start(LISTEN, SYN_RECV, 1);
        flow.set_owner(&owner(1), true);
        assert_eq!(flow.pid, 1);
        flow.set_owner(&owner(2), false);
        assert_eq!(
            (flow.pid, flow.flags & flow_flags::OWNER_FROM_LISTENER),
            (2, 0)
        );
        flow.set_owner(&owner(3), false);
        flow.set_owner(&owner(4), true);
        assert_eq!(flow.pid, 2);
    }

    #[test]
    fn owner_context_transitions() {
        assert!(in_owner_context(CLOSE, SYN_SENT));
        assert!(in_owner_context(ESTABLISHED, FIN_WAIT1));
        assert!(in_owner_context(CLOSE_WAIT, LAST_ACK));
        assert!(
            !in_owner_context(SYN_SENT, ESTABLISHED),
            "softirq: the SYN-ACK"
        );
        assert!(
            !in_owner_context(LISTEN, SYN_RECV),
            "softirq: the final ACK"
        );
        assert!(
            !in_owner_context(ESTABLISHED, CLOSE),
            "a reset may arrive in softirq"
        );
    }
}
