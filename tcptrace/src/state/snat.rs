//! The source NAT's port forecast, per (NAT namespace, NAT address, destination): every
//! connection a source NAT translates holds one of the NAT's ports toward that destination
//! while it is open and, once closed, for conntrack's TIME_WAIT timeout
//! (`nf_conntrack_tcp_timeout_time_wait`, 120 s). Entries held ≈ new connections per second ×
//! (time open + the timeout) (Little's law), against the ports the NAT rule gives. The
//! connections are counted as they end (their entry is looked up then: `ConntrackLookup`).
use std::{collections::VecDeque, net::IpAddr};

use foldhash::HashMap;

use crate::{
    host::nat_rules::NatPorts,
    model::{nat::Conntrack, tcp::Endpoint},
};

/// Above this share of its ports held, a NAT's destination is warned about.
pub const WARN_AT: f64 = 0.8;
/// Warned about again only after it fell under this.
const REARM_BELOW: f64 = 0.6;
/// The rate is taken over this many seconds.
const RATE_WINDOW_S: u64 = 10;
/// Spaces followed at most; beyond, the one quiet longest is forgotten (counted).
const MAX_SPACES: usize = 1_024;
/// Sources remembered per space.
const MAX_SOURCES: usize = 4;
/// The timeout assumed where the NAT's namespace could not be read (the kernel's default).
pub const DEFAULT_HOLD_S: f64 = 120.0;

/// (the NAT's namespace, the NAT address, the destination as the NAT sent to it).
pub type SnatKey = (u32, IpAddr, Endpoint);

#[derive(Debug, Default)]
struct Space {
    /// Per second (newest last, the last [`RATE_WINDOW_S`]): NATed connections that ended,
    /// and the seconds they were open, summed.
    seconds: VecDeque<(u64, u32, f64)>,
    /// The port the NAT last gave (picks among several rules).
    last_port: Option<u16>,
    /// The sources behind the NAT, newest first: address, and who where known.
    sources: Vec<(IpAddr, Option<String>)>,
    warned: bool,
    last_s: u64,
}

/// One space's forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct SnatForecast {
    pub netns: u32,
    /// The namespace as alerts name it: `4026532304 "r"`.
    pub netns_label: String,
    pub nat: IpAddr,
    pub destination: Endpoint,
    /// NATed connections per second (ended, over the last 10 s), and how long they were open
    /// on average.
    pub rate_per_s: f64,
    pub open_s: f64,
    /// How long a closed connection's entry stays, and whether that was read.
    pub hold_s: f64,
    pub hold_read: bool,
    pub ports: NatPorts,
    /// Entries held toward the destination (estimate), and of them, open connections'.
    pub held: f64,
    pub held_open: f64,
    /// `held` over the ports.
    pub utilization: f64,
    /// The kernel evicts closed entries to reuse their ports (Linux 6.5); `None`: unknown.
    pub evicts_closed: Option<bool>,
    /// Who is behind the NAT: `10.0.0.2 (pod acme/web)`.
    pub sources: Vec<String>,
}

impl SnatForecast {
    /// `SNAT 605% 10.0.0.1 > 10.0.0.2:80 (24 entries, 4 ports)`: `top`'s header.
    pub fn brief(&self) -> String {
        format!(
            "SNAT {:.0}% {} > {} ({:.0} entries, {} ports)",
            self.utilization * 100.0,
            self.nat,
            self.destination,
            self.held,
            self.ports.count()
        )
    }

    /// The figures in words, then what happens past 100% on this kernel.
    pub fn explain(&self) -> String {
        let sources = match self.sources.as_slice() {
            [] => String::new(),
            s => format!(" from {}", s.join(", ")),
        };
        let hold = match self.hold_read {
            true => format!("{:.0} s", self.hold_s),
            false => format!("{:.0} s assumed", self.hold_s),
        };
        let mut text = format!(
            "connections{sources} source-NATed to {} toward {} (netns {}): {:.1}/s, each holding \
             one of {} while open ({}) and {hold} after close \
             (nf_conntrack_tcp_timeout_time_wait): about {:.0} entries held, {:.0}% of the \
             ports ({:.0} of them open connections'). ",
            self.nat,
            self.destination,
            self.netns_label,
            self.rate_per_s,
            self.ports.describe(),
            crate::host::clock::human_duration((self.open_s * 1e9) as u64),
            self.held,
            self.utilization * 100.0,
            self.held_open,
        );
        text.push_str(match self.evicts_closed {
            Some(true) => {
                "Past 100% a new connection gets a port only by evicting a closed entry whose \
                 sequence number its SYN is past (Linux 6.5 and later): its SYN is dropped when \
                 no port it tries qualifies (every port held open, or a few ports), and a \
                 server that closed first may reject the reused 4-tuple (PAWS)"
            }
            _ => "Past 100% SYNs are dropped (NETFILTER_DROP) until entries expire",
        });
        text.push_str(
            ": widen the NAT's port range, add NAT addresses, or reuse connections (keep-alive)",
        );
        text
    }
}

/// The NATs' destinations followed, as the connections they translate end.
#[derive(Debug, Default)]
pub struct SnatTracker {
    spaces: HashMap<SnatKey, Space>,
    /// Spaces forgotten to stay within [`MAX_SPACES`].
    pub evicted: u64,
}

/// What the forecast takes from the host for one space.
pub struct Capacity {
    /// The NAT's namespace, as alerts name it.
    pub netns_label: String,
    pub ports: NatPorts,
    /// `nf_conntrack_tcp_timeout_time_wait` of the NAT's namespace, where read.
    pub hold_s: Option<f64>,
    pub evicts_closed: Option<bool>,
}

impl SnatTracker {
    /// A connection through a source NAT ended (`netns`: the NAT's); `open_s`: how long it was
    /// open; `who`: its workload, where known. Returns its space's key.
    pub fn ended(
        &mut self,
        netns: u32,
        ct: &Conntrack,
        now_s: u64,
        open_s: f64,
        who: Option<String>,
    ) -> SnatKey {
        let key = key_of(netns, ct);
        let space = self.space(key, now_s);
        match space.seconds.back_mut() {
            Some((s, n, open)) if *s == now_s => {
                *n += 1;
                *open += open_s;
            }
            _ => space.seconds.push_back((now_s, 1, open_s)),
        }
        while space
            .seconds
            .front()
            .is_some_and(|(s, ..)| s + RATE_WINDOW_S <= now_s)
        {
            space.seconds.pop_front();
        }
        space.last_port = Some(ct.translated().local.port);
        remember_source(&mut space.sources, ct.original.local.addr, who);
        key
    }

    /// A SYN the NAT dropped for want of a port: its source is remembered.
    pub fn dropped(&mut self, netns: u32, ct: &Conntrack, now_s: u64) -> SnatKey {
        let key = key_of(netns, ct);
        let space = self.space(key, now_s);
        remember_source(&mut space.sources, ct.original.local.addr, None);
        key
    }

    fn space(&mut self, key: SnatKey, now_s: u64) -> &mut Space {
        if self.spaces.len() >= MAX_SPACES && !self.spaces.contains_key(&key) {
            let quietest = self
                .spaces
                .iter()
                .min_by_key(|(_, s)| s.last_s)
                .map(|(k, _)| *k);
            if let Some(k) = quietest {
                self.spaces.remove(&k);
                self.evicted += 1;
            }
        }
        let space = self.spaces.entry(key).or_default();
        space.last_s = now_s;
        space
    }

    /// The port last seen given toward `key` (picks the NAT rule among several).
    pub fn last_port(&self, key: &SnatKey) -> Option<u16> {
        self.spaces.get(key)?.last_port
    }

    /// The forecast of `key` at `now_s`.
    pub fn forecast(&self, key: &SnatKey, now_s: u64, capacity: Capacity) -> SnatForecast {
        let (mut ended, mut open_total) = (0u32, 0.0);
        let space = self.spaces.get(key);
        for (s, n, open) in space.map(|s| s.seconds.iter()).into_iter().flatten() {
            if s + RATE_WINDOW_S > now_s {
                ended += n;
                open_total += open;
            }
        }
        let rate_per_s = f64::from(ended) / RATE_WINDOW_S as f64;
        let open_s = match ended {
            0 => 0.0,
            n => open_total / f64::from(n),
        };
        let hold_s = capacity.hold_s.unwrap_or(DEFAULT_HOLD_S);
        let held_open = rate_per_s * open_s;
        let held = rate_per_s * (open_s + hold_s);
        let sources = space.map_or_else(Vec::new, |s| {
            (s.sources.iter())
                .map(|(addr, who)| match who {
                    Some(who) => format!("{addr} ({who})"),
                    None => addr.to_string(),
                })
                .collect()
        });
        SnatForecast {
            netns: key.0,
            netns_label: capacity.netns_label,
            nat: key.1,
            destination: key.2,
            rate_per_s,
            open_s,
            hold_s,
            hold_read: capacity.hold_s.is_some(),
            held,
            held_open,
            utilization: held / f64::from(capacity.ports.count()),
            ports: capacity.ports,
            evicts_closed: capacity.evicts_closed,
            sources,
        }
    }

    /// Whether `f` is to be alerted on now: it crossed [`WARN_AT`] and its space was not
    /// warned about since it last fell under the re-arm mark.
    pub fn crosses(&mut self, f: &SnatForecast) -> bool {
        let key = (f.netns, f.nat, f.destination);
        let Some(space) = self.spaces.get_mut(&key) else {
            return false;
        };
        if f.utilization < REARM_BELOW {
            space.warned = false;
        }
        let crossed = f.utilization > WARN_AT && !space.warned;
        space.warned |= crossed;
        crossed
    }

    /// The spaces warned about (for their re-arm, once a second).
    pub fn warned(&self) -> Vec<SnatKey> {
        (self.spaces.iter())
            .filter(|(_, s)| s.warned)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every space with connections in the last 10 s, busiest first (at most `n`).
    pub fn busiest(&self, now_s: u64, n: usize) -> Vec<SnatKey> {
        let mut busy: Vec<(SnatKey, u32)> = (self.spaces.iter())
            .map(|(k, s)| {
                let recent = (s.seconds.iter())
                    .filter(|(sec, ..)| sec + RATE_WINDOW_S > now_s)
                    .map(|(_, n, _)| n)
                    .sum();
                (*k, recent)
            })
            .filter(|(_, recent)| *recent > 0)
            .collect();
        busy.sort_by_key(|(_, recent)| std::cmp::Reverse(*recent));
        busy.into_iter().take(n).map(|(k, _)| k).collect()
    }
}

/// The space an entry's connection holds a port of: the NAT's namespace, the address it
/// translated to, and the destination past it.
fn key_of(netns: u32, ct: &Conntrack) -> SnatKey {
    let translated = ct.translated();
    (netns, translated.local.addr, translated.remote)
}

fn remember_source(sources: &mut Vec<(IpAddr, Option<String>)>, addr: IpAddr, who: Option<String>) {
    let mut who = who;
    if let Some(i) = sources.iter().position(|(a, _)| *a == addr) {
        let (_, before) = sources.remove(i);
        who = who.or(before);
    }
    sources.insert(0, (addr, who));
    sources.truncate(MAX_SOURCES);
}

#[cfg(test)]
#[path = "snat_tests.rs"]
mod tests;
