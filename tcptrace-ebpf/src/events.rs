//! The records' way out: the rings userspace reads (one per group of CPUs) and the one way a
//! program sends a record — reserved in its CPU's ring, written in place, submitted.
#[cfg(not(feature = "one-ring"))]
use aya_ebpf::helpers::bpf_get_smp_processor_id;
use aya_ebpf::{
    macros::map,
    maps::{ring_buf::RingBufEntry, RingBuf},
};
use tcptrace_common::{stat, Record};

use crate::{config, maps::Stats};

pub const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Records for userspace, a ring for each group of CPUs (`tcptrace_common::map::EVENT_RINGS`:
/// CPU `n` writes into ring `n & event_ring_mask`); the loader sizes the rings in use from
/// `--ring-size` and the others to a page.
#[map]
pub static EVENTS_0: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map]
pub static EVENTS_1: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map]
pub static EVENTS_2: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map]
pub static EVENTS_3: RingBuf = RingBuf::with_byte_size(4096, 0);

/// The ring of the CPU this program runs on: ring `cpu & mask`, the loader's mask a constant
/// to the verifier (it checks only the rings in use).
#[cfg(not(feature = "one-ring"))]
#[inline(always)]
fn events_of_this_cpu() -> &'static RingBuf {
    // SAFETY: a plain helper call.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    match cpu & config!(event_ring_mask) {
        0 => &EVENTS_0,
        1 => &EVENTS_1,
        2 => &EVENTS_2,
        _ => &EVENTS_3,
    }
}

/// The one ring, in the object built for kernels whose verifier cannot take the choice within
/// its million-instruction budget (Linux 6.1: the state program was at 0.84–0.91 million
/// before, and went over with it, even with the choice a constant).
#[cfg(feature = "one-ring")]
#[inline(always)]
fn events_of_this_cpu() -> &'static RingBuf {
    &EVENTS_0
}

/// A record reserved in the ring with its kind written: the caller writes every other field
/// in place (nothing fallible: everything is read before), then submits.
pub struct Reserved<T: 'static> {
    entry: RingBufEntry<T>,
    wake: u64,
}

impl<T: 'static> Reserved<T> {
    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.entry.as_mut_ptr()
    }

    #[inline(always)]
    pub fn submit(self) {
        self.entry.submit(self.wake);
    }
}

/// Reserves one record of type `T` in this CPU's ring and writes its kind; a full ring is counted in
/// `T::LOST` on this CPU (and `None` returned).
#[inline(always)]
pub fn emit<T: Record + 'static>(stats: Stats) -> Option<Reserved<T>> {
    let wake = submit_flags(stats);
    match events_of_this_cpu().reserve::<T>(0) {
        Some(mut entry) => {
            stats.bump(stat::SUBMITTED);
            // SAFETY: the reserved slot is ours alone until submit, and every record's first
            // field is its `u32` kind (asserted in tcptrace-common).
            unsafe { entry.as_mut_ptr().cast::<u32>().write(T::KIND) };
            Some(Reserved { entry, wake })
        }
        None => {
            stats.bump(T::LOST);
            None
        }
    }
}

/// Submit flags: no wakeup except every `wakeup_every` records on this CPU (batched
/// wakeups; userspace also polls on a bounded interval). A per-CPU count, not a
/// `bpf_ringbuf_query` helper call per record.
#[inline(always)]
pub fn submit_flags(stats: Stats) -> u64 {
    let every = config!(wakeup_every);
    if every <= 1 || (stats.value(stat::SUBMITTED) + 1) % every == 0 {
        stats.bump(stat::FORCED_WAKEUPS);
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
