//! A Prometheus histogram whose counts the kernel keeps: the state durations that
//! `inet_sock_set_state` counts per CPU in log-linear buckets, summed at each tick and shown
//! at scrape time as `le` buckets of powers of four (8.2 µs … 2.4 h).
use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};
use tcptrace_common::{DurationHistogram, SUB_BUCKET_BITS};

/// The `le` bounds, as powers of two of nanoseconds: 2^13 ns (8.2 µs) to 2^43 ns (2.4 h),
/// every second power (the kernel's buckets split exactly there).
const FIRST_BOUND_BIT: u32 = 13;
const BOUNDS: u32 = 16;

/// What a scrape shows: sum (seconds), count, and per-bound counts (not cumulative; the
/// last one is +Inf).
#[derive(Debug, Default)]
struct Snapshot {
    sum_s: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct KernelHistogram(Arc<Mutex<Snapshot>>);

/// The first kernel bucket of durations of at least `2^bit` ns.
fn first_bucket_of(bit: u32) -> usize {
    ((bit - SUB_BUCKET_BITS + 1) as usize) << SUB_BUCKET_BITS
}

impl KernelHistogram {
    /// Shows the kernel's totals (summed over CPUs) from now on.
    pub fn set(&self, h: &DurationHistogram) {
        let mut buckets = Vec::with_capacity(BOUNDS as usize + 1);
        let mut from = 0;
        for i in 0..BOUNDS {
            let bit = FIRST_BOUND_BIT + 2 * i;
            let to = first_bucket_of(bit).min(h.buckets.len());
            let n = h.buckets[from..to].iter().sum();
            buckets.push(((1u64 << bit) as f64 / 1e9, n));
            from = to;
        }
        buckets.push((f64::MAX, h.buckets[from..].iter().sum()));
        let snapshot = Snapshot {
            sum_s: h.sum_ns as f64 / 1e9,
            count: h.buckets.iter().sum(),
            buckets,
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }
}

impl TypedMetric for KernelHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for KernelHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        encoder.encode_histogram::<NoLabelSet>(s.sum_s, s.count, &s.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use tcptrace_common::{duration_bucket, DURATION_BUCKETS};

    #[test]
    fn kernel_buckets_become_cumulative_le_buckets() {
        let mut h = DurationHistogram {
            buckets: [0; DURATION_BUCKETS],
            sum_ns: 0,
            max_ns: 0,
        };
        // 1 µs, 10 µs, 1 ms, 2 s and 3 h.
        for ns in [
            1_000u64,
            10_000,
            1_000_000,
            2_000_000_000,
            10_800_000_000_000,
        ] {
            h.buckets[duration_bucket(ns)] += 1;
            h.sum_ns += ns;
        }
        let metric = KernelHistogram::default();
        metric.set(&h);
        let mut registry = Registry::default();
        registry.register("held", "test", metric);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        let line = |le: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("held_bucket{{le=\"{le}\"}}")))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .rsplit(' ')
                .next()
                .expect("a value")
                .to_string()
        };
        assert_eq!(line("0.000008192"), "1", "1 µs is under 8.2 µs");
        assert_eq!(line("0.000032768"), "2", "10 µs is under 32.8 µs");
        assert_eq!(line("0.002097152"), "3", "1 ms is under 2.1 ms");
        assert_eq!(line("2.147483648"), "4", "2 s is under 2.15 s");
        assert_eq!(line("8796.093022208"), "4", "3 h is above the last bound");
        assert_eq!(line("+Inf"), "5");
        assert!(text.contains("held_count 5"), "{text}");
    }
}
