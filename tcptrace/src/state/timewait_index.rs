//! The TIME_WAITs followed, by 4-tuple (the newest of each in one map, the rare older ones of
//! other namespaces beside it), and the counts a start adds under its destination or its
//! service.
use super::{forget_old_entries, Active, TimeWaitKey, TimeWaitTracker};
use crate::model::tcp::{Endpoint, FlowAddrs};

impl TimeWaitTracker {
    /// Every TIME_WAIT followed now.
    pub(super) fn all(&self) -> impl Iterator<Item = &Active> {
        self.active.values().chain(self.elsewhere.values())
    }

    /// The TIME_WAIT of a 4-tuple in a namespace.
    pub(super) fn get(&self, (netns, addrs): TimeWaitKey) -> Option<&Active> {
        match self.active.get(&addrs) {
            Some(a) if a.netns == netns => Some(a),
            _ => self.elsewhere.get(&(netns, addrs)),
        }
    }

    pub(super) fn get_mut(&mut self, (netns, addrs): TimeWaitKey) -> Option<&mut Active> {
        if self.active.get(&addrs).is_some_and(|a| a.netns == netns) {
            return self.active.get_mut(&addrs);
        }
        self.elsewhere.get_mut(&(netns, addrs))
    }

    /// Takes a TIME_WAIT out (its counts stay: see `end`).
    pub(super) fn take(&mut self, (netns, addrs): TimeWaitKey) -> Option<Active> {
        if let std::collections::hash_map::Entry::Occupied(e) = self.active.entry(addrs) {
            if e.get().netns == netns {
                return Some(e.remove());
            }
        }
        self.elsewhere.remove(&(netns, addrs))
    }

    /// Takes out the TIME_WAIT of a 4-tuple in a namespace if it is the one that started at
    /// `start_ns` (not a later one of the same 4-tuple), with one lookup.
    pub(super) fn take_started(
        &mut self,
        (netns, addrs): TimeWaitKey,
        start_ns: u64,
    ) -> Option<Active> {
        if let std::collections::hash_map::Entry::Occupied(e) = self.active.entry(addrs) {
            if e.get().netns == netns {
                return (e.get().start_ns == start_ns).then(|| e.remove());
            }
        }
        match self.elsewhere.entry((netns, addrs)) {
            std::collections::hash_map::Entry::Occupied(e) if e.get().start_ns == start_ns => {
                Some(e.remove())
            }
            _ => None,
        }
    }

    /// Puts a new TIME_WAIT in, with one lookup of its 4-tuple (a start is the tracker's most
    /// frequent event, and the map holds every socket in TIME_WAIT): returns the running one
    /// of its 4-tuple and namespace it replaces. The newest of a 4-tuple is the one flows find.
    pub(super) fn replace(&mut self, a: Active) -> Option<Active> {
        let key = (a.netns, a.addrs);
        match self.active.entry(a.addrs) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let older = std::mem::replace(e.get_mut(), a);
                if older.netns == key.0 {
                    return Some(older);
                }
                let same = self.elsewhere.remove(&key);
                self.elsewhere.insert((older.netns, older.addrs), older);
                same
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(a);
                self.elsewhere.remove(&key)
            }
        }
    }

    /// A TIME_WAIT counted under its destination (the connecting side's, or one whose flow
    /// is not known yet): its entry time for rates, its destination's totals.
    pub(super) fn count_destination_entry(&mut self, netns: u32, addrs: &FlowAddrs, ts_ns: u64) {
        let queue = self
            .entries
            .entry((netns, addrs.local.addr, addrs.remote))
            .or_default();
        queue.push_back(ts_ns);
        forget_old_entries(queue, ts_ns);
        *self.by_destination.entry(addrs.remote).or_default() += 1;
        *self
            .live_by_destination
            .entry((netns, addrs.remote))
            .or_default() += 1;
    }

    /// A TIME_WAIT whose side is known: the accepting one's or the connecting one's.
    pub(super) fn count_side(&mut self, accepted: bool) {
        if accepted {
            self.server_side += 1;
        } else {
            self.client_side += 1;
        }
    }

    /// The accepting side's TIME_WAIT, counted under its local service.
    pub(super) fn count_service_entry(&mut self, netns: u32, local: Endpoint, ts_ns: u64) {
        *self.live_by_service.entry((netns, local)).or_default() += 1;
        let queue = self.service_entries.entry((netns, local)).or_default();
        queue.push_back(ts_ns);
        forget_old_entries(queue, ts_ns);
    }
}
