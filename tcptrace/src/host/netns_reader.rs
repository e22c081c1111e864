//! Reads the network namespaces' port settings and TIME_WAIT overflow counters: tcptrace's
//! own directly; the others from one short-lived thread that enters each in turn (`setns`),
//! through its name under /run/netns or a process that lives in it. Namespaces holding
//! TIME_WAITs are read as they appear and every [`REFRESH`]; every namespace on the host is
//! found every [`DISCOVER`] (a namespace whose `tcp_max_tw_buckets` is full may hold none)
//! and read then. No namespace is held open between reads.
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    host::{
        conntrack::{self, ConntrackTable},
        netns::{own_netns, Namespace, Namespaces, PortSettings},
        procnet::TcpExtCounters,
        sockdiag::{self, DiagSocket, TimeWaitRead},
    },
    model::tcp::Endpoint,
};

/// Namespaces holding TIME_WAITs are read again this often (a sysctl changed shows within it).
pub const REFRESH: Duration = Duration::from_secs(2);
/// Every namespace on the host is found, and read, this often.
pub const DISCOVER: Duration = Duration::from_secs(10);
/// A namespace gone from the host and without TIME_WAITs for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What a refresh found.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// TIME_WAITs skipped (TCPTimeWaitOverflow grew) per namespace since its last read.
    pub overflowed: Vec<(u32, u64)>,
    /// Namespaces read for the first time, or whose settings or name changed.
    pub changed: Vec<Namespace>,
    /// Where listeners are watched: each namespace read, with its counters and listeners.
    pub samples: Vec<ListenSample>,
    /// A ctnetlink socket of each namespace whose conntrack table came to hold entries
    /// (for looking an entry up), and the namespaces whose socket is to be dropped (gone,
    /// or their table empty).
    pub conntrack_opened: Vec<(u32, OwnedFd)>,
    pub conntrack_closed: Vec<u32>,
    /// The timewait sockets of namespaces holding TIME_WAITs, as read; the namespaces
    /// holding TIME_WAITs that are gone (no way into them is left).
    pub time_wait: Vec<(u32, TimeWaitRead)>,
    pub gone: Vec<u32>,
}

/// A namespace's listeners and TcpExt counters, as read.
#[derive(Debug)]
pub struct ListenSample {
    pub netns: u32,
    pub counters: TcpExtCounters,
    pub listeners: Vec<DiagSocket>,
}

/// One namespace's read.
struct Sample {
    settings: PortSettings,
    counters: TcpExtCounters,
    listeners: Option<Vec<DiagSocket>>,
    conntrack: Option<ConntrackTable>,
    /// Opened where asked for and the table holds entries.
    ctnetlink: Option<OwnedFd>,
    /// Where asked for (it holds TIME_WAITs).
    time_wait: Option<TimeWaitRead>,
}

/// Timewait sockets are read at most this share of the time (a read of tens of thousands
/// takes milliseconds): reads of one namespace are spaced by this many times the last's cost.
const TIME_WAIT_READ_SPACING: u32 = 100;

/// A namespace whose listeners queue or drop, or that sends SYN cookies, is read every
/// second for this long.
const BUSY_FOR: Duration = Duration::from_secs(10);

struct Known {
    /// A way in: its /run/netns name or a /proc/PID/ns/net.
    way_in: Option<PathBuf>,
    name: Option<String>,
    read_at: Option<Instant>,
    /// When it last held a TIME_WAIT, or was last found on the host.
    seen: Instant,
    in_use: bool,
    counters: TcpExtCounters,
    /// Read every second until then (see [`BUSY_FOR`]).
    busy_until: Option<Instant>,
    /// The last error said about it (each said once).
    failed: Option<String>,
    /// Whether it holds TIME_WAITs; when its timewait sockets were last read, and what that
    /// read took.
    holds_tw: bool,
    tw_read: Option<(Instant, Duration)>,
}

/// Keeps the namespaces' settings read (see the module's comment).
pub struct NamespaceReader {
    own: Option<u32>,
    pub namespaces: Namespaces,
    known: HashMap<u32, Known>,
    discovered_at: Option<Instant>,
    /// Listeners are dumped with each read (`Refreshed::samples`).
    watch_listeners: bool,
    /// The samples of the read at start, handed over with the first refresh (the baseline
    /// of every namespace's counters).
    initial: Vec<ListenSample>,
    /// Namespaces whose ctnetlink socket was handed out (see `Refreshed::conntrack_opened`).
    ctnetlink: HashSet<u32>,
    /// The sockets opened at start, handed over with the first refresh.
    initial_sockets: Vec<(u32, OwnedFd)>,
}

impl NamespaceReader {
    /// Starts with every namespace of the host read.
    pub fn new() -> NamespaceReader {
        Self::watching(false)
    }

    /// As [`Self::new`]; with `listeners`, each read dumps the namespace's listeners too.
    pub fn watching(listeners: bool) -> NamespaceReader {
        let mut reader = NamespaceReader {
            own: own_netns(),
            namespaces: Namespaces::default(),
            known: HashMap::new(),
            discovered_at: None,
            watch_listeners: listeners,
            initial: Vec::new(),
            ctnetlink: HashSet::new(),
            initial_sockets: Vec::new(),
        };
        let first = reader.refresh([], Instant::now());
        (reader.initial, reader.initial_sockets) = (first.samples, first.conntrack_opened);
        reader
    }

    /// The ctnetlink sockets opened by the read at start (otherwise handed over with the
    /// first refresh).
    pub fn take_initial_sockets(&mut self) -> Vec<(u32, OwnedFd)> {
        std::mem::take(&mut self.initial_sockets)
    }

    /// The way into `inode` found by the last discovery, if any.
    pub fn way_in(&self, inode: u32) -> Option<PathBuf> {
        self.known.get(&inode)?.way_in.clone()
    }

    /// A known namespace to be read every second for a while (a NAT in it dropped a SYN:
    /// its conntrack socket and rules are wanted now, not at the next discovery).
    pub fn hurry(&mut self, inode: u32, now: Instant) {
        if let Some(k) = self.known.get_mut(&inode) {
            k.busy_until = Some(now + BUSY_FOR);
        }
    }

    /// Once a second: `in_use` are the namespaces holding TIME_WAITs now.
    pub fn refresh(&mut self, in_use: impl IntoIterator<Item = u32>, now: Instant) -> Refreshed {
        let fresh = |now| Known {
            way_in: None,
            name: None,
            read_at: None,
            seen: now,
            in_use: false,
            counters: TcpExtCounters::default(),
            busy_until: None,
            failed: None,
            holds_tw: false,
            tw_read: None,
        };
        for k in self.known.values_mut() {
            (k.in_use, k.holds_tw) = (false, false);
        }
        for (inode, holds_tw) in
            (in_use.into_iter().map(|i| (i, true))).chain(self.own.map(|o| (o, false)))
        {
            let k = self.known.entry(inode).or_insert_with(|| fresh(now));
            (k.seen, k.in_use) = (now, true);
            k.holds_tw |= holds_tw;
        }
        let discover = self
            .discovered_at
            .is_none_or(|at| now.duration_since(at) >= DISCOVER);
        if discover {
            self.discovered_at = Some(now);
            for (inode, (way_in, name)) in discover_namespaces() {
                let k = self.known.entry(inode).or_insert_with(|| fresh(now));
                k.seen = now;
                k.way_in = Some(way_in);
                k.name = name;
            }
        }
        let own = self.own;
        let due: Vec<u32> = self
            .known
            .iter()
            .filter(|(&inode, k)| {
                let busy = k.busy_until.is_some_and(|until| now < until);
                let every = match (Some(inode) == own || busy, k.in_use) {
                    (true, _) => Duration::ZERO,
                    (false, true) => REFRESH,
                    (false, false) => DISCOVER,
                };
                k.read_at.is_none_or(|at| now.duration_since(at) >= every)
            })
            .map(|(&inode, _)| inode)
            .collect();
        let mut out = Refreshed {
            samples: std::mem::take(&mut self.initial),
            conntrack_opened: std::mem::take(&mut self.initial_sockets),
            ..Refreshed::default()
        };
        // Where it holds TIME_WAITs, its timewait sockets too (spaced by their cost).
        let wants_tw = |k: &Known| {
            k.holds_tw
                && k.tw_read.is_none_or(|(at, took)| {
                    now.duration_since(at) >= took * TIME_WAIT_READ_SPACING
                })
        };
        let others: Vec<(u32, Option<PathBuf>, bool)> = (due.iter())
            .filter(|&&i| Some(i) != own)
            .filter_map(|&i| {
                self.known
                    .get(&i)
                    .map(|k| (i, k.way_in.clone(), wants_tw(k)))
            })
            .collect();
        let listeners = self.watch_listeners;
        let sockets = &self.ctnetlink;
        let mut results = read_in_namespaces(others, listeners, sockets, &mut out.gone);
        if let Some(own) = own.filter(|o| due.contains(o)) {
            let tw = self.known.get(&own).is_some_and(wants_tw);
            results.push((own, None, read_here(listeners, !sockets.contains(&own), tw)));
        }
        for (inode, way_in, result) in results {
            self.settle(inode, way_in, result, now, &mut out);
        }
        let (namespaces, sockets) = (&mut self.namespaces, &mut self.ctnetlink);
        self.known.retain(|inode, k| {
            let keep = Some(*inode) == own || now.duration_since(k.seen) < FORGET_AFTER;
            if !keep {
                namespaces.by_inode.remove(inode);
                if sockets.remove(inode) {
                    out.conntrack_closed.push(*inode);
                }
            }
            keep
        });
        out
    }

    /// Takes in one namespace's read.
    fn settle(
        &mut self,
        inode: u32,
        way_in: Option<PathBuf>,
        result: Result<Sample>,
        now: Instant,
        out: &mut Refreshed,
    ) {
        let Some(k) = self.known.get_mut(&inode) else {
            return;
        };
        k.read_at = Some(now);
        if way_in.is_some() {
            k.way_in = way_in;
        }
        let (settings, counters, listeners, table) = match result {
            Ok(mut sample) => {
                k.failed = None;
                if let Some(read) = sample.time_wait.take() {
                    k.tw_read = Some((now, read.took));
                    out.time_wait.push((inode, read));
                }
                if let Some(socket) = sample.ctnetlink {
                    self.ctnetlink.insert(inode);
                    out.conntrack_opened.push((inode, socket));
                }
                (
                    Some(sample.settings),
                    sample.counters,
                    sample.listeners,
                    sample.conntrack,
                )
            }
            Err(e) => {
                let text = format!("{e:#}");
                // Said once, and only of a namespace that holds TIME_WAITs: the forecast
                // needs it (one found on the host may be going away).
                if k.in_use && k.failed.as_ref() != Some(&text) {
                    eprintln!(
                        "tcptrace: warning: network namespace {inode}: {text}; its forecast \
                         assumes the kernel's defaults (32768-60999, tcp_tw_reuse=2)"
                    );
                    k.failed = Some(text);
                }
                (None, TcpExtCounters::default(), None, None)
            }
        };
        if table.is_some_and(|t| t.entries == 0) && self.ctnetlink.remove(&inode) {
            out.conntrack_closed.push(inode);
        }
        let previous_table = self.namespaces.get(inode).and_then(|n| n.conntrack);
        if let Some(t) = table {
            // A filling table, or one dropping, is read every second.
            let dropping = previous_table.is_some_and(|p| t.drop > p.drop);
            if t.fill() >= conntrack::WATCH_FROM || dropping {
                k.busy_until = Some(now + BUSY_FOR);
            }
        }
        if let (Some(before), Some(count)) = (k.counters.tw_overflow, counters.tw_overflow) {
            if count > before {
                out.overflowed.push((inode, count - before));
            }
        }
        if let Some(listeners) = listeners {
            let queueing = listeners.iter().any(|l| l.recv_queue > 0);
            let moved = counters.listen_drops != k.counters.listen_drops
                || counters.syncookies_sent != k.counters.syncookies_sent;
            if queueing || (moved && k.counters != TcpExtCounters::default()) {
                k.busy_until = Some(now + BUSY_FOR);
            }
            out.samples.push(ListenSample {
                netns: inode,
                counters,
                listeners,
            });
        }
        if counters != TcpExtCounters::default() {
            k.counters = counters;
        }
        let name = k
            .name
            .clone()
            .or_else(|| k.way_in.as_deref().and_then(run_netns_name));
        let previous = self.namespaces.get(inode);
        let ns = Namespace {
            inode,
            name,
            own: Some(inode) == self.own,
            // A namespace read once keeps its last settings through a failed read.
            settings: settings.or_else(|| previous.and_then(|p| p.settings.clone())),
            conntrack: table.or(previous_table),
        };
        if previous != Some(&ns) {
            out.changed.push(ns.clone());
            self.namespaces.insert(ns);
        }
    }
}

impl Default for NamespaceReader {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the calling thread's namespace: its settings, counters and, with `listeners`, its
/// listening sockets.
fn read_here(listeners: bool, want_ctnetlink: bool, time_wait: bool) -> Result<Sample> {
    let settings = PortSettings::read_here()?;
    let conntrack = ConntrackTable::read_here();
    let ctnetlink = match conntrack {
        Some(t) if want_ctnetlink && t.entries > 0 => conntrack::open_here().ok(),
        _ => None,
    };
    let counters = fs::read_to_string("/proc/thread-self/net/netstat")
        .map(|t| TcpExtCounters::parse(&t))
        .unwrap_or_default();
    let listeners = match listeners {
        true => Some(sockdiag::listeners().context("listing its listeners (sock_diag)")?),
        false => None,
    };
    let time_wait = match time_wait {
        true => Some(sockdiag::time_wait_read().context("reading its timewait sockets")?),
        false => None,
    };
    Ok(Sample {
        settings,
        counters,
        listeners,
        conntrack,
        ctnetlink,
        time_wait,
    })
}

/// Flows open toward `dest` in namespace `netns` (sock_diag), where they can be read.
pub fn open_flows_toward(netns: u32, dest: Endpoint) -> Option<u64> {
    let sockets = in_namespace(netns, sockdiag::open_sockets).ok()?.ok()?;
    Some(sockets.iter().filter(|s| s.addrs.remote == dest).count() as u64)
}

type Read = (u32, Option<PathBuf>, Result<Sample>);
/// A namespace, the way into it, and whether its timewait sockets are wanted.
type Entering = (u32, Result<(PathBuf, File)>, bool);

/// Reads each namespace from inside it, all from one thread of their own (only that thread
/// changes namespace; it ends after the reads).
/// `gone` gets the namespaces asked to be read for their TIME_WAITs that no way leads into.
fn read_in_namespaces(
    namespaces: Vec<(u32, Option<PathBuf>, bool)>,
    listeners: bool,
    sockets: &HashSet<u32>,
    gone: &mut Vec<u32>,
) -> Vec<Read> {
    if namespaces.is_empty() {
        return Vec::new();
    }
    let entered: Vec<Entering> = namespaces
        .into_iter()
        .map(|(inode, known, tw)| (inode, way_into(inode, known), tw))
        .collect();
    // A namespace gone with its TIME_WAITs is not read (nor warned about).
    let (lost, entered): (Vec<_>, Vec<_>) =
        (entered.into_iter()).partition(|(_, way, tw)| *tw && way.is_err());
    gone.extend(lost.into_iter().map(|(inode, _, _)| inode));
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                entered
                    .into_iter()
                    .map(|(inode, way, tw)| match way {
                        Err(e) => (inode, None, Err(e)),
                        Ok((path, file)) => {
                            let want = !sockets.contains(&inode);
                            let read =
                                enter(&file, &path).and_then(|()| read_here(listeners, want, tw));
                            (inode, Some(path), read)
                        }
                    })
                    .collect::<Vec<Read>>()
            })
            .join()
            .unwrap_or_default()
    })
    .into_iter()
    .map(|(inode, path, read)| {
        let read = read.with_context(|| "reading its sysctls".to_string());
        (inode, path, read)
    })
    .collect()
}

#[path = "netns_ways.rs"]
mod ways;
pub(crate) use ways::{discover_namespaces, enter, way_into};
pub use ways::{in_namespace, in_namespace_via, run_netns_name};

#[cfg(test)]
#[path = "netns_reader_tests.rs"]
mod tests;
