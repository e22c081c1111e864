//! What a socket carried and how its path behaved, read from `tcp_sock` at CLOSE; and the
//! packets the kernel dropped, with its reason.
use crate::Tuple;

/// A flow's vitals at CLOSE, as the kernel keeps them (`tcp_sock`), valid with
/// [`crate::close_flags::VITALS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vitals {
    /// Bytes of ours the peer acknowledged (`bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes received in order (`bytes_received`).
    pub bytes_received: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    /// Smoothed RTT, µs << 3, as the kernel keeps it (0: no sample).
    pub srtt_us: u32,
    /// RTT mean deviation, µs << 2, as the kernel keeps it.
    pub mdev_us: u32,
    /// The windowed minimum RTT, µs (`u32::MAX`: no sample).
    pub min_rtt_us: u32,
    /// Segments retransmitted over the socket's life (`total_retrans`).
    pub total_retrans: u32,
}
const _: () = assert!(core::mem::size_of::<Vitals>() == 40);

/// A TCP packet the kernel dropped (`skb:kfree_skb`), with its reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub kind: u32,
    /// The kernel's `enum skb_drop_reason` value (names differ between kernels: userspace
    /// reads them from BTF).
    pub reason: u32,
    pub ts_ns: u64,
    /// The full socket the packet belonged to (0: none yet, e.g. a SYN dropped on input; or
    /// a request or timewait socket's).
    pub skaddr: u64,
    /// The packet's addresses as it travelled: source first.
    pub tuple: Tuple,
    /// The namespace of the socket, or of the device, that dropped it (0: unknown).
    pub netns: u32,
    /// The TCP flags of the packet (`th->flags` byte: FIN 1, SYN 2, RST 4, ACK 16).
    pub tcp_flags: u8,
    /// Bits of [`drop_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// The packet's conntrack entry, valid with [`drop_flags::CONNTRACK`] (since layout 6).
    pub conntrack: ConntrackEntry,
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 72 + 88);

/// Bits of [`DropEvent::flags`].
pub mod drop_flags {
    /// The packet was IPv6.
    pub const IPV6: u8 = 1 << 0;
    /// The packet carried a conntrack entry (`skb->_nfct`): [`super::DropEvent::conntrack`]
    /// holds it.
    pub const CONNTRACK: u8 = 1 << 1;
}

/// A conntrack entry as the kernel holds it (`struct nf_conn`): the original direction's
/// tuple (as the first packet travelled, before any translation) and the reply direction's
/// (as replies travel, after it: a source NAT shows there as the translated destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackEntry {
    pub original: Tuple,
    pub reply: Tuple,
    /// `nf_conn.status` (bits of `enum ip_conntrack_status`, see [`ct_status`]), low 32 bits.
    pub status: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ConntrackEntry>() == 88);

/// Bits of `enum ip_conntrack_status` (uapi: the same on every kernel).
pub mod ct_status {
    /// The entry is in the table (an unconfirmed one is still being set up by its first packet).
    pub const CONFIRMED: u32 = 1 << 3;
    /// The source is translated (SNAT, MASQUERADE).
    pub const SRC_NAT: u32 = 1 << 4;
    /// The destination is translated (DNAT, a Service address).
    pub const DST_NAT: u32 = 1 << 5;
}

/// Reasons counted one by one in [`DropCounts`] (`enum skb_drop_reason` values below it;
/// larger ones, the subsystems' own, count in the last entry).
pub const DROP_REASON_SLOTS: usize = 256;

/// Words of the set of drop reasons the hook leaves alone (`ProgramConfig::drop_ignore`):
/// one bit for each reason below [`DROP_REASON_SLOTS`], 64 to a word.
pub const DROP_IGNORE_WORDS: usize = DROP_REASON_SLOTS / 64;
const _: () =
    assert!(DROP_IGNORE_WORDS.is_power_of_two() && DROP_IGNORE_WORDS * 64 == DROP_REASON_SLOTS);

/// The word and the bit of `reason` (below [`DROP_REASON_SLOTS`]) in the ignore set: the
/// word index masked, so the kernel's read is bounded whatever the reason.
#[inline(always)]
pub const fn drop_ignore_bit(reason: u32) -> (usize, u64) {
    (
        (reason >> 6) as usize & (DROP_IGNORE_WORDS - 1),
        1 << (reason & 63),
    )
}

/// Drops by the kernel's reason, per CPU (the `DROP_REASONS` map's one entry): exact whatever
/// number of records was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCounts {
    pub by_reason: [u64; DROP_REASON_SLOTS],
}
const _: () = assert!(core::mem::size_of::<DropCounts>() == 8 * DROP_REASON_SLOTS);

/// The window `ProgramConfig::drop_records_per_s` counts over: one second.
pub const DROP_BUDGET_WINDOW_NS: u64 = 1_000_000_000;

/// This CPU's drop records in the current second (the `DROP_BUDGET` map's one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropBudget {
    /// When the current second began (`bpf_ktime_get_ns`).
    pub window_ns: u64,
    pub sent: u64,
}
const _: () = assert!(core::mem::size_of::<DropBudget>() == 16);
