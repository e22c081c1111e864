//! What conntrack knows of a connection: its addresses before and after translation (NAT),
//! as the kernel's entry holds them, read with the packets it dropped.
use tcptrace_common::ct_status;

use crate::model::tcp::FlowAddrs;

/// A conntrack entry: the connection as its first packet travelled (`original`, before any
/// translation: `local` its source) and as replies travel (`reply`, after it: `local` the
/// replier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conntrack {
    pub original: FlowAddrs,
    pub reply: FlowAddrs,
    /// `nf_conn.status` bits ([`ct_status`]).
    pub status: u32,
}

impl Conntrack {
    /// The source is translated (SNAT, MASQUERADE).
    pub fn source_translated(&self) -> bool {
        self.status & ct_status::SRC_NAT != 0
    }

    /// The destination is translated (DNAT: a Service address to a backend).
    pub fn destination_translated(&self) -> bool {
        self.status & ct_status::DST_NAT != 0
    }

    /// The entry is in the table (not one its first packet was still setting up).
    pub fn confirmed(&self) -> bool {
        self.status & ct_status::CONFIRMED != 0
    }

    /// Whether the replies' tuple is not the original one turned round: an address or
    /// port was translated.
    pub fn translates(&self) -> bool {
        self.reply.local != self.original.remote || self.reply.remote != self.original.local
    }

    /// The connection as its packets travel past the translation: from the translated
    /// source to the real destination.
    pub fn translated(&self) -> FlowAddrs {
        FlowAddrs {
            local: self.reply.remote,
            remote: self.reply.local,
        }
    }
}
