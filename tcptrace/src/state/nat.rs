//! The NAT boundary, from the packets the kernel dropped: SYNs a source NAT could not give a
//! port (conntrack's entry for the translated tuple clashed with one still held) and SYNs a
//! TIME_WAIT rejected for an old timestamp (PAWS: clients behind one NAT address reuse the
//! 4-tuple with their own timestamp clocks). Each becomes an alert naming who and why.
use foldhash::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use crate::{
    host::conntrack::{ConntrackTable, ALERT_FROM},
    model::{
        nat::Conntrack,
        tcp::{Endpoint, FlowAddrs},
        vitals::PacketDrop,
    },
    state::snat::SnatForecast,
};

/// Keys counted at most; beyond, the counts start again (an alert's count is then a floor).
const MAX_KEYS: usize = 4_096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// A source NAT's address and the destination, in a namespace.
    Snat(u32, IpAddr, Endpoint),
    /// A source address rejected by the TIME_WAITs of a local port, in a namespace.
    Paws(u32, IpAddr, u16),
}

/// What went wrong at the NAT boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatProblem {
    /// A SYN dropped by the source NAT: no free port toward the destination.
    SnatExhausted,
    /// A SYN a TIME_WAIT rejected for its old timestamp.
    TimeWaitPaws,
    /// A namespace's conntrack table nearly full, or dropping packets.
    ConntrackFull,
    /// A source NAT's ports toward one destination over 80% held.
    SnatForecast,
}

/// One NAT alert.
#[derive(Clone, Debug, PartialEq)]
pub struct NatAlert {
    pub problem: NatProblem,
    pub ts_ns: u64,
    /// SnatExhausted: the client's connection as it left (original addresses). TimeWaitPaws:
    /// ours first: the local port, then the source as it arrived.
    pub addrs: FlowAddrs,
    /// The namespace that dropped the SYN (the NAT's, or the TIME_WAIT's).
    pub netns: u32,
    /// SnatExhausted: the tuple the NAT picked (already taken). TimeWaitPaws: the client
    /// behind the NAT, where a translation of this tuple was seen.
    pub translated: Option<FlowAddrs>,
    /// SYNs dropped so far for the same NAT address and destination (SnatExhausted), or the
    /// same source address and local port (TimeWaitPaws); packets conntrack dropped since the
    /// last read (ConntrackFull).
    pub count: u64,
    /// ConntrackFull: the table as read, and the namespace's label.
    pub table: Option<(ConntrackTable, String)>,
    /// SnatForecast, and SnatExhausted where its NAT was followed: the NAT's ports toward
    /// the destination, how many are held, and who is behind it.
    pub snat: Option<SnatForecast>,
}

impl NatAlert {
    pub fn kind(&self) -> &'static str {
        match self.problem {
            NatProblem::SnatExhausted => "snat_exhausted",
            NatProblem::TimeWaitPaws => "time_wait_paws",
            NatProblem::ConntrackFull => "conntrack_full",
            NatProblem::SnatForecast => "snat_forecast",
        }
    }

    /// A source NAT's forecast crossing [`crate::state::snat::WARN_AT`], as an alert.
    pub fn snat_forecast(ts_ns: u64, f: SnatForecast) -> NatAlert {
        NatAlert {
            problem: NatProblem::SnatForecast,
            ts_ns,
            addrs: FlowAddrs {
                local: Endpoint::new(f.nat, 0),
                remote: f.destination,
            },
            netns: f.netns,
            translated: None,
            count: 0,
            table: None,
            snat: Some(f),
        }
    }

    pub fn detail(&self) -> String {
        if let (NatProblem::SnatForecast, Some(f)) = (self.problem, &self.snat) {
            return f.explain();
        }
        if let Some((t, label)) = &self.table {
            let dropped = match self.count {
                0 => String::new(),
                n => format!("; {n} packets dropped since the last alert (table full)"),
            };
            return format!(
                "conntrack table of netns {label} {:.0}% full: {} of {} entries \
                 (nf_conntrack_max){dropped}; new connections through it are dropped once \
                 full (the kernel logs \"nf_conntrack: table full, dropping packet\"): raise \
                 nf_conntrack_max or shorten the timeouts of closed entries",
                t.fill() * 100.0,
                t.entries,
                t.max
            );
        }
        match (self.problem, self.translated) {
            (NatProblem::SnatExhausted, taken) => {
                let nat = taken.map_or("?".to_string(), |t| t.local.addr.to_string());
                let port = taken.map_or("?".to_string(), |t| t.local.port.to_string());
                let followed = self.snat.as_ref().map_or(String::new(), |f| {
                    let behind = match f.sources.as_slice() {
                        [] => String::new(),
                        s => format!("; behind it: {}", s.join(", ")),
                    };
                    format!(
                        " [it gives {} toward it; about {:.0} entries held, {:.0} of them open \
                         connections'{behind}]",
                        f.ports.describe(),
                        f.held,
                        f.held_open
                    )
                });
                format!(
                    "SYN from {} to {} dropped at the source NAT (netns {}): no free port on \
                     {nat} toward {} (it tried {port}, still held by another connection's \
                     conntrack entry; {} so far){followed}. NAT ports toward one destination \
                     stay taken while their entries live (open, then \
                     nf_conntrack_tcp_timeout_time_wait, 120 s, after close): widen the NAT's \
                     port range, add NAT addresses, or reuse connections",
                    self.addrs.local, self.addrs.remote, self.netns, self.addrs.remote, self.count
                )
            }
            (
                NatProblem::TimeWaitPaws | NatProblem::ConntrackFull | NatProblem::SnatForecast,
                behind,
            ) => {
                let client = behind.map_or(String::new(), |b| {
                    format!(" (the client behind the NAT: {})", b.local)
                });
                format!(
                    "SYN from {}{client} to local port {} rejected by its TIME_WAIT (PAWS: the \
                     SYN's timestamp is older than the old connection's; {} so far from {}). \
                     This host closed first and holds TIME_WAIT for the 4-tuple; clients behind \
                     one NAT address reuse it with their own timestamp clocks: let clients \
                     close first, keep connections open, or give the NAT more addresses",
                    self.addrs.remote, self.addrs.local.port, self.count, self.addrs.remote.addr
                )
            }
        }
    }
}

/// Counts the NAT boundary's drops and turns each into an alert.
#[derive(Debug, Default)]
pub struct NatWatch {
    counts: HashMap<Key, u64>,
}

impl NatWatch {
    /// The alert `d` raises, if it is a NAT boundary's drop. `behind`: the original
    /// addresses of a translated tuple seen before (for a PAWS drop, which carries no
    /// conntrack entry of its own past the NAT).
    pub fn admit(&mut self, d: &PacketDrop, behind: Option<FlowAddrs>) -> Option<NatAlert> {
        if !d.is_first_syn() {
            return None;
        }
        let (problem, key, addrs, translated) = match (d.reason.as_str(), d.conntrack) {
            ("NETFILTER_DROP", Some(ct)) if snat_clash(&ct) => (
                NatProblem::SnatExhausted,
                Key::Snat(d.netns, ct.translated().local.addr, ct.original.remote),
                ct.original,
                Some(ct.translated()),
            ),
            ("TCP_RFC7323_TW_PAWS", _) => {
                let ours = FlowAddrs {
                    local: d.addrs.remote,
                    remote: d.addrs.local,
                };
                let key = Key::Paws(d.netns, d.addrs.local.addr, d.addrs.remote.port);
                (NatProblem::TimeWaitPaws, key, ours, behind)
            }
            _ => return None,
        };
        if self.counts.len() >= MAX_KEYS && !self.counts.contains_key(&key) {
            self.counts.clear();
        }
        let count = self.counts.entry(key).or_default();
        *count += 1;
        Some(NatAlert {
            problem,
            ts_ns: d.ts_ns,
            addrs,
            netns: d.netns,
            translated,
            count: *count,
            table: None,
            snat: None,
        })
    }
}

/// Watches the namespaces' conntrack tables as the netns reader reads them.
#[derive(Debug, Default)]
pub struct ConntrackWatch {
    /// Namespaces alerted on for their fill, until it falls under [`REARM_BELOW`].
    full: HashSet<u32>,
    /// Per namespace: when its drops were last alerted on, and those since (not said yet).
    dropping: HashMap<u32, (u64, u64)>,
}

/// A namespace's table-full drops are alerted on at most this often (summed meanwhile).
const DROPS_ALERT_EVERY_NS: u64 = 10_000_000_000;

/// A table alerted on for its fill is alerted on again only after it fell under this.
const REARM_BELOW: f64 = 0.75;

impl ConntrackWatch {
    /// A namespace's table read (`before`: its last read): an alert when it crosses
    /// [`ALERT_FROM`] full, and when the table full made conntrack drop packets (at most one
    /// every 10 s per namespace, with the drops since its last).
    pub fn read(
        &mut self,
        netns: u32,
        label: &str,
        before: Option<ConntrackTable>,
        now: ConntrackTable,
        ts_ns: u64,
    ) -> Option<NatAlert> {
        // conntrack counts a clash (an entry that could not be inserted: a NAT out of ports)
        // both as a drop and as insert_failed; the rest of its drops are the table full.
        let dropped = before.map_or(0, |b| {
            let drops = now.drop.saturating_sub(b.drop);
            drops.saturating_sub(now.insert_failed.saturating_sub(b.insert_failed))
        });
        let crossed = now.fill() >= ALERT_FROM && !self.full.contains(&netns);
        if now.fill() >= ALERT_FROM {
            self.full.insert(netns);
        } else if now.fill() < REARM_BELOW {
            self.full.remove(&netns);
        }
        let (last_ns, pending) = self.dropping.entry(netns).or_insert((0, 0));
        *pending += dropped;
        let due = *pending > 0
            && (*last_ns == 0 || ts_ns.saturating_sub(*last_ns) >= DROPS_ALERT_EVERY_NS);
        let dropped = match crossed || due {
            true => std::mem::take(pending),
            false => 0,
        };
        if dropped > 0 {
            *last_ns = ts_ns;
        }
        (crossed || dropped > 0).then(|| {
            let nowhere = Endpoint::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            NatAlert {
                problem: NatProblem::ConntrackFull,
                ts_ns,
                addrs: FlowAddrs {
                    local: nowhere,
                    remote: nowhere,
                },
                netns,
                translated: None,
                count: dropped,
                table: Some((now, label.to_string())),
                snat: None,
            }
        })
    }
}

/// A SYN's entry that a source NAT translated but that never made it into the table: the
/// translated tuple clashed with an entry still held (every port of the range taken).
fn snat_clash(ct: &Conntrack) -> bool {
    ct.source_translated() && !ct.confirmed()
}

#[cfg(test)]
#[path = "nat_tests.rs"]
mod tests;
