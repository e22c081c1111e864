//! The rings the programs write records into, one for each group of CPUs (CPU `n` writes into
//! ring `n % 4`: CPUs do not share one ring's lock and cache lines), read back in time order
//! as if they were one.
//!
//! Time order across rings: every record carries the time its program read, and a socket's
//! transitions run one after another under its lock, each program submitting its record before
//! the lock is let go. So with `now` read before any ring is read, a record stamped at or
//! before `now` can follow, on the same socket, only records already submitted — already
//! readable. Each read hands on, oldest first, the records stamped up to `now` (or, where a
//! ring had more than the batch took, up to the newest taken from it); later ones wait for the
//! next read.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};

/// Records read from the rings and not yet handed on.
#[derive(Default)]
struct Held {
    /// Their bytes, one after another.
    bytes: Vec<u8>,
    /// (time, read order, start in `bytes`, length), one per record.
    records: Vec<(u64, u64, usize, usize)>,
    /// How many records were read in all: the order of records stamped alike.
    read: u64,
}

impl Held {
    fn push(&mut self, ts: u64, record: &[u8]) {
        self.records
            .push((ts, self.read, self.bytes.len(), record.len()));
        self.bytes.extend_from_slice(record);
        self.read += 1;
    }

    /// Hands on the records stamped up to `up_to_ns`, oldest first (alike: in the order read),
    /// and keeps the others. A record handed on is never handed on again, even when `each`
    /// fails.
    fn hand_on(
        &mut self,
        up_to_ns: u64,
        each: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.records
            .sort_unstable_by_key(|&(ts, order, ..)| (ts, order));
        let due = self.records.partition_point(|&(ts, ..)| ts <= up_to_ns);
        let mut handed = 0;
        let mut result = Ok(());
        for &(_, _, start, len) in &self.records[..due] {
            handed += 1;
            result = each(&self.bytes[start..start + len]);
            if result.is_err() {
                break;
            }
        }
        if handed == self.records.len() {
            self.records.clear();
            self.bytes.clear();
        } else if handed > 0 {
            let mut kept = Vec::with_capacity(self.bytes.len());
            let waiting = self.records.split_off(handed);
            self.records.clear();
            for (ts, order, start, len) in waiting {
                self.records.push((ts, order, kept.len(), len));
                kept.extend_from_slice(&self.bytes[start..start + len]);
            }
            self.bytes = kept;
        }
        result
    }
}

/// The kernel's event rings, waited on through one epoll descriptor (readable when any ring
/// is).
pub struct EventRings {
    rings: Vec<RingBuf<MapData>>,
    epoll: OwnedFd,
    held: Held,
}

/// What one read handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// A ring had more records than the read took.
    pub more: bool,
    /// Every record stamped up to this time has been handed on.
    pub up_to_ns: u64,
}

impl EventRings {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> Result<EventRings> {
        // SAFETY: epoll_create1 with a valid flag; the descriptor is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1 for the event rings");
        }
        // SAFETY: a descriptor just created, owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for (index, ring) in rings.iter().enumerate() {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: index as u64,
            };
            let ring_fd = ring.as_fd().as_raw_fd();
            // SAFETY: both descriptors are open; `event` outlives the call.
            if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, ring_fd, &mut event) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("adding event ring {index} to epoll"));
            }
        }
        Ok(EventRings {
            rings,
            epoll,
            held: Held::default(),
        })
    }

    /// Reads up to `limit` records from the rings and hands `each` those no unread record can
    /// precede, oldest first (`now_ns`: the time read before this call; `time_of`: a record's
    /// time, 0 where it has none). `all`: hand on everything read (after detaching, when no
    /// record is still being written).
    pub fn drain(
        &mut self,
        limit: usize,
        now_ns: u64,
        all: bool,
        time_of: impl Fn(&[u8]) -> u64,
        mut each: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<Drained> {
        let per_ring = (limit / self.rings.len().max(1)).max(1);
        let mut up_to_ns = if all { u64::MAX } else { now_ns };
        let mut more = false;
        for ring in &mut self.rings {
            let mut taken = 0;
            let mut newest = 0;
            while taken < per_ring {
                let Some(item) = ring.next() else { break };
                let ts = bounded_time(time_of(&item), now_ns);
                newest = newest.max(ts);
                self.held.push(ts, &item);
                taken += 1;
            }
            if taken == per_ring {
                more = true;
                up_to_ns = up_to_ns.min(newest);
            }
        }
        self.held.hand_on(up_to_ns, &mut each)?;
        Ok(Drained { more, up_to_ns })
    }
}

/// How far past a read's start a record's time is believed: records are stamped before they
/// are read, so only a corrupt one is later; it is handed on with the reads of a second later
/// rather than held until exit.
const MAX_AHEAD_NS: u64 = 1_000_000_000;

/// A record's time for the merge: its own, or at most [`MAX_AHEAD_NS`] past the read's start.
fn bounded_time(ts: u64, now_ns: u64) -> u64 {
    ts.min(now_ns.saturating_add(MAX_AHEAD_NS))
}

impl AsRawFd for EventRings {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::{bounded_time, Held, MAX_AHEAD_NS};

    fn hand_on(held: &mut Held, up_to_ns: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        held.hand_on(up_to_ns, &mut |r| {
            out.push(r.to_vec());
            Ok(())
        })
        .expect("no error");
        out
    }

    #[test]
    fn records_of_two_rings_come_out_oldest_first_and_later_ones_wait() {
        let mut held = Held::default();
        // Ring 0 read first, then ring 1.
        held.push(10, b"a10");
        held.push(30, b"a30");
        held.push(50, b"a50");
        held.push(20, b"b20");
        held.push(30, b"b30");
        let out = hand_on(&mut held, 40);
        assert_eq!(
            out,
            [&b"a10"[..], b"b20", b"a30", b"b30"],
            "stamped alike: read order"
        );
        assert_eq!(held.records.len(), 1, "a50 waits");
        held.push(45, b"b45");
        assert_eq!(hand_on(&mut held, 60), [&b"b45"[..], b"a50"]);
        assert!(held.records.is_empty() && held.bytes.is_empty());
    }

    #[test]
    fn a_record_handed_on_before_an_error_is_not_handed_on_again() {
        let mut held = Held::default();
        for (ts, r) in [(1, b"r1"), (2, b"r2"), (3, b"r3")] {
            held.push(ts, r);
        }
        let mut seen = 0;
        let err = held.hand_on(10, &mut |_| {
            seen += 1;
            if seen == 2 {
                Err(std::io::Error::other("broken pipe"))
            } else {
                Ok(())
            }
        });
        assert!(err.is_err());
        assert_eq!(
            hand_on(&mut held, 10),
            [&b"r3"[..]],
            "r1 and r2 were handed on"
        );
    }

    #[test]
    fn a_record_stamped_far_ahead_waits_a_second_at_most() {
        let now = 5_000_000_000;
        assert_eq!(
            bounded_time(now - 1, now),
            now - 1,
            "an earlier record keeps its time"
        );
        assert_eq!(bounded_time(now + 10, now), now + 10, "within the bound");
        assert_eq!(
            bounded_time(u64::MAX, now),
            now + MAX_AHEAD_NS,
            "a corrupt time is bounded"
        );
        let mut held = Held::default();
        held.push(bounded_time(u64::MAX, now), b"bad");
        assert!(hand_on(&mut held, now).is_empty(), "not before its bound");
        assert_eq!(hand_on(&mut held, now + MAX_AHEAD_NS), [&b"bad"[..]]);
    }
}
