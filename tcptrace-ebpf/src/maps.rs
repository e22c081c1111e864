//! Maps, counters and the loader-written configuration shared by every hook.
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::{btf_map, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use tcptrace_common::{
    duration_bucket, flow_memory, slot, tcp_state, AddrKey, CallArgs, ConntrackEntry, Counters,
    DropBudget, DropCounts, DurationHistogram, FilterConfig, FlowState, ListenerKey, Owner,
    ProgramConfig, TimeWaitKey, TimerEntry, CLOSE_SLOTS, DURATION_BUCKETS, DURATION_ENTRIES,
    FILTER_SLOTS, STAT_SLOTS, TRANSITION_SLOTS,
};

/// `BPF_F_NO_PREALLOC`: flow-table memory grows with the flows actually tracked.
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_NOEXIST: u64 = 1;

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
        err: 0,
        sk_flags: 0,
        keepopen_bit: 0,
        probes_out: 0,
        user_timeout: 0,
        keepalive_time: 0,
        keepalive_intvl: 0,
        keepalive_probes: 0,
        rcv_tstamp: 0,
        sk_timer: 0,
        timer_function: 0,
        tw_timer: 0,
        tw_sport: 0,
        sk_cgroup: 0,
        cgroup_kn: 0,
        kernfs_id: 0,
        cgroup_parent: 0,
        css_cgroup: 0,
        prot: 0,
    },
    // A marker no other constant carries: with an all-zero initializer, LLVM merged an
    // identical all-zero constant of the same size (FlowState::EMPTY, 120 bytes) into this
    // static, so flows were initialised from the loader-patched configuration.
    emit_time_wait: 0,
    _pad0: CONFIG_MARKER,
    keepalive_timer_fn: 0,
    tw_timer_fn: 0,
    wakeup_every: 1,
    emit_transitions: 0,
    emit_retransmits: 0,
    emit_probes: 0,
    flow_memory: 0,
    emit_flow_ends: 0,
    keepalive_reset_reason: tcptrace_common::NO_RESET_REASON,
    learn_symbols: 0,
    emit_connect_failures: 0,
    filter: FilterConfig {
        active: 0,
        family: 0,
        pid_count: 0,
        netns_count: 0,
        cgroup_count: 0,
        _pad: [0; 7],
        pids: [0; FILTER_SLOTS],
        netns: [0; FILTER_SLOTS],
        cgroups: [0; FILTER_SLOTS],
    },
    task_nsproxy: 0,
    nsproxy_net_ns: 0,
    tcp: tcptrace_common::TcpSockOffsets {
        bytes_acked: 0,
        bytes_received: 0,
        segs_in: 0,
        segs_out: 0,
        srtt_us: 0,
        mdev_us: 0,
        rtt_min: 0,
        total_retrans: 0,
    },
    skb: tcptrace_common::SkbOffsets {
        sk: 0,
        head: 0,
        network_header: 0,
        protocol: 0,
        dev: 0,
        dev_net: 0,
        nfct: 0,
        ct_tuplehash: 0,
        ct_hash_size: 0,
        ct_hash_tuple: 0,
        ct_status: 0,
        ct_src_addr: 0,
        ct_src_port: 0,
        ct_dst_addr: 0,
        ct_dst_port: 0,
        _pad: 0,
    },
    drop_ignore: [0; 4],
    drop_records_per_s: 0,
    event_ring_mask: 0,
};

const CONFIG_MARKER: [u8; 3] = *b"tcT";

/// Reads one field of [`CONFIG`] (volatile, so that the loader-written value is used rather
/// than the compiled-in default).
#[macro_export]
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: a plain read of an initialised static of integers.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field).+) }
    };
}

/// The last connect()/bind() entered on each CPU (its task and sockaddr), read only if the
/// call fails for want of a port. A failure for want of a port is synchronous — the call
/// does not sleep between entry and exit — so the CPU's slot still holds it (a plain
/// per-CPU write at entry, not a hash insert per connect()).
#[map]
pub static CALLS: PerCpuArray<CallArgs> = PerCpuArray::with_max_entries(1, 0);

/// Kernel addresses learnt at run time where /proc/kallsyms hides them (slots of
/// `tcptrace_common::learn`); userspace reads them, and detaches the learner once it has
/// what it needs.
#[map]
pub static LEARNED: Array<u64> = Array::with_max_entries(tcptrace_common::learn::SLOTS, 0);

/// Per-socket lifecycle, keyed by the socket's kernel address; removed at CLOSE.
/// The size is set by the loader (`--max-flows`).
#[map]
pub static FLOWS: HashMap<u64, FlowState> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

/// The same table, preallocated (`--flow-memory prealloc`): no allocation when a flow is
/// first seen. The loader sizes the one in use and shrinks the others to one entry.
#[map]
pub static FLOWS_PREALLOC: HashMap<u64, FlowState> = HashMap::with_max_entries(1, 0);

/// Per-socket lifecycle in the socket's own storage (`--flow-memory socket`): created at the
/// socket's first transition, deleted at CLOSE, freed with the socket in any case.
#[btf_map]
pub static FLOWS_SOCKET: SkStorage<FlowState> = SkStorage::new();

/// Flows kept in socket-local storage whose socket had SO_KEEPALIVE on when it became
/// ESTABLISHED: their owner, by the socket's address, for the keepalive-timer hook (which
/// reaches the socket from its timer, an address `bpf_sk_storage_get` does not take). An
/// entry with pid 0 is a traced flow whose owner is unknown. Removed at CLOSE; sized by the
/// loader (one entry unless flows live in socket storage).
#[map]
pub static KEEPALIVE_OWNERS: HashMap<u64, Owner> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// The flow table in use (a constant to the verifier, which prunes the other branches).
pub struct FlowTable;
pub static FLOW_TABLE: FlowTable = FlowTable;

impl FlowTable {
    #[inline(always)]
    fn memory() -> u8 {
        config!(flow_memory)
    }

    /// Whether flows live in socket-local storage.
    #[inline(always)]
    pub fn in_sockets() -> bool {
        Self::memory() == flow_memory::SOCKET
    }

    /// The socket's storage: `init` copied into it when it is created (`create`).
    #[inline(always)]
    fn storage(sk: *const u8, init: *const FlowState, create: bool) -> Option<*mut FlowState> {
        let flags = if create {
            u64::from(BPF_SK_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: `sk` is a tracepoint's BTF-typed socket (the verifier checks it); `init`
        // is null or a map value of the storage's value size. The helper returns the socket's
        // storage (valid for this run) or null.
        let flow = unsafe {
            bpf_sk_storage_get(
                core::ptr::from_ref(&FLOWS_SOCKET).cast_mut().cast(),
                sk.cast_mut().cast(),
                init.cast_mut().cast(),
                flags,
            )
        };
        (!flow.is_null()).then_some(flow.cast::<FlowState>())
    }

    /// The flow of a tracepoint's BTF-typed socket `sk`.
    #[inline(always)]
    pub fn get_ptr_mut(&self, sk: *const u8) -> Option<*mut FlowState> {
        match Self::memory() {
            flow_memory::SOCKET => Self::storage(sk, core::ptr::null(), false),
            flow_memory::PREALLOC => FLOWS_PREALLOC.get_ptr_mut(&(sk as u64)),
            _ => FLOWS.get_ptr_mut(&(sk as u64)),
        }
    }

    /// The flow of a socket known only by its address (reached from a timer): only a hash
    /// table can be searched by it.
    #[inline(always)]
    pub fn get_by_address(&self, key: u64) -> Option<*mut FlowState> {
        match Self::memory() {
            flow_memory::SOCKET => None,
            flow_memory::PREALLOC => FLOWS_PREALLOC.get_ptr_mut(&key),
            _ => FLOWS.get_ptr_mut(&key),
        }
    }

    /// Starts tracking `sk` with `value` (a map value: this CPU's scratch flow). Fails when
    /// the table is full (or the socket's storage cannot be allocated).
    #[inline(always)]
    pub fn insert(&self, sk: *const u8, value: &FlowState) -> bool {
        match Self::memory() {
            flow_memory::SOCKET => Self::storage(sk, value, true).is_some(),
            flow_memory::PREALLOC => FLOWS_PREALLOC
                .insert(&(sk as u64), value, BPF_NOEXIST)
                .is_ok(),
            _ => FLOWS.insert(&(sk as u64), value, BPF_NOEXIST).is_ok(),
        }
    }

    #[inline(always)]
    pub fn remove(&self, sk: *const u8) -> bool {
        match Self::memory() {
            flow_memory::SOCKET => {
                // SAFETY: as in `storage`.
                unsafe {
                    bpf_sk_storage_delete(
                        core::ptr::from_ref(&FLOWS_SOCKET).cast_mut().cast(),
                        sk.cast_mut().cast(),
                    ) == 0
                }
            }
            flow_memory::PREALLOC => FLOWS_PREALLOC.remove(&(sk as u64)).is_ok(),
            _ => FLOWS.remove(&(sk as u64)).is_ok(),
        }
    }
}

/// Owners of listening sockets, so that accepted children (created in softirq) get the
/// listener's process.
#[map]
pub static LISTENERS: HashMap<ListenerKey, Owner> =
    HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// Port filters: one byte per port (host order), bits of `port_bits`. Sized to one entry by
/// the loader when no port filter is in force.
#[map]
pub static PORT_FILTER: Array<u8> = Array::with_max_entries(65_536, 0);

/// Address filters (CIDRs), IPv4 stored IPv4-mapped; the value is unused.
#[map]
pub static LOCAL_ADDRS: LpmTrie<AddrKey, u8> = LpmTrie::with_max_entries(1_024, 0);
#[map]
pub static REMOTE_ADDRS: LpmTrie<AddrKey, u8> = LpmTrie::with_max_entries(1_024, 0);

/// The cgroups of the filtered workloads (`--pod`, `--namespace`, `--container`), kept up to
/// date by userspace as pods come and go; the value is unused.
#[map]
pub static WORKLOAD_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4_096, 0);

/// Where an address-trie key is built (per CPU and per program: not on the stack).
#[map]
pub static FILTER_KEY: PerCpuArray<Key<AddrKey>> = PerCpuArray::with_max_entries(slot::COUNT, 0);

/// Timewait sockets of traced flows while filters are in force, by 4-tuple and namespace:
/// their expiry is sent only where their start was. Sized by the loader.
#[map]
pub static TW_TRACED: LruHashMap<TimeWaitKey, u8> = LruHashMap::with_max_entries(262_144, 0);

/// Scratch space for a flow seen for the first time, before it is inserted into `FLOWS`
/// (a `FlowState` is too large for the 512-byte stack next to everything else); one entry
/// per program that builds flows (see `slot`).
#[map]
pub static SCRATCH: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(slot::SCRATCH, 0);

/// The close time of a flow whose TIME_WAIT start is to be sent (0: none), from the CLOSE
/// path to the handler that sends it, per CPU and program (see `slot`).
#[map]
pub static TIME_WAIT_STARTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(slot::SCRATCH, 0);

/// Where a listener's owner is built before it goes into `LISTENERS` (per CPU and program).
#[map]
pub static OWNER_SCRATCH: PerCpuArray<Owner> = PerCpuArray::with_max_entries(slot::SCRATCH, 0);

/// Set while the main `inet_sock_set_state` program runs on this CPU: a transition arriving
/// meanwhile (a softirq interrupting it) is skipped by the kernel for that program and
/// handled by the second one, which runs only then.
#[map]
pub static SET_STATE_RUNNING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A dropped packet's conntrack entry, read here (not on the stack) before its record is
/// reserved.
#[map]
pub static CONNTRACK_SCRATCH: PerCpuArray<ConntrackEntry> = PerCpuArray::with_max_entries(1, 0);

/// What `timer_expire_entry` saw of a keepalive timer, for `timer_expire_exit`.
#[map]
pub static TIMER_ENTRY: PerCpuArray<TimerEntry> = PerCpuArray::with_max_entries(1, 0);

/// Drops by the kernel's reason, per CPU: exact, whatever was sent.
#[map]
pub static DROP_REASONS: PerCpuArray<DropCounts> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's drop records in the current second.
#[map]
pub static DROP_BUDGET: PerCpuArray<DropBudget> = PerCpuArray::with_max_entries(1, 0);

/// Every counter, per CPU and per program (see `tcptrace_common::Counters` and `slot`).
#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(slot::COUNT, 0);

/// This CPU's counters for one program, looked up once per event.
#[derive(Clone, Copy)]
pub struct Stats(*mut Counters);

impl Stats {
    /// The counters of the program whose `slot` this is.
    #[inline(always)]
    pub fn at(slot: u32) -> Stats {
        Stats(
            COUNTERS
                .get_ptr_mut(slot & (slot::COUNT - 1))
                .unwrap_or(core::ptr::null_mut()),
        )
    }

    /// Adds one to a counter; returns its previous value on this CPU.
    #[inline(always)]
    pub fn bump(self, index: u32) -> u64 {
        if self.0.is_null() {
            return 0;
        }
        let slot = index as usize & (STAT_SLOTS - 1);
        // SAFETY: a per-CPU value, written only by this CPU with preemption disabled (the
        // program runs with migration disabled); the index is masked into the array.
        unsafe {
            let counter = &mut (*self.0).stats[slot];
            let previous = *counter;
            *counter = previous + 1;
            previous
        }
    }

    /// Adds `n` to a counter.
    #[inline(always)]
    pub fn add(self, index: u32, n: u64) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: as in `bump`.
        unsafe { (*self.0).stats[index as usize & (STAT_SLOTS - 1)] += n };
    }

    /// A counter's value on this CPU.
    #[inline(always)]
    pub fn value(self, index: u32) -> u64 {
        if self.0.is_null() {
            return 0;
        }
        // SAFETY: as in `bump`; a read.
        unsafe { (*self.0).stats[index as usize & (STAT_SLOTS - 1)] }
    }

    #[inline(always)]
    pub fn transition(self, old: u8, new: u8) {
        if self.0.is_null() {
            return;
        }
        let slot = tcptrace_common::transition_slot(old, new) & (TRANSITION_SLOTS as usize - 1);
        // SAFETY: as in `bump`.
        unsafe { (*self.0).transitions[slot] += 1 };
    }

    /// A flow reached CLOSE: its `close_cause` and `close_side`.
    #[inline(always)]
    pub fn closed(self, cause: u8, side: u8) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: as in `bump`; the indices are masked into the arrays.
        unsafe {
            (*self.0).closes[usize::from(cause) & (CLOSE_SLOTS - 1)] += 1;
            (*self.0).sides[usize::from(side) & (CLOSE_SLOTS - 1)] += 1;
        }
    }

    /// A segment was retransmitted in `state`.
    #[inline(always)]
    pub fn retransmit_in(self, state: u8) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: as in `bump`; the index is masked into the array.
        unsafe {
            (*self.0).rtx_by_state[usize::from(state) & (tcp_state::LIMIT as usize - 1)] += 1
        };
    }
}

/// How long flows held each state, per CPU: one histogram per (program, state), so that a
/// program interrupted by the other on its CPU never has its update lost.
#[map]
pub static DURATIONS: PerCpuArray<DurationHistogram> =
    PerCpuArray::with_max_entries(DURATION_ENTRIES, 0);

/// Counts `ns` held in `state` into this CPU's histogram for the program whose `slot` this is
/// (the two `inet_sock_set_state` programs).
#[inline(always)]
pub fn observe_duration(slot: u32, state: u8, ns: u64) {
    let index = (slot & 1) * u32::from(tcp_state::LIMIT)
        + (u32::from(state) & (u32::from(tcp_state::LIMIT) - 1));
    if let Some(h) = DURATIONS.get_ptr_mut(index) {
        let bucket = duration_bucket(ns) & (DURATION_BUCKETS - 1);
        // SAFETY: this CPU's value, written only by this program on this CPU (the kernel
        // never runs one program twice at once on a CPU); the index is masked.
        unsafe {
            (*h).buckets[bucket] += 1;
            (*h).sum_ns += ns;
            if ns > (*h).max_ns {
                (*h).max_ns = ns;
            }
        }
    }
}

/// This CPU's scratch flow for the program whose `slot` this is.
#[inline(always)]
pub fn scratch(slot: u32) -> Option<*mut FlowState> {
    SCRATCH.get_ptr_mut(slot & (slot::SCRATCH - 1))
}
