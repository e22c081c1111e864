//! Maps, counters and the loader-written configuration shared by every hook.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use tcptrace_common::{
    stat, tcp_state, FlowState, ListenerKey, Owner, ProgramConfig, TRANSITION_SLOTS,
};

/// `BPF_F_NO_PREALLOC`: flow-table memory grows with the flows actually tracked.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Written by userspace before load (offsets from BTF, output switches). Read field by field
/// with [`config!`] so that the 64-byte struct is never copied onto the 512-byte stack.
#[unsafe(no_mangle)]
pub static CONFIG: ProgramConfig = ProgramConfig {
    offsets: tcptrace_common::SockOffsets {
        family: 0,
        protocol: 0,
        state: 0,
        dport: 0,
        sport: 0,
        num: 0,
        daddr: 0,
        saddr: 0,
        v6_daddr: 0,
        v6_saddr: 0,
        net: 0,
        net_inum: 0,
    },
    wakeup_bytes: 0,
    emit_transitions: 0,
    emit_retransmits: 0,
    _pad: [0; 6],
};

/// Reads one field of [`CONFIG`] (volatile, so that the loader-written value is used rather
/// than the compiled-in default).
#[macro_export]
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: a plain read of an initialised static of integers.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field).+) }
    };
}

/// Records for userspace; the size is set by the loader (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-socket lifecycle, keyed by the socket's kernel address; removed at CLOSE.
/// The size is set by the loader (`--max-flows`).
#[map]
pub static FLOWS: HashMap<u64, FlowState> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

/// Owners of listening sockets, so that accepted children (created in softirq) get the
/// listener's process.
#[map]
pub static LISTENERS: HashMap<ListenerKey, Owner> =
    HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// Counters, see `tcptrace_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Transition counts indexed `old * LIMIT + new`.
#[map]
pub static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);

/// Adds one to a counter; returns its previous value on this CPU.
#[inline(always)]
pub fn bump(index: u32) -> u64 {
    match STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption disabled.
        Some(counter) => unsafe {
            let previous = *counter;
            *counter = previous + 1;
            previous
        },
        None => 0,
    }
}

#[inline(always)]
pub fn bump_transition(old: u8, new: u8) {
    let index = (u32::from(old) * u32::from(tcp_state::LIMIT) + u32::from(new)) & 0xff;
    if let Some(counter) = TRANSITIONS.get_ptr_mut(index) {
        // SAFETY: as in `bump`.
        unsafe { *counter += 1 };
    }
}

/// Submit flags: no wakeup unless enough data is pending (batched wakeups; userspace also
/// polls on a bounded interval).
#[inline(always)]
pub fn submit_flags(wakeup_bytes: u64) -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes {
        bump(stat::FORCED_WAKEUPS);
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// The current task as an owner; only meaningful in process context.
#[inline(always)]
pub fn current_owner() -> Owner {
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}
