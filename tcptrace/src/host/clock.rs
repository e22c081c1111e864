//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) → wall-clock time.
use std::fmt;

use crate::{
    text::digits::{number, zero_padded},
    text::stackstr::StackStr,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// unix_ns = ktime_ns + offset_ns
    offset_ns: i128,
    /// Local time = UTC + utc_offset_s (sampled once at start-up).
    utc_offset_s: i64,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    /// Samples CLOCK_REALTIME against CLOCK_MONOTONIC and the local UTC offset.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let secs = (real / 1_000_000_000) as libc::time_t;
        // SAFETY: an all-zero `tm` is a valid value to be overwritten by localtime_r.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the duration of the call.
        let local = unsafe { libc::localtime_r(&secs, &mut tm) };
        let utc_offset_s = if local.is_null() { 0 } else { tm.tm_gmtoff };
        Clock {
            offset_ns: real - mono,
            utc_offset_s,
        }
    }

    /// (unix_ns − ktime_ns, local UTC offset in seconds): what a recording keeps.
    pub fn parts(&self) -> (i64, i64) {
        (self.offset_ns as i64, self.utc_offset_s)
    }

    /// The clock of a recording (see [`Clock::parts`]).
    pub fn from_parts(offset_ns: i64, utc_offset_s: i64) -> Clock {
        Clock {
            offset_ns: i128::from(offset_ns),
            utc_offset_s,
        }
    }

    /// A clock for tests: ktime 0 is `unix_ns`, times shown in UTC.
    #[cfg(test)]
    pub fn fixed(unix_ns_at_zero: u64) -> Clock {
        Clock {
            offset_ns: i128::from(unix_ns_at_zero),
            utc_offset_s: 0,
        }
    }

    /// The kernel's monotonic time now.
    pub fn ktime_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn unix_ns(&self, ktime_ns: u64) -> u64 {
        (i128::from(ktime_ns) + self.offset_ns).max(0) as u64
    }

    /// `HH:MM:SS.micros` in local time.
    pub fn time_of_day(&self, ktime_ns: u64) -> TimeOfDay {
        let unix = self.unix_ns(ktime_ns);
        let local_s = (unix / 1_000_000_000) as i64 + self.utc_offset_s;
        TimeOfDay {
            day_s: local_s.rem_euclid(86_400) as u32,
            micros: ((unix % 1_000_000_000) / 1_000) as u32,
        }
    }
}

/// A time of day, printed as `HH:MM:SS.micros` without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay {
    day_s: u32,
    micros: u32,
}

impl TimeOfDay {
    /// The text, built without `core::fmt`.
    pub fn text(self) -> StackStr<16> {
        let mut text = StackStr::new();
        let _ = self.write_to(&mut text);
        text
    }

    /// `HH:MM:SS.micros`, written without `core::fmt` (the printers' hot path).
    pub fn write_to<W: fmt::Write + ?Sized>(self, w: &mut W) -> fmt::Result {
        zero_padded(w, self.day_s / 3600, 2)?;
        w.write_char(':')?;
        zero_padded(w, self.day_s / 60 % 60, 2)?;
        w.write_char(':')?;
        zero_padded(w, self.day_s % 60, 2)?;
        w.write_char('.')?;
        zero_padded(w, self.micros, 6)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = StackStr::<16>::new();
        self.write_to(&mut text)?;
        f.pad(text.as_str())
    }
}

/// A duration the way an operator reads it: 42us, 0.5ms, 1.2ms, 176ms, 60.0s, 5m03s, 2h07m.
pub fn human_duration(ns: u64) -> String {
    HumanDuration(ns).to_string()
}

/// [`human_duration`] without allocating, for the printers' hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub u64);

impl HumanDuration {
    /// The duration, written without `core::fmt` (the printers' hot path). Integer
    /// arithmetic only, rounded half up.
    pub fn write_to<W: fmt::Write + ?Sized>(self, w: &mut W) -> fmt::Result {
        let ns = self.0;
        let s = ns / 1_000_000_000;
        if ns < 100_000 {
            number(w, ns / 1_000)?;
            w.write_str("us")
        } else if ns < 9_950_000 {
            let tenths = (ns + 50_000) / 100_000;
            number(w, tenths / 10)?;
            w.write_char('.')?;
            number(w, tenths % 10)?;
            w.write_str("ms")
        } else if ns < 999_500_000 {
            number(w, (ns + 500_000) / 1_000_000)?;
            w.write_str("ms")
        } else if ns < 99_950_000_000 {
            let tenths = (ns + 50_000_000) / 100_000_000;
            number(w, tenths / 10)?;
            w.write_char('.')?;
            number(w, tenths % 10)?;
            w.write_char('s')
        } else if s < 3600 {
            number(w, s / 60)?;
            w.write_char('m')?;
            zero_padded(w, (s % 60) as u32, 2)?;
            w.write_char('s')
        } else {
            number(w, s / 3600)?;
            w.write_char('h')?;
            zero_padded(w, (s / 60 % 60) as u32, 2)?;
            w.write_char('m')
        }
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = StackStr::<24>::new();
        self.write_to(&mut text)?;
        f.pad(text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_examples() {
        assert_eq!(human_duration(42_000), "42us");
        assert_eq!(human_duration(500_000), "0.5ms");
        assert_eq!(human_duration(1_200_000), "1.2ms");
        assert_eq!(human_duration(176_000_000), "176ms");
        assert_eq!(human_duration(60_000_000_000), "60.0s");
        assert_eq!(human_duration(303_000_000_000), "5m03s");
        assert_eq!(human_duration(7_620_000_000_000), "2h07m");
    }

    #[test]
    fn durations_round_half_up_and_change_unit_at_the_rounded_boundary() {
        assert_eq!(human_duration(99_999), "99us");
        assert_eq!(human_duration(100_000), "0.1ms");
        assert_eq!(human_duration(1_250_000), "1.3ms");
        assert_eq!(human_duration(9_949_999), "9.9ms");
        assert_eq!(human_duration(9_950_000), "10ms");
        assert_eq!(human_duration(999_499_999), "999ms");
        assert_eq!(human_duration(999_500_000), "1.0s");
        assert_eq!(human_duration(59_960_000_000), "60.0s");
        assert_eq!(human_duration(99_949_999_999), "99.9s");
        assert_eq!(human_duration(100_000_000_000), "1m40s");
    }

    #[test]
    fn kernel_time_maps_to_wall_time() {
        // 2026-11-21T16:52:03.123456Z is 1795279923.123456 s after the epoch.
        let clock = Clock::fixed(1_795_279_923_123_456_000 - 5_000);
        assert_eq!(clock.unix_ns(5_000), 1_795_279_923_123_456_000);
        assert_eq!(clock.time_of_day(5_000).to_string(), "16:52:03.123456");
        assert_eq!(
            format!("{:>17}", clock.time_of_day(5_000)),
            "  16:52:03.123456"
        );
    }

    #[test]
    fn the_real_clock_is_consistent() {
        let clock = Clock::now();
        let unix_now = clock.unix_ns(Clock::ktime_now());
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        assert!(
            unix_now.abs_diff(system) < 1_000_000_000,
            "{unix_now} vs {system}"
        );
    }
}
