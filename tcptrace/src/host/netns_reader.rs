//! Reads the network namespaces' port settings and TIME_WAIT overflow counters: tcptrace's
//! own directly; the others from one short-lived thread that enters each in turn (`setns`),
//! through its name under /run/netns or a process that lives in it. Namespaces holding
//! TIME_WAITs are read as they appear and every [`REFRESH`]; every namespace on the host is
//! found every [`DISCOVER`] (a namespace whose `tcp_max_tw_buckets` is full may hold none)
//! and read then. No namespace is held open between reads.
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    host::{
        conntrack::{self, ConntrackTable},
        netns::{inode_of, own_netns, Namespace, Namespaces, PortSettings},
        procnet::TcpExtCounters,
        sockdiag::{self, DiagSocket},
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
}

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
        };
        for k in self.known.values_mut() {
            k.in_use = false;
        }
        for inode in in_use.into_iter().chain(self.own) {
            let k = self.known.entry(inode).or_insert_with(|| fresh(now));
            (k.seen, k.in_use) = (now, true);
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
        let others: Vec<(u32, Option<PathBuf>)> = due
            .iter()
            .filter(|&&i| Some(i) != own)
            .map(|&i| (i, self.known.get(&i).and_then(|k| k.way_in.clone())))
            .collect();
        let listeners = self.watch_listeners;
        let sockets = &self.ctnetlink;
        let mut results = read_in_namespaces(others, listeners, sockets);
        if let Some(own) = own.filter(|o| due.contains(o)) {
            results.push((own, None, read_here(listeners, !sockets.contains(&own))));
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
            Ok(sample) => {
                k.failed = None;
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
fn read_here(listeners: bool, want_ctnetlink: bool) -> Result<Sample> {
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
    Ok(Sample {
        settings,
        counters,
        listeners,
        conntrack,
        ctnetlink,
    })
}

/// The name of a /run/netns/NAME path.
pub fn run_netns_name(path: &Path) -> Option<String> {
    (path.parent() == Some(Path::new("/run/netns")))
        .then(|| path.file_name()?.to_str().map(str::to_string))
        .flatten()
}

/// Every namespace on the host with a way in and its /run/netns name: those named under
/// /run/netns (`ip netns add`), and those of every process (readlink only).
pub(crate) fn discover_namespaces() -> HashMap<u32, (PathBuf, Option<String>)> {
    let mut found = HashMap::new();
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let path = e.path();
            if let Some(inode) = inode_of(&path) {
                let name = e.file_name().to_str().map(str::to_string);
                found.insert(inode, (path, name));
            }
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let pid = e.file_name();
            if !pid
                .to_str()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = e.path().join("ns/net");
            let Ok(link) = fs::read_link(&path) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok());
            if let Some(inode) = inode {
                found.entry(inode).or_insert((path, None));
            }
        }
    }
    found
}

/// A way into `inode`: the one known if it still leads there, else one found anew.
pub(crate) fn way_into(inode: u32, known: Option<PathBuf>) -> Result<(PathBuf, File)> {
    let candidates = known.into_iter().chain(
        std::iter::once_with(|| discover_namespaces().remove(&inode).map(|(p, _)| p)).flatten(),
    );
    for path in candidates {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file
            .metadata()
            .is_ok_and(|m| u32::try_from(m.ino()).ok() == Some(inode))
        {
            return Ok((path, file));
        }
    }
    bail!("no process lives in it and /run/netns does not name it")
}

/// Moves the calling thread into the namespace `file` (opened from `path`) refers to. Only
/// threads that end after their work inside call it.
pub(crate) fn enter(file: &File, path: &Path) -> Result<()> {
    // SAFETY: setns with an open namespace fd changes only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // The OS error kept as the source: callers tell EPERM (no CAP_SYS_ADMIN) apart.
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering it through {}", path.display()));
    }
    Ok(())
}

/// Runs `f` inside namespace `inode` (on a thread of its own that enters it), or on this
/// thread when it is tracing's own.
pub fn in_namespace<T: Send>(inode: u32, f: impl FnOnce() -> T + Send) -> Result<T> {
    if inode == 0 || own_netns() == Some(inode) {
        return Ok(f());
    }
    let (path, file) = way_into(inode, None)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&file, &path).with_context(|| format!("network namespace {inode}"))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| bail!("the thread inside network namespace {inode} panicked"))
    })
}

/// Flows open toward `dest` in namespace `netns` (sock_diag), where they can be read.
pub fn open_flows_toward(netns: u32, dest: Endpoint) -> Option<u64> {
    let sockets = in_namespace(netns, sockdiag::open_sockets).ok()?.ok()?;
    Some(sockets.iter().filter(|s| s.addrs.remote == dest).count() as u64)
}

type Read = (u32, Option<PathBuf>, Result<Sample>);

/// Reads each namespace from inside it, all from one thread of their own (only that thread
/// changes namespace; it ends after the reads).
fn read_in_namespaces(
    namespaces: Vec<(u32, Option<PathBuf>)>,
    listeners: bool,
    sockets: &HashSet<u32>,
) -> Vec<Read> {
    if namespaces.is_empty() {
        return Vec::new();
    }
    let entered: Vec<(u32, Result<(PathBuf, File)>)> = namespaces
        .into_iter()
        .map(|(inode, known)| (inode, way_into(inode, known)))
        .collect();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                entered
                    .into_iter()
                    .map(|(inode, way)| match way {
                        Err(e) => (inode, None, Err(e)),
                        Ok((path, file)) => {
                            let want = !sockets.contains(&inode);
                            let read =
                                enter(&file, &path).and_then(|()| read_here(listeners, want));
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

#[cfg(test)]
#[path = "netns_reader_tests.rs"]
mod tests;
