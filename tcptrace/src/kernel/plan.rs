//! What to load and attach, decided from the configuration alone: which programs on which
//! tracepoints, how large each map is, what the programs are told at load time. The loader
//! carries a plan out; the plan is tested without root or a kernel.
use std::path::PathBuf;

use tcptrace_common::{
    flow_memory,
    names::{map, program},
};

use crate::model::filter::FilterSpec;

/// Where the kernel keeps flows (`--flow-memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowMemory {
    /// All of it at start.
    Prealloc,
    /// As flows appear.
    OnDemand,
    /// In each socket's own storage (`BPF_MAP_TYPE_SK_STORAGE`).
    Socket,
}

impl FlowMemory {
    /// The programs' number for it (`tcptrace_common::flow_memory`).
    pub fn raw(self) -> u8 {
        match self {
            FlowMemory::OnDemand => flow_memory::ON_DEMAND,
            FlowMemory::Prealloc => flow_memory::PREALLOC,
            FlowMemory::Socket => flow_memory::SOCKET,
        }
    }

    /// The flow table userspace reads and evicts from (`None`: flows live in each socket's
    /// storage, which userspace cannot list).
    pub fn table(self) -> Option<&'static str> {
        match self {
            FlowMemory::OnDemand => Some(map::FLOWS),
            FlowMemory::Prealloc => Some(map::FLOWS_PREALLOC),
            FlowMemory::Socket => None,
        }
    }
}

/// The running kernel's variants of the tracepoints whose arguments changed between
/// releases (read from its BTF by the loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVariants {
    /// `tcp_retransmit_skb` has the `err` argument (Linux 6.17+).
    pub retransmit_err: bool,
    /// `tcp_send_reset` has the `reason` argument (Linux 6.10+).
    pub send_reset_reason: bool,
    /// `kfree_skb` has the `reason` argument (Linux 5.17+).
    pub drop_reason: bool,
}

/// Everything the loader needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPlan {
    /// Kernel BTF to read offsets and tracepoint prototypes from.
    pub btf: PathBuf,
    pub ring_size: u32,
    pub flow_memory: FlowMemory,
    pub max_flows: u32,
    /// A record per transition.
    pub emit_transitions: bool,
    /// A record per retransmitted segment.
    pub emit_retransmits: bool,
    /// Which flows get a record when they close (`tcptrace_common::emit_flow_ends`).
    pub flow_ends: u8,
    /// Keepalive probes are traced (the keepalive timer's hooks).
    pub keepalive_probes: bool,
    /// TIME_WAIT is traced (the timewait timer's hooks).
    pub time_wait: bool,
    /// Dropped TCP packets are traced (`skb:kfree_skb`, on every packet freed with a reason).
    pub drops: bool,
    /// Frees that are rarely drops (NOT_SPECIFIED, QUEUE_PURGE) count too.
    pub all_drop_reasons: bool,
    /// Drop records a CPU sends per second at most (0: no limit).
    pub drop_records_per_s: u64,
    /// connect()/bind() failing for want of a port is traced: connect() on the state
    /// tracepoint, bind() by its syscall hooks (attached by the loader apart from these, as
    /// classic tracepoints).
    pub port_failures: bool,
    pub filter: FilterSpec,
}

impl KernelPlan {
    /// The programs to load, each with its tracepoint, in attach order.
    pub fn programs(&self, kernel: KernelVariants) -> Vec<(&'static str, &'static str)> {
        let mut hooked = vec![
            (program::SET_STATE, "inet_sock_set_state"),
            // Handles the transitions the first misses while interrupted on its CPU.
            (program::SET_STATE_NESTED, "inet_sock_set_state"),
            (
                if kernel.retransmit_err {
                    program::RETRANSMIT_ERR
                } else {
                    program::RETRANSMIT
                },
                "tcp_retransmit_skb",
            ),
            (
                if kernel.send_reset_reason {
                    program::SEND_RESET
                } else {
                    program::SEND_RESET_NO_REASON
                },
                "tcp_send_reset",
            ),
            (program::RECEIVE_RESET, "tcp_receive_reset"),
            // Rare (a handshake's ACK missing): always, counted on the child's flow.
            (program::SYNACK, "tcp_retransmit_synack"),
        ];
        if self.drops && kernel.drop_reason {
            hooked.push((program::DROP, "kfree_skb"));
        }
        // The timers that fire (never the hooks of every timer armed or cancelled): only where
        // they are needed. TIME_WAIT starts on the state tracepoint; this is its end.
        if self.keepalive_probes || self.time_wait {
            hooked.push((program::TIMER_EXPIRE_ENTRY, "timer_expire_entry"));
        }
        if self.keepalive_probes {
            // Keepalive probes, seen around the keepalive timer.
            hooked.push((program::TIMER_EXPIRE_EXIT, "timer_expire_exit"));
        }
        hooked
    }

    /// Each sized map's entries. Only the flow table in use takes --max-flows entries (in
    /// socket storage, the keepalive index does), and filter maps take memory only when their
    /// filter is in force; `time_wait_capacity` is the host's TIME_WAIT ceiling.
    /// `rings`: the event rings CPUs write into (1 to 4).
    pub fn map_sizes(&self, time_wait_capacity: u32, rings: usize) -> Vec<(&'static str, u32)> {
        let sized = |memory: FlowMemory| {
            if self.flow_memory == memory {
                self.max_flows
            } else {
                1
            }
        };
        let tw_sockets = if self.filter.is_empty() {
            1
        } else {
            time_wait_capacity
        };
        let mut sizes: Vec<(&'static str, u32)> = map::EVENT_RINGS
            .into_iter()
            .zip(self.ring_sizes(rings))
            .collect();
        sizes.extend([
            (map::FLOWS, sized(FlowMemory::OnDemand)),
            (map::FLOWS_PREALLOC, sized(FlowMemory::Prealloc)),
            (map::KEEPALIVE_OWNERS, sized(FlowMemory::Socket)),
            (
                map::PORT_FILTER,
                if self.filter.has_ports() { 1 << 16 } else { 1 },
            ),
            // Twice the kernel's ceiling: an LRU map evicts before it is full, and the entries
            // of TIME_WAITs that ended early (reused, killed) stay until evicted.
            (map::TW_TRACED, tw_sockets.saturating_mul(2)),
        ]);
        sizes
    }

    /// Each event ring's size: `--ring-size` shared by the `rings` CPUs write into (one per
    /// CPU up to four), each a power of two of at least a page; a ring no CPU writes into
    /// takes a page.
    pub fn ring_sizes(&self, rings: usize) -> [u32; 4] {
        const PAGE: u32 = 4096;
        let in_use = rings.clamp(1, map::EVENT_RINGS.len());
        let each = (self.ring_size / in_use.next_power_of_two() as u32).max(PAGE);
        std::array::from_fn(|ring| if ring < in_use { each } else { PAGE })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Config};
    use clap::Parser as _;

    fn plan(args: &[&str]) -> KernelPlan {
        let mut argv = vec!["tcptrace"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("valid arguments");
        Config::try_from(cli).expect("valid config").plan()
    }

    const NEW_KERNEL: KernelVariants = KernelVariants {
        retransmit_err: true,
        send_reset_reason: true,
        drop_reason: true,
    };

    fn programs(plan: &KernelPlan, kernel: KernelVariants) -> Vec<&'static str> {
        plan.programs(kernel).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn timer_hooks_are_attached_only_where_a_mode_needs_them() {
        let states = plan(&[]);
        assert!(!states.time_wait && !states.keepalive_probes);
        assert_eq!(
            programs(&states, NEW_KERNEL),
            [
                program::SET_STATE,
                program::SET_STATE_NESTED,
                program::RETRANSMIT_ERR,
                program::SEND_RESET,
                program::RECEIVE_RESET,
                program::SYNACK
            ]
        );
        let flows = programs(&plan(&["flows"]), NEW_KERNEL);
        assert!(
            flows.contains(&program::TIMER_EXPIRE_ENTRY),
            "TIME_WAIT's end: {flows:?}"
        );
        assert!(
            !flows.contains(&program::TIMER_EXPIRE_EXIT),
            "no probes traced"
        );
        let alerts = programs(&plan(&["alerts"]), NEW_KERNEL);
        assert!(alerts.contains(&program::TIMER_EXPIRE_EXIT));
        assert!(
            plan(&["alerts"]).time_wait,
            "alerts trace TIME_WAIT: the exhaustion forecast's alerts"
        );
        assert!(!plan(&["alerts", "--no-time-wait"]).time_wait);
        let no_tw = programs(&plan(&["flows", "--no-time-wait"]), NEW_KERNEL);
        assert!(!no_tw.contains(&program::TIMER_EXPIRE_ENTRY));
    }

    #[test]
    fn the_drop_hook_is_attached_where_drops_are_shown() {
        assert!(programs(&plan(&["flows"]), NEW_KERNEL).contains(&program::DROP));
        let metrics = plan(&["metrics", "--metrics", "127.0.0.1:9595"]);
        assert!(programs(&metrics, NEW_KERNEL).contains(&program::DROP));
        assert!(!programs(&plan(&[]), NEW_KERNEL).contains(&program::DROP));
        let off = programs(&plan(&["flows", "--no-drops"]), NEW_KERNEL);
        assert!(!off.contains(&program::DROP), "{off:?}");
        let old = KernelVariants {
            drop_reason: false,
            ..NEW_KERNEL
        };
        assert!(!programs(&plan(&["flows"]), old).contains(&program::DROP));
    }

    #[test]
    fn metrics_get_every_flows_end_only_when_asked_for_vitals() {
        use tcptrace_common::emit_flow_ends;
        let headless = plan(&["metrics", "--metrics", "127.0.0.1:9595"]);
        assert_eq!(headless.flow_ends, emit_flow_ends::TIME_WAIT);
        let vitals = plan(&["metrics", "--metrics", "127.0.0.1:9595", "--metrics-vitals"]);
        assert_eq!(vitals.flow_ends, emit_flow_ends::ALL);
    }

    #[test]
    fn older_kernels_get_the_older_tracepoint_programs() {
        let old = KernelVariants {
            retransmit_err: false,
            send_reset_reason: false,
            drop_reason: false,
        };
        let names = programs(&plan(&[]), old);
        assert!(
            names.contains(&program::RETRANSMIT) && names.contains(&program::SEND_RESET_NO_REASON)
        );
    }

    #[test]
    fn only_the_flow_store_in_use_and_filters_in_force_take_memory() {
        let sizes = |args: &[&str]| -> std::collections::HashMap<&str, u32> {
            plan(args).map_sizes(131_072, 2).into_iter().collect()
        };
        let default = sizes(&[]);
        assert_eq!(default[map::FLOWS_PREALLOC], 131_072);
        assert_eq!(default[map::FLOWS], 1);
        assert_eq!(default[map::KEEPALIVE_OWNERS], 1);
        assert_eq!(default[map::PORT_FILTER], 1);
        assert_eq!(default[map::TW_TRACED], 2, "no filter: nothing to remember");
        let rings = map::EVENT_RINGS.map(|ring| default[ring]);
        assert_eq!(
            rings,
            [16 << 20, 16 << 20, 4096, 4096],
            "two CPUs share --ring-size"
        );
        let socket = sizes(&["flows", "--flow-memory", "socket", "--max-flows", "5000"]);
        assert_eq!(socket[map::KEEPALIVE_OWNERS], 5000);
        assert_eq!(socket[map::FLOWS_PREALLOC], 1);
        let filtered = sizes(&["flows", "-L", "80", "-p", "1"]);
        assert_eq!(filtered[map::PORT_FILTER], 1 << 16);
        assert_eq!(filtered[map::TW_TRACED], 262_144);
        for (name, _) in plan(&[]).map_sizes(1, 1) {
            assert!(map::ALL.contains(&name), "{name} is a map of the contract");
        }
    }

    #[test]
    fn the_ring_size_is_shared_by_the_rings_cpus_write_into() {
        let ring = |args: &[&str], cpus| plan(args).ring_sizes(cpus);
        assert_eq!(ring(&[], 1), [32 << 20, 4096, 4096, 4096]);
        assert_eq!(ring(&[], 3), [8 << 20, 8 << 20, 8 << 20, 4096]);
        assert_eq!(ring(&[], 64), [8 << 20; 4]);
        assert_eq!(
            ring(&["--ring-size", "4K"], 64),
            [4096; 4],
            "never under a page"
        );
    }

    #[test]
    fn every_name_userspace_uses_is_in_the_built_object() {
        use crate::kernel::loader::EBPF_OBJECT;
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the built object parses");
        for name in map::ALL {
            assert!(object.maps.contains_key(*name), "map {name} in the object");
        }
        for name in program::ALL {
            assert!(
                object.programs.contains_key(*name),
                "program {name} in the object"
            );
        }
        let global = format!("\0{}\0", tcptrace_common::names::CONFIG_GLOBAL);
        assert!(
            EBPF_OBJECT
                .windows(global.len())
                .any(|w| w == global.as_bytes()),
            "the global {} in the object's symbols",
            tcptrace_common::names::CONFIG_GLOBAL
        );
        for name in program::BENCH {
            assert_eq!(
                object.programs.contains_key(*name),
                cfg!(feature = "bench"),
                "benchmark program {name} only in a build with --features bench"
            );
        }
        for name in [map::PROBE_HASH, map::PROBE_RING, map::PROBE_RING_ODD_CPU] {
            assert_eq!(
                object.maps.contains_key(name),
                cfg!(feature = "bench"),
                "benchmark map {name} only in a build with --features bench"
            );
        }
    }

    #[test]
    fn metrics_asks_the_kernel_for_no_per_event_records() {
        let p = plan(&["metrics", "--metrics", "127.0.0.1:0"]);
        assert!(!p.emit_transitions && !p.emit_retransmits);
        assert_eq!(p.flow_ends, tcptrace_common::emit_flow_ends::TIME_WAIT);
        let p = plan(&["metrics", "--metrics", "127.0.0.1:0", "--no-time-wait"]);
        assert_eq!(p.flow_ends, tcptrace_common::emit_flow_ends::NONE);
    }
}
