//! The driver's once-a-second work on network namespaces: the namespaces read (each one's
//! ports, reuse and bucket limit; TIME_WAIT overflow; listeners and their queues), the
//! TIME_WAIT tracker's upkeep and the exhaustion forecast's alerts, and the listeners' drops
//! and SYN cookies as alerts.
use std::{collections::HashSet, io, os::fd::OwnedFd, time::Instant};

use crate::{
    host::{
        conntrack::ConntrackLookup,
        netns::Namespaces,
        netns_reader::{in_namespace_via, NamespaceReader},
        sockdiag,
    },
    model::{tcp::Process, workload::Workload},
    output::consumer::{Consumer, Seen},
    state::{
        alert::{Alert, ExhaustionWarning},
        forecast::{forecasts, WARN_AT},
        listeners::ListenerWatch,
        nat::ConntrackWatch,
        timewait::{RateKey, TimeWaitTracker},
    },
};

/// TIME_WAITs missing from a read whose 4-tuple is looked up (is a connection holding it?)
/// per tick at most; the others are judged killed.
const LOOKUPS_PER_TICK: usize = 1_000;

/// A space warned about is warned about again only after its forecast fell under this.
const REARM_BELOW: f64 = WARN_AT * 0.75;

pub struct NamespaceUpkeep {
    reader: NamespaceReader,
    /// Spaces whose forecast is over [`WARN_AT`] and were alerted on.
    warned: HashSet<RateKey>,
    /// Where listen queues are watched.
    pub listeners: Option<ListenerWatch>,
    conntrack: ConntrackWatch,
    /// ctnetlink sockets of namespaces whose conntrack table holds entries, opened by the
    /// last reads, and namespaces whose socket is to be dropped: for the session to take.
    pub conntrack_opened: Vec<(u32, OwnedFd)>,
    pub conntrack_closed: Vec<u32>,
}

impl NamespaceUpkeep {
    pub fn new(watch_listeners: bool) -> NamespaceUpkeep {
        let mut reader = NamespaceReader::watching(watch_listeners);
        let conntrack_opened = reader.take_initial_sockets();
        NamespaceUpkeep {
            reader,
            warned: HashSet::new(),
            listeners: watch_listeners.then(ListenerWatch::default),
            conntrack: ConntrackWatch::default(),
            conntrack_opened,
            conntrack_closed: Vec::new(),
        }
    }

    /// Namespaces to read at the next tick (a NAT whose rules and conntrack are wanted).
    pub fn hurry(&mut self, inodes: Vec<u32>) {
        for inode in inodes {
            self.reader.hurry(inode, Instant::now());
        }
    }

    /// The ctnetlink sockets opened and closed by the last reads, handed to the lookups.
    pub fn hand_sockets(&mut self, lookup: &mut ConntrackLookup) {
        for (netns, socket) in self.conntrack_opened.drain(..) {
            lookup.add(netns, socket);
        }
        for netns in self.conntrack_closed.drain(..) {
            lookup.remove(netns);
        }
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.reader.namespaces
    }

    /// Once a second: `tw` where TIME_WAIT is traced; `owner` names who listens on a port of
    /// a namespace; `release` gives freed memory back to the system.
    #[allow(clippy::too_many_arguments)]
    pub fn tick<C: Consumer>(
        &mut self,
        tw: Option<&mut TimeWaitTracker>,
        consumer: &mut C,
        now_ns: u64,
        alerts: bool,
        owner: impl Fn(u32, u16) -> Option<(Process, Workload)>,
        release: impl FnOnce(),
    ) -> io::Result<()> {
        let in_use: Vec<u32> = match &tw {
            Some(tw) => tw.namespaces_in_use().collect(),
            None => Vec::new(),
        };
        let tables_before: Vec<(u32, crate::host::conntrack::ConntrackTable)> = (self.reader)
            .namespaces
            .by_inode
            .values()
            .filter_map(|ns| Some((ns.inode, ns.conntrack?)))
            .collect();
        let mut refreshed = self.reader.refresh(in_use, Instant::now());
        self.conntrack_opened
            .append(&mut refreshed.conntrack_opened);
        self.conntrack_closed
            .append(&mut refreshed.conntrack_closed);
        for ns in &refreshed.changed {
            let Some(now) = ns.conntrack else { continue };
            let before = (tables_before.iter())
                .find(|(inode, _)| *inode == ns.inode)
                .map(|(_, t)| *t);
            let alert = self
                .conntrack
                .read(ns.inode, &ns.label(), before, now, now_ns);
            if let Some(alert) = alert.filter(|_| alerts) {
                consumer.seen(Seen::Alert(&Alert::Nat(&alert)))?;
            }
        }
        if let Some(watch) = self.listeners.as_mut() {
            for sample in &refreshed.samples {
                let label = self.reader.namespaces.label(sample.netns);
                for alert in watch.sample(sample, now_ns, &owner, &label) {
                    if alerts {
                        consumer.seen(Seen::Alert(&Alert::Listen(&alert)))?;
                    }
                }
            }
        }
        let Some(tw) = tw else {
            return Ok(());
        };
        // Last tick's reads judged now that the ring was read past them (a 4-tuple a
        // connection holds now was reused); this tick's after.
        let held_open = (tw.suspects_to_look_up(LOOKUPS_PER_TICK).into_iter())
            .filter_map(|(netns, tuples)| {
                let way_in = self.reader.way_in(netns);
                let held = in_namespace_via(netns, way_in, || sockdiag::held_open(&tuples));
                Some((netns, held.ok()?.ok()?))
            })
            .collect();
        for finished in tw.apply_suspects(&held_open) {
            consumer.seen(Seen::Finished(&finished))?;
        }
        for (netns, read) in &refreshed.time_wait {
            tw.reconcile(*netns, read.read_ns, &read.present);
        }
        for &netns in &refreshed.gone {
            tw.namespace_gone(netns, now_ns);
        }
        tw.expire_preexisting(now_ns);
        tw.prune_entry_rates(now_ns);
        if tw.shrink_sparse_maps() {
            release();
        }
        for (netns, newly) in refreshed.overflowed {
            tw.overflowed(netns, newly);
            consumer.seen(Seen::TimeWaitOverflowed { netns, newly })?;
            let label = self.reader.namespaces.label(netns);
            let limit = self
                .reader
                .namespaces
                .get(netns)
                .and_then(|ns| ns.settings.as_ref()?.max_tw_buckets)
                .map_or_else(String::new, |b| format!(" ({b})"));
            consumer.warning(&format!(
                "{newly} TIME_WAITs skipped in network namespace {label}: its \
                 net.ipv4.tcp_max_tw_buckets{limit} is full (TCPTimeWaitOverflow)"
            ));
        }
        if alerts {
            self.alert_on_forecasts(tw, consumer, now_ns)?;
        }
        Ok(())
    }

    /// A forecast crossing [`WARN_AT`] is an alert, once per crossing.
    fn alert_on_forecasts<C: Consumer>(
        &mut self,
        tw: &TimeWaitTracker,
        consumer: &mut C,
        now_ns: u64,
    ) -> io::Result<()> {
        let current = forecasts(tw, now_ns, &self.reader.namespaces);
        let mut still_hot = HashSet::new();
        for f in current {
            let key: RateKey = (
                f.netns,
                f.laddr,
                crate::model::tcp::Endpoint::new(f.raddr, f.rport),
            );
            if f.utilization >= REARM_BELOW && self.warned.contains(&key) {
                still_hot.insert(key);
                continue;
            }
            if f.utilization > WARN_AT {
                still_hot.insert(key);
                consumer.seen(Seen::Alert(&Alert::Exhaustion(&ExhaustionWarning::new(
                    now_ns, f,
                ))))?;
            }
        }
        self.warned = still_hot;
        Ok(())
    }
}
