//! The ends of TIME_WAIT that no hook shows, inferred from sock_diag reads of the namespaces
//! that hold TIME_WAITs (each read every 1–2 s by the namespace reader): a TIME_WAIT that
//! started before a read and is missing from it was reused by a connection still open (its
//! 4-tuple held by a full socket: an exact sock_diag lookup), killed (a reset in TIME_WAIT,
//! `ss -K`, its namespace gone) or, when its namespace's `TCPTimeWaitOverflow` grew and no
//! read ever saw it, never made (`tcp_max_tw_buckets` full). Judged one tick after the read,
//! so that an expiry or a reuse by a connection that closed, already in the ring, is read
//! first; its end time is the read's (within the reads' interval after the real one).
use std::collections::{HashMap, HashSet};

use super::{Finished, TimeWaitEnd, TimeWaitTracker};
use crate::model::tcp::FlowAddrs;

/// A TIME_WAIT missing from a read of its namespace (or whose namespace is gone).
pub(super) struct Suspect {
    key: super::TimeWaitKey,
    start_ns: u64,
    missed_ns: u64,
    /// An earlier read saw it (so no overflow accounts for it).
    confirmed: bool,
}

impl TimeWaitTracker {
    /// TIME_WAITs namespace `netns`'s `tcp_max_tw_buckets` turned away (its
    /// `TCPTimeWaitOverflow` grew by `newly`): their starts are to be matched.
    pub fn overflowed(&mut self, netns: u32, newly: u64) {
        self.overflows += newly;
        *self.overflow_unmatched.entry(netns).or_default() += newly;
    }

    /// A read of namespace `netns` taken at `read_ns`: the 4-tuples of its timewait sockets.
    pub fn reconcile(&mut self, netns: u32, read_ns: u64, present: &foldhash::HashSet<FlowAddrs>) {
        for a in (self.active.values_mut()).chain(self.elsewhere.values_mut()) {
            if a.netns != netns || a.start_ns >= read_ns {
                continue;
            }
            if present.contains(&a.addrs) {
                a.confirmed = true;
            } else {
                self.suspects.push(Suspect {
                    key: (a.netns, a.addrs),
                    start_ns: a.start_ns,
                    missed_ns: read_ns,
                    confirmed: a.confirmed,
                });
            }
        }
    }

    /// Namespace `netns` is gone (no process lives in it and nothing names it): its
    /// TIME_WAITs went with it.
    pub fn namespace_gone(&mut self, netns: u32, now_ns: u64) {
        self.reconcile(netns, now_ns, &foldhash::HashSet::default());
    }

    /// The 4-tuples of the suspects still running, by namespace (at most `limit`): which a
    /// connection holds now is looked up before [`Self::apply_suspects`]. Not those an
    /// overflow of their namespace accounts for (never seen by a read: never made).
    pub fn suspects_to_look_up(&self, limit: usize) -> HashMap<u32, Vec<FlowAddrs>> {
        let mut wanted: HashMap<u32, Vec<FlowAddrs>> = HashMap::new();
        let overflowing = |netns: u32| self.overflow_unmatched.get(&netns).is_some_and(|&n| n > 0);
        // Filtered before the lookup: under a full `tcp_max_tw_buckets` nearly every suspect
        // is an unconfirmed start an overflow accounts for.
        let running = (self.suspects.iter())
            .filter(|s| s.confirmed || !overflowing(s.key.0))
            .filter_map(|s| self.get(s.key).filter(|a| a.start_ns == s.start_ns));
        for a in running.take(limit) {
            wanted.entry(a.netns).or_default().push(a.addrs);
        }
        wanted
    }

    /// The suspects of earlier reads still running (no expiry or reuse came since): reused,
    /// where a connection holds the 4-tuple now (`held_open`, by namespace); never made,
    /// where their namespace has overflows left to match and no read saw them; else killed.
    /// Either at the read that missed them.
    pub fn apply_suspects(
        &mut self,
        held_open: &HashMap<u32, HashSet<FlowAddrs>>,
    ) -> Vec<Finished> {
        let mut finished = Vec::new();
        for s in std::mem::take(&mut self.suspects) {
            let Some(active) = self.take_started(s.key, s.start_ns) else {
                continue;
            };
            let reused = (held_open.get(&active.netns)).is_some_and(|h| h.contains(&active.addrs));
            let unmatched = (self.overflow_unmatched.get(&active.netns)).is_some_and(|&n| n > 0);
            match unmatched {
                _ if reused => finished.push(self.end(active, s.missed_ns, TimeWaitEnd::Reused)),
                true if !active.confirmed => {
                    if let Some(n) = self.overflow_unmatched.get_mut(&active.netns) {
                        *n -= 1;
                    }
                    if let Some(flow) = self.never_made(active) {
                        finished.push(Finished::Flow(flow));
                    }
                }
                _ => finished.push(self.end(active, s.missed_ns, TimeWaitEnd::Killed)),
            }
        }
        self.overflow_unmatched.retain(|_, n| *n > 0);
        finished
    }

    /// At the end, overflows no read matched yet: as many TIME_WAITs of their namespace that
    /// no read confirmed, the newest first (the last read may not have come after them).
    pub(super) fn match_overflows_at_end(&mut self) -> Vec<Finished> {
        let mut unconfirmed: Vec<(u64, super::TimeWaitKey)> = (self.all())
            .filter(|a| !a.confirmed && self.overflow_unmatched.contains_key(&a.netns))
            .map(|a| (a.start_ns, (a.netns, a.addrs)))
            .collect();
        unconfirmed.sort_unstable_by_key(|&(start_ns, _)| std::cmp::Reverse(start_ns));
        let mut finished = Vec::new();
        for (_, key) in unconfirmed {
            let Some(n) = self.overflow_unmatched.get_mut(&key.0).filter(|n| **n > 0) else {
                continue;
            };
            *n -= 1;
            if let Some(active) = self.take(key) {
                finished.extend(self.never_made(active).map(Finished::Flow));
            }
        }
        finished
    }

    /// A TIME_WAIT the kernel never made: uncounted; its flow, if held, goes on with its end
    /// `overflow`.
    fn never_made(
        &mut self,
        active: super::Active,
    ) -> Option<Box<crate::model::events::FinishedFlow>> {
        self.unlink(&active);
        self.entered = self.entered.saturating_sub(1);
        let destination = match active.accepted {
            Some(true) => active.addrs.local,
            _ => active.addrs.remote,
        };
        *self.overflow_destinations.entry(destination).or_default() += 1;
        // Its entry time stays in the rates: a close into TIME_WAIT was attempted (and taking
        // it out of a busy destination's queue costs a walk of the queue, per overflow).
        match active.accepted {
            Some(true) => self.server_side = self.server_side.saturating_sub(1),
            accepted => {
                if accepted.is_some() {
                    self.client_side = self.client_side.saturating_sub(1);
                }
                super::decrement(&mut self.by_destination, active.addrs.remote);
            }
        }
        let mut flow = active.flow?;
        flow.time_wait = Some(super::TimeWait {
            addrs: active.addrs,
            start_ns: active.start_ns,
            held_ns: 0,
            end: TimeWaitEnd::Overflow,
        });
        Some(flow)
    }
}
