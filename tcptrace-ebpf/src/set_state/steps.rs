//! The steps of one transition, each inlined into the handler (one frame: see
//! `try_inet_sock_set_state`): connects and listeners noted, the flow's owner attributed, its
//! keepalive owner indexed, a new flow stored. (The step along the path stays in the handler:
//! Linux 6.1's verifier rejects it as a step with flows in socket storage.)
use tcptrace_common::{event_flags, flow_flags, stat, tcp_state, FlowState, Owner};

use super::listener_key;
use crate::{
    maps::{scratch, Stats, FLOW_TABLE, KEEPALIVE_OWNERS, LISTENERS},
    owner::{owner_scratch, write_current_owner},
    sock,
};

/// A flow not in the table yet, started in this CPU's scratch slot.
#[inline(always)]
pub(super) fn fresh_flow(
    slot: u32,
    old: u8,
    new: u8,
    now: u64,
) -> Result<&'static mut FlowState, i32> {
    let scratch = scratch(slot).ok_or(-1)?;
    // SAFETY: this CPU's scratch slot of this program; the kernel never runs one program
    // twice at once on one CPU.
    let scratch = unsafe { &mut *scratch };
    scratch.restart(old, new, now);
    Ok(scratch)
}

/// Listeners' owners, kept by port: written when a socket starts listening in its owner's
/// context, forgotten when it closes; a new child's is returned, read in place (a map value
/// stays valid for this run; a concurrent delete can at worst give a stale owner, never an
/// invalid read).
#[inline(always)]
pub(super) fn follow_listeners(
    sk: *const u8,
    old: u8,
    new: u8,
    owner_context: bool,
    slot: u32,
) -> Result<Option<*const Owner>, i32> {
    if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
        return Ok(LISTENERS.get_ptr(&listener_key(sk)?));
    }
    if new == tcp_state::LISTEN {
        if owner_context {
            if let Some(owner) = owner_scratch(slot) {
                // SAFETY: this CPU's slot of this program, ours for this run.
                let owner = unsafe { &mut *owner };
                write_current_owner(&mut owner.pid, &mut owner.comm, &mut owner.cgroup, sk);
                let _ = LISTENERS.insert(&listener_key(sk)?, owner, 0);
            }
        }
    } else if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let _ = LISTENERS.remove(&listener_key(sk)?);
    }
    Ok(None)
}

/// The flow's owner: the current task where the transition runs in the owner's context, else
/// the listener's for a new child; a flow whose owner stays unknown (older than the tracer)
/// still names the socket's cgroup. Returns `OWNER_KNOWN` where it is.
#[inline(always)]
pub(super) fn attribute_owner(
    flow: &mut FlowState,
    sk: *const u8,
    owner_context: bool,
    inherited: Option<*const Owner>,
    starts: bool,
) -> u8 {
    if owner_context {
        if flow.wants_owner() && flow.take_owner(false) {
            write_current_owner(&mut flow.pid, &mut flow.comm, &mut flow.cgroup, sk);
        }
    } else if let Some(owner) = inherited {
        // SAFETY: a LISTENERS value, valid for this run (see `follow_listeners`).
        flow.set_owner(unsafe { &*owner }, true);
    }
    if flow.flags & flow_flags::OWNER_KNOWN != 0 {
        return event_flags::OWNER_KNOWN;
    }
    if starts {
        flow.cgroup = sock::cgroup_id(sk);
    }
    0
}

/// A flow in socket storage entering ESTABLISHED with SO_KEEPALIVE: its keepalive probes
/// will find the owner by the socket's address.
#[inline(always)]
pub(super) fn index_keepalive_owner(
    stats: Stats,
    flow: &mut FlowState,
    sk: *const u8,
) -> Result<(), i32> {
    if sock::keepalive_on(sk)? && flow.flags & flow_flags::KEEPALIVE_INDEXED == 0 {
        // SAFETY: `pid` and `comm` lie side by side in FlowState as in Owner (asserted in
        // tcptrace-common): the owner is read in place, not built on the stack. Both are
        // zero while the owner is unknown.
        let owner = unsafe { &*(&raw const flow.pid).cast::<Owner>() };
        if KEEPALIVE_OWNERS.insert(&(sk as u64), owner, 0).is_ok() {
            flow.flags |= flow_flags::KEEPALIVE_INDEXED;
        } else {
            stats.bump(stat::KEEPALIVE_UNINDEXED);
        }
    }
    Ok(())
}

/// A new flow into the table (from the scratch slot); returns `UNTRACKED` if the table is
/// full (a held start is judged again at its next event instead).
#[inline(always)]
pub(super) fn insert_fresh(stats: Stats, flow: &FlowState, sk: *const u8, hold: bool) -> u8 {
    if FLOW_TABLE.insert(sk, flow) {
        stats.bump(stat::FLOWS_INSERTED);
    } else if hold {
        // Not known to be traced: the flow is judged again at its next event.
        stats.bump(stat::LOST_UNDECIDED);
    } else {
        stats.bump(stat::FLOW_TABLE_FULL);
        return event_flags::UNTRACKED;
    }
    0
}
