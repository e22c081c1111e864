//! What lies beside the state machine, per flow: the packets the kernel dropped and the
//! SYN-ACKs a listener sent again, joined to the flow they belong to when it ends; and the
//! bytes and RTT finished flows carried, summed up for the summary.
use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;

use crate::{
    model::{
        events::{FinishedFlow, Retransmit},
        facts::HostFacts,
        tcp::{Endpoint, FlowAddrs},
        vitals::{DropTally, PacketDrop},
    },
    state::{quantiles::summary_quantiles, summary::VitalsSummary},
};

/// Flows with marks waiting for their end, at most; beyond, new marks are not kept (counted).
pub const MAX_MARKED_FLOWS: usize = 65_536;
/// Marks of a flow whose end has not come this long after its last mark are forgotten (a
/// packet to a closed port has no flow; a flow older than the tracer may outlive it).
const MARK_TTL_NS: u64 = 600 * 1_000_000_000;

/// Whose marks: a socket's (a packet that carried its socket: the flow's own); a flow's two
/// endpoints, the same whichever way its packets travel (a packet with no socket yet, e.g. a
/// SYN dropped on input); or a handshake's, claimed only by the accepting side's flow (a
/// SYN-ACK sent again before the child existed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MarkKey {
    Socket(u64),
    Endpoints(Endpoint, Endpoint),
    Handshake(Endpoint, Endpoint),
}

fn key_of(addrs: &FlowAddrs) -> MarkKey {
    if addrs.local <= addrs.remote {
        MarkKey::Endpoints(addrs.local, addrs.remote)
    } else {
        MarkKey::Endpoints(addrs.remote, addrs.local)
    }
}

/// A flow's addresses on the other side of a NAT (`original` and `translated`, source
/// first), in the flow's own order: the client's flow (the original addresses) sees the
/// translated ones, the server's (the translated ones, turned round) the original ones.
fn other_side(
    addrs: &FlowAddrs,
    (original, translated): (FlowAddrs, FlowAddrs),
) -> Option<FlowAddrs> {
    let turned = |a: FlowAddrs| FlowAddrs {
        local: a.remote,
        remote: a.local,
    };
    if *addrs == original {
        Some(translated)
    } else if *addrs == turned(translated) {
        Some(turned(original))
    } else {
        None
    }
}

/// A listener's handshake, ours first.
fn handshake_of(addrs: &FlowAddrs) -> MarkKey {
    MarkKey::Handshake(addrs.local, addrs.remote)
}

#[derive(Debug, Default)]
struct Marks {
    drops: DropTally,
    synacks: u16,
    last_ns: u64,
    /// A NAT the flow went through, from a dropped packet's conntrack entry: its original
    /// and translated addresses (source first).
    nat: Option<(FlowAddrs, FlowAddrs)>,
}

/// Drops and SYN-ACK retransmits by flow, until the flow ends; and their totals.
#[derive(Debug, Default)]
pub struct PacketLedger {
    marks: HashMap<MarkKey, Marks>,
    /// Connections conntrack translated, by their translated endpoints: the original ones
    /// (whose flow a later drop of a translated packet with no entry of its own, such as a
    /// SYN a TIME_WAIT rejected past the NAT, joins), and when last seen.
    translations: HashMap<MarkKey, (FlowAddrs, u64)>,
    /// Every drop seen, by reason.
    by_reason: BTreeMap<String, u64>,
    /// Marks not kept: the ledger was full.
    overflowed: u64,
    /// Marks forgotten: no flow end came for them (drops of packets with no flow).
    unclaimed: u64,
    bytes_acked: u64,
    bytes_received: u64,
    /// Smoothed RTT at close, µs, of the flows that had a sample.
    srtt_us: Option<Histogram<u64>>,
    flows_with_vitals: u64,
}

/// The summary's lines about packets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketSummary {
    pub drops_by_reason: Vec<(String, u64)>,
    pub drops_overflowed: u64,
    /// Bytes and RTT of the flows read at CLOSE, where any was.
    pub vitals: Option<VitalsSummary>,
}

impl PacketLedger {
    fn marks_of(&mut self, key: MarkKey, ts_ns: u64) -> Option<&mut Marks> {
        if self.marks.len() >= MAX_MARKED_FLOWS && !self.marks.contains_key(&key) {
            self.overflowed += 1;
            return None;
        }
        let marks = self.marks.entry(key).or_default();
        marks.last_ns = marks.last_ns.max(ts_ns);
        Some(marks)
    }

    /// A packet dropped: counted, and kept for its flow.
    pub fn dropped(&mut self, d: &PacketDrop) {
        match self.by_reason.get_mut(&d.reason) {
            Some(n) => *n += 1,
            None => {
                self.by_reason.insert(d.reason.clone(), 1);
            }
        }
        let key = match d.skaddr {
            0 => key_of(&d.addrs),
            sk => MarkKey::Socket(sk),
        };
        // The flows it belongs to: its socket's or its addresses', and across a NAT the
        // flow of the original addresses (the client's) and of the translated ones (the
        // server's), from its conntrack entry or one seen before.
        let (original, translated) = match d.conntrack.filter(|ct| ct.translates()) {
            Some(ct) => {
                let translated = ct.translated();
                self.remember_translation(&translated, ct.original, d.ts_ns);
                (Some(ct.original), Some(translated))
            }
            None => match self.translations.get(&key_of(&d.addrs)) {
                Some(&(original, _)) => (Some(original), Some(d.addrs)),
                None => (None, None),
            },
        };
        let mut keys = [
            Some(key),
            original.as_ref().map(key_of),
            translated.as_ref().map(key_of),
        ];
        for i in 1..keys.len() {
            if keys[..i].contains(&keys[i]) {
                keys[i] = None;
            }
        }
        for key in keys.into_iter().flatten() {
            if let Some(marks) = self.marks_of(key, d.ts_ns) {
                marks.drops.add(&d.reason, 1);
                if let (Some(original), Some(translated)) = (original, translated) {
                    marks.nat = Some((original, translated));
                }
            }
        }
    }

    /// The original addresses of a translated connection seen before, by its translated
    /// ones (source first).
    pub fn original_of(&self, translated: &FlowAddrs) -> Option<FlowAddrs> {
        self.translations.get(&key_of(translated)).map(|(o, _)| *o)
    }

    /// A translation no longer known to hold (its entry gone, or the NAT's table not read).
    pub fn forget_translation(&mut self, translated: &FlowAddrs) {
        self.translations.remove(&key_of(translated));
    }

    /// A translation conntrack made, kept for later drops of its translated packets
    /// (bounded as the marks are).
    pub fn remember_translation(
        &mut self,
        translated: &FlowAddrs,
        original: FlowAddrs,
        ts_ns: u64,
    ) {
        let key = key_of(translated);
        if self.translations.len() >= MAX_MARKED_FLOWS && !self.translations.contains_key(&key) {
            self.overflowed += 1;
            return;
        }
        self.translations.insert(key, (original, ts_ns));
    }

    /// A SYN-ACK sent again: kept for the child's flow.
    pub fn synack(&mut self, r: &Retransmit) {
        if let Some(marks) = self.marks_of(handshake_of(&r.addrs), r.ts_ns) {
            marks.synacks = marks.synacks.saturating_add(1);
        }
    }

    /// A flow ended: its drops join it, and an accepted flow counts its listener's SYN-ACK
    /// retransmits in SYN_RECV. Its vitals are summed up.
    pub fn flow_ended(&mut self, f: &mut FinishedFlow) {
        if let Some(v) = &f.vitals {
            self.flows_with_vitals += 1;
            self.bytes_acked = self.bytes_acked.saturating_add(v.bytes_acked);
            self.bytes_received = self.bytes_received.saturating_add(v.bytes_received);
            if let Some(srtt) = v.srtt_ns {
                // 1 µs to an hour (a saturated value is kept at the top).
                let h = self.srtt_us.get_or_insert_with(|| {
                    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
                });
                h.saturating_record((srtt / 1_000).max(1));
            }
        }
        if self.marks.is_empty() {
            return;
        }
        let own = self.marks.remove(&MarkKey::Socket(f.skaddr));
        let by_endpoints = self.marks.remove(&key_of(&f.addrs));
        let handshake = match f.lifecycle.accepted() {
            true => self.marks.remove(&handshake_of(&f.addrs)),
            false => None,
        };
        let mut synacks = 0;
        for marks in [own, by_endpoints, handshake].into_iter().flatten() {
            for (reason, n) in marks.drops.0 {
                f.drops.add(&reason, n);
            }
            synacks += marks.synacks;
            if let Some(nat) = marks.nat {
                f.translated = other_side(&f.addrs, nat).or(f.translated);
            }
        }
        if let Some(first) = f.lifecycle.path.first_mut().filter(|_| synacks > 0) {
            first.retransmits = first.retransmits.saturating_add(synacks);
            f.lifecycle.retransmits = f.lifecycle.retransmits.saturating_add(u32::from(synacks));
        }
    }

    /// Once a second: marks no flow end came for within [`MARK_TTL_NS`] are forgotten.
    pub fn expire(&mut self, now_ns: u64) {
        let before = self.marks.len();
        self.marks
            .retain(|_, m| now_ns.saturating_sub(m.last_ns) < MARK_TTL_NS);
        self.unclaimed += (before - self.marks.len()) as u64;
        self.translations
            .retain(|_, (_, last_ns)| now_ns.saturating_sub(*last_ns) < MARK_TTL_NS);
    }

    /// The summary's figures; drops by reason as the kernel counted them (`kernel_drops`, by
    /// reason number: exact even where records were not sent), else as the records said.
    pub fn summary(&self, kernel_drops: &[u64], host: &HostFacts) -> PacketSummary {
        let drops_by_reason = if kernel_drops.iter().any(|&n| n > 0) {
            let mut named: BTreeMap<String, u64> = BTreeMap::new();
            for (reason, &n) in kernel_drops.iter().enumerate().filter(|(_, n)| **n > 0) {
                *named
                    .entry(host.drop_reason_name(reason as u32))
                    .or_default() += n;
            }
            named.into_iter().collect()
        } else {
            self.by_reason
                .iter()
                .map(|(r, &n)| (r.clone(), n))
                .collect()
        };
        PacketSummary {
            drops_by_reason,
            drops_overflowed: self.overflowed,
            vitals: (self.flows_with_vitals > 0).then(|| VitalsSummary {
                flows: self.flows_with_vitals,
                bytes_acked: self.bytes_acked,
                bytes_received: self.bytes_received,
                srtt: (self.srtt_us.as_ref()).map(|h| summary_quantiles(h).times(1_000)),
            }),
        }
    }
}

#[cfg(test)]
#[path = "packets_tests.rs"]
pub(crate) mod tests;
