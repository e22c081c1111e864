//! `tp_btf/tcp_send_reset` and `tp_btf/tcp_receive_reset`: resets, remembered on the flow so
//! that its close cause can say who reset it and, for resets we send, the kernel's reason.
//!
//! `tcp_send_reset(sk, skb, reason)` has carried `enum sk_rst_reason` since Linux 6.10;
//! userspace loads `tcp_send_reset_noreason` on older kernels (the prototype comes from BTF).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{close_flags, FlowState, NO_RESET_REASON};

use crate::maps::FLOW_TABLE;

#[inline(always)]
fn with_flow(sk: *const u8, f: impl FnOnce(&mut FlowState)) {
    if sk.is_null() {
        return;
    }
    if let Some(flow) = FLOW_TABLE.get_ptr_mut(sk) {
        // SAFETY: a map value, valid for this run (RCU); resets are handled under the socket's
        // lock, like its transitions.
        f(unsafe { &mut *flow });
    }
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let reason: u32 = ctx.arg(2);
    with_flow(sk, |flow| {
        flow.close_flags |= close_flags::RESET_SENT;
        // A reason beyond a byte reads as none.
        flow.reset_reason = reason.min(u32::from(NO_RESET_REASON)) as u8;
    });
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_noreason(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    with_flow(sk, |flow| flow.close_flags |= close_flags::RESET_SENT);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    with_flow(sk, |flow| flow.close_flags |= close_flags::RESET_RECEIVED);
    0
}
