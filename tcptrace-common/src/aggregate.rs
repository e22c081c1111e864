//! What the kernel aggregates itself, so that the metrics need no record per flow: state
//! durations in fixed log-linear buckets, close causes and close sides (classified here, by
//! the same code in the kernel and in userspace), retransmits by state.
use crate::{close_flags, tcp_state, FlowState, PATH_SLOTS};

/// Why a flow ended (userspace: `tcptrace::cause::CloseCause`, in this order).
pub mod close_cause {
    /// FIN exchange.
    pub const NORMAL: u8 = 0;
    pub const RESET_RECEIVED: u8 = 1;
    pub const RESET_SENT: u8 = 2;
    /// connect() refused (RST in SYN_SENT).
    pub const REFUSED: u8 = 3;
    pub const SYN_TIMEOUT: u8 = 4;
    /// Retransmissions exhausted.
    pub const RTO: u8 = 5;
    pub const KEEPALIVE_TIMEOUT: u8 = 6;
    pub const USER_TIMEOUT: u8 = 7;
    /// Closed locally with a reset (SO_LINGER 0, unread data, abandoned connect).
    pub const ABORTED: u8 = 8;
    pub const LISTENER_CLOSED: u8 = 9;
    pub const UNKNOWN: u8 = 10;
    pub const COUNT: usize = 11;
}

/// Which side ended a flow (userspace: `tcptrace::model::CloseSide`, in this order).
pub mod close_side {
    /// We sent the first FIN.
    pub const ACTIVE: u8 = 0;
    /// The peer sent the first FIN.
    pub const PASSIVE: u8 = 1;
    /// Straight to CLOSE from ESTABLISHED or SYN_RECV.
    pub const RESET: u8 = 2;
    /// SYN_SENT → CLOSE.
    pub const CONNECT_FAILED: u8 = 3;
    pub const LISTENER: u8 = 4;
    pub const UNKNOWN: u8 = 5;
    pub const COUNT: usize = 6;
}

/// Slots of [`crate::Counters::closes`] and [`crate::Counters::sides`] (room to grow).
pub const CLOSE_SLOTS: usize = 16;
const _: () = assert!(close_cause::COUNT <= CLOSE_SLOTS && close_side::COUNT <= CLOSE_SLOTS);

/// `reset_reason` value that names no reason (kernels before 6.10 have none, and userspace
/// sets it when the running kernel's BTF has no `SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT`).
pub const NO_RESET_REASON: u8 = u8::MAX;

const EPIPE: u8 = 32;
const ECONNRESET: u8 = 104;
const ETIMEDOUT: u8 = 110;
const ECONNREFUSED: u8 = 111;

/// What a flow left behind at CLOSE, as the classification needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseFacts {
    /// The state before CLOSE, if the path has one.
    pub before: Option<u8>,
    /// `sk_err`.
    pub err: u8,
    pub reset_received: bool,
    pub reset_sent: bool,
    /// The reset sent was the kernel's keepalive timeout (`TCP_KEEPALIVE_TIMEOUT`).
    pub reset_was_keepalive: bool,
    pub keepalive_on: bool,
    pub user_timeout: bool,
    /// Keepalive probes unanswered.
    pub probes: u8,
    pub retransmits: u32,
}

impl CloseFacts {
    /// The facts of a flow that reached CLOSE; `keepalive_reason` is the running kernel's
    /// number for `TCP_KEEPALIVE_TIMEOUT` ([`NO_RESET_REASON`] when it has none).
    #[inline(always)]
    pub fn of(flow: &FlowState, keepalive_reason: u8) -> CloseFacts {
        let len = flow.len as usize;
        // Read before the length is checked, with the index masked: a read guarded by the
        // check lets LLVM drop the mask, and the verifier cannot follow the bound it relied on.
        let second_last = flow.states[len.wrapping_sub(2) & (PATH_SLOTS - 1)];
        let before = (2..=PATH_SLOTS).contains(&len).then_some(second_last);
        let reset_sent = flow.close_flags & close_flags::RESET_SENT != 0;
        CloseFacts {
            before,
            err: flow.err,
            reset_received: flow.close_flags & close_flags::RESET_RECEIVED != 0,
            reset_sent,
            reset_was_keepalive: reset_sent
                && keepalive_reason != NO_RESET_REASON
                && flow.reset_reason == keepalive_reason,
            keepalive_on: flow.close_flags & close_flags::KEEPALIVE_ON != 0,
            user_timeout: flow.close_flags & close_flags::USER_TIMEOUT != 0,
            probes: flow.probes,
            retransmits: flow.rtx_total,
        }
    }

    /// Whether a TIME_WAIT follows (the flow closed first: it left FIN_WAIT2 or CLOSING).
    #[inline(always)]
    pub fn enters_time_wait(&self) -> bool {
        matches!(self.before, Some(tcp_state::FIN_WAIT2 | tcp_state::CLOSING))
    }

    /// Whether the kernel made a timewait socket for the flow: it left FIN_WAIT2 or CLOSING
    /// for CLOSE with no error and no reset either way (a reset in FIN_WAIT2, or a FIN_WAIT2
    /// timeout under a negative `TCP_LINGER2`, closes it without one). `tcp_max_tw_buckets`
    /// full is the one exception the socket cannot show (`TCPTimeWaitOverflow` counts it).
    #[inline(always)]
    pub fn holds_time_wait(&self) -> bool {
        self.enters_time_wait() && self.err == 0 && !self.reset_received && !self.reset_sent
    }

    /// Why the flow ended (a [`close_cause`]).
    #[inline(always)]
    pub fn cause(&self) -> u8 {
        use tcp_state::*;
        if self.before == Some(LISTEN) {
            return close_cause::LISTENER_CLOSED;
        }
        match self.err {
            ECONNREFUSED => return close_cause::REFUSED,
            ETIMEDOUT => {
                return if self.before == Some(SYN_SENT) {
                    close_cause::SYN_TIMEOUT
                } else if self.reset_was_keepalive {
                    close_cause::KEEPALIVE_TIMEOUT
                } else if self.user_timeout {
                    close_cause::USER_TIMEOUT
                } else if self.keepalive_on && self.retransmits == 0 && self.probes > 0 {
                    // Kernels without reset reasons: probes went out, nothing was retransmitted.
                    close_cause::KEEPALIVE_TIMEOUT
                } else {
                    close_cause::RTO
                };
            }
            ECONNRESET | EPIPE => return close_cause::RESET_RECEIVED,
            _ => {}
        }
        if self.reset_received {
            return close_cause::RESET_RECEIVED;
        }
        match self.before {
            // The FIN exchange completed (TIME_WAIT follows FIN_WAIT2 / CLOSING).
            Some(FIN_WAIT2 | CLOSING | LAST_ACK | TIME_WAIT) => close_cause::NORMAL,
            // Straight to CLOSE from an open state with no error: a local abort (SO_LINGER 0,
            // unread data, or an abandoned connect), which sends a reset after CLOSE.
            Some(ESTABLISHED | CLOSE_WAIT | SYN_RECV | SYN_SENT | FIN_WAIT1) => {
                if self.reset_sent {
                    close_cause::RESET_SENT
                } else {
                    close_cause::ABORTED
                }
            }
            _ => close_cause::UNKNOWN,
        }
    }
}

/// Which side ended a flow whose path (its states, in order, CLOSE last) is `states[..len]`.
#[inline(always)]
pub fn side_of_path(states: &[u8; PATH_SLOTS], len: usize) -> u8 {
    let len = len.min(PATH_SLOTS);
    let mut fin_wait1 = false;
    let mut close_wait = false;
    let mut i = 0;
    while i < PATH_SLOTS {
        if i < len {
            fin_wait1 |= states[i] == tcp_state::FIN_WAIT1;
            close_wait |= states[i] == tcp_state::CLOSE_WAIT;
        }
        i += 1;
    }
    if fin_wait1 {
        return close_side::ACTIVE;
    }
    if close_wait {
        return close_side::PASSIVE;
    }
    // Read first, masked (see `CloseFacts::of`).
    let second_last = states[len.wrapping_sub(2) & (PATH_SLOTS - 1)];
    let before = if len >= 2 { second_last } else { 0 };
    match before {
        tcp_state::ESTABLISHED | tcp_state::SYN_RECV => close_side::RESET,
        tcp_state::SYN_SENT => close_side::CONNECT_FAILED,
        tcp_state::LISTEN => close_side::LISTENER,
        _ => close_side::UNKNOWN,
    }
}

/// Sub-buckets per power of two in [`DurationHistogram`]: durations are kept within 1/8
/// (12.5%) of their value, quantiles reported at a bucket's middle within ~6%.
pub const SUB_BUCKET_BITS: u32 = 3;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Buckets of a [`DurationHistogram`]: 0..8 ns one each, then 8 per power of two up to 2^64.
pub const DURATION_BUCKETS: usize = 512;
const _: () =
    assert!((SUB_BUCKETS as usize) * (64 - SUB_BUCKET_BITS as usize + 1) <= DURATION_BUCKETS);

/// How long flows held one state: a log-linear histogram of nanoseconds, counted per CPU by
/// the kernel (one per state and program), summed by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationHistogram {
    pub buckets: [u64; DURATION_BUCKETS],
    pub sum_ns: u64,
    pub max_ns: u64,
}
const _: () = assert!(core::mem::size_of::<DurationHistogram>() == 8 * (DURATION_BUCKETS + 2));

/// Entries of the kernel's `DURATIONS` map: one histogram per (program, state).
pub const DURATION_ENTRIES: u32 = 2 * tcp_state::LIMIT as u32;

/// The bucket of a duration of `ns` nanoseconds.
#[inline(always)]
pub fn duration_bucket(ns: u64) -> usize {
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    // The highest set bit, by halving (the BPF instruction set has no count-leading-zeros).
    let (mut bit, mut v) = (0u32, ns);
    if v >> 32 != 0 {
        v >>= 32;
        bit += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        bit += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        bit += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        bit += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        bit += 2;
    }
    if v >> 1 != 0 {
        bit += 1;
    }
    // bit >= SUB_BUCKET_BITS here: the sub-bucket is the next SUB_BUCKET_BITS bits.
    let sub = (ns >> (bit - SUB_BUCKET_BITS)) & (SUB_BUCKETS - 1);
    ((bit - SUB_BUCKET_BITS + 1) as usize * SUB_BUCKETS as usize + sub as usize)
        & (DURATION_BUCKETS - 1)
}

/// The durations bucket `index` holds: `[low, high)` nanoseconds.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, index + 1);
    }
    let bit = index / SUB_BUCKETS + u64::from(SUB_BUCKET_BITS) - 1;
    let sub = index % SUB_BUCKETS;
    let width = 1u64 << (bit - u64::from(SUB_BUCKET_BITS));
    let low = (1u64 << bit) + sub * width;
    (low, low.saturating_add(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_falls_in_the_bucket_whose_bounds_hold_it() {
        let samples = [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            1000,
            65_535,
            1 << 40,
            u64::MAX,
        ];
        for ns in samples.into_iter().chain((0..64).map(|b| 1u64 << b)) {
            let i = duration_bucket(ns);
            let (low, high) = bucket_bounds(i);
            assert!(
                low <= ns && (ns < high || high == u64::MAX),
                "{ns} in bucket {i} [{low}, {high})"
            );
            // Within 1/8 of the value.
            assert!(
                (high - low) as f64 <= (low.max(1) as f64) / 8.0 + 1.0,
                "{ns}"
            );
        }
        assert_eq!(duration_bucket(u64::MAX), 495);
        let mut last = 0;
        for ns in (0..100_000u64).step_by(7) {
            let i = duration_bucket(ns);
            assert!(i >= last, "buckets grow with the duration");
            last = i;
        }
    }

    fn flow(states: &[u8]) -> FlowState {
        let mut f = FlowState::EMPTY;
        f.states[..states.len()].copy_from_slice(states);
        f.len = states.len() as u8;
        f
    }

    #[test]
    fn sides_follow_the_path() {
        use tcp_state::*;
        let cases: [(&[u8], u8); 6] = [
            (
                &[SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE],
                close_side::ACTIVE,
            ),
            (
                &[SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE],
                close_side::PASSIVE,
            ),
            (&[SYN_SENT, ESTABLISHED, CLOSE], close_side::RESET),
            (&[SYN_SENT, CLOSE], close_side::CONNECT_FAILED),
            (&[LISTEN, CLOSE], close_side::LISTENER),
            (&[CLOSE], close_side::UNKNOWN),
        ];
        for (path, side) in cases {
            let f = flow(path);
            assert_eq!(side_of_path(&f.states, f.len as usize), side, "{path:?}");
            // Only the side that closed first and finished the FIN exchange holds TIME_WAIT.
            let time_wait = CloseFacts::of(&f, NO_RESET_REASON).enters_time_wait();
            assert_eq!(
                time_wait,
                path.len() == 5 && path[2] == FIN_WAIT1,
                "{path:?}"
            );
        }
        assert!(CloseFacts::of(
            &flow(&[SYN_SENT, ESTABLISHED, FIN_WAIT1, CLOSING, CLOSE]),
            0
        )
        .enters_time_wait());
    }

    #[test]
    fn a_keepalive_reset_is_told_by_the_kernels_reason_number() {
        use tcp_state::*;
        let mut f = flow(&[SYN_SENT, ESTABLISHED, CLOSE]);
        f.err = ETIMEDOUT;
        f.close_flags = close_flags::RESET_SENT;
        f.reset_reason = 15;
        assert_eq!(
            CloseFacts::of(&f, 15).cause(),
            close_cause::KEEPALIVE_TIMEOUT
        );
        assert_eq!(
            CloseFacts::of(&f, NO_RESET_REASON).cause(),
            close_cause::RTO
        );
        f.reset_reason = 3;
        assert_eq!(CloseFacts::of(&f, 15).cause(), close_cause::RTO);
    }
}
