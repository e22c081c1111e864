//! The kernel's own counters (exact, kept per CPU in the kernel and summed here): stats,
//! transitions, close causes and sides, retransmits and drops by reason.
use serde::{Serialize, Serializer};
use tcptrace_common::{stat, tcp_state, TRANSITION_SLOTS};

use crate::model::tcp::TcpState;

/// Kernel-side counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    /// Recordings of an older tcptrace carry fewer counters: the missing ones read as 0.
    #[serde(deserialize_with = "stats_of_older_recordings")]
    pub stats: [u64; stat::COUNT as usize],
    /// Indexed `old * tcp_state::LIMIT + new`.
    pub transitions: Vec<u64>,
    /// Transitions the kernel never handed to the programs (a program is not re-entered on
    /// its CPU): at least the stale flows (`loader::counters::events_missed`).
    pub missed: u64,
    /// Flows closed, by the kernel's close cause and close side numbers.
    #[serde(default)]
    pub closes: Vec<u64>,
    #[serde(default)]
    pub sides: Vec<u64>,
    /// Retransmits by the kernel's state number.
    #[serde(default)]
    pub rtx_by_state: Vec<u64>,
    /// TCP packets dropped, by the kernel's drop reason number (`DROP_REASON_SLOTS`).
    #[serde(default)]
    pub drop_reasons: Vec<u64>,
}

/// `stats` as written by this or an older tcptrace (fewer counters, each at its own index).
fn stats_of_older_recordings<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<[u64; stat::COUNT as usize], D::Error> {
    let written = <Vec<u64> as serde::Deserialize>::deserialize(deserializer)?;
    let mut stats = [0u64; stat::COUNT as usize];
    if written.len() > stats.len() {
        return Err(serde::de::Error::invalid_length(
            written.len(),
            &"at most as many counters as this tcptrace knows (the recording is from a newer one)",
        ));
    }
    stats[..written.len()].copy_from_slice(&written);
    Ok(stats)
}

impl KernelCounters {
    pub fn stat(&self, index: u32) -> u64 {
        self.stats[index as usize]
    }

    /// What was lost, by kind.
    pub fn losses(&self) -> Lost {
        Lost {
            transitions: self.stat(stat::LOST_TRANSITION),
            flows: self.stat(stat::LOST_FLOW_END),
            retransmits: self.stat(stat::LOST_RETRANSMIT),
            probes: self.stat(stat::LOST_PROBE),
            time_wait: self.stat(stat::LOST_TIME_WAIT),
            port_failures: self.stat(stat::LOST_PORT_FAILURE),
            drops: self.stat(stat::LOST_DROP),
            undecided: self.stat(stat::LOST_UNDECIDED),
            missed_events: self.missed,
        }
    }

    /// Everything lost: records the ring buffer had no room for, and events the kernel
    /// never handed to the programs.
    pub fn lost(&self) -> u64 {
        self.losses().total()
    }

    /// Non-zero transition counts, by (old, new).
    pub fn transition_counts(&self) -> Vec<(TcpState, TcpState, u64)> {
        let limit = u32::from(tcp_state::LIMIT);
        (0..TRANSITION_SLOTS)
            .filter_map(|i| {
                let count = *self.transitions.get(i as usize)?;
                let old = TcpState::try_from((i / limit) as u8).ok()?;
                let new = TcpState::try_from((i % limit) as u8).ok()?;
                (count > 0).then_some((old, new, count))
            })
            .collect()
    }
}

/// Events lost: records the ring buffer had no room for, by kind, and events the kernel never
/// handed to the programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    pub transitions: u64,
    pub flows: u64,
    pub retransmits: u64,
    pub probes: u64,
    pub time_wait: u64,
    pub port_failures: u64,
    pub drops: u64,
    /// First transitions held for a local-port filter that found the flow table full.
    pub undecided: u64,
    /// Events the kernel skipped: its recursion misses the second program did not handle,
    /// and never fewer than the stale flows.
    pub missed_events: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.transitions
            + self.flows
            + self.retransmits
            + self.probes
            + self.time_wait
            + self.port_failures
            + self.drops
            + self.undecided
            + self.missed_events
    }
}

/// The losses with their total.
pub fn with_total<S: Serializer>(lost: &Lost, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct WithTotal<'a> {
        #[serde(flatten)]
        lost: &'a Lost,
        total: u64,
    }
    WithTotal {
        lost,
        total: lost.total(),
    }
    .serialize(s)
}
