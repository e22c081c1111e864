//! The CLOSE half of `tp_btf/inet_sock_set_state`: a flow that reached CLOSE is counted
//! (close cause, close side) and, where userspace wants it, sent whole (with the socket's
//! bytes and RTT) or, for `tcptrace metrics`, in brief when a TIME_WAIT follows (whose start
//! `set_state::time_wait_start` sends).
use aya_ebpf::programs::BtfTracePointContext;
use tcptrace_common::{
    close_flags, emit_flow_ends, flow_flags, side_of_path, stat, tcp_state, time_wait_flow,
    CloseFacts, FlowEndEvent, FlowState, Keepalive, TimeWaitFlowEvent,
};

use crate::{
    config,
    events::emit,
    maps::{Stats, FLOW_TABLE, KEEPALIVE_OWNERS, TIME_WAIT_STARTS},
    sock,
};

/// Where a flow that reached CLOSE is, for [`finish_flow`]: the handler passes the flow it
/// already holds (no second lookup of the table per closing flow).
#[derive(Clone, Copy)]
pub enum Ending {
    No,
    /// Its entry in the flow table.
    Table(*mut FlowState),
    /// Seen for the first time at CLOSE: this CPU's scratch slot, never inserted.
    Scratch(*mut FlowState),
}

/// A flow reached CLOSE: what the socket carries decides its close cause (sk_err is set
/// before the kernel moves the socket to CLOSE), counted here; the flow is sent as
/// userspace wants it (`emit_flow_ends`), and the entry removed. Where a TIME_WAIT follows
/// that userspace wants, the time it closed is left in `TIME_WAIT_STARTS`.
#[inline(never)]
pub fn finish_flow(ctx: &BtfTracePointContext, ending: Ending, slot: u32) -> Result<(), i32> {
    let stats = Stats::at(slot);
    let sk: *const u8 = ctx.arg(0);
    let key = sk as u64;
    let (flow, in_table) = match ending {
        Ending::Table(flow) => (flow, true),
        Ending::Scratch(flow) => (flow, false),
        Ending::No => return Ok(()),
    };
    if flow.is_null() {
        return Err(-1);
    }
    // SAFETY: the handler's flow of this run (the flow's entry, or this CPU's scratch slot
    // written by this run's handler), valid for this run; the socket's lock serialises its
    // transitions.
    let flow = unsafe { &mut *flow };
    let (err, probes, keepalive_on, user_timeout) = sock::close_info(sk)?;
    flow.err = err;
    flow.probes = probes;
    if keepalive_on {
        flow.close_flags |= close_flags::KEEPALIVE_ON;
    }
    if user_timeout {
        flow.close_flags |= close_flags::USER_TIMEOUT;
    }
    // Counted here whatever is sent: metrics need no record per flow.
    let facts = CloseFacts::of(flow, config!(keepalive_reset_reason));
    stats.closed(facts.cause(), side_of_path(&flow.states, flow.len as usize));
    // A TIME_WAIT follows: its start is sent by the caller, after this flow's record. Stored
    // at once, not returned: nothing here branches on it, and Linux 6.1's verifier does not
    // explore the rest of the handler once per outcome (nor does this frame grow).
    if let Some(next) = TIME_WAIT_STARTS.get_ptr_mut(slot) {
        let at = match config!(emit_time_wait) != 0 && facts.holds_time_wait() {
            true => flow.entered_ns[flow.last()],
            false => 0,
        };
        // SAFETY: this CPU's slot of this program.
        unsafe { *next = at };
    }
    match config!(emit_flow_ends) {
        emit_flow_ends::ALL => send_flow_end(sk, flow, keepalive_on, stats)?,
        // Its side and 4-tuple join the TIME_WAIT that follows (a flow that closed first).
        emit_flow_ends::TIME_WAIT if facts.enters_time_wait() => {
            send_time_wait_flow(sk, flow, stats)?
        }
        _ => {}
    }
    if in_table {
        if flow.flags & flow_flags::KEEPALIVE_INDEXED != 0 {
            let _ = KEEPALIVE_OWNERS.remove(&key);
        }
        if FLOW_TABLE.remove(sk) {
            stats.bump(stat::FLOWS_REMOVED);
        }
    }
    Ok(())
}

/// The flow whole: its path, the socket's 4-tuple and keepalive settings.
#[inline(always)]
fn send_flow_end(
    sk: *const u8,
    flow: &FlowState,
    keepalive_on: bool,
    stats: Stats,
) -> Result<(), i32> {
    let keepalive = if keepalive_on {
        sock::keepalive(sk)?
    } else {
        Keepalive::default()
    };
    let tuple = sock::tuple(sk)?;
    let vitals = sock::vitals(sk);
    let close_flags = flow.close_flags
        | if vitals.is_some() {
            close_flags::VITALS
        } else {
            0
        };
    let vitals = vitals.unwrap_or_default();
    // The time the flow entered CLOSE, as the handler recorded it.
    let now = flow.entered_ns[flow.last()];
    if let Some(mut record) = emit::<FlowEndEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e)._pad0).write(0);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).skaddr).write(sk as u64);
            (&raw mut (*e).tuple).write(tuple);
            core::ptr::copy_nonoverlapping(flow, &raw mut (*e).flow, 1);
            (&raw mut (*e).flow.close_flags).write(close_flags);
            (&raw mut (*e).keepalive).write(keepalive);
            (&raw mut (*e).vitals).write(vitals);
        }
        record.submit();
    }
    Ok(())
}

/// A flow entering TIME_WAIT, in brief: its 4-tuple and whether it was the accepting side.
#[inline(always)]
fn send_time_wait_flow(sk: *const u8, flow: &FlowState, stats: Stats) -> Result<(), i32> {
    let tuple = sock::tuple(sk)?;
    let flags = if flow.states[0] == tcp_state::SYN_RECV {
        time_wait_flow::ACCEPTED
    } else {
        0
    };
    let now = flow.entered_ns[flow.last()];
    if let Some(mut record) = emit::<TimeWaitFlowEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e).flags).write(flags);
            (&raw mut (*e)._pad0).write([0; 3]);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).skaddr).write(sk as u64);
            (&raw mut (*e).tuple).write(tuple);
        }
        record.submit();
    }
    Ok(())
}
