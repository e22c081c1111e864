//! Listen queues per listener: each listener's accept queue and backlog (sock_diag, as
//! `ss -lt` shows them), the handshakes it dropped (its `sk_drops`, which the kernel raises
//! for every handshake a listener drops: accept queue full, SYN queue full without cookies),
//! and per network namespace why (ListenOverflows: the accept queue was full; the rest of
//! ListenDrops) and the SYN cookies sent (SyncookiesSent). Sampled each second by the
//! namespace reader.
use std::net::{IpAddr, Ipv4Addr};

use foldhash::HashMap;
use serde::Serialize;

use crate::{
    host::clock::human_duration,
    host::{netns_reader::ListenSample, procnet::TcpExtCounters, sockdiag::DiagSocket},
    model::tcp::{Endpoint, FlowAddrs, Process},
    model::workload::Workload,
};

/// A listener dropping handshakes, or a namespace sending SYN cookies, is alerted at most
/// this often; an episode ends after as long without drops.
const ALERT_EVERY_NS: u64 = 10_000_000_000;

/// Handshakes dropped and SYN cookies sent since tracing started, summed over namespaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListenTotals {
    /// ListenOverflows: the accept queue was full.
    pub accept_queue_full: u64,
    /// The rest of ListenDrops (a full SYN queue without cookies, and others).
    pub other_drops: u64,
    pub syncookies_sent: u64,
}

/// One listener as last sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub netns: u32,
    pub endpoint: Endpoint,
    pub inode: u32,
    /// The listening socket's cgroup (sock_diag; 0: not said).
    pub cgroup: u64,
    /// Connections waiting in the accept queue now, and the backlog.
    pub queue: u32,
    pub backlog: u32,
    /// The fullest the accept queue was seen.
    pub max_queue: u32,
    /// Handshakes dropped since tracing started, and in the last sample.
    pub dropped: u64,
    pub dropped_last: u64,
    /// When the current episode of drops began (kernel time).
    pub dropping_since: Option<u64>,
    kernel_drops: Option<u32>,
    last_drop_ns: u64,
    last_alert_ns: u64,
    dropped_at_alert: u64,
}

/// What an alert about listeners says.
#[derive(Clone, Debug, PartialEq)]
pub enum ListenAlert {
    /// A listener dropped handshakes.
    Drops {
        ts_ns: u64,
        listener: Listener,
        /// Dropped since the last alert for it.
        dropped: u64,
        owner: Option<Process>,
        /// The listener's workload (from its cgroup), when its owner is known.
        workload: Option<Workload>,
        addrs: FlowAddrs,
        netns_label: String,
        /// In its namespace since the last sample: handshakes dropped with the accept queue
        /// full, and SYN cookies sent.
        accept_queue_full: u64,
    },
    /// A namespace sent SYN cookies (a SYN queue full, or `tcp_syncookies=2`).
    SynCookies {
        ts_ns: u64,
        netns: u32,
        netns_label: String,
        sent: u64,
        addrs: FlowAddrs,
        owner: Option<Process>,
    },
}

#[derive(Default)]
pub struct ListenerWatch {
    listeners: HashMap<(u32, Endpoint), Listener>,
    counters: HashMap<u32, TcpExtCounters>,
    cookie_alerts: HashMap<u32, u64>,
    pub totals: ListenTotals,
}

fn growth(before: Option<u64>, now: Option<u64>) -> u64 {
    match (before, now) {
        (Some(b), Some(n)) => n.saturating_sub(b),
        _ => 0,
    }
}

fn unspecified() -> Endpoint {
    Endpoint::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
}

impl ListenerWatch {
    /// The listeners as last sampled.
    pub fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.values()
    }

    /// Takes in one namespace's sample; returns what is to be alerted (`owner` names a
    /// listener's process, `label` a namespace).
    pub fn sample(
        &mut self,
        s: &ListenSample,
        now_ns: u64,
        owner: impl Fn(u32, u16) -> Option<(Process, Workload)>,
        label: &str,
    ) -> Vec<ListenAlert> {
        let (overflows, cookies) = self.count(s);
        let mut alerts = Vec::new();
        let mut present = Vec::with_capacity(s.listeners.len());
        for socket in &s.listeners {
            let key = (s.netns, socket.addrs.local);
            present.push(key);
            let l = self
                .listeners
                .entry(key)
                .or_insert_with(|| Listener::new(s.netns, socket));
            let Some(dropped) = l.update(socket, now_ns) else {
                continue;
            };
            let (process, workload) = owner(s.netns, l.endpoint.port).unzip();
            alerts.push(ListenAlert::Drops {
                ts_ns: now_ns,
                listener: l.clone(),
                dropped,
                owner: process,
                workload,
                addrs: FlowAddrs {
                    local: l.endpoint,
                    remote: unspecified(),
                },
                netns_label: label.to_string(),
                accept_queue_full: overflows,
            });
        }
        // Listeners gone from this namespace are forgotten.
        self.listeners
            .retain(|key, _| key.0 != s.netns || present.contains(key));
        alerts.extend(self.cookie_alert(s.netns, cookies, now_ns, label));
        alerts
    }

    /// The namespace's counters since its last sample, added to the totals: (accept queue
    /// overflows, SYN cookies sent).
    fn count(&mut self, s: &ListenSample) -> (u64, u64) {
        let before = self.counters.insert(s.netns, s.counters);
        let (overflows, drops, cookies) = match before {
            Some(b) => (
                growth(b.listen_overflows, s.counters.listen_overflows),
                growth(b.listen_drops, s.counters.listen_drops),
                growth(b.syncookies_sent, s.counters.syncookies_sent),
            ),
            None => (0, 0, 0),
        };
        self.totals.accept_queue_full += overflows;
        self.totals.other_drops += drops.saturating_sub(overflows);
        self.totals.syncookies_sent += cookies;
        (overflows, cookies)
    }

    /// SYN cookies sent in a namespace, said at most every `ALERT_EVERY_NS`.
    fn cookie_alert(
        &mut self,
        netns: u32,
        cookies: u64,
        now_ns: u64,
        label: &str,
    ) -> Option<ListenAlert> {
        if cookies == 0 {
            return None;
        }
        let last = self.cookie_alerts.entry(netns).or_insert(0);
        if *last != 0 && now_ns.saturating_sub(*last) < ALERT_EVERY_NS {
            return None;
        }
        *last = now_ns;
        Some(ListenAlert::SynCookies {
            ts_ns: now_ns,
            netns,
            netns_label: label.to_string(),
            sent: cookies,
            addrs: FlowAddrs {
                local: unspecified(),
                remote: unspecified(),
            },
            owner: None,
        })
    }
}

impl Listener {
    /// A listener first seen in a sample.
    fn new(netns: u32, socket: &DiagSocket) -> Listener {
        Listener {
            netns,
            endpoint: socket.addrs.local,
            inode: socket.inode,
            cgroup: socket.cgroup,
            queue: 0,
            backlog: 0,
            max_queue: 0,
            dropped: 0,
            dropped_last: 0,
            dropping_since: None,
            kernel_drops: socket.drops,
            last_drop_ns: 0,
            last_alert_ns: 0,
            dropped_at_alert: 0,
        }
    }

    /// Takes in this listener's line of a sample; returns the handshakes dropped since the
    /// last alert when one is due (drops, and the last alert at least `ALERT_EVERY_NS` ago).
    fn update(&mut self, socket: &DiagSocket, now_ns: u64) -> Option<u64> {
        if self.inode != socket.inode {
            // Another socket listens there now: its drops start from its own count.
            (self.inode, self.kernel_drops, self.max_queue) = (socket.inode, socket.drops, 0);
        }
        self.cgroup = socket.cgroup;
        self.queue = socket.recv_queue;
        self.backlog = socket.send_queue;
        self.max_queue = self.max_queue.max(socket.recv_queue);
        let new = match (self.kernel_drops, socket.drops) {
            (Some(b), Some(n)) => u64::from(n.wrapping_sub(b)),
            _ => 0,
        };
        self.kernel_drops = socket.drops.or(self.kernel_drops);
        self.dropped += new;
        self.dropped_last = new;
        if new == 0 {
            if now_ns.saturating_sub(self.last_drop_ns) >= ALERT_EVERY_NS {
                self.dropping_since = None;
            }
            return None;
        }
        self.last_drop_ns = now_ns;
        self.dropping_since.get_or_insert(now_ns);
        if self.last_alert_ns != 0 && now_ns.saturating_sub(self.last_alert_ns) < ALERT_EVERY_NS {
            return None;
        }
        let dropped = self.dropped - self.dropped_at_alert;
        (self.last_alert_ns, self.dropped_at_alert) = (now_ns, self.dropped);
        Some(dropped)
    }
}

impl ListenAlert {
    pub fn kind(&self) -> &'static str {
        match self {
            ListenAlert::Drops { .. } => "listen_drops",
            ListenAlert::SynCookies { .. } => "syn_cookies",
        }
    }

    pub fn ts_ns(&self) -> u64 {
        match self {
            ListenAlert::Drops { ts_ns, .. } | ListenAlert::SynCookies { ts_ns, .. } => *ts_ns,
        }
    }

    pub fn owner(&self) -> &Option<Process> {
        match self {
            ListenAlert::Drops { owner, .. } | ListenAlert::SynCookies { owner, .. } => owner,
        }
    }

    pub fn workload(&self) -> Option<&Workload> {
        match self {
            ListenAlert::Drops { workload, .. } => workload.as_ref(),
            ListenAlert::SynCookies { .. } => None,
        }
    }

    pub fn addrs(&self) -> &FlowAddrs {
        match self {
            ListenAlert::Drops { addrs, .. } | ListenAlert::SynCookies { addrs, .. } => addrs,
        }
    }

    /// One line of explanation.
    pub fn detail(&self) -> String {
        match self {
            ListenAlert::Drops {
                ts_ns,
                listener: l,
                dropped,
                netns_label,
                accept_queue_full,
                ..
            } => {
                let mut text = format!(
                    "listener :{} in netns {netns_label} dropped {dropped} handshakes; accept \
                     queue {}/{} now, {} at most",
                    l.endpoint.port, l.queue, l.backlog, l.max_queue
                );
                if *accept_queue_full > 0 {
                    text.push_str(&format!(
                        " ({accept_queue_full} with the accept queue full in the last second)"
                    ));
                }
                if let Some(t) = l.dropping_since.filter(|&t| t < *ts_ns) {
                    let held = human_duration(ts_ns - t);
                    text.push_str(&format!("; dropping for {held}"));
                }
                text
            }
            ListenAlert::SynCookies {
                sent, netns_label, ..
            } => format!(
                "netns {netns_label} sent {sent} SYN cookies: a SYN queue was full (a SYN flood, \
                 or a listener not accepting) or net.ipv4.tcp_syncookies=2"
            ),
        }
    }
}

#[cfg(test)]
#[path = "listeners_tests.rs"]
mod tests;
