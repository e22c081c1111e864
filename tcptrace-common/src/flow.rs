//! A flow's path: starting, entering states, counting retransmits, recording the owner. Shared
//! by the kernel programs and userspace tests.
use crate::{flow_flags, tcp_state, FlowState, Owner, PATH_SLOTS};

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
        flow.restart(old, new, now);
        flow
    }

    /// [`FlowState::start`] written in place (the kernel programs' 512-byte stack has no room
    /// for a 120-byte temporary).
    #[inline(always)]
    pub fn restart(&mut self, old: u8, new: u8, now: u64) {
        self.clear();
        if starts_a_socket(old, new) {
            self.states[0] = new;
            self.entered_ns[0] = now;
            self.len = 1;
            self.flags = flow_flags::START_SEEN;
        } else {
            self.states[0] = old;
            self.states[1] = new;
            self.entered_ns[1] = now;
            self.len = 2;
        }
    }

    /// A flow first seen in `state` (by a retransmit) with no transition observed yet.
    #[inline(always)]
    pub fn unseen(state: u8) -> FlowState {
        let mut flow = FlowState::EMPTY;
        flow.restart_unseen(state);
        flow
    }

    /// [`FlowState::unseen`] written in place.
    #[inline(always)]
    pub fn restart_unseen(&mut self, state: u8) {
        self.clear();
        self.states[0] = state;
        self.len = 1;
    }

    /// Every byte zero, in place, a word at a time. Volatile stores: LLVM would otherwise
    /// fold them into a `memset` call, which in a kernel program is a byte-wise loop in a
    /// subprogram of its own (and a call deeper on the kernel's 512-byte stack budget).
    #[inline(always)]
    fn clear(&mut self) {
        const WORDS: usize = core::mem::size_of::<FlowState>() / 8;
        let words = (self as *mut FlowState).cast::<u64>();
        let mut i = 0;
        while i < WORDS {
            // SAFETY: FlowState is 8-aligned, a multiple of 8 bytes, and all integers.
            unsafe { words.add(i).write_volatile(0) };
            i += 1;
        }
    }

    /// The index of the current state.
    #[inline(always)]
    pub fn last(&self) -> usize {
        (self.len as usize).wrapping_sub(1) & SLOT_MASK
    }

    /// How long the current state has been held at `now`, when its start was seen.
    #[inline(always)]
    pub fn held_at(&self, now: u64) -> Option<u64> {
        let previous = self.entered_ns[self.last()];
        if previous != 0 && now >= previous {
            Some(now - previous)
        } else {
            None
        }
    }

    /// Enters `new` at `now`; returns the time held in the previous state when its start was
    /// seen.
    #[inline(always)]
    pub fn enter(&mut self, new: u8, now: u64) -> Option<u64> {
        let held = self.held_at(now);
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

    /// Whether a process-context transition should record its task as the owner.
    #[inline(always)]
    pub fn wants_owner(&self) -> bool {
        self.flags & flow_flags::OWNER_KNOWN == 0
            || self.flags & flow_flags::OWNER_FROM_LISTENER != 0
    }

    /// Records the socket's owner. A process-context owner replaces one inherited from the
    /// listener; an inherited owner never replaces a known one.
    #[inline(always)]
    pub fn set_owner(&mut self, owner: &Owner, from_listener: bool) {
        if self.take_owner(from_listener) {
            self.pid = owner.pid;
            copy_comm(&mut self.comm, &owner.comm);
            self.cgroup = owner.cgroup;
        }
    }

    /// Whether an owner (inherited from the listener, or not) replaces what the flow knows:
    /// if so the flags say it is known and the caller writes `pid`, `comm` and `cgroup` (in
    /// place, in the kernel: no owner copied on its stack).
    #[inline(always)]
    pub fn take_owner(&mut self, from_listener: bool) -> bool {
        let known = self.flags & flow_flags::OWNER_KNOWN != 0;
        let inherited = self.flags & flow_flags::OWNER_FROM_LISTENER != 0;
        if from_listener {
            if known {
                return false;
            }
            self.flags |= flow_flags::OWNER_FROM_LISTENER;
        } else {
            if known && !inherited {
                return false;
            }
            self.flags &= !flow_flags::OWNER_FROM_LISTENER;
        }
        self.flags |= flow_flags::OWNER_KNOWN;
        true
    }
}

/// Copies a comm four bytes at a time, in four volatile word copies (no loop: LLVM would
/// make a `memmove` call of a plain copy or of a loop, and in a kernel program a call is one
/// frame more on the stack chain the verifier limits before Linux 6.13).
#[inline(always)]
fn copy_comm(to: &mut [u8; crate::COMM_LEN], from: &[u8; crate::COMM_LEN]) {
    let (to, from) = (to.as_mut_ptr().cast::<u32>(), from.as_ptr().cast::<u32>());
    // SAFETY: both are 16 bytes, 4-aligned: a comm follows a u32 pid at an 8-aligned offset
    // in `FlowState` and in `Owner` (asserted in lib.rs), the only places this copies.
    unsafe {
        to.write_volatile(from.read_volatile());
        to.add(1).write_volatile(from.add(1).read_volatile());
        to.add(2).write_volatile(from.add(2).read_volatile());
        to.add(3).write_volatile(from.add(3).read_volatile());
    }
}

/// A socket's first transition: leaving CLOSE (connect, listen), or an accepted child's
/// LISTEN → SYN_RECV. A flow seen first there has a known start; an entry already under the
/// socket's address belonged to an earlier socket whose CLOSE was missed.
#[inline(always)]
pub fn starts_a_socket(old: u8, new: u8) -> bool {
    old == tcp_state::CLOSE || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::COMM_LEN;
    use tcp_state::*;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: [b'x'; COMM_LEN],
            _pad: [0; 4],
            cgroup: u64::from(pid) * 10,
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
    fn the_time_held_so_far_leaves_the_path_as_it_is() {
        let mut flow = FlowState::start(CLOSE, SYN_SENT, 10);
        assert_eq!(flow.held_at(25), Some(15));
        assert_eq!(flow.held_at(5), None, "a clock before the entry is no time");
        assert_eq!((flow.len, flow.current()), (1, SYN_SENT), "nothing entered");
        assert_eq!(flow.enter(ESTABLISHED, 40), Some(30));
        assert_eq!(flow.held_at(41), Some(1));
        let mut unknown_start = FlowState::start(CLOSE, SYN_SENT, 10);
        unknown_start.entered_ns[unknown_start.last()] = 0;
        assert_eq!(unknown_start.held_at(50), None, "start not seen");
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
        assert_eq!(
            (flow.pid, flow.cgroup),
            (1, 10),
            "the listener's cgroup comes along"
        );
        flow.set_owner(&owner(2), false);
        assert_eq!(
            (
                flow.pid,
                flow.cgroup,
                flow.flags & flow_flags::OWNER_FROM_LISTENER
            ),
            (2, 20, 0)
        );
        flow.set_owner(&owner(3), false);
        flow.set_owner(&owner(4), true);
        assert_eq!((flow.pid, flow.cgroup), (2, 20));
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
