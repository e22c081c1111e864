//! A flow's vitals at CLOSE (bytes, segments, RTT) and the packets the kernel dropped, as
//! `decode` reads them from their records.
use tcptrace_common::Vitals;

use crate::model::{nat::Conntrack, tcp::FlowAddrs};

/// What a TCP socket carried and how its path behaved, read at CLOSE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowVitals {
    /// Bytes of ours the peer acknowledged.
    pub bytes_acked: u64,
    /// Bytes received in order.
    pub bytes_received: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    /// Smoothed RTT; `None` when the socket never took an RTT sample.
    pub srtt_ns: Option<u64>,
    /// RTT mean deviation (the kernel's `mdev`), with the smoothed RTT.
    pub rttvar_ns: Option<u64>,
    /// The windowed minimum RTT; `None` without a sample.
    pub min_rtt_ns: Option<u64>,
    /// Segments retransmitted over the socket's life (the kernel's `total_retrans`).
    pub total_retrans: u32,
}

impl From<&Vitals> for FlowVitals {
    fn from(raw: &Vitals) -> FlowVitals {
        // The kernel keeps srtt << 3 and mdev << 2, in µs.
        let srtt_ns = (raw.srtt_us != 0).then(|| u64::from(raw.srtt_us >> 3) * 1_000);
        FlowVitals {
            bytes_acked: raw.bytes_acked,
            bytes_received: raw.bytes_received,
            segs_in: raw.segs_in,
            segs_out: raw.segs_out,
            srtt_ns,
            rttvar_ns: srtt_ns.map(|_| u64::from(raw.mdev_us >> 2) * 1_000),
            min_rtt_ns: (raw.min_rtt_us != u32::MAX && raw.min_rtt_us != 0)
                .then(|| u64::from(raw.min_rtt_us) * 1_000),
            total_retrans: raw.total_retrans,
        }
    }
}

/// A TCP packet the kernel dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketDrop {
    pub ts_ns: u64,
    /// The socket it belonged to (0: none yet).
    pub skaddr: u64,
    /// The packet's addresses as it travelled: `local` is its source, `remote` its destination.
    pub addrs: FlowAddrs,
    /// The kernel's reason, named from its BTF (`NETFILTER_DROP`), or its number.
    pub reason: String,
    pub netns: u32,
    /// The TCP header's flags byte (FIN 1, SYN 2, RST 4, PSH 8, ACK 16).
    pub tcp_flags: u8,
    /// The packet's conntrack entry, where it had one.
    pub conntrack: Option<Conntrack>,
}

impl PacketDrop {
    /// A connection's first packet: SYN without ACK.
    pub fn is_first_syn(&self) -> bool {
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        self.tcp_flags & (SYN | ACK) == SYN
    }

    /// The TCP flags as text: `SYN`, `SYN|ACK`, `ACK|FIN`, ….
    pub fn flags_text(&self) -> String {
        const NAMES: [(u8, &str); 6] = [
            (2, "SYN"),
            (16, "ACK"),
            (1, "FIN"),
            (4, "RST"),
            (8, "PSH"),
            (32, "URG"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| self.tcp_flags & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join("|")
        }
    }
}

/// Drop reasons the kernel answers (with a reset): the sender is told, nothing is lost.
pub const ANSWERED_REASONS: [&str; 1] = ["NO_SOCKET"];

/// The packets of one flow the kernel dropped, by reason (in the order first seen).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropTally(pub Vec<(String, u32)>);

impl DropTally {
    /// Counts `n` more drops for `reason`.
    pub fn add(&mut self, reason: &str, n: u32) {
        match self.0.iter_mut().find(|(r, _)| r == reason) {
            Some((_, count)) => *count = count.saturating_add(n),
            None => self.0.push((reason.to_string(), n)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The drops that lost a packet: all but `NO_SOCKET`, a segment to a port nothing
    /// listens on, which the kernel answers with a reset (a refused connect(), not loss).
    pub fn lost(&self) -> u64 {
        self.0
            .iter()
            .filter(|(reason, _)| !ANSWERED_REASONS.contains(&reason.as_str()))
            .map(|(_, n)| u64::from(*n))
            .sum()
    }

    /// `NETFILTER_DROP:3,TCP_CLOSE:1`.
    pub fn text(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for DropTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (reason, n)) in self.0.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(f, "{comma}{reason}:{n}")?;
        }
        Ok(())
    }
}

/// Bytes in short form: `512B`, `12.4KB`, `1.1MB`, `3.0GB` (powers of 1000, as tcplife's),
/// written where it is displayed (no allocation per flow line).
pub struct HumanBytes(pub u64);

impl std::fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
        if self.0 < 1000 {
            return write!(f, "{}B", self.0);
        }
        let mut value = self.0 as f64 / 1000.0;
        let mut unit = 0;
        while value >= 1000.0 && unit + 1 < UNITS.len() {
            value /= 1000.0;
            unit += 1;
        }
        write!(f, "{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vitals_are_unscaled_and_missing_samples_are_none() {
        let v = FlowVitals::from(&Vitals {
            bytes_acked: 300_000,
            bytes_received: 12,
            segs_in: 40,
            segs_out: 220,
            srtt_us: 91_579 << 3,
            mdev_us: 1_339 << 2,
            min_rtt_us: 80_000,
            total_retrans: 2,
        });
        assert_eq!(v.srtt_ns, Some(91_579_000));
        assert_eq!(v.rttvar_ns, Some(1_339_000));
        assert_eq!(v.min_rtt_ns, Some(80_000_000));
        let none = FlowVitals::from(&Vitals {
            min_rtt_us: u32::MAX,
            ..Vitals::default()
        });
        assert_eq!(
            (none.srtt_ns, none.rttvar_ns, none.min_rtt_ns),
            (None, None, None)
        );
    }

    #[test]
    fn bytes_print_short() {
        let text = |n| HumanBytes(n).to_string();
        assert_eq!(text(0), "0B");
        assert_eq!(text(999), "999B");
        assert_eq!(text(12_400), "12.4KB");
        assert_eq!(text(1_100_000), "1.1MB");
        assert_eq!(text(3_000_000_000), "3.0GB");
    }

    #[test]
    fn drops_tally_by_reason_in_order() {
        let mut t = DropTally::default();
        t.add("NETFILTER_DROP", 1);
        t.add("TCP_CLOSE", 1);
        t.add("NETFILTER_DROP", 1);
        assert_eq!(t.text(), "NETFILTER_DROP:2,TCP_CLOSE:1");
    }
}
