//! The programs' run-time settings, written by the loader into their read-only data.
use crate::{FilterConfig, SkbOffsets, SockOffsets, TcpSockOffsets, DROP_IGNORE_WORDS};

/// Run-time settings of the kernel programs, written into `.rodata` by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    pub offsets: SockOffsets,
    /// Send a `TimeWaitEvent` START for every flow that hands its 4-tuple to a timewait
    /// socket, and one EXPIRE for every timewait socket whose timer runs out.
    pub emit_time_wait: u8,
    pub _pad0: [u8; 3],
    /// The address of `tcp_keepalive_timer` (from /proc/kallsyms); 0: keepalive probes not
    /// traced.
    pub keepalive_timer_fn: u64,
    /// The address of `tw_timer_handler` (from /proc/kallsyms); 0: learnt at run time
    /// (`learn_symbols`), or TIME_WAIT not traced.
    pub tw_timer_fn: u64,
    /// Every this many records submitted on a CPU, one wakes the reader; the others do not
    /// (the reader also polls on an interval).
    pub wakeup_every: u64,
    /// Send a `TransitionEvent` per transition.
    pub emit_transitions: u8,
    /// Send a `RetransmitEvent` per retransmit.
    pub emit_retransmits: u8,
    /// Send a `KeepaliveProbeEvent` per keepalive probe.
    pub emit_probes: u8,
    /// Where flows are kept: a value of [`crate::flow_memory`].
    pub flow_memory: u8,
    /// Which flows send a `FlowEndEvent` (the kernel counts every flow's close either way).
    pub emit_flow_ends: u8,
    /// The running kernel's `TCP_KEEPALIVE_TIMEOUT` reset reason, or [`crate::NO_RESET_REASON`].
    pub keepalive_reset_reason: u8,
    /// Bits of [`crate::learn`]: the handlers whose address /proc/kallsyms hid, learnt by
    /// the programs from the sockets themselves.
    pub learn_symbols: u8,
    /// Send a `PortFailureEvent` for a connect() that found no local port (seen on the
    /// state tracepoint: `SYN_SENT -> CLOSE` with no port yet).
    pub emit_connect_failures: u8,
    pub filter: FilterConfig,
    /// `task_struct.nsproxy` and `nsproxy.net_ns` (pointers): the calling task's network
    /// namespace, for the syscall hooks.
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    /// `tcp_sock` offsets for a flow's vitals at CLOSE.
    pub tcp: TcpSockOffsets,
    /// `sk_buff` offsets for the drop hook.
    pub skb: SkbOffsets,
    /// Drop reasons (`enum skb_drop_reason` below `DROP_REASON_SLOTS`) the drop hook leaves at its first
    /// compare, one bit each: frees that are not drops worth showing (`QUEUE_PURGE`, a closed
    /// socket's queue, about once per connection).
    pub drop_ignore: [u64; DROP_IGNORE_WORDS],
    /// Drop records a CPU sends per second at most (0: no limit); the drops beyond are counted
    /// (by reason, and as `stat::DROPS_UNSENT`), not sent.
    pub drop_records_per_s: u64,
    /// A CPU writes its records into ring `cpu & event_ring_mask` (`map::EVENT_RINGS`): 0, one
    /// ring for all; 1, two; 3, four.
    pub event_ring_mask: u64,
}
const _: () = assert!(
    core::mem::size_of::<ProgramConfig>() == 124 + 4 + 24 + 8 + 144 + 8 + 32 + 64 + 32 + 8 + 8
);

/// What the programs learn at run time where /proc/kallsyms hides kernel addresses (no
/// `CAP_SYSLOG`): bits of [`ProgramConfig::learn_symbols`], and the slots of the `LEARNED`
/// array they fill.
pub mod learn {
    /// `tw_timer_handler`: the function of the first timer whose timewait socket is TCP's
    /// (its `skc_prot` one of the two below, read by the `learn_timers` program from
    /// established sockets) and in TIME_WAIT. (`tcp_keepalive_timer` is not learnt: on some
    /// kernels an established socket's `sk_timer` serves another handler.)
    pub const TIME_WAIT: u8 = 1 << 0;
    /// Slots of `LEARNED`.
    pub const TW_FN: u32 = 0;
    /// `&tcp_prot` and `&tcpv6_prot`, read from sockets' `skc_prot`.
    pub const TCP_PROT: u32 = 1;
    pub const TCPV6_PROT: u32 = 2;
    pub const SLOTS: u32 = 3;
}
