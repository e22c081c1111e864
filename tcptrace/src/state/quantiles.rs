//! The quantiles a summary gives of a histogram.
use hdrhistogram::Histogram;

/// p50, p90, p99 and the largest value.
pub fn summary_quantiles(h: &Histogram<u64>) -> [u64; 4] {
    let q = |q: f64| h.value_at_quantile(q);
    [q(0.5), q(0.9), q(0.99), h.max()]
}
