//! `tp_btf/tcp_retransmit_skb`: retransmits, counted against the flow's current state.
//!
//! Tracepoint arguments: `(const struct sock *sk, const struct sk_buff *skb)` before
//! Linux 6.17, `(…, int err)` from 6.17 on. Userspace reads the prototype from BTF and
//! loads `tcp_retransmit_skb_err` only where the third argument exists (the verifier refuses a
//! program that reads past the tracepoint's arguments).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::warn;
use tcptrace_common::{
    event_flags, flow_flags, slot, stat, FlowState, RetransmitEvent, Tuple, COMM_LEN,
};

use crate::{
    config,
    events::emit,
    filter::{self, Verdict},
    maps::{scratch, Stats, FLOW_TABLE},
    set_state::release_held_start,
    sock,
};

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    if let Err(err) = try_tcp_retransmit_skb(&ctx, None) {
        if Stats::at(slot::RETRANSMIT).bump(stat::READ_ERRORS) == 0 {
            log_read_error(&ctx, err);
        }
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_err(ctx: BtfTracePointContext) -> i32 {
    let err: i64 = ctx.arg(2);
    if let Err(err) = try_tcp_retransmit_skb(&ctx, Some(err as i32)) {
        if Stats::at(slot::RETRANSMIT).bump(stat::READ_ERRORS) == 0 {
            log_read_error(&ctx, err);
        }
    }
    0
}

// Out of line, as in set_state: the log's buffers get their own frame.
#[inline(never)]
fn log_read_error(ctx: &BtfTracePointContext, err: i32) {
    warn!(
        ctx,
        "tcp_retransmit_skb: reading the socket failed ({})", err
    );
}

#[inline(always)]
fn try_tcp_retransmit_skb(ctx: &BtfTracePointContext, err: Option<i32>) -> Result<(), i32> {
    let stats = Stats::at(slot::RETRANSMIT);
    let sk: *const u8 = ctx.arg(0);
    let state = sock::state(sk)?;
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };

    let send = config!(emit_retransmits) != 0;
    let existing = FLOW_TABLE.get_ptr_mut(sk);
    let pending = match existing {
        // SAFETY: a map value, valid for this run; one byte read.
        Some(existing) => (unsafe { (*existing).flags } & flow_flags::FILTER_PENDING) != 0,
        None => false,
    };
    let judged = filter::active() != 0 && (existing.is_none() || pending);
    let tuple = if send || judged {
        sock::tuple(sk)?
    } else {
        Tuple::default()
    };
    if judged && filtered_out(stats, sk, existing, pending, &tuple)? {
        return Ok(());
    }
    stats.bump(stat::RETRANSMITS);
    stats.retransmit_in(state);
    let (mut flags, pid, comm, cgroup) = match existing {
        Some(existing) => {
            // SAFETY: as in set_state: the entry is valid for this run and the socket lock
            // serialises writers.
            let flow = unsafe { &mut *existing };
            counted_on_flow(stats, flow, sk, pending, &tuple)
        }
        None => counted_on_unseen_flow(stats, sk, state)?,
    };
    if !send {
        return Ok(());
    }
    if err.is_some() {
        flags |= event_flags::ERR_VALID;
    }
    if let Some(mut record) = emit::<RetransmitEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e).state).write(state);
            (&raw mut (*e).flags).write(flags);
            (&raw mut (*e)._pad0).write([0; 2]);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).skaddr).write(sk as u64);
            (&raw mut (*e).tuple).write(tuple);
            (&raw mut (*e).err).write(err.unwrap_or(0));
            (&raw mut (*e).pid).write(pid);
            (&raw mut (*e).comm).write(comm);
            (&raw mut (*e).cgroup).write(cgroup);
        }
        record.submit();
    }
    Ok(())
}

/// Whether the filters leave this retransmit out (a flow not yet judged, or held for a
/// port filter); a held flow judged out is removed.
#[inline(always)]
fn filtered_out(
    stats: Stats,
    sk: *const u8,
    existing: Option<*mut FlowState>,
    pending: bool,
    tuple: &Tuple,
) -> Result<bool, i32> {
    let owner = match existing {
        // SAFETY: a map value, valid for this run; reads.
        Some(existing) if (unsafe { (*existing).flags } & flow_flags::OWNER_KNOWN) != 0 => {
            Some(unsafe { (*existing).pid })
        }
        _ => None,
    };
    let netns = sock::netns(sk)?;
    if filter::judge::<sock::Typed>(slot::RETRANSMIT, Some(sk), tuple, netns, owner)
        == Verdict::Match
    {
        return Ok(false);
    }
    stats.add(stat::FILTERED, if pending { 2 } else { 1 });
    if pending && FLOW_TABLE.remove(sk) {
        stats.bump(stat::FLOWS_REMOVED);
    }
    Ok(true)
}

/// The retransmit counted on its flow (a held start released first); the record's flags and
/// the owner where known.
#[inline(always)]
fn counted_on_flow(
    stats: Stats,
    flow: &mut FlowState,
    sk: *const u8,
    pending: bool,
    tuple: &Tuple,
) -> (u8, u32, [u8; COMM_LEN], u64) {
    if pending {
        release_held_start(
            stats,
            flow,
            sk as u64,
            tuple,
            config!(emit_transitions) != 0,
        );
    }
    flow.count_retransmit();
    if flow.flags & flow_flags::OWNER_KNOWN != 0 {
        (event_flags::OWNER_KNOWN, flow.pid, flow.comm, flow.cgroup)
    } else {
        (0, 0, [0; COMM_LEN], 0)
    }
}

/// A flow older than the tracer, not seen changing state yet: tracked from here, its owner
/// unknown, its socket's cgroup known.
#[inline(always)]
fn counted_on_unseen_flow(
    stats: Stats,
    sk: *const u8,
    state: u8,
) -> Result<(u8, u32, [u8; COMM_LEN], u64), i32> {
    let scratch = scratch(slot::RETRANSMIT).ok_or(-1)?;
    // SAFETY: this CPU's scratch slot of this program (no 120-byte temporary on the
    // stack); the kernel never runs one program twice at once on one CPU.
    let flow = unsafe { &mut *scratch };
    flow.restart_unseen(state);
    flow.count_retransmit();
    flow.cgroup = sock::cgroup_id(sk);
    stats.bump(stat::FLOWS_SEEN);
    let flags = if FLOW_TABLE.insert(sk, &*flow) {
        stats.bump(stat::FLOWS_INSERTED);
        0
    } else {
        stats.bump(stat::FLOW_TABLE_FULL);
        event_flags::UNTRACKED
    };
    Ok((flags, 0, [0; COMM_LEN], flow.cgroup))
}
