//! `tp_btf/inet_sock_set_state`: every TCP state transition.
//!
//! Tracepoint arguments (the TP_PROTO, the same on every kernel since 4.16):
//! `(const struct sock *sk, const int oldstate, const int newstate)`.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    close_flags, event_flags, filter_kind, flow_flags, in_owner_context, record_kind, stat,
    tcp_state, Connecting, FlowEndEvent, FlowState, Keepalive, ListenerKey, Owner, TransitionEvent,
    Tuple, PATH_SLOTS,
};

use crate::{
    config,
    filter::{self, Verdict},
    maps::{
        current_owner, submit_flags, Stats, CONNECTING, EVENTS, FLOW_TABLE, LISTENERS, SCRATCH,
    },
    sock,
};

const BPF_NOEXIST: u64 = 1;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_inet_sock_set_state(&ctx) {
        // Logged once per CPU: off the hot path.
        if Stats::get().bump(stat::READ_ERRORS) == 0 {
            log_read_error(&ctx, err);
        }
    }
    0
}

// Out of line: aya-log's formatting buffers get their own stack frame (the verifier allows
// 512 bytes per call path, and try_inet_sock_set_state needs most of its own).
#[inline(never)]
fn log_read_error(ctx: &BtfTracePointContext, err: i32) {
    warn!(
        ctx,
        "inet_sock_set_state: reading the socket failed ({})", err
    );
}

#[inline(never)]
fn log_table_full(ctx: &BtfTracePointContext) {
    warn!(
        ctx,
        "flow table full: flows beyond --max-flows are counted, not tracked"
    );
}

/// The listener a transition concerns: its own (LISTEN ↔ CLOSE) or its child's parent.
#[inline(always)]
fn listener_key(sk: *const u8) -> Result<ListenerKey, i32> {
    Ok(ListenerKey {
        netns: sock::netns(sk)?,
        port: sock::local_port(sk)?,
        _pad: 0,
    })
}

#[inline(never)]
fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let stats = Stats::get();
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);

    if sock::protocol(sk)? != sock::IPPROTO_TCP {
        return Ok(());
    }
    if !(0..i32::from(tcp_state::LIMIT)).contains(&old)
        || !(0..i32::from(tcp_state::LIMIT)).contains(&new)
    {
        return Ok(());
    }
    let (old, new) = (old as u8, new as u8);
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    // Who owns the socket: the current task where the transition runs in the owner's
    // context (pid and comm fetched only where needed), else the listener's owner for a new
    // child, else whatever the flow knows.
    let owner_context = in_owner_context(old, new);
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        // connect(): a TIME_WAIT it reuses is cancelled by this task in a moment.
        if let Some(connecting) = CONNECTING.get_ptr_mut(0) {
            // SAFETY: this CPU's slot.
            unsafe {
                *connecting = Connecting {
                    pid_tgid: bpf_get_current_pid_tgid(),
                    ts_ns: now,
                }
            };
        }
    }
    let child = old == tcp_state::LISTEN && new == tcp_state::SYN_RECV;
    let mut inherited: Option<Owner> = None;
    if child {
        let key = listener_key(sk)?;
        // SAFETY: the value is copied out at once; a concurrent delete can at worst give a
        // stale owner, never an invalid read.
        inherited = unsafe { LISTENERS.get(&key) }.copied();
    } else if new == tcp_state::LISTEN {
        if owner_context {
            let owner = current_owner();
            let _ = LISTENERS.insert(&listener_key(sk)?, &owner, 0);
        }
    } else if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let _ = LISTENERS.remove(&listener_key(sk)?);
    }

    let emit_transitions = config!(emit_transitions) != 0;
    let ends = new == tcp_state::CLOSE;
    let key = sk as u64;
    let existing = FLOW_TABLE.get_ptr_mut(&key);
    let is_fresh = existing.is_none();
    let restarted = !is_fresh && old == tcp_state::CLOSE;
    let pending = match existing {
        // SAFETY: a map value, valid for this run; one byte read.
        Some(existing) => (unsafe { (*existing).flags } & flow_flags::FILTER_PENDING) != 0,
        None => false,
    };
    let filters = filter::active();
    // A flow is judged when first seen (or restarted, or still undecided); a flow in the
    // table already matched.
    let judged = filters != 0 && (is_fresh || restarted || pending);
    let tw_states = |s: u8| s == tcp_state::FIN_WAIT2 || s == tcp_state::CLOSING;
    let tw_bookkeeping =
        filters & filter_kind::NEEDS_OWNER != 0 && (tw_states(new) || (ends && tw_states(old)));
    let tuple = if emit_transitions || ends || judged || tw_bookkeeping {
        sock::tuple(sk)?
    } else {
        Tuple::default()
    };
    let netns = if judged || tw_bookkeeping {
        sock::netns(sk)?
    } else {
        0
    };
    let mut hold = false;
    if judged {
        let owner = if owner_context {
            Some((bpf_get_current_pid_tgid() >> 32) as u32)
        } else if let Some(owner) = &inherited {
            Some(owner.pid)
        } else {
            match existing {
                // SAFETY: as above; a read.
                Some(existing) if (unsafe { (*existing).flags } & flow_flags::OWNER_KNOWN) != 0 => {
                    Some(unsafe { (*existing).pid })
                }
                _ => None,
            }
        };
        match filter::judge::<sock::Typed>(Some(sk), &tuple, netns, owner) {
            Verdict::Match => {}
            Verdict::Pending if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT => {
                hold = true;
            }
            // No match, or still no local port after the flow's first event.
            _ => {
                // An undecided flow's held first transition is dropped with this one.
                stats.add(stat::FILTERED, if pending { 2 } else { 1 });
                if !is_fresh && FLOW_TABLE.remove(&key).is_ok() {
                    stats.bump(stat::FLOWS_REMOVED);
                }
                return Ok(());
            }
        }
    }
    if !hold {
        stats.bump(stat::STATE_EVENTS);
        stats.transition(old, new);
    }
    if tw_bookkeeping {
        if tw_states(new) {
            filter::expect_time_wait(&tuple, netns);
        } else {
            filter::forget_time_wait(&tuple, netns);
        }
    }
    // What the socket carries at CLOSE decides the close cause (sk_err is set before the
    // kernel moves the socket to CLOSE).
    let close_info = if ends {
        Some(sock::close_info(sk)?)
    } else {
        None
    };
    let keepalive = match close_info {
        Some((_, _, true, _)) => sock::keepalive(sk)?,
        _ => Keepalive::default(),
    };

    let mut flags = 0u8;
    let mut held = 0u64;
    let flow: &mut FlowState = match existing {
        // SAFETY: a map value, valid for the program's run (RCU) and written only under the
        // socket's lock, which serialises this socket's transitions.
        Some(existing) => unsafe { &mut *existing },
        None => {
            let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
            // SAFETY: this CPU's scratch slot; the kernel never runs this program twice at
            // once on one CPU.
            let scratch = unsafe { &mut *scratch };
            *scratch = FlowState::start(old, new, now);
            scratch
        }
    };
    if pending {
        release_held_start(stats, flow, key, &tuple, emit_transitions);
    }
    if restarted {
        // A socket leaving CLOSE is new: the entry under its address belonged to an earlier
        // socket whose CLOSE was missed.
        stats.bump(stat::STALE_FLOWS);
        *flow = FlowState::start(old, new, now);
    } else if !is_fresh {
        if flow.current() != old {
            // The transition into `old` was missed: keep the path honest.
            stats.bump(stat::PATH_GAPS);
            flow.enter_unseen(old);
        }
        if let Some(ns) = flow.enter(new, now) {
            held = ns;
            flags |= event_flags::OLD_DURATION_KNOWN;
        }
    }
    if owner_context {
        if flow.wants_owner() {
            flow.set_owner(&current_owner(), false);
        }
    } else if let Some(owner) = &inherited {
        flow.set_owner(owner, true);
    }
    if flow.flags & flow_flags::OWNER_KNOWN != 0 {
        flags |= event_flags::OWNER_KNOWN;
    }
    if let Some((err, probes, keepalive_on, user_timeout)) = close_info {
        flow.err = err;
        flow.probes = probes;
        if keepalive_on {
            flow.close_flags |= close_flags::KEEPALIVE_ON;
        }
        if user_timeout {
            flow.close_flags |= close_flags::USER_TIMEOUT;
        }
    }
    if hold {
        flow.flags |= flow_flags::FILTER_PENDING;
    } else if is_fresh || restarted {
        stats.bump(stat::FLOWS_SEEN);
    }
    if is_fresh && !ends {
        if FLOW_TABLE.insert(&key, &*flow, BPF_NOEXIST).is_ok() {
            stats.bump(stat::FLOWS_INSERTED);
        } else if hold {
            // Not known to be traced: the flow is judged again at its next event.
            stats.bump(stat::LOST_UNDECIDED);
        } else {
            if stats.bump(stat::FLOW_TABLE_FULL) == 0 {
                log_table_full(ctx);
            }
            flags |= event_flags::UNTRACKED;
        }
    }
    if hold {
        return Ok(());
    }
    if flow.flags & flow_flags::TRUNCATED != 0 && flow.len as usize == PATH_SLOTS {
        stats.bump(stat::PATH_TRUNCATED);
    }

    if emit_transitions {
        send_transition(
            stats, old, new, flags, now, held, key, &tuple, flow.pid, &flow.comm,
        );
    }

    if ends {
        let wake = submit_flags(stats);
        match EVENTS.reserve::<FlowEndEvent>(0) {
            Some(mut entry) => {
                stats.bump(stat::SUBMITTED);
                let e = entry.as_mut_ptr();
                // SAFETY: as above.
                unsafe {
                    (&raw mut (*e).kind).write(record_kind::FLOW_END);
                    (&raw mut (*e)._pad0).write(0);
                    (&raw mut (*e).ts_ns).write(now);
                    (&raw mut (*e).skaddr).write(key);
                    (&raw mut (*e).tuple).write(tuple);
                    core::ptr::copy_nonoverlapping(&raw const *flow, &raw mut (*e).flow, 1);
                    (&raw mut (*e).keepalive).write(keepalive);
                }
                entry.submit(wake);
            }
            None => {
                stats.bump(stat::LOST_FLOW_END);
            }
        }
        if !is_fresh && FLOW_TABLE.remove(&key).is_ok() {
            stats.bump(stat::FLOWS_REMOVED);
        }
    }
    Ok(())
}

/// Sends one `TransitionEvent`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn send_transition(
    stats: Stats,
    old: u8,
    new: u8,
    flags: u8,
    ts_ns: u64,
    held: u64,
    key: u64,
    tuple: &Tuple,
    pid: u32,
    comm: &[u8; 16],
) {
    let wake = submit_flags(stats);
    match EVENTS.reserve::<TransitionEvent>(0) {
        Some(mut entry) => {
            stats.bump(stat::SUBMITTED);
            let e = entry.as_mut_ptr();
            // SAFETY: `e` is the reserved slot, ours alone until submit; every field is
            // written in place (no stack copy of the record).
            unsafe {
                (&raw mut (*e).kind).write(record_kind::TRANSITION);
                (&raw mut (*e).old_state).write(old);
                (&raw mut (*e).new_state).write(new);
                (&raw mut (*e).flags).write(flags);
                (&raw mut (*e)._pad0).write(0);
                (&raw mut (*e).ts_ns).write(ts_ns);
                (&raw mut (*e).old_state_ns).write(held);
                (&raw mut (*e).skaddr).write(key);
                (&raw mut (*e).tuple).write(*tuple);
                (&raw mut (*e).pid).write(pid);
                (&raw mut (*e).comm).write(*comm);
                (&raw mut (*e)._pad1).write([0; 4]);
            }
            entry.submit(wake);
        }
        None => {
            stats.bump(stat::LOST_TRANSITION);
        }
    }
}

/// An undecided flow (CLOSE → SYN_SENT before its port was bound) turned out to match: its
/// first transition is counted and sent now, with the port it got and its own timestamp.
#[inline(always)]
pub fn release_held_start(
    stats: Stats,
    flow: &mut FlowState,
    key: u64,
    tuple: &Tuple,
    emit_transitions: bool,
) {
    flow.flags &= !flow_flags::FILTER_PENDING;
    stats.bump(stat::STATE_EVENTS);
    stats.transition(tcp_state::CLOSE, tcp_state::SYN_SENT);
    stats.bump(stat::FLOWS_SEEN);
    if emit_transitions {
        let flags = if flow.flags & flow_flags::OWNER_KNOWN != 0 {
            event_flags::OWNER_KNOWN
        } else {
            0
        };
        send_transition(
            stats,
            tcp_state::CLOSE,
            tcp_state::SYN_SENT,
            flags,
            flow.entered_ns[0],
            0,
            key,
            tuple,
            flow.pid,
            &flow.comm,
        );
    }
}
