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
    event_flags, flow_flags, in_owner_context, slot, starts_a_socket, stat, tcp_state, FlowState,
    ListenerKey, TransitionEvent, Tuple, PATH_SLOTS,
};

use crate::{
    config,
    events::emit,
    filter::{self, Verdict},
    flow_end::{finish_flow, Ending},
    maps::{observe_duration, FlowTable, Stats, FLOW_TABLE, LISTENERS, SET_STATE_RUNNING},
    sock,
};

mod connect_failure;
mod steps;
mod time_wait_start;
use steps::{attribute_owner, follow_listeners, fresh_flow, index_keepalive_owner, insert_fresh};

/// What the filters said before the transition is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prejudged {
    /// No filter in force, or a flow already tracked (it matched when first seen).
    NotJudged,
    Match,
    /// Matches but for its local port, not bound yet: held until its next event.
    Hold,
    /// Filtered out (counted): only the bookkeeping of listeners and connects is done.
    Dropped,
}

// The filters are judged in their own call, not inside try_inet_sock_set_state: before
// Linux 6.13 the verifier allows 512 bytes of stack along a whole call chain, and the main
// handler needs most of it (see the tests run on Debian's 6.1 and 6.12 kernels).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let running = SET_STATE_RUNNING.get_ptr_mut(0);
    if let Some(flag) = running {
        // SAFETY: this CPU's flag; tracepoint programs run with preemption disabled.
        unsafe { core::ptr::write_volatile(flag, 1) };
    }
    handle(&ctx, slot::SET_STATE);
    if let Some(flag) = running {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(flag, 0) };
    }
    0
}

/// A transition that arrives while the main program runs on this CPU (a softirq interrupting
/// it in process context) is skipped by the kernel for that program, which is not re-entered:
/// this second program on the same tracepoint handles exactly those, with its own counters and
/// scratch slots; otherwise it returns at once.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: this CPU's flag, read once.
    let nested = SET_STATE_RUNNING
        .get_ptr(0)
        .is_some_and(|flag| unsafe { core::ptr::read_volatile(flag) } != 0);
    if nested {
        Stats::at(slot::SET_STATE_NESTED).bump(stat::NESTED_HANDLED);
        handle(&ctx, slot::SET_STATE_NESTED);
    }
    0
}

/// One transition, handled by the program whose `slot` this is.
#[inline(always)]
fn handle(ctx: &BtfTracePointContext, slot: u32) {
    let (old, new): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    if old == i32::from(tcp_state::SYN_SENT)
        && new == i32::from(tcp_state::CLOSE)
        && config!(emit_connect_failures) != 0
    {
        connect_failure::check(ctx, slot);
    }
    let prejudged = if filter::active() != 0 {
        prejudge(ctx, slot)
    } else {
        Prejudged::NotJudged
    };
    let stats = Stats::at(slot);
    let full_before = stats.value(stat::FLOW_TABLE_FULL);
    let result = match try_inet_sock_set_state(ctx, prejudged, slot) {
        Ok(Ending::No) => Ok(()),
        Ok(ending) => {
            let finished = finish_flow(ctx, ending, slot);
            let closing =
                |s: i32| s == i32::from(tcp_state::FIN_WAIT2) || s == i32::from(tcp_state::CLOSING);
            if finished.is_ok() && closing(old) && config!(emit_time_wait) != 0 {
                time_wait_start::send(ctx, slot);
            }
            finished
        }
        Err(err) => Err(err),
    };
    if let Err(err) = result {
        // Logged once per CPU: off the hot path.
        if stats.bump(stat::READ_ERRORS) == 0 {
            log_read_error(ctx, err);
        }
    }
    if full_before == 0 && stats.value(stat::FLOW_TABLE_FULL) != 0 {
        log_table_full(ctx);
    }
}

/// The filters' verdict on a flow seen for the first time (or restarted, or undecided).
#[inline(never)]
fn prejudge(ctx: &BtfTracePointContext, slot: u32) -> Prejudged {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let limit = i32::from(tcp_state::LIMIT);
    if sock::protocol(sk) != Ok(sock::IPPROTO_TCP)
        || !(0..limit).contains(&old)
        || !(0..limit).contains(&new)
    {
        return Prejudged::NotJudged; // not a transition the handler takes
    }
    let (old, new) = (old as u8, new as u8);
    let stats = Stats::at(slot);
    let existing = FLOW_TABLE.get_ptr_mut(sk);
    let (pending, owner_known, known_pid) = match existing {
        // SAFETY: a map value, valid for this run; reads.
        Some(flow) => unsafe {
            (
                (*flow).flags & flow_flags::FILTER_PENDING != 0,
                (*flow).flags & flow_flags::OWNER_KNOWN != 0,
                (*flow).pid,
            )
        },
        None => (false, false, 0),
    };
    let restarted = existing.is_some() && starts_a_socket(old, new);
    if existing.is_some() && !restarted && !pending {
        return Prejudged::NotJudged;
    }
    let (Ok(tuple), Ok(netns)) = (sock::tuple(sk), sock::netns(sk)) else {
        stats.bump(stat::READ_ERRORS);
        return Prejudged::Dropped;
    };
    let owner = if in_owner_context(old, new) {
        Some((bpf_get_current_pid_tgid() >> 32) as u32)
    } else if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
        // SAFETY: the value is copied out at once.
        listener_key(sk)
            .ok()
            .and_then(|k| unsafe { LISTENERS.get(&k) }.map(|o| o.pid))
    } else if owner_known {
        Some(known_pid)
    } else {
        None
    };
    match filter::judge::<sock::Typed>(slot, Some(sk), &tuple, netns, owner) {
        Verdict::Match => Prejudged::Match,
        Verdict::Pending if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT => {
            Prejudged::Hold
        }
        // No match, or still no local port after the flow's first event.
        _ => {
            // An undecided flow's held first transition is dropped with this one.
            stats.add(stat::FILTERED, if pending { 2 } else { 1 });
            if existing.is_some() && FLOW_TABLE.remove(sk) {
                stats.bump(stat::FLOWS_REMOVED);
            }
            Prejudged::Dropped
        }
    }
}

// Out of line: aya-log's formatting buffers get their own stack frame.
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

/// Handles one transition, in steps inlined into it: it calls no other function (before Linux
/// 6.13 its frame and a callee's would have to fit in 512 bytes together).
#[inline(never)]
fn try_inet_sock_set_state(
    ctx: &BtfTracePointContext,
    prejudged: Prejudged,
    slot: u32,
) -> Result<Ending, i32> {
    let stats = Stats::at(slot);
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);

    if sock::protocol(sk)? != sock::IPPROTO_TCP {
        return Ok(Ending::No);
    }
    if !(0..i32::from(tcp_state::LIMIT)).contains(&old)
        || !(0..i32::from(tcp_state::LIMIT)).contains(&new)
    {
        return Ok(Ending::No);
    }
    let (old, new) = (old as u8, new as u8);
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    // Who owns the socket: the current task where the transition runs in the owner's
    // context (pid and comm fetched only where needed), else the listener's owner for a new
    // child, else whatever the flow knows.
    let owner_context = in_owner_context(old, new);
    let inherited = follow_listeners(sk, old, new, owner_context, slot)?;
    if prejudged == Prejudged::Dropped {
        return Ok(Ending::No);
    }

    let emit_transitions = config!(emit_transitions) != 0;
    let ends = new == tcp_state::CLOSE;
    let key = sk as u64;
    let existing = FLOW_TABLE.get_ptr_mut(sk);
    let is_fresh = existing.is_none();
    let restarted = !is_fresh && starts_a_socket(old, new);
    let pending = match existing {
        // SAFETY: a map value, valid for this run; one byte read.
        Some(existing) => (unsafe { (*existing).flags } & flow_flags::FILTER_PENDING) != 0,
        None => false,
    };
    let hold = prejudged == Prejudged::Hold;
    let tuple = if emit_transitions || ends || pending {
        sock::tuple(sk)?
    } else {
        Tuple::default()
    };
    if !hold {
        stats.bump(stat::STATE_EVENTS);
        stats.transition(old, new);
    }

    let flow: &mut FlowState = match existing {
        // SAFETY: a map value, valid for the program's run (RCU) and written only under the
        // socket's lock, which serialises this socket's transitions.
        Some(existing) => unsafe { &mut *existing },
        None => fresh_flow(slot, old, new, now)?,
    };
    if pending {
        release_held_start(stats, flow, key, &tuple, emit_transitions);
    }
    let mut flags = 0u8;
    let mut held = 0u64;
    if restarted {
        // A socket starting (see `starts_a_socket`) is new: the entry under its address
        // belonged to an earlier socket whose CLOSE was missed.
        stats.bump(stat::STALE_FLOWS);
        flow.restart(old, new, now);
    } else if !is_fresh {
        if flow.current() != old {
            // The transition into `old` was missed: keep the path honest.
            stats.bump(stat::PATH_GAPS);
            flow.enter_unseen(old);
        }
        // Set in each branch, as Linux 6.1's verifier follows it with flows in socket
        // storage (a step returning the pair, or one assignment after the branches, leaves a
        // register it counts as unread: `R5 !read_ok`).
        if old == new && !ends {
            // The kernel set the state the socket is in (shutdown() then close() sets
            // FIN_WAIT1 or FIN_WAIT2 again): the transition is reported, the stay goes on —
            // one step of the path, one time held, observed when the state is left.
            if let Some(ns) = flow.held_at(now) {
                held = ns;
                flags |= event_flags::OLD_DURATION_KNOWN;
            }
        } else if let Some(ns) = flow.enter(new, now) {
            held = ns;
            flags |= event_flags::OLD_DURATION_KNOWN;
            observe_duration(slot, old, ns);
        }
    }
    flags |= attribute_owner(flow, sk, owner_context, inherited, is_fresh || restarted);
    if hold {
        flow.flags |= flow_flags::FILTER_PENDING;
    } else if is_fresh || restarted {
        stats.bump(stat::FLOWS_SEEN);
    }
    if new == tcp_state::ESTABLISHED && !is_fresh && FlowTable::in_sockets() {
        index_keepalive_owner(stats, flow, sk)?;
    }
    if is_fresh && !ends {
        flags |= insert_fresh(stats, flow, sk, hold);
    }
    if hold {
        return Ok(Ending::No);
    }
    if flow.flags & flow_flags::TRUNCATED != 0 && flow.len as usize == PATH_SLOTS {
        stats.bump(stat::PATH_TRUNCATED);
    }

    if emit_transitions {
        send_transition(
            stats,
            old,
            new,
            flags,
            now,
            held,
            key,
            &tuple,
            flow.pid,
            &flow.comm,
            flow.cgroup,
        );
    }

    if ends {
        // The flow end is sent by `finish_flow`, in its own call (stack).
        let flow: *mut FlowState = flow;
        return Ok(if is_fresh {
            Ending::Scratch(flow)
        } else {
            Ending::Table(flow)
        });
    }
    Ok(Ending::No)
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
    cgroup: u64,
) {
    if let Some(mut record) = emit::<TransitionEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
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
            (&raw mut (*e).cgroup).write(cgroup);
        }
        record.submit();
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
            flow.cgroup,
        );
    }
}
