//! Names both sides spell the same: the kernel object's maps, programs and global, and the
//! address families. aya looks maps up by name and ignores a misspelt one in
//! `map_max_entries`, so userspace takes every name from here, and a test checks each
//! against the built object (`tcptrace::kernel::loader`'s tests).

/// Address families (`AF_INET`, `AF_INET6`): the same numbers on every Linux.
pub mod family {
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// The maps of the kernel object (each is the name of its `static` in `tcptrace-ebpf`).
pub mod map {
    /// The rings records go into: a CPU writes into ring `cpu % EVENT_RINGS.len()`, so that
    /// CPUs do not share one ring's lock and cache lines (measured: one ring shared by two
    /// CPUs cost 0.25–0.87× the hash probe per record, a ring per CPU 0.20–0.33×).
    pub const EVENT_RINGS: [&str; 4] = ["EVENTS_0", "EVENTS_1", "EVENTS_2", "EVENTS_3"];
    pub const FLOWS: &str = "FLOWS";
    pub const FLOWS_PREALLOC: &str = "FLOWS_PREALLOC";
    pub const FLOWS_SOCKET: &str = "FLOWS_SOCKET";
    pub const KEEPALIVE_OWNERS: &str = "KEEPALIVE_OWNERS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const PORT_FILTER: &str = "PORT_FILTER";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const REMOTE_ADDRS: &str = "REMOTE_ADDRS";
    pub const TW_TRACED: &str = "TW_TRACED";
    pub const COUNTERS: &str = "COUNTERS";
    pub const DURATIONS: &str = "DURATIONS";
    pub const CALLS: &str = "CALLS";
    pub const WORKLOAD_CGROUPS: &str = "WORKLOAD_CGROUPS";
    pub const DROP_REASONS: &str = "DROP_REASONS";
    pub const LEARNED: &str = "LEARNED";
    /// Every map userspace names.
    pub const ALL: &[&str] = &[
        EVENT_RINGS[0],
        EVENT_RINGS[1],
        EVENT_RINGS[2],
        EVENT_RINGS[3],
        FLOWS,
        FLOWS_PREALLOC,
        FLOWS_SOCKET,
        KEEPALIVE_OWNERS,
        LISTENERS,
        PORT_FILTER,
        LOCAL_ADDRS,
        REMOTE_ADDRS,
        TW_TRACED,
        COUNTERS,
        DURATIONS,
        CALLS,
        WORKLOAD_CGROUPS,
        DROP_REASONS,
        LEARNED,
    ];
    /// The benchmark's flow-state probe (`--features bench` only).
    pub const PROBE_HASH: &str = "PROBE_HASH";
    /// The ring probes' rings (`--features bench` only): the shared one, and the odd CPUs'.
    pub const PROBE_RING: &str = "PROBE_RING";
    pub const PROBE_RING_ODD_CPU: &str = "PROBE_RING_ODD_CPU";
}

/// The global userspace writes at load time.
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// The programs (each is the name of its function in `tcptrace-ebpf`).
pub mod program {
    pub const SET_STATE: &str = "inet_sock_set_state";
    pub const SET_STATE_NESTED: &str = "inet_sock_set_state_nested";
    pub const RETRANSMIT: &str = "tcp_retransmit_skb";
    /// `tcp:tcp_retransmit_skb` with the `err` argument (Linux 6.17+).
    pub const RETRANSMIT_ERR: &str = "tcp_retransmit_skb_err";
    pub const SEND_RESET: &str = "tcp_send_reset";
    /// `tcp:tcp_send_reset` without a reason (before Linux 6.10).
    pub const SEND_RESET_NO_REASON: &str = "tcp_send_reset_noreason";
    pub const RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const TIMER_EXPIRE_ENTRY: &str = "timer_expire_entry";
    pub const TIMER_EXPIRE_EXIT: &str = "timer_expire_exit";
    /// A second program on `inet_sock_set_state`, attached only while the timer handlers'
    /// addresses are learnt (when /proc/kallsyms hides them).
    pub const LEARN_TIMERS: &str = "learn_timers";
    /// `skb:kfree_skb` (its `reason`; TCP packets only).
    pub const DROP: &str = "kfree_skb";
    /// `tcp:tcp_retransmit_synack`.
    pub const SYNACK: &str = "tcp_retransmit_synack";
    /// `syscalls:sys_enter_bind` / `sys_exit_bind` (classic tracepoints: tracefs). connect()
    /// failures need no syscall hook: they show on the state tracepoint.
    pub const ENTER_BIND: &str = "sys_enter_bind";
    pub const EXIT_BIND: &str = "sys_exit_bind";
    /// The syscall hooks, in attach order (exits first: a call entered while the hooks are
    /// being attached is then simply not seen failing).
    pub const SYSCALLS: &[&str] = &[EXIT_BIND, ENTER_BIND];
    /// Every program the tracer may attach.
    pub const ALL: &[&str] = &[
        SET_STATE,
        SET_STATE_NESTED,
        RETRANSMIT,
        RETRANSMIT_ERR,
        SEND_RESET,
        SEND_RESET_NO_REASON,
        RECEIVE_RESET,
        TIMER_EXPIRE_ENTRY,
        TIMER_EXPIRE_EXIT,
        LEARN_TIMERS,
        DROP,
        SYNACK,
        ENTER_BIND,
        EXIT_BIND,
    ];
    /// The benchmark's programs (`--features bench` only): an empty one, flow state in
    /// socket storage or in a hash, and the hash's with a record per transition into one
    /// ring or a ring per CPU.
    pub const BENCH: &[&str] = &[
        "inet_sock_set_state_floor",
        "inet_sock_set_state_sk_storage",
        "inet_sock_set_state_hash",
        "inet_sock_set_state_hash_ring",
        "inet_sock_set_state_hash_ring_per_cpu",
    ];
}
