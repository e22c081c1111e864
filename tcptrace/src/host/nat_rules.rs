//! The source NAT rules of a network namespace, read from nf_tables (a `NFT_MSG_GETRULE`
//! dump on a netfilter netlink socket opened inside it): which ports each rule gives
//! (`MASQUERADE --to-ports`, `SNAT --to-source A:P-Q`, nft's `masquerade to :P-Q`), or
//! none, where the kernel picks from 1024-65535. iptables-nft writes its targets as xtables
//! blobs inside nf_tables rules; both forms are read. iptables-legacy rules are not.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{bail, Context as _, Result};
use netlink_packet_utils::nla::NlasIterator;

use super::netlink::{
    self, error_of, netfilter_request, NLA_F_NESTED, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP,
    NLM_F_REQUEST,
};

/// The ports a source NAT picks from when its rule names none (and the source port is not
/// below 1024): `nf_nat_l4proto_unique_tuple`.
pub const KERNEL_DEFAULT_PORTS: (u16, u16) = (1024, 65535);

/// One source NAT rule: the addresses it translates to (`None`: the outgoing interface's,
/// MASQUERADE) and the ports (`None`: the kernel's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceNatRule {
    pub addresses: Option<(IpAddr, IpAddr)>,
    pub ports: Option<(u16, u16)>,
}

/// Where a forecast's port range comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortsBasis {
    /// The one source NAT rule that can give this address.
    Rule,
    /// Several rules can; the narrowest naming the port seen.
    OneOfRules(usize),
    /// No rule names ports: the kernel's default range.
    KernelDefault,
    /// No nf_tables source NAT rule was found (the rules are iptables-legacy's, or could not
    /// be read): the kernel's default range assumed.
    Assumed,
}

/// The port range a NAT address gives toward a destination, and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPorts {
    pub range: (u16, u16),
    pub basis: PortsBasis,
}

impl NatPorts {
    pub fn count(&self) -> u32 {
        u32::from(self.range.1.saturating_sub(self.range.0)) + 1
    }

    /// `4 ports (40000-40003, the MASQUERADE/SNAT rule)`
    pub fn describe(&self) -> String {
        let basis = match self.basis {
            PortsBasis::Rule => "its source NAT rule".to_string(),
            PortsBasis::OneOfRules(n) => format!("one of {n} source NAT rules"),
            PortsBasis::KernelDefault => "the kernel's default: the rule names none".into(),
            PortsBasis::Assumed => "the kernel's default, assumed: no nf_tables rule read".into(),
        };
        format!(
            "{} ports ({}-{}, {basis})",
            self.count(),
            self.range.0,
            self.range.1
        )
    }
}

/// The ports `nat` gives, from the namespace's rules (`None`: not read); `seen`: a port it
/// was seen to give, which picks among several rules.
pub fn ports_for(rules: Option<&[SourceNatRule]>, nat: IpAddr, seen: Option<u16>) -> NatPorts {
    let default = |basis| NatPorts {
        range: KERNEL_DEFAULT_PORTS,
        basis,
    };
    let Some(rules) = rules.filter(|r| !r.is_empty()) else {
        return default(PortsBasis::Assumed);
    };
    let candidates: Vec<&SourceNatRule> = rules
        .iter()
        .filter(|r| r.addresses.is_none_or(|(lo, hi)| lo <= nat && nat <= hi))
        .collect();
    let mut ranges: Vec<(u16, u16)> = candidates
        .iter()
        .map(|r| r.ports.unwrap_or(KERNEL_DEFAULT_PORTS))
        .collect();
    ranges.sort_unstable();
    ranges.dedup();
    match ranges.as_slice() {
        [] => default(PortsBasis::Assumed),
        [one] if *one == KERNEL_DEFAULT_PORTS => default(PortsBasis::KernelDefault),
        [one] => NatPorts {
            range: *one,
            basis: PortsBasis::Rule,
        },
        several => {
            let holds = |r: &&(u16, u16)| seen.is_none_or(|p| r.0 <= p && p <= r.1);
            let narrowest = (several.iter().filter(holds))
                .min_by_key(|r| r.1 - r.0)
                .or_else(|| several.iter().min_by_key(|r| r.1 - r.0));
            NatPorts {
                range: *narrowest.unwrap_or(&KERNEL_DEFAULT_PORTS),
                basis: PortsBasis::OneOfRules(candidates.len()),
            }
        }
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
const NFTA_MASQ_REG_PROTO_MAX: u16 = 3;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFT_NAT_SNAT: u32 = 0;
const NFTA_TARGET_NAME: u16 = 1;
const NFTA_TARGET_REV: u16 = 2;
const NFTA_TARGET_INFO: u16 = 3;
/// `nf_nat_range*.flags`: addresses given, ports given.
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

/// The dump request of every rule of every family.
pub fn dump_request(seq: u32) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    netfilter_request(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE, flags, seq, 0, &[])
}

/// The source NAT rules of one batch of dump messages, added to `out`; returns whether the
/// dump is done. Messages of another sequence number (left from an earlier request) are
/// skipped.
pub fn parse_batch(batch: &[u8], seq: u32, out: &mut Vec<SourceNatRule>) -> Result<bool> {
    let mut at = 0;
    while at + 16 <= batch.len() {
        let word = |i: usize| u32::from_ne_bytes(batch[i..i + 4].try_into().expect("4 bytes"));
        let len = word(at) as usize;
        if len < 16 || at + len > batch.len() {
            bail!(
                "nf_tables: a message of {len} bytes in {}",
                batch.len() - at
            );
        }
        let kind = u16::from_ne_bytes([batch[at + 4], batch[at + 5]]);
        let msg_seq = word(at + 8);
        let body = &batch[at + 16..at + len];
        at += len.next_multiple_of(4);
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => match error_of(body) {
                0 => continue,
                errno => {
                    return Err(std::io::Error::from_raw_os_error(errno))
                        .context("nf_tables rule dump")
                }
            },
            _ => {
                if let Some(rule) = parse_rule(body.get(4..).unwrap_or_default())? {
                    out.push(rule);
                }
            }
        }
    }
    Ok(false)
}

/// One rule's attributes: its source NAT, if it ends in one.
fn parse_rule(attrs: &[u8]) -> Result<Option<SourceNatRule>> {
    for nla in NlasIterator::new(attrs) {
        let nla = nla.context("nf_tables: a bad rule attribute")?;
        if nla.kind() & !NLA_F_NESTED == NFTA_RULE_EXPRESSIONS {
            return parse_expressions(nla.value());
        }
    }
    Ok(None)
}

/// A rule's expressions: the registers its `immediate`s load, then its `masq`, `nat` or
/// xtables `target`.
fn parse_expressions(list: &[u8]) -> Result<Option<SourceNatRule>> {
    let mut registers: Vec<(u32, Vec<u8>)> = Vec::new();
    let register = |regs: &[(u32, Vec<u8>)], n: Option<u32>| {
        let n = n?;
        regs.iter()
            .rev()
            .find(|(r, _)| *r == n)
            .map(|(_, v)| v.clone())
    };
    let port = |v: Option<Vec<u8>>| {
        v.filter(|v| v.len() >= 2)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
    };
    let addr = |v: Option<Vec<u8>>| -> Option<IpAddr> {
        let v = v?;
        match v.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(&v[..4]).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(&v[..16]).ok()?)),
            _ => None,
        }
    };
    for element in NlasIterator::new(list) {
        let element = element.context("nf_tables: a bad expression")?;
        let members = attributes(element.value())?;
        let member = |k: u16| members.iter().find(|(kind, _)| *kind == k).map(|(_, v)| v);
        let name = member(NFTA_EXPR_NAME).map_or(String::new(), |v| {
            String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string()
        });
        let fields = attributes(
            member(NFTA_EXPR_DATA)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )?;
        let field = |k: u16| fields.iter().find(|(kind, _)| *kind == k).map(|(_, v)| v);
        let be32 = |k: u16| {
            field(k)
                .filter(|v| v.len() >= 4)
                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        };
        match name.as_str() {
            "immediate" => {
                if let (Some(reg), Some(value)) =
                    (be32(NFTA_IMMEDIATE_DREG), field(NFTA_IMMEDIATE_DATA))
                {
                    let inner = attributes(value)?;
                    if let Some((_, v)) = inner.into_iter().find(|(k, _)| *k == NFTA_DATA_VALUE) {
                        registers.push((reg, v));
                    }
                }
            }
            "masq" => {
                let lo = port(register(&registers, be32(NFTA_MASQ_REG_PROTO_MIN)));
                let hi = port(register(&registers, be32(NFTA_MASQ_REG_PROTO_MAX)));
                return Ok(Some(SourceNatRule {
                    addresses: None,
                    ports: lo.map(|lo| (lo, hi.unwrap_or(lo))),
                }));
            }
            "nat" if be32(NFTA_NAT_TYPE) == Some(NFT_NAT_SNAT) => {
                let lo = addr(register(&registers, be32(NFTA_NAT_REG_ADDR_MIN)));
                let hi = addr(register(&registers, be32(NFTA_NAT_REG_ADDR_MAX)));
                let plo = port(register(&registers, be32(NFTA_NAT_REG_PROTO_MIN)));
                let phi = port(register(&registers, be32(NFTA_NAT_REG_PROTO_MAX)));
                return Ok(Some(SourceNatRule {
                    addresses: lo.map(|lo| (lo, hi.unwrap_or(lo))),
                    ports: plo.map(|lo| (lo, phi.unwrap_or(lo))),
                }));
            }
            "target" => {
                let target = field(NFTA_TARGET_NAME).map(|v| {
                    String::from_utf8_lossy(v)
                        .trim_end_matches('\0')
                        .to_string()
                });
                let revision = be32(NFTA_TARGET_REV).unwrap_or(0);
                let info = field(NFTA_TARGET_INFO)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                match target.as_deref() {
                    Some("MASQUERADE" | "SNAT") => {
                        return Ok(xt_range(info, revision).map(|mut rule| {
                            if target.as_deref() == Some("MASQUERADE") {
                                rule.addresses = None;
                            }
                            rule
                        }))
                    }
                    _ => return Ok(None),
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// An expression's attributes, as (kind, value).
fn attributes(data: &[u8]) -> Result<Vec<(u16, Vec<u8>)>> {
    NlasIterator::new(data)
        .map(|nla| {
            let nla = nla.context("nf_tables: a bad attribute")?;
            Ok((nla.kind() & !NLA_F_NESTED, nla.value().to_vec()))
        })
        .collect()
}

/// An xtables NAT target's blob (host byte order but for addresses and ports): revision 0,
/// `nf_nat_ipv4_multi_range_compat` (iptables-nft writes it for IPv4's MASQUERADE and
/// SNAT); revisions 1 and 2, `nf_nat_range`/`nf_nat_range2` (IPv6, and SNAT's newer
/// revisions).
fn xt_range(info: &[u8], revision: u32) -> Option<SourceNatRule> {
    let u32_at = |i: usize| Some(u32::from_ne_bytes(info.get(i..i + 4)?.try_into().ok()?));
    let be16_at = |i: usize| Some(u16::from_be_bytes(info.get(i..i + 2)?.try_into().ok()?));
    let (flags, addresses, ports_at) = if revision == 0 {
        // rangesize, then { flags, min_ip, max_ip, min, max }.
        let flags = u32_at(4)?;
        let ip = |i: usize| -> Option<IpAddr> {
            Some(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(info.get(i..i + 4)?).ok()?,
            )))
        };
        (flags, (ip(8)?, ip(12)?), 16)
    } else {
        // { flags, min_addr[16], max_addr[16], min_proto, max_proto[, base_proto] }.
        let flags = u32_at(0)?;
        let ip = |i: usize| -> Option<IpAddr> {
            let bytes = <[u8; 16]>::try_from(info.get(i..i + 16)?).ok()?;
            let v6 = std::net::Ipv6Addr::from(bytes);
            // An IPv4 rule's address fills the first 4 bytes.
            Some(match bytes[4..].iter().all(|b| *b == 0) {
                true => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
                false => IpAddr::V6(v6),
            })
        };
        (flags, (ip(4)?, ip(20)?), 36)
    };
    Some(SourceNatRule {
        addresses: (flags & NF_NAT_RANGE_MAP_IPS != 0).then_some(addresses),
        ports: match flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0 {
            true => Some((be16_at(ports_at)?, be16_at(ports_at + 2)?)),
            false => None,
        },
    })
}

/// The source NAT rules of the namespace `fd` was opened in (a netfilter netlink socket,
/// shared with the conntrack lookups: what a failed dump leaves unread is thrown away, so
/// that the next lookup reads its own answer).
pub fn read(fd: &OwnedFd, seq: u32) -> Result<Vec<SourceNatRule>> {
    let read = dump(fd.as_raw_fd(), seq);
    if read.is_err() {
        netlink::drain_stale(fd.as_raw_fd());
    }
    read
}

fn dump(raw: i32, seq: u32) -> Result<Vec<SourceNatRule>> {
    netlink::send_to_kernel(raw, &dump_request(seq)).context("nf_tables dump request")?;
    let mut rules = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // A dump's batches: the first is ready when sendto returns, each receive makes the next.
    for _ in 0..10_000 {
        // SAFETY: a receive into our buffer.
        let got =
            unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if got < 0 {
            return Err(std::io::Error::last_os_error()).context("nf_tables dump receive");
        }
        if parse_batch(&buf[..got as usize], seq, &mut rules)? {
            return Ok(rules);
        }
    }
    bail!("nf_tables dump: no end after 10,000 batches")
}

#[cfg(test)]
#[path = "nat_rules_tests.rs"]
mod tests;
