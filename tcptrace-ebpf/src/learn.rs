//! `learn_timers`, a second program on `inet_sock_set_state`, attached only where
//! /proc/kallsyms hides kernel addresses (no `CAP_SYSLOG`): an established TCP socket's
//! `skc_prot` is `&tcp_prot` or `&tcpv6_prot`, what the timer hooks then recognise a timewait
//! socket by (and so learn `tw_timer_handler`). Userspace detaches it once that is learnt.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{family, learn, tcp_state};

use crate::{config, maps::LEARNED, sock};

const IPPROTO_TCP: u16 = 6;

/// Writes `value` into `slot` of `LEARNED` once (a learnt address does not change).
#[inline(always)]
pub fn remember(slot: u32, value: u64) {
    if value == 0 {
        return;
    }
    if let Some(entry) = LEARNED.get_ptr_mut(slot) {
        // SAFETY: an array slot; racing writers write the same value.
        unsafe {
            if *entry == 0 {
                *entry = value;
            }
        }
    }
}

/// What `slot` of `LEARNED` holds (0: not learnt yet).
#[inline(always)]
pub fn learned(slot: u32) -> u64 {
    LEARNED.get(slot).copied().unwrap_or(0)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn learn_timers(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let new_state: i32 = ctx.arg(2);
    // An established TCP socket's protocol (`&tcp_prot`, `&tcpv6_prot`).
    if new_state != i32::from(tcp_state::ESTABLISHED) || sock::protocol(sk) != Ok(IPPROTO_TCP) {
        return 0;
    }
    // A plain memory read, the same on every kernel's verifier.
    let Ok(prot) = sock::probe_read::<u64>(sk, config!(offsets.prot)) else {
        return 0;
    };
    let slot = match sock::read::<u16>(sk, config!(offsets.family)) {
        Ok(family::INET) => learn::TCP_PROT,
        Ok(family::INET6) => learn::TCPV6_PROT,
        _ => return 0,
    };
    remember(slot, prot);
    0
}
