//! A TIME_WAIT starts: `FIN_WAIT2`/`CLOSING -> CLOSE` with no error and no reset runs inside
//! `tcp_time_wait()`, just after the timewait socket took the 4-tuple (`CloseFacts::
//! holds_time_wait`), so the state tracepoint gives TIME_WAIT's start: no hook on every timer
//! armed or cancelled. (`tcp_max_tw_buckets` full makes no timewait socket and looks the same
//! here: userspace matches those to the namespace's `TCPTimeWaitOverflow`.)
use aya_ebpf::programs::BtfTracePointContext;
use tcptrace_common::time_wait;

use crate::{
    filter,
    maps::{Stats, TIME_WAIT_STARTS, TW_TRACED},
    sock,
    timers::send_time_wait,
};

/// Sends the start of the TIME_WAIT of the flow that just closed, if the CLOSE path found one
/// follows (`TIME_WAIT_STARTS`: its close time), after the flow's own record (which it
/// joins); under filters, remembered for its expiry. Out of line: its own stack frame,
/// explored once.
#[inline(never)]
pub fn send(ctx: &BtfTracePointContext, slot: u32) {
    let Some(next) = TIME_WAIT_STARTS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's slot of this program, written by this run's CLOSE path.
    let closed_ns = unsafe { core::ptr::replace(next, 0) };
    if closed_ns == 0 {
        return;
    }
    let sk: *const u8 = ctx.arg(0);
    let (Ok(tuple), Ok(netns)) = (sock::tuple(sk), sock::netns(sk)) else {
        return;
    };
    if filter::active() != 0 {
        let _ = TW_TRACED.insert(&filter::time_wait_key(&tuple, netns), &0u8, 0);
    }
    let stats = Stats::at(slot);
    send_time_wait(stats, time_wait::START, closed_ns, sk as u64, tuple, netns);
}
