//! The kernel's counters: one entry per program ([`slot`]) of the per-CPU `COUNTERS` array,
//! indexed by [`stat`], with transition, close and retransmit counts beside them.
use crate::{tcp_state, CLOSE_SLOTS};

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
    /// Ring-buffer reservations that failed for TIME_WAIT records.
    pub const LOST_TIME_WAIT: u32 = 15;
    /// Events dropped by the in-kernel filters (nothing was sent or tracked for them).
    pub const FILTERED: u32 = 16;
    /// Flows inserted into the flow table, and removed by the kernel at CLOSE: the table
    /// holds `inserted - removed - evicted` flows.
    pub const FLOWS_INSERTED: u32 = 17;
    pub const FLOWS_REMOVED: u32 = 18;
    /// A connecting socket's first transition, held until its local port is bound (under a
    /// local-port filter), found the flow table full: that transition was dropped.
    pub const LOST_UNDECIDED: u32 = 19;
    /// Transitions the kernel skipped for the main `inet_sock_set_state` program (it was
    /// interrupted on that CPU) and its second program handled: not lost, though the
    /// kernel counts them as the main program's misses.
    pub const NESTED_HANDLED: u32 = 20;
    /// Flows kept in socket-local storage: a socket with SO_KEEPALIVE on whose owner could not
    /// be indexed for its keepalive probes (`KEEPALIVE_OWNERS` full); its probes carry no owner.
    pub const KEEPALIVE_UNINDEXED: u32 = 21;
    /// connect() or bind() calls that failed for want of a port (EADDRNOTAVAIL, EADDRINUSE).
    pub const PORT_FAILURES: u32 = 22;
    /// Ring-buffer reservations that failed for port-failure records.
    pub const LOST_PORT_FAILURE: u32 = 23;
    /// A failed connect()/bind() whose arguments were not found at exit (its CPU's slot held
    /// another task's call: it moved CPU or was preempted inside the call): its failure
    /// carries no address.
    pub const CALLS_UNTRACKED: u32 = 24;
    /// TCP packets the kernel dropped (`skb:kfree_skb`, reasons not ignored).
    pub const DROPS: u32 = 25;
    /// Ring-buffer reservations that failed for drop records.
    pub const LOST_DROP: u32 = 26;
    /// SYN-ACKs a listener retransmitted (`tcp:tcp_retransmit_synack`).
    pub const SYNACK_RETRANSMITS: u32 = 27;
    /// Drops counted but not sent as records: over `ProgramConfig::drop_records_per_s` on
    /// that CPU (a flood into a DROP rule must not crowd the ring out).
    pub const DROPS_UNSENT: u32 = 28;
    pub const COUNT: u32 = 29;
}

/// Which entry of the per-CPU `COUNTERS` array (and of the per-CPU scratch maps) a program
/// uses: one per program, so that a program interrupted on its CPU by another (a softirq) never
/// shares a counter or a scratch slot with it. Userspace sums every entry.
pub mod slot {
    pub const SET_STATE: u32 = 0;
    /// The second `inet_sock_set_state` program: runs only while the first is interrupted.
    pub const SET_STATE_NESTED: u32 = 1;
    pub const RETRANSMIT: u32 = 2;
    // 3 and 4: the timer_start and timer_cancel hooks of earlier builds (TIME_WAIT now
    // starts on the state tracepoint).
    pub const TIMER_EXPIRE: u32 = 5;
    pub const SEND_RESET: u32 = 6;
    pub const RECEIVE_RESET: u32 = 7;
    /// The connect() and bind() syscall hooks (process context: they never interrupt one
    /// another on a CPU).
    pub const SYSCALL: u32 = 8;
    /// The drop hook (`skb:kfree_skb`).
    pub const DROP: u32 = 9;
    /// `tcp:tcp_retransmit_synack`.
    pub const SYNACK: u32 = 10;
    /// Entries of `COUNTERS` and `FILTER_KEY` (a power of two: indices are masked).
    pub const COUNT: u32 = 16;
    /// Entries of `SCRATCH` (the programs that build a new flow).
    pub const SCRATCH: u32 = 4;
}

/// Entries of [`Counters::transitions`]: one per (old, new) pair, [`transition_slot`].
pub const TRANSITION_SLOTS: u32 = (tcp_state::LIMIT as u32) * (tcp_state::LIMIT as u32);

/// The entry of [`Counters::transitions`] that counts `old → new` (both below
/// `tcp_state::LIMIT`; the kernel masks the result besides).
#[inline(always)]
pub const fn transition_slot(old: u8, new: u8) -> usize {
    (old as usize) * (tcp_state::LIMIT as usize) + new as usize
}

/// The (old, new) pair entry `slot` counts: [`transition_slot`] undone.
#[inline(always)]
pub const fn transition_of_slot(slot: usize) -> (u8, u8) {
    (
        (slot / tcp_state::LIMIT as usize) as u8,
        (slot % tcp_state::LIMIT as usize) as u8,
    )
}

const _: () = assert!(
    transition_slot(tcp_state::LIMIT - 1, tcp_state::LIMIT - 1) < TRANSITION_SLOTS as usize
);
const _: () = assert!(matches!(
    transition_of_slot(transition_slot(tcp_state::SYN_SENT, tcp_state::ESTABLISHED)),
    (tcp_state::SYN_SENT, tcp_state::ESTABLISHED)
));

/// Slots of [`Counters::stats`] (room to grow past `stat::COUNT`).
pub const STAT_SLOTS: usize = 32;

/// Every kernel-side counter, in one entry per program (see [`slot`]) of the per-CPU
/// `COUNTERS` array: one map lookup per event serves them all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `stat::*`.
    pub stats: [u64; STAT_SLOTS],
    /// Indexed `old * tcp_state::LIMIT + new`.
    pub transitions: [u64; TRANSITION_SLOTS as usize],
    /// Flows that reached CLOSE, by [`crate::close_cause`].
    pub closes: [u64; CLOSE_SLOTS],
    /// Flows that reached CLOSE, by [`crate::close_side`].
    pub sides: [u64; CLOSE_SLOTS],
    /// Retransmits, by the state the socket was in.
    pub rtx_by_state: [u64; tcp_state::LIMIT as usize],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * (32 + 256 + 16 + 16 + 16));
const _: () = assert!((stat::COUNT as usize) <= STAT_SLOTS);
