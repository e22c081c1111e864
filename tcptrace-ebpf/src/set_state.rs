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
    close_flags, event_flags, flow_flags, in_owner_context, record_kind, stat, tcp_state,
    Connecting, FlowEndEvent, FlowState, Keepalive, ListenerKey, Owner, TransitionEvent, Tuple,
    PATH_SLOTS,
};

use crate::{
    config,
    maps::{current_owner, submit_flags, Stats, CONNECTING, EVENTS, FLOWS, LISTENERS, SCRATCH},
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
    stats.bump(stat::STATE_EVENTS);
    stats.transition(old, new);

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
    let tuple = if emit_transitions || ends {
        sock::tuple(sk)?
    } else {
        Tuple::default()
    };
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

    let key = sk as u64;
    let mut flags = 0u8;
    let mut held = 0u64;
    let existing = FLOWS.get_ptr_mut(&key);
    let is_fresh = existing.is_none();
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
    let restarted = !is_fresh && old == tcp_state::CLOSE;
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
    if is_fresh || restarted {
        stats.bump(stat::FLOWS_SEEN);
    }
    if is_fresh && !ends && FLOWS.insert(&key, &*flow, BPF_NOEXIST).is_err() {
        if stats.bump(stat::FLOW_TABLE_FULL) == 0 {
            log_table_full(ctx);
        }
        flags |= event_flags::UNTRACKED;
    }
    if flow.flags & flow_flags::TRUNCATED != 0 && flow.len as usize == PATH_SLOTS {
        stats.bump(stat::PATH_TRUNCATED);
    }

    if emit_transitions {
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
                    (&raw mut (*e).ts_ns).write(now);
                    (&raw mut (*e).old_state_ns).write(held);
                    (&raw mut (*e).skaddr).write(key);
                    (&raw mut (*e).tuple).write(tuple);
                    (&raw mut (*e).pid).write(flow.pid);
                    (&raw mut (*e).comm).write(flow.comm);
                    (&raw mut (*e)._pad1).write([0; 4]);
                }
                entry.submit(wake);
            }
            None => {
                stats.bump(stat::LOST_TRANSITION);
            }
        }
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
        if !is_fresh {
            let _ = FLOWS.remove(&key);
        }
    }
    Ok(())
}
