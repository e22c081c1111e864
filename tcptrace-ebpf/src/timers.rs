//! Timer hooks: `tp_btf/timer_start`, `timer_cancel`, `timer_expire_entry`, `timer_expire_exit`.
//!
//! - Keepalive probes, around `tcp_keepalive_timer`: a probe went out exactly when the
//!   socket's `icsk_probes_out` grew while the timer ran.
//! - TIME_WAIT, through `tw_timer_handler`: armed when the timewait socket takes over, fired
//!   when it runs out, cancelled when it ends early (reused by a connect(), or killed).
//!
//! Every other timer on the host costs a load and two compares.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{
    event_flags, filter_kind, flow_flags, learn as learn_slot, slot, stat, tcp_state, time_wait,
    KeepaliveProbeEvent, TimeWaitEvent, TimerEntry, Tuple, COMM_LEN,
};

use crate::{
    config,
    filter::{self, Verdict},
    learn,
    maps::{
        emit, FlowTable, Stats, CONNECTING, FLOW_TABLE, KEEPALIVE_OWNERS, TIMER_ENTRY, TW_PENDING,
        TW_TRACED,
    },
    sock,
};

/// A timewait socket cancelled by the task that entered SYN_SENT on this CPU at most this long
/// before was reused by its connect() (the two happen moments apart in `tcp_v4_connect`).
const CONNECT_REUSE_WINDOW_NS: u64 = 10_000_000;

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

#[inline(always)]
fn emit_time_wait(slot: u32, what: u8, flags: u8, timer: *const u8, tuple: Tuple, netns: u32) {
    let stats = Stats::at(slot);
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(mut record) = emit::<TimeWaitEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e).what).write(what);
            (&raw mut (*e).flags).write(flags);
            (&raw mut (*e)._pad0).write([0; 2]);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).timer).write(timer as u64);
            (&raw mut (*e).tuple).write(tuple);
            (&raw mut (*e).netns).write(netns);
            (&raw mut (*e)._pad1).write(0);
        }
        record.submit();
    }
}

/// Under filters: whether a timewait timer that starts belongs to a traced flow (and is
/// remembered as traced), judged by the timewait socket's own addresses or, for the filters
/// that need the owner, by its flow's verdict (`TW_PENDING`); `netns` is its namespace, `None`
/// where it could not be read (not traced).
#[inline(always)]
fn time_wait_traced(timer: *const u8, netns: Option<u32>, tuple: &Tuple) -> bool {
    let key = timer as u64;
    // SAFETY: the value is not read.
    if unsafe { TW_TRACED.get(&key) }.is_some() {
        return true;
    }
    let Some(netns) = netns else {
        return false;
    };
    let traced = if filter::active() & filter_kind::NEEDS_OWNER != 0 {
        let pending = filter::time_wait_key(tuple, netns);
        TW_PENDING.remove(&pending).is_ok()
    } else {
        filter::judge::<sock::Untyped>(slot::TIMER_START, None, tuple, netns, None)
            == Verdict::Match
    };
    if traced {
        let _ = TW_TRACED.insert(&key, &0u8, 0);
    }
    traced
}

/// Under filters: whether a timewait timer that is cancelled was traced. It is not
/// forgotten here: the kernel also reports a cancel for every timer that runs out, just before
/// it expires (`detach_timer`); an expiry forgets it, and the entry of a TIME_WAIT that ends
/// early (killed, reused) goes with the LRU or when its timer address starts another.
#[inline(always)]
fn time_wait_cancel_traced(timer: *const u8) -> bool {
    // SAFETY: the value is not read.
    filter::active() == 0 || unsafe { TW_TRACED.get(&(timer as u64)) }.is_some()
}

/// Under filters: whether a timewait timer that runs out was traced (and forgets it).
#[inline(always)]
fn time_wait_expiry_traced(timer: *const u8) -> bool {
    filter::active() == 0 || TW_TRACED.remove(&(timer as u64)).is_ok()
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    if !is_time_wait(timer) {
        return 0;
    }
    let tw = timer.wrapping_sub(config!(offsets.tw_timer) as usize);
    if let Ok(tuple) = sock::tuple_with::<sock::Untyped>(tw, config!(offsets.tw_sport)) {
        // The namespace keys the exhaustion forecast (each has its own port range) and the
        // namespace filter.
        let netns = sock::netns_with::<sock::Untyped>(tw).ok();
        if filter::active() != 0 && !time_wait_traced(timer, netns, &tuple) {
            Stats::at(slot::TIMER_START).bump(stat::FILTERED);
            return 0;
        }
        let netns = netns.unwrap_or(0);
        emit_time_wait(slot::TIMER_START, time_wait::START, 0, timer, tuple, netns);
    }
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    if !is_time_wait(timer) {
        return 0;
    }
    if !time_wait_cancel_traced(timer) {
        Stats::at(slot::TIMER_CANCEL).bump(stat::FILTERED);
        return 0;
    }
    // A connect() reusing the 4-tuple removes the timewait socket from inside the connecting
    // task, moments after that socket entered SYN_SENT on this CPU.
    let mut flags = 0;
    if let Some(connecting) = CONNECTING.get_ptr(0) {
        // SAFETY: this CPU's slot; only read.
        let connecting = unsafe { &*connecting };
        // SAFETY: plain helper calls with no arguments.
        let (me, now) = unsafe { (bpf_get_current_pid_tgid(), bpf_ktime_get_ns()) };
        if connecting.pid_tgid == me && now.wrapping_sub(connecting.ts_ns) < CONNECT_REUSE_WINDOW_NS
        {
            flags |= time_wait::IN_CONNECT;
        }
    }
    emit_time_wait(
        slot::TIMER_CANCEL,
        time_wait::CANCEL,
        flags,
        timer,
        Tuple::default(),
        0,
    );
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    if is_time_wait(timer) {
        if time_wait_expiry_traced(timer) {
            emit_time_wait(
                slot::TIMER_EXPIRE,
                time_wait::EXPIRE,
                0,
                timer,
                Tuple::default(),
                0,
            );
        } else {
            Stats::at(slot::TIMER_EXPIRE).bump(stat::FILTERED);
        }
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
