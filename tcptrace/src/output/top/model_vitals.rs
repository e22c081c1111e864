//! `top`'s RTT column: the smoothed RTT of the flows that closed over the last window, and of
//! the flows still open as the last sock_diag sample read them (a long-lived flow is not
//! invisible until it ends).
use std::collections::VecDeque;

use foldhash::HashMap;

use super::{GroupKey, TopModel};
use crate::model::tcp::FlowAddrs;

/// Seconds a closed flow's RTT counts.
pub const RTT_WINDOW_S: u64 = 60;
/// RTT samples kept per row from closed flows (the newest).
const CLOSED_KEPT: usize = 1_024;
/// Open flows sampled per row.
const OPEN_KEPT: usize = 1_024;
/// Seconds between two samples of the open flows.
pub const OPEN_SAMPLE_EVERY_S: u64 = 5;

#[derive(Clone, Debug, Default)]
pub struct RttSamples {
    /// (second closed, smoothed RTT µs), oldest first.
    closed: VecDeque<(u64, u32)>,
    /// The open flows' RTT (µs) at the last sample.
    open: Vec<u32>,
}

impl RttSamples {
    /// A flow closed at `now_s` with this smoothed RTT.
    pub fn closed(&mut self, now_s: u64, srtt_ns: u64) {
        if self.closed.len() == CLOSED_KEPT {
            self.closed.pop_front();
        }
        let us = u32::try_from(srtt_ns / 1_000).unwrap_or(u32::MAX);
        self.closed.push_back((now_s, us));
    }

    /// The open flows' RTTs, as sampled now (replacing the last sample).
    pub fn open_sampled(&mut self, rtts_us: impl Iterator<Item = u32>) {
        self.open.clear();
        self.open.extend(rtts_us.take(OPEN_KEPT));
    }

    /// The median RTT (ns) of the closed flows in the window and the open ones sampled.
    pub fn p50_ns(&self, now_s: u64) -> Option<u64> {
        let since = now_s.saturating_sub(RTT_WINDOW_S);
        let mut all: Vec<u32> = self
            .closed
            .iter()
            .filter(|(s, _)| *s > since)
            .map(|(_, us)| *us)
            .chain(self.open.iter().copied())
            .collect();
        if all.is_empty() {
            return None;
        }
        let mid = all.len() / 2;
        let (_, median, _) = all.select_nth_unstable(mid);
        Some(u64::from(*median) * 1_000)
    }
}

impl TopModel {
    /// The open ESTABLISHED flows' RTTs (sock_diag's `tcp_info`), each under its row.
    pub fn open_rtts(&mut self, sampled: impl Iterator<Item = (FlowAddrs, u32)>) {
        let mut by_group: HashMap<GroupKey, Vec<u32>> = HashMap::default();
        for (addrs, rtt_us) in sampled {
            by_group
                .entry(self.group_of(&addrs, None))
                .or_default()
                .push(rtt_us);
        }
        for g in self.groups.values_mut() {
            g.rtt.open_sampled(std::iter::empty());
        }
        for (key, rtts) in by_group {
            self.group_mut(key).rtt.open_sampled(rtts.into_iter());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_covers_the_window_and_the_open_flows() {
        let mut r = RttSamples::default();
        assert_eq!(r.p50_ns(100), None);
        r.closed(10, 90_000_000);
        r.closed(100, 1_000_000);
        r.closed(100, 2_000_000);
        assert_eq!(
            r.p50_ns(100),
            Some(2_000_000),
            "the 90 ms one is out of the window"
        );
        r.open_sampled([100_000u32, 100_000, 100_000].into_iter());
        assert_eq!(r.p50_ns(100), Some(100_000_000));
        r.open_sampled(std::iter::empty());
        assert_eq!(r.p50_ns(100), Some(2_000_000));
    }
}
