//! `syscalls:sys_enter_bind` / `sys_exit_bind` (classic tracepoints): a bind() that fails
//! for want of a port, EADDRINUSE (or EADDRNOTAVAIL) — bind is rare, and no other hook shows
//! it. (A connect() that finds no port shows on the state tracepoint: `set_state`.) The entry hooks
//! remember the calling task and its sockaddr pointer in their CPU's slot; the exit hooks
//! return after one compare unless the call failed so, and only then read the address from
//! the caller's memory.
//!
//! Record layouts (checked by userspace against the tracepoints' format files before
//! attaching): the arguments at 16 + 8 × i, the return value at 16.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use tcptrace_common::{port_failure, slot, stat, CallArgs, PortFailureEvent};

use crate::{
    config,
    events::emit,
    maps::{Stats, CALLS},
    owner::current_caller,
    sock,
};

/// Offsets in the syscall tracepoints' records.
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

/// Reads a u64 of the tracepoint's record.
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: the record is the context; offsets below its size (checked by the verifier).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}

#[inline(always)]
fn entered(ctx: &TracePointContext) -> u32 {
    if let Some(slot) = CALLS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a syscall hook is not interrupted by another on its CPU.
        unsafe {
            *slot = CallArgs {
                pid_tgid: bpf_get_current_pid_tgid(),
                sockaddr: field(ctx, ARG1),
                addrlen: field(ctx, ARG2) as u32,
                _pad: 0,
            }
        };
    }
    0
}

#[inline(always)]
fn exited(ctx: &TracePointContext, call: u8) -> u32 {
    let ret = field(ctx, RET) as i64;
    let errno = ret.unsigned_abs() as u32;
    if ret >= 0 || (errno != port_failure::EADDRNOTAVAIL && errno != port_failure::EADDRINUSE) {
        return 0;
    }
    let me = bpf_get_current_pid_tgid();
    // SAFETY: this CPU's slot, copied out.
    let args = CALLS
        .get_ptr(0)
        .map(|slot| unsafe { *slot })
        .filter(|a| a.pid_tgid == me);
    let stats = Stats::at(slot::SYSCALL);
    stats.bump(stat::PORT_FAILURES);
    if args.is_none() {
        stats.bump(stat::CALLS_UNTRACKED);
    }
    // Everything is read before the record is reserved.
    let (family, port, addr) = args.map_or((0, 0, [0u8; 16]), read_sockaddr);
    let netns = current_netns();
    let owner = current_caller();
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(mut record) = emit::<PortFailureEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its kind);
        // every other field is written here, in place.
        unsafe {
            (&raw mut (*e).call).write(call);
            (&raw mut (*e).flags).write(if family == 0 {
                port_failure::NO_ADDRESS
            } else {
                0
            });
            (&raw mut (*e).family).write(family);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).errno).write(errno);
            (&raw mut (*e).pid).write(owner.pid);
            (&raw mut (*e).comm).write(owner.comm);
            (&raw mut (*e).cgroup).write(owner.cgroup);
            (&raw mut (*e).netns).write(netns);
            (&raw mut (*e).port).write(port);
            (&raw mut (*e)._pad0).write(0);
            (&raw mut (*e).addr).write(addr);
        }
        record.submit();
    }
    0
}

/// (family, port in host order, address) of a `sockaddr_in` / `sockaddr_in6` in the caller's
/// memory; family 0 when it cannot be read or is neither.
#[inline(always)]
fn read_sockaddr(args: CallArgs) -> (u16, u16, [u8; 16]) {
    let base = args.sockaddr as *const u8;
    // SAFETY: bpf_probe_read_user checks the user address; a bad one returns an error.
    let head = unsafe { bpf_probe_read_user(base.cast::<[u8; 4]>()) };
    let Ok(head) = head else {
        return (0, 0, [0; 16]);
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut addr = [0u8; 16];
    match family {
        tcptrace_common::family::INET if args.addrlen >= 8 => {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(base.wrapping_add(4).cast::<[u8; 4]>()) } {
                Ok(a) => addr[..4].copy_from_slice(&a),
                Err(_) => return (0, 0, [0; 16]),
            }
        }
        // sockaddr_in6: family, port, flowinfo, then the address at 8.
        tcptrace_common::family::INET6 if args.addrlen >= 24 => {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_user(base.wrapping_add(8).cast::<[u8; 16]>()) } {
                Ok(a) => addr = a,
                Err(_) => return (0, 0, [0; 16]),
            }
        }
        _ => return (0, 0, [0; 16]),
    }
    (family, port, addr)
}

/// The calling task's network namespace (inode), 0 when it cannot be read.
#[inline(always)]
fn current_netns() -> u32 {
    // SAFETY: a plain helper call with no arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(nsproxy) = sock::probe_read::<u64>(task, config!(task_nsproxy)) else {
        return 0;
    };
    let Ok(net) = sock::probe_read::<u64>(nsproxy as *const u8, config!(nsproxy_net_ns)) else {
        return 0;
    };
    sock::probe_read::<u32>(net as *const u8, config!(offsets.net_inum)).unwrap_or(0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    entered(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    exited(&ctx, port_failure::BIND)
}
