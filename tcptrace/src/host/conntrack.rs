//! conntrack per network namespace: its table's fill and counters (/proc, read from inside
//! the namespace by the netns reader), and one entry looked up by its tuple (ctnetlink, a
//! `IPCTNL_MSG_CT_GET`: a hash lookup in the kernel, never a dump of the table).
use std::{
    collections::HashMap,
    fs,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context as _, Result};
use netlink_packet_utils::nla::{NlaBuffer, NlasIterator};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use serde::{Deserialize, Serialize};

use crate::host::{
    nat_rules::{self, SourceNatRule},
    netlink::{self, attr, nested, netfilter_request, NLA_F_NESTED, NLMSG_ERROR, NLM_F_REQUEST},
};
use crate::model::{
    nat::Conntrack,
    tcp::{Endpoint, FlowAddrs},
};

/// A namespace's conntrack table, as /proc says inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackTable {
    /// Entries now (`nf_conntrack_count`) and the most it holds (`nf_conntrack_max`).
    pub entries: u64,
    pub max: u64,
    /// Since boot, summed over CPUs (/proc/net/stat/nf_conntrack): entries that could not
    /// be inserted (a clash), packets dropped (the table full, among others), entries
    /// evicted early to make room.
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    /// How long a closed connection's entry stays (`nf_conntrack_tcp_timeout_time_wait`,
    /// seconds); 0 where not read.
    #[serde(default)]
    pub tcp_timeout_time_wait_s: u64,
}

impl ConntrackTable {
    /// The calling thread's namespace's table; `None` where the kernel has no conntrack.
    pub fn read_here() -> Option<ConntrackTable> {
        let number = |path: &str| fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
        let entries = number("/proc/sys/net/netfilter/nf_conntrack_count")?;
        let max = number("/proc/sys/net/netfilter/nf_conntrack_max")?;
        let stat =
            fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").unwrap_or_default();
        Some(ConntrackTable {
            entries,
            max,
            tcp_timeout_time_wait_s: number(
                "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait",
            )
            .unwrap_or(0),
            ..ConntrackTable::parse_stat(&stat)
        })
    }

    /// The counters of /proc/net/stat/nf_conntrack (a header, then one line of hex values
    /// per CPU), summed.
    pub fn parse_stat(text: &str) -> ConntrackTable {
        let mut lines = text.lines();
        let Some(header) = lines.next() else {
            return ConntrackTable::default();
        };
        let names: Vec<&str> = header.split_whitespace().collect();
        let at = |name: &str| names.iter().position(|n| *n == name);
        let (insert_failed, drop, early_drop) = (at("insert_failed"), at("drop"), at("early_drop"));
        let mut table = ConntrackTable::default();
        for line in lines {
            let values: Vec<u64> = line
                .split_whitespace()
                .map(|v| u64::from_str_radix(v, 16).unwrap_or(0))
                .collect();
            let value = |i: Option<usize>| i.and_then(|i| values.get(i).copied()).unwrap_or(0);
            table.insert_failed += value(insert_failed);
            table.drop += value(drop);
            table.early_drop += value(early_drop);
        }
        table
    }

    /// How full, 0 to 1 (0 where the maximum is unknown).
    pub fn fill(&self) -> f64 {
        match self.max {
            0 => 0.0,
            max => self.entries as f64 / max as f64,
        }
    }
}

/// A table this full (or one dropping) is read every second; from [`ALERT_FROM`] it is
/// alerted on.
pub const WATCH_FROM: f64 = 0.8;
pub const ALERT_FROM: f64 = 0.9;

/// A ctnetlink socket opened in the calling thread's namespace (it stays bound to it).
pub fn open_here() -> Result<OwnedFd> {
    let socket = Socket::new(NETLINK_NETFILTER).context("opening a ctnetlink socket")?;
    // SAFETY: the fd is the socket's own; `into_raw_fd`-like transfer: the Socket is
    // forgotten so that only the OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(socket.as_raw_fd()) };
    std::mem::forget(socket);
    Ok(fd)
}

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;

/// Which of an entry's tuples a lookup gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// As the first packet travelled (before translation).
    Original,
    /// As replies travel (after translation).
    Reply,
}

/// The `IPCTNL_MSG_CT_GET` request for the entry whose `direction` tuple is `tuple`
/// (source first).
pub fn get_request(tuple: &FlowAddrs, direction: Direction, seq: u32) -> Vec<u8> {
    let v4 = tuple.local.addr.is_ipv4() && tuple.remote.addr.is_ipv4();
    let octets = |addr: IpAddr| -> Vec<u8> {
        match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    };
    let mut body = Vec::new();
    let which = match direction {
        Direction::Original => CTA_TUPLE_ORIG,
        Direction::Reply => CTA_TUPLE_REPLY,
    };
    nested(&mut body, which, |t| {
        nested(t, CTA_TUPLE_IP, |ip| {
            let (src, dst) = match v4 {
                true => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
                false => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
            };
            attr(ip, src, &octets(tuple.local.addr));
            attr(ip, dst, &octets(tuple.remote.addr));
        });
        nested(t, CTA_TUPLE_PROTO, |p| {
            attr(p, CTA_PROTO_NUM, &[IPPROTO_TCP]);
            attr(p, CTA_PROTO_SRC_PORT, &tuple.local.port.to_be_bytes());
            attr(p, CTA_PROTO_DST_PORT, &tuple.remote.port.to_be_bytes());
        });
    });
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
    netfilter_request(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST,
        seq,
        family,
        &body,
    )
}

/// The entry a response holds; `None` for "no such entry" (ENOENT); an error otherwise.
pub fn parse_response(msg: &[u8]) -> Result<Option<Conntrack>> {
    if msg.len() < 20 {
        bail!("ctnetlink: a response of {} bytes", msg.len());
    }
    let kind = u16::from_ne_bytes([msg[4], msg[5]]);
    if kind == NLMSG_ERROR {
        return match netlink::error_of(&msg[16..]) {
            0 | libc::ENOENT => Ok(None),
            errno => Err(std::io::Error::from_raw_os_error(errno)).context("ctnetlink lookup"),
        };
    }
    let len = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).min(msg.len());
    let (mut original, mut reply, mut status) = (None, None, 0);
    for nla in NlasIterator::new(msg.get(20..len).unwrap_or_default()) {
        let nla = nla.context("ctnetlink: a bad attribute")?;
        match nla.kind() & !NLA_F_NESTED {
            CTA_TUPLE_ORIG => original = Some(parse_tuple(nla.value())?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(nla.value())?),
            CTA_STATUS => {
                let v = nla.value();
                if v.len() >= 4 {
                    status = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                }
            }
            _ => {}
        }
    }
    match (original, reply) {
        (Some(original), Some(reply)) => Ok(Some(Conntrack {
            original,
            reply,
            status,
        })),
        _ => bail!("ctnetlink: an entry without its tuples"),
    }
}

fn parse_tuple(bytes: &[u8]) -> Result<FlowAddrs> {
    let (mut src, mut dst, mut sport, mut dport) = (None, None, 0, 0);
    for nla in NlasIterator::new(bytes) {
        let nla: NlaBuffer<&[u8]> = nla.context("ctnetlink: a bad tuple")?;
        let inner = NlasIterator::new(nla.value());
        match nla.kind() & !NLA_F_NESTED {
            CTA_TUPLE_IP => {
                for a in inner {
                    let a = a.context("ctnetlink: a bad address")?;
                    let v = a.value();
                    let addr = match v.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(v).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(v).expect("16 bytes")),
                        n => bail!("ctnetlink: an address of {n} bytes"),
                    };
                    match a.kind() {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(addr),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(addr),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in inner {
                    let a = a.context("ctnetlink: a bad port")?;
                    let v = a.value();
                    let port = || (v.len() >= 2).then(|| u16::from_be_bytes([v[0], v[1]]));
                    match a.kind() {
                        CTA_PROTO_SRC_PORT => sport = port().unwrap_or(0),
                        CTA_PROTO_DST_PORT => dport = port().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst) {
        (Some(s), Some(d)) => Ok(FlowAddrs {
            local: Endpoint::new(s, sport),
            remote: Endpoint::new(d, dport),
        }),
        _ => bail!("ctnetlink: a tuple without its addresses"),
    }
}

/// ctnetlink sockets by namespace, and what the lookups cost.
#[derive(Debug, Default)]
pub struct ConntrackLookup {
    sockets: HashMap<u32, OwnedFd>,
    /// The most namespaces looked in at once.
    pub most_namespaces: usize,
    seq: u32,
    /// Lookups made, entries found, and lookups not made (over the budget).
    pub lookups: u64,
    pub found: u64,
    pub skipped: u64,
    /// This second's lookups, and which second.
    window: (u64, u64),
    /// The kernel refused a lookup (ctnetlink needs CAP_NET_ADMIN): no more are made.
    denied: bool,
    /// That refusal, not said yet.
    unsaid: Option<String>,
    /// Each namespace's source NAT rules as last read (nf_tables), and the second read.
    nat_rules: HashMap<u32, (u64, Option<Vec<SourceNatRule>>)>,
    /// Namespaces whose rules were wanted before their socket was opened (for the reader
    /// to read them now).
    wanted: Vec<u32>,
}

/// A namespace's NAT rules are read again after this many seconds.
const NAT_RULES_KEPT_S: u64 = 60;

/// Lookups a second at most; beyond, counted in `skipped`.
pub const LOOKUPS_PER_S: u64 = 5_000;

impl ConntrackLookup {
    /// A namespace whose table holds entries, with its socket.
    pub fn add(&mut self, netns: u32, socket: OwnedFd) {
        if self.denied {
            return;
        }
        self.sockets.insert(netns, socket);
        self.most_namespaces = self.most_namespaces.max(self.sockets.len());
    }

    /// A namespace gone, or whose table is empty.
    pub fn remove(&mut self, netns: u32) {
        self.sockets.remove(&netns);
        self.nat_rules.remove(&netns);
    }

    /// The source NAT rules of `netns` (read at most once a minute; `None` where they
    /// cannot be read: no socket there, or the dump failed).
    pub fn source_nat_rules(&mut self, netns: u32, now_s: u64) -> Option<&[SourceNatRule]> {
        let stale = self
            .nat_rules
            .get(&netns)
            .is_none_or(|(read_s, _)| now_s.saturating_sub(*read_s) >= NAT_RULES_KEPT_S);
        if stale {
            let Some(fd) = self.sockets.get(&netns) else {
                if !self.wanted.contains(&netns) && self.wanted.len() < 64 && !self.denied {
                    self.wanted.push(netns);
                }
                return None;
            };
            self.seq = self.seq.wrapping_add(1);
            let rules = match nat_rules::read(fd, self.seq) {
                Ok(rules) => Some(rules),
                Err(e) => {
                    log::debug!("reading the NAT rules of netns {netns}: {e:#}");
                    None
                }
            };
            self.nat_rules.insert(netns, (now_s, rules));
        }
        self.nat_rules.get(&netns)?.1.as_deref()
    }

    /// The entry whose `direction` tuple is `tuple`, in whichever namespace holds one
    /// (`now_s`: the second, for the budget).
    pub fn find(
        &mut self,
        tuple: &FlowAddrs,
        direction: Direction,
        now_s: u64,
    ) -> Option<(u32, Conntrack)> {
        if self.sockets.is_empty() {
            return None;
        }
        if self.window.0 != now_s {
            self.window = (now_s, 0);
        }
        if self.window.1 >= LOOKUPS_PER_S {
            self.skipped += 1;
            return None;
        }
        self.window.1 += 1;
        self.lookups += 1;
        for (&netns, fd) in &self.sockets {
            self.seq = self.seq.wrapping_add(1);
            match ask(fd, &get_request(tuple, direction, self.seq)) {
                Ok(Some(entry)) => {
                    self.found += 1;
                    return Some((netns, entry));
                }
                Ok(None) => {}
                Err(e) if is_denied(&e) => {
                    self.denied = true;
                    self.unsaid = Some(format!(
                        "conntrack lookups are refused ({e:#}: ctnetlink needs CAP_NET_ADMIN): \
                         flows through a NAT show no addresses past it unless a packet of theirs \
                         was dropped"
                    ));
                    self.sockets.clear();
                    return None;
                }
                Err(_) => {}
            }
        }
        None
    }

    /// Namespaces wanted since the last call.
    pub fn take_wanted(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.wanted)
    }

    /// A refusal not said yet (said once, on stderr).
    pub fn take_unsaid(&mut self) -> Option<String> {
        self.unsaid.take()
    }
}

fn is_denied(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM))
}

/// One request and its response on `fd`.
fn ask(fd: &OwnedFd, request: &[u8]) -> Result<Option<Conntrack>> {
    let raw = fd.as_raw_fd();
    netlink::send_to_kernel(raw, request).context("ctnetlink send")?;
    let mut buf = [0u8; 4096];
    // SAFETY: a receive into our buffer; the kernel answers a GET before sendto returns.
    let got = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if got < 0 {
        return Err(std::io::Error::last_os_error()).context("ctnetlink receive");
    }
    parse_response(&buf[..got as usize])
}

#[cfg(test)]
#[path = "conntrack_tests.rs"]
mod tests;
