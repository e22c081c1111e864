//! Aggregation for the summary: state-duration histograms, close sides, retransmits by state,
//! flow counts; kernel counters (exact, kept per CPU in the kernel) are merged in at the end.
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use tcptrace_common::{bucket_bounds, stat, DurationHistogram};

use crate::{
    model::cause::CloseCause,
    model::counters::KernelCounters,
    model::events::{FinishedFlow, Lifecycle},
    model::tcp::{CloseSide, TcpState},
    state::summary::{DurationStats, FlowCounts, Summary, TransitionCount},
};

const STATES: usize = TcpState::ALL.len();
const _: () = assert!(TcpState::BoundInactive as usize == STATES - 1);

/// Everything the summary shows, accumulated as events arrive.
pub struct Aggregator {
    /// Indexed by `TcpState as usize` (in `TcpState::ALL` order).
    held: [Option<Histogram<u64>>; STATES],
    close: BTreeMap<CloseSide, u64>,
    causes: BTreeMap<CloseCause, u64>,
    rtx_by_state: [u64; STATES],
    finished: u64,
    open: u64,
    decode_errors: u64,
    delivered: u64,
    /// The kernel counts durations, causes, sides and retransmits itself (live tracing):
    /// flow records are not aggregated again, and its histograms are set before `finish`.
    in_kernel: Option<Vec<DurationHistogram>>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Aggregator {
            held: std::array::from_fn(|_| None),
            close: BTreeMap::new(),
            causes: BTreeMap::new(),
            rtx_by_state: [0; STATES],
            finished: 0,
            open: 0,
            decode_errors: 0,
            delivered: 0,
            in_kernel: None,
        }
    }

    /// Durations, causes, sides and retransmits come from the kernel's counts.
    pub fn count_in_kernel(&mut self) {
        self.in_kernel = Some(Vec::new());
    }

    /// The kernel's duration histograms (by kernel state number), for `finish`.
    pub fn kernel_durations(&mut self, durations: Vec<DurationHistogram>) {
        if self.in_kernel.is_some() {
            self.in_kernel = Some(durations);
        }
    }

    /// Any record read from the ring buffer.
    pub fn delivered(&mut self) {
        self.delivered += 1;
    }

    pub fn decode_error(&mut self) {
        self.decode_errors += 1;
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    fn add_path(&mut self, lifecycle: &Lifecycle) {
        for step in &lifecycle.path {
            if let Some(ns) = step.held_ns {
                self.held[step.state as usize]
                    .get_or_insert_with(|| {
                        // 2 significant digits: quantiles within 1%, and a histogram
                        // small enough to stay in cache at line rate.
                        Histogram::new(2).expect("2 significant digits is a valid precision")
                    })
                    // Auto-resizing: recording grows the histogram; it cannot fail for u64.
                    .record(ns.max(1))
                    .ok();
            }
            if step.retransmits > 0 {
                self.rtx_by_state[step.state as usize] += u64::from(step.retransmits);
            }
        }
    }

    pub fn finished_flow(&mut self, flow: &FinishedFlow) {
        if self.in_kernel.is_some() {
            return; // counted in the kernel
        }
        self.finished += 1;
        *self.close.entry(flow.close).or_default() += 1;
        *self.causes.entry(flow.cause).or_default() += 1;
        self.add_path(&flow.lifecycle);
    }

    /// A flow evicted from the kernel's table: like an open one, its completed states count.
    pub fn evicted_flow(&mut self, lifecycle: &Lifecycle) {
        if self.in_kernel.is_none() {
            self.add_path(lifecycle);
        }
    }

    /// Flows still open when tracing stopped, as the kernel's flow store counts them (their
    /// states in progress are not durations yet).
    pub fn count_open(&mut self, n: u64) {
        self.open += n;
    }

    pub fn finish(&self, kernel: &KernelCounters, elapsed_ns: u64) -> Summary {
        let Some(durations) = &self.in_kernel else {
            return self.summary(kernel, elapsed_ns, self.durations());
        };
        let summary = self.summary(kernel, elapsed_ns, durations_in_kernel(durations));
        Summary {
            flows: FlowCounts {
                finished: kernel.closes.iter().sum(),
                ..summary.flows
            },
            close: count_by(&kernel.sides, |raw| Some(CloseSide::from_kernel(raw))),
            causes: count_by(&kernel.closes, |raw| Some(CloseCause::from_kernel(raw))),
            retransmits_by_state: count_by(&kernel.rtx_by_state, |raw| {
                TcpState::try_from(raw).ok()
            }),
            ..summary
        }
    }

    fn durations(&self) -> Vec<DurationStats> {
        self.held
            .iter()
            .zip(TcpState::ALL)
            .filter_map(|(h, state)| Some((state, h.as_ref()?)))
            .map(|(state, h)| DurationStats {
                state,
                count: h.len(),
                p50_ns: h.value_at_quantile(0.50),
                p90_ns: h.value_at_quantile(0.90),
                p99_ns: h.value_at_quantile(0.99),
                max_ns: h.max(),
            })
            .collect()
    }

    fn summary(
        &self,
        kernel: &KernelCounters,
        elapsed_ns: u64,
        held: Vec<DurationStats>,
    ) -> Summary {
        Summary {
            elapsed_ns,
            state_events: kernel.stat(stat::STATE_EVENTS),
            retransmits: kernel.stat(stat::RETRANSMITS),
            records_delivered: self.delivered,
            records_submitted: kernel.stat(stat::SUBMITTED),
            keepalive_probes: kernel.stat(stat::KEEPALIVE_PROBES),
            port_failures: kernel.stat(stat::PORT_FAILURES),
            port_failures_unaddressed: kernel.stat(stat::CALLS_UNTRACKED),
            transitions: kernel
                .transition_counts()
                .into_iter()
                .map(|(old, new, count)| TransitionCount { old, new, count })
                .collect(),
            held,
            flows: FlowCounts {
                seen: kernel.stat(stat::FLOWS_SEEN),
                finished: self.finished,
                open: self.open,
                untracked: kernel.stat(stat::FLOW_TABLE_FULL),
                evicted: 0,
            },
            close: self.close.iter().map(|(&k, &v)| (k, v)).collect(),
            causes: self.causes.iter().map(|(&k, &v)| (k, v)).collect(),
            retransmits_by_state: TcpState::ALL
                .iter()
                .zip(self.rtx_by_state)
                .filter(|&(_, n)| n > 0)
                .map(|(&state, n)| (state, n))
                .collect(),
            lost: kernel.losses(),
            read_errors: kernel.stat(stat::READ_ERRORS),
            decode_errors: self.decode_errors,
            truncated_paths: kernel.stat(stat::PATH_TRUNCATED),
            stale_flows: kernel.stat(stat::STALE_FLOWS),
            path_gaps: kernel.stat(stat::PATH_GAPS),
            nested_events: kernel.stat(stat::NESTED_HANDLED),
            keepalive_unindexed: kernel.stat(stat::KEEPALIVE_UNINDEXED),
            filtered_events: kernel.stat(stat::FILTERED),
            drops: kernel.stat(stat::DROPS),
            drops_unsent: kernel.stat(stat::DROPS_UNSENT),
            synack_retransmits: kernel.stat(stat::SYNACK_RETRANSMITS),
            ..Summary::default()
        }
    }
}

/// Non-zero counts indexed by a kernel number, named by `name` (in the kernel's order; a
/// number with no name is left out).
fn count_by<K: Ord, F: Fn(u8) -> Option<K>>(counts: &[u64], name: F) -> Vec<(K, u64)> {
    let mut named: BTreeMap<K, u64> = BTreeMap::new();
    for (raw, &n) in counts.iter().enumerate() {
        if let (true, Some(key)) = (n > 0, u8::try_from(raw).ok().and_then(&name)) {
            *named.entry(key).or_default() += n;
        }
    }
    named.into_iter().collect()
}

/// Percentiles of the kernel's log-linear histograms: a quantile is reported at the middle
/// of its bucket (within ~6%), never above the largest duration seen.
fn durations_in_kernel(histograms: &[DurationHistogram]) -> Vec<DurationStats> {
    TcpState::ALL
        .iter()
        .filter_map(|&state| {
            let h = histograms.get(usize::from(state.raw()))?;
            let count: u64 = h.buckets.iter().sum();
            (count > 0).then(|| {
                let at = |q: f64| quantile(&h.buckets, count, q).min(h.max_ns);
                DurationStats {
                    state,
                    count,
                    p50_ns: at(0.50),
                    p90_ns: at(0.90),
                    p99_ns: at(0.99),
                    max_ns: h.max_ns,
                }
            })
        })
        .collect()
}

/// The `q` quantile of `count` durations counted in log-linear `buckets`.
pub fn quantile(buckets: &[u64], count: u64, q: f64) -> u64 {
    let rank = ((q * count as f64).ceil() as u64).clamp(1, count.max(1));
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let (low, high) = bucket_bounds(i);
            return low + (high - low) / 2;
        }
    }
    0
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
