//! An empty program on `inet_sock_set_state`: what any hook costs here before it does any
//! work (the benchmark's floor row; never attached by the tracer itself).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}
