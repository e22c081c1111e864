//! What keeping a flow's state costs per transition, by where it is kept (the benchmark's
//! flow-state rows; never attached by the tracer itself): socket-local storage
//! (`BPF_MAP_TYPE_SK_STORAGE`, created at a socket's first transition, freed with it) against
//! a global hash keyed by the socket's address (looked up, inserted, updated, deleted at
//! CLOSE: the tracer's design). Each keeps the same small state: the last four transition
//! times, a count and the state.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::{bpf_ktime_get_ns, generated::bpf_sk_storage_get},
    macros::{btf_map, btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use tcptrace_common::tcp_state;

/// The state both programs keep per socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProbeFlow {
    pub entered_ns: [u64; 4],
    pub count: u32,
    pub state: u32,
}

#[btf_map]
static PROBE_SK_STORAGE: SkStorage<ProbeFlow> = SkStorage::new();

/// Preallocated (the fastest hash); sized by `tcptrace hook-floor --variant hash` (1 entry
/// otherwise, so that loading the tracer does not allocate it).
#[map]
static PROBE_HASH: HashMap<u64, ProbeFlow> = HashMap::with_max_entries(1, 0);

#[inline(always)]
fn enter(flow: &mut ProbeFlow, new: i32, now: u64) {
    flow.entered_ns[(flow.count & 3) as usize] = now;
    flow.count = flow.count.wrapping_add(1);
    flow.state = new as u32;
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_sk_storage(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    let new: i32 = ctx.arg(2);
    // SAFETY: `sk` is the tracepoint's typed socket argument (the verifier checks it is a
    // socket); the helper returns this socket's storage, created zeroed if absent, or null.
    let flow = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&PROBE_SK_STORAGE).cast_mut().cast(),
            sk,
            core::ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<ProbeFlow>();
    if !flow.is_null() {
        // SAFETY: a plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: the socket's storage, valid for this run; its transitions are serialised by
        // the socket's lock.
        enter(unsafe { &mut *flow }, new, now);
    }
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_hash(ctx: BtfTracePointContext) -> i32 {
    keep_in_hash(&ctx);
    0
}

/// The hash probe's work for one transition (also the ring probes'): returns the socket's
/// address (the key), its new state and the time read.
#[inline(always)]
pub fn keep_in_hash(ctx: &BtfTracePointContext) -> (u64, i32, u64) {
    let key: u64 = ctx.arg(0);
    let new: i32 = ctx.arg(2);
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match PROBE_HASH.get_ptr_mut(&key) {
        // SAFETY: a map value, valid for this run.
        Some(flow) => enter(unsafe { &mut *flow }, new, now),
        None => {
            let mut flow = ProbeFlow {
                entered_ns: [0; 4],
                count: 0,
                state: 0,
            };
            enter(&mut flow, new, now);
            let _ = PROBE_HASH.insert(&key, &flow, u64::from(BPF_ANY));
        }
    }
    if new == i32::from(tcp_state::CLOSE) {
        let _ = PROBE_HASH.remove(&key);
    }
    (key, new, now)
}
