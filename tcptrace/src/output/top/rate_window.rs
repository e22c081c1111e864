//! Counts per second over a sliding window of one-second buckets (`top`'s rates).

/// Seconds over which rates are measured.
pub const RATE_WINDOW_S: u64 = 10;

/// How long the rate window is at `now_ns` for a tracer that started at `started_ns`: the
/// seconds traced so far, at least one, at most [`RATE_WINDOW_S`]. Dividing by the full window
/// from the start would read half the true rate 5 s in.
pub fn window_s(started_ns: u64, now_ns: u64) -> f64 {
    (now_ns.saturating_sub(started_ns) as f64 / 1e9).clamp(1.0, RATE_WINDOW_S as f64)
}

/// Counts per second over the last [`RATE_WINDOW_S`] seconds, in one-second buckets.
#[derive(Clone, Debug, Default)]
pub struct RateWindow {
    buckets: [u32; RATE_WINDOW_S as usize],
    /// The second the newest bucket counts.
    second: u64,
}

impl RateWindow {
    fn advance(&mut self, now_s: u64) {
        if now_s <= self.second {
            return;
        }
        let gone = (now_s - self.second).min(RATE_WINDOW_S);
        for i in 1..=gone {
            self.buckets[((self.second + i) % RATE_WINDOW_S) as usize] = 0;
        }
        self.second = now_s;
    }

    pub fn add(&mut self, now_s: u64) {
        self.add_n(now_s, 1);
    }

    /// `n` events at `now_s`.
    pub fn add_n(&mut self, now_s: u64, n: u32) {
        self.advance(now_s);
        // An event stamped before the newest bucket (records drained late) counts in the
        // bucket of its own second while that is still in the window.
        if self.second - now_s.min(self.second) < RATE_WINDOW_S {
            let slot = &mut self.buckets[(now_s % RATE_WINDOW_S) as usize];
            *slot = slot.saturating_add(n);
        }
    }

    /// Events per second over the window ending at `now_s`, `window_s` long: the full
    /// [`RATE_WINDOW_S`], or less while tracing has not run that long (see [`window_s`]).
    pub fn per_second(&self, now_s: u64, window_s: f64) -> f64 {
        let age = now_s.saturating_sub(self.second);
        if age >= RATE_WINDOW_S {
            return 0.0;
        }
        // Buckets older than the window ending at now_s no longer count.
        let sum: u64 = (0..RATE_WINDOW_S - age)
            .map(|i| {
                u64::from(
                    self.buckets[((self.second + RATE_WINDOW_S - i) % RATE_WINDOW_S) as usize],
                )
            })
            .sum();
        sum as f64 / window_s.clamp(1.0, RATE_WINDOW_S as f64)
    }

    pub fn idle(&self, now_s: u64) -> bool {
        now_s.saturating_sub(self.second) >= RATE_WINDOW_S
    }
}
