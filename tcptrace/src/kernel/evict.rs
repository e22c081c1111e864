//! Bounded memory: when the kernel's flow table nears `--max-flows`, the least recently
//! active flows are evicted (userspace deletes them, so every eviction is counted exactly) to
//! make room for new ones. Flows the kernel could not insert before a pass ran are counted as
//! untracked by the kernel itself.
use tcptrace_common::{stat, FlowState};

use crate::{kernel::plan::FlowMemory, model::counters::KernelCounters};

/// When to evict, and how much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvictor {
    /// Occupancy from which a pass runs.
    high: u64,
    /// Occupancy a pass leaves.
    low: u64,
    /// Flows evicted so far.
    pub evicted: u64,
}

impl FlowEvictor {
    /// The evictor for `config`'s flow table; flows in socket-local storage are never
    /// evicted (no table to fill: each socket's storage is freed with it).
    pub fn for_config(flow_memory: FlowMemory, max_flows: u32) -> Self {
        match flow_memory {
            FlowMemory::Socket => FlowEvictor::never(),
            _ => FlowEvictor::new(max_flows),
        }
    }

    /// An evictor that never evicts.
    pub fn never() -> Self {
        FlowEvictor {
            high: u64::MAX,
            low: u64::MAX - 1,
            evicted: 0,
        }
    }

    /// Evicts from 90% of `max_flows` down to 80%.
    pub fn new(max_flows: u32) -> Self {
        let max = u64::from(max_flows);
        let high = (max - max / 10).max(1);
        let low = (max - max / 5).min(high - 1);
        FlowEvictor {
            high,
            low,
            evicted: 0,
        }
    }

    /// Flows in the kernel's table: inserted by the kernel, minus removed by it at CLOSE, minus
    /// evicted here.
    pub fn occupancy(&self, kernel: &KernelCounters) -> u64 {
        kernel
            .stat(stat::FLOWS_INSERTED)
            .saturating_sub(kernel.stat(stat::FLOWS_REMOVED))
            .saturating_sub(self.evicted)
    }

    /// How many flows a pass should evict now, if any.
    pub fn due(&self, kernel: &KernelCounters) -> Option<usize> {
        let occupancy = self.occupancy(kernel);
        (occupancy >= self.high).then(|| (occupancy - self.low) as usize)
    }
}

/// When a flow last changed state (0: never seen changing).
pub fn last_active(flow: &FlowState) -> u64 {
    flow.entered_ns.iter().copied().max().unwrap_or(0)
}

/// The `n` least recently active of `flows` (keys), oldest first.
pub fn victims(mut flows: Vec<(u64, u64)>, n: usize) -> Vec<u64> {
    flows.sort_unstable_by_key(|&(key, active)| (active, key));
    flows.into_iter().take(n).map(|(key, _)| key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(inserted: u64, removed: u64) -> KernelCounters {
        let mut k = KernelCounters::default();
        k.stats[stat::FLOWS_INSERTED as usize] = inserted;
        k.stats[stat::FLOWS_REMOVED as usize] = removed;
        k
    }

    #[test]
    fn a_pass_runs_from_90_percent_down_to_80() {
        let mut e = FlowEvictor::new(1000);
        assert_eq!(e.due(&counters(1899, 1000)), None, "899 flows: below 900");
        assert_eq!(e.due(&counters(1900, 1000)), Some(100));
        e.evicted = 100;
        assert_eq!(e.occupancy(&counters(1900, 1000)), 800);
        assert_eq!(e.due(&counters(1900, 1000)), None);
    }

    #[test]
    fn tiny_tables_still_leave_room() {
        let e = FlowEvictor::new(16);
        assert_eq!(e.due(&counters(15, 0)), Some(2), "15 of 16: down to 13");
        let e = FlowEvictor::new(1);
        assert_eq!(e.due(&counters(1, 0)), Some(1));
        assert_eq!(e.due(&counters(0, 0)), None);
    }

    #[test]
    fn the_least_recently_active_go_first() {
        let flows = vec![(1, 500), (2, 100), (3, 0), (4, 300)];
        assert_eq!(victims(flows, 2), vec![3, 2]);
        let mut f = FlowState::EMPTY;
        f.entered_ns[0] = 10;
        f.entered_ns[1] = 70;
        assert_eq!(last_active(&f), 70);
    }
}
