//! The quantiles a summary gives of a histogram.
use hdrhistogram::Histogram;
use serde::Serialize;

/// p50, p90, p99 and the largest value, ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quantiles {
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Quantiles {
    /// Each multiplied by `k` (a histogram kept in µs, given in ns).
    pub fn times(self, k: u64) -> Quantiles {
        Quantiles {
            p50_ns: self.p50_ns * k,
            p90_ns: self.p90_ns * k,
            p99_ns: self.p99_ns * k,
            max_ns: self.max_ns * k,
        }
    }
}

/// p50, p90, p99 and the largest value of `h`.
pub fn summary_quantiles(h: &Histogram<u64>) -> Quantiles {
    let q = |q: f64| h.value_at_quantile(q);
    Quantiles {
        p50_ns: q(0.5),
        p90_ns: q(0.9),
        p99_ns: q(0.99),
        max_ns: h.max(),
    }
}
