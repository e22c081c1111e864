//! Timer hooks: `tp_btf/timer_expire_entry`, `timer_expire_exit` (timers that fire, about 40
//! a second on a busy host; never the hooks of every timer armed or cancelled).
//!
//! - Keepalive probes, around `tcp_keepalive_timer`: a probe went out exactly when the
//!   socket's `icsk_probes_out` grew while the timer ran.
//! - TIME_WAIT's end, through `tw_timer_handler`: the timewait socket's own 4-tuple and
//!   namespace, read where its timer lies (its start comes from the state tracepoint).
//!
//! Every other timer on the host costs a load and two compares.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{
    event_flags, flow_flags, learn as learn_slot, slot, stat, tcp_state, time_wait,
    KeepaliveProbeEvent, TimeWaitEvent, TimerEntry, Tuple, COMM_LEN,
};

use crate::{
    config,
    events::emit,
    filter::{self, Verdict},
    learn,
    maps::{FlowTable, Stats, FLOW_TABLE, KEEPALIVE_OWNERS, TIMER_ENTRY, TW_TRACED},
    sock,
};

/// The socket whose `sk_timer` this is, if the timer is a keepalive timer.
#[inline(always)]
fn keepalive_socket(timer: *const u8) -> Option<*const u8> {
    let keepalive_fn = config!(keepalive_timer_fn);
    if keepalive_fn == 0 || function(timer) != keepalive_fn {
        return None;
    }
    Some(timer.wrapping_sub(config!(offsets.sk_timer) as usize))
}

/// Whether the timer is inside a TCP timewait socket: that socket's `skc_prot` is one of the
/// TCP protocols the state tracepoint showed (`&tcp_prot`, `&tcpv6_prot`) and its state is
/// TIME_WAIT. Read with checked loads: for any other timer the bytes there are something
/// else. The first match gives `tw_timer_handler`'s address, compared from then on.
#[inline(always)]
fn learn_time_wait(timer: *const u8) -> bool {
    let tw = timer.wrapping_sub(config!(offsets.tw_timer) as usize);
    let Ok(prot) = sock::probe_read::<u64>(tw, config!(offsets.prot)) else {
        return false;
    };
    let tcp = prot != 0
        && (prot == learn::learned(learn_slot::TCP_PROT)
            || prot == learn::learned(learn_slot::TCPV6_PROT));
    if !tcp || sock::probe_read::<u8>(tw, config!(offsets.state)) != Ok(tcp_state::TIME_WAIT) {
        return false;
    }
    learn::remember(learn_slot::TW_FN, function(timer));
    true
}

/// The timer's handler, if it is one tcptrace follows.
#[inline(always)]
fn function(timer: *const u8) -> u64 {
    sock::read::<u64>(timer, config!(offsets.timer_function)).unwrap_or(0)
}

#[inline(always)]
fn is_time_wait(timer: *const u8) -> bool {
    let mut tw_fn = config!(tw_timer_fn);
    if tw_fn == 0 && config!(learn_symbols) & learn_slot::TIME_WAIT != 0 {
        tw_fn = learn::learned(learn_slot::TW_FN);
        if tw_fn == 0 {
            return learn_time_wait(timer);
        }
    }
    tw_fn != 0 && function(timer) == tw_fn
}

/// Sends one `TimeWaitEvent` (a start from the state tracepoint, an expiry from here).
#[inline(always)]
pub fn send_time_wait(stats: Stats, what: u8, ts_ns: u64, id: u64, tuple: Tuple, netns: u32) {
    if let Some(mut record) = emit::<TimeWaitEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e).what).write(what);
            (&raw mut (*e).flags).write(0);
            (&raw mut (*e)._pad0).write([0; 2]);
            (&raw mut (*e).ts_ns).write(ts_ns);
            (&raw mut (*e).timer).write(id);
            (&raw mut (*e).tuple).write(tuple);
            (&raw mut (*e).netns).write(netns);
            (&raw mut (*e)._pad1).write(0);
        }
        record.submit();
    }
}

/// A timewait socket's timer ran out: its 4-tuple and namespace, sent where traced (under
/// filters, where its start was: `TW_TRACED`, written at the flow's close).
#[inline(always)]
fn time_wait_expired(timer: *const u8) {
    let tw = timer.wrapping_sub(config!(offsets.tw_timer) as usize);
    let stats = Stats::at(slot::TIMER_EXPIRE);
    let (Ok(tuple), Ok(netns)) = (
        sock::tuple_with::<sock::Untyped>(tw, config!(offsets.tw_sport)),
        sock::netns_with::<sock::Untyped>(tw),
    ) else {
        stats.bump(stat::READ_ERRORS);
        return;
    };
    if filter::active() != 0
        && TW_TRACED
            .remove(&filter::time_wait_key(&tuple, netns))
            .is_err()
    {
        stats.bump(stat::FILTERED);
        return;
    }
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    send_time_wait(stats, time_wait::EXPIRE, now, timer as u64, tuple, netns);
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    if is_time_wait(timer) {
        time_wait_expired(timer);
        return 0;
    }
    let Some(sk) = keepalive_socket(timer) else {
        return 0;
    };
    let probes_before = sock::probe_read::<u8>(sk, config!(offsets.probes_out)).unwrap_or(0);
    if let Some(entry) = TIMER_ENTRY.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the timer's handler runs between entry and exit on this CPU.
        unsafe {
            *entry = TimerEntry {
                timer: timer as u64,
                probes_before,
                _pad: [0; 7],
            }
        };
    }
    0
}

#[btf_tracepoint(function = "timer_expire_exit")]
pub fn timer_expire_exit(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let Some(sk) = keepalive_socket(timer) else {
        return 0;
    };
    let _ = try_probe(sk, timer as u64);
    0
}

#[inline(always)]
fn try_probe(sk: *const u8, timer: u64) -> Result<(), i32> {
    let entry = TIMER_ENTRY.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: this CPU's slot, written by timer_expire_entry for this timer.
    let entry = unsafe { &mut *entry };
    if entry.timer != timer {
        return Ok(());
    }
    entry.timer = 0;
    let probes = sock::probe_read::<u8>(sk, config!(offsets.probes_out))?;
    // The socket may be gone (the last probe resets and closes it): only a live,
    // established socket whose probe count grew sent a probe.
    if probes <= entry.probes_before
        || sock::probe_read::<u8>(sk, config!(offsets.state))? != tcp_state::ESTABLISHED
    {
        return Ok(());
    }
    let stats = Stats::at(slot::TIMER_EXPIRE);
    let key = sk as u64;
    // The flow's owner: from the flow table, or, for flows kept in socket-local storage, from
    // the keepalive index (`KEEPALIVE_OWNERS`: pid 0 when the owner is unknown).
    let (traced, owner) = if FlowTable::in_sockets() {
        // SAFETY: a map value, valid for this run; only read.
        match unsafe { KEEPALIVE_OWNERS.get(&key) } {
            Some(owner) if owner.pid != 0 => (true, Some((owner.pid, owner.comm, owner.cgroup))),
            Some(_) => (true, None),
            None => (false, None),
        }
    } else {
        match FLOW_TABLE.get_by_address(key) {
            Some(flow) => {
                // SAFETY: a map value, valid for this run; only read.
                let flow = unsafe { &*flow };
                let owner = (flow.flags & flow_flags::OWNER_KNOWN != 0).then_some((
                    flow.pid,
                    flow.comm,
                    flow.cgroup,
                ));
                (true, owner)
            }
            None => (false, None),
        }
    };
    let tuple = sock::probe_tuple(sk)?;
    // A traced flow matched the filters; another is judged now (its owner unknown).
    if !traced && filter::active() != 0 {
        let netns = sock::netns_with::<sock::Untyped>(sk)?;
        if filter::judge::<sock::Untyped>(slot::TIMER_EXPIRE, Some(sk), &tuple, netns, None)
            != Verdict::Match
        {
            stats.bump(stat::FILTERED);
            return Ok(());
        }
    }
    stats.bump(stat::KEEPALIVE_PROBES);
    if config!(emit_probes) == 0 {
        return Ok(());
    }
    let keepalive = sock::keepalive(sk)?;
    let (pid, comm, cgroup, flags) = match owner {
        Some((pid, comm, cgroup)) => (pid, comm, cgroup, event_flags::OWNER_KNOWN),
        None => (0u32, [0u8; COMM_LEN], 0u64, 0u8),
    };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(mut record) = emit::<KeepaliveProbeEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e).probe).write(probes);
            (&raw mut (*e).flags).write(flags);
            (&raw mut (*e)._pad0).write([0; 2]);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).skaddr).write(key);
            (&raw mut (*e).tuple).write(tuple);
            (&raw mut (*e).keepalive).write(keepalive);
            (&raw mut (*e).pid).write(pid);
            (&raw mut (*e).comm).write(comm);
            (&raw mut (*e)._pad1).write([0; 4]);
            (&raw mut (*e).cgroup).write(cgroup);
        }
        record.submit();
    }
    Ok(())
}
