//! What a record per transition costs beside the hash probe (the benchmark's ring-probe rows;
//! never attached by the tracer itself): the hash probe's work and then one 104-byte record
//! (a `TransitionEvent`'s size) reserved, written in full and submitted without a wakeup —
//! into one ring shared by every CPU (the tracer's design), or into the ring of the CPU it
//! runs on (two rings, chosen by the CPU's parity: one per CPU on a 2-CPU machine).
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};

use crate::{events::BPF_RB_NO_WAKEUP, storage_probe::keep_in_hash};

/// A record of a transition's size: its time, socket and new state, the rest zeroed.
#[repr(C)]
pub struct ProbeRecord {
    pub kind: u32,
    pub state: u32,
    pub ts_ns: u64,
    pub key: u64,
    pub rest: [u64; 10],
}

const _: () = assert!(core::mem::size_of::<ProbeRecord>() == 104);

/// Sized by `tcptrace hook-floor --variant hash-ring*` (one page otherwise, so that loading
/// the tracer allocates next to nothing).
#[map]
static PROBE_RING: RingBuf = RingBuf::with_byte_size(4096, 0);

#[map]
static PROBE_RING_ODD_CPU: RingBuf = RingBuf::with_byte_size(4096, 0);

#[inline(always)]
fn send(ring: &RingBuf, key: u64, new: i32, now: u64) {
    if let Some(mut entry) = ring.reserve::<ProbeRecord>(0) {
        let e = entry.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit; every field is written.
        unsafe {
            (&raw mut (*e).kind).write(1);
            (&raw mut (*e).state).write(new as u32);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).key).write(key);
            (&raw mut (*e).rest).write([0; 10]);
        }
        entry.submit(BPF_RB_NO_WAKEUP);
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_hash_ring(ctx: BtfTracePointContext) -> i32 {
    let (key, new, now) = keep_in_hash(&ctx);
    send(&PROBE_RING, key, new, now);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_hash_ring_per_cpu(ctx: BtfTracePointContext) -> i32 {
    let (key, new, now) = keep_in_hash(&ctx);
    // SAFETY: a plain helper call.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu & 1 == 0 {
        send(&PROBE_RING, key, new, now);
    } else {
        send(&PROBE_RING_ODD_CPU, key, new, now);
    }
    0
}
