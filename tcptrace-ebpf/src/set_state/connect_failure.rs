//! A connect() that found no local port, seen on the state tracepoint itself: tcp_v4_connect
//! and tcp_v6_connect set SYN_SENT before they look for a port and CLOSE on the failure path,
//! in the caller's context, so `SYN_SENT -> CLOSE` with no local port yet (`skc_num` 0) is
//! exactly a connect() failing with EADDRNOTAVAIL (every other SYN_SENT -> CLOSE has its port).
//! No syscall hook needed; the same `PortFailureEvent` as bind()'s hooks send.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::BtfTracePointContext};
use tcptrace_common::{port_failure, stat, PortFailureEvent};

use crate::{events::emit, maps::Stats, owner::current_caller, sock};

/// Sends the failure when `sk` has no local port (called for SYN_SENT -> CLOSE only). Out of
/// line: its own stack frame, off the transition handler's.
#[inline(never)]
pub fn check(ctx: &BtfTracePointContext, slot: u32) {
    let sk: *const u8 = ctx.arg(0);
    if sock::protocol(sk) != Ok(sock::IPPROTO_TCP) || sock::local_port(sk) != Ok(0) {
        return;
    }
    let Ok(tuple) = sock::tuple(sk) else {
        return;
    };
    let netns = sock::netns(sk).unwrap_or(0);
    let owner = current_caller();
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = Stats::at(slot);
    stats.bump(stat::PORT_FAILURES);
    if let Some(mut record) = emit::<PortFailureEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its kind);
        // every other field is written here, in place.
        unsafe {
            (&raw mut (*e).call).write(port_failure::CONNECT);
            (&raw mut (*e).flags).write(0);
            (&raw mut (*e).family).write(tuple.family);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).errno).write(port_failure::EADDRNOTAVAIL);
            (&raw mut (*e).pid).write(owner.pid);
            (&raw mut (*e).comm).write(owner.comm);
            (&raw mut (*e).cgroup).write(owner.cgroup);
            (&raw mut (*e).netns).write(netns);
            (&raw mut (*e).port).write(tuple.dport);
            (&raw mut (*e)._pad0).write(0);
            (&raw mut (*e).addr).write(tuple.daddr);
        }
        record.submit();
    }
}
