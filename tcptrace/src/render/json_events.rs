//! The per-event JSON lines (transition, flow, retransmit): the ones written at line rate.
//! Serialized field by field rather than derived with `#[serde(flatten)]` (which goes through
//! serde's map machinery), with addresses and socket addresses built on the stack: no heap
//! allocation per line. Field names and order are the README's (pinned by a test).
use std::{fmt::Write as _, net::IpAddr};

use serde::{ser::SerializeStruct, Serialize, Serializer};

use crate::{
    decode::{FinishedFlow, Retransmit, Transition},
    digits,
    model::{FlowAddrs, PathStep, Process, TcpState},
    stackstr::StackStr,
    timewait::TimeWaitEnd,
};

/// An IP address as JSON text (IPv4 written without `core::fmt`).
struct IpText(StackStr<48>);

impl IpText {
    fn of(addr: IpAddr) -> IpText {
        let mut text = StackStr::new();
        let _ = match addr {
            IpAddr::V4(v4) => digits::ipv4(&mut text, v4),
            IpAddr::V6(v6) => write!(text, "{v6}"),
        };
        IpText(text)
    }
}

impl Serialize for IpText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// A socket's kernel address, `0x…` in lower-case hex.
pub(super) struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 18];
        let mut at = buf.len();
        let mut n = self.0;
        loop {
            at -= 1;
            buf[at] = DIGITS[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        buf[at - 2..at].copy_from_slice(b"0x");
        // Only ASCII digits and "0x" were written.
        s.serialize_str(std::str::from_utf8(&buf[at - 2..]).unwrap_or("0x?"))
    }
}

/// The owner and addresses every per-event line carries after its time.
fn owner_and_addrs<S: SerializeStruct>(
    line: &mut S,
    owner: &Option<Process>,
    addrs: &FlowAddrs,
) -> Result<(), S::Error> {
    line.serialize_field("pid", &owner.as_ref().map(|p| p.pid))?;
    line.serialize_field("comm", &owner.as_ref().map(|p| p.comm.as_str()))?;
    let family = if addrs.local.addr.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    line.serialize_field("family", family)?;
    line.serialize_field("laddr", &IpText::of(addrs.local.addr))?;
    line.serialize_field("lport", &addrs.local.port)?;
    line.serialize_field("raddr", &IpText::of(addrs.remote.addr))?;
    line.serialize_field("rport", &addrs.remote.port)
}

pub(super) struct TransitionLine<'a> {
    pub ts_unix_ns: u64,
    pub t: &'a Transition,
}

impl Serialize for TransitionLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.t;
        let mut line = s.serialize_struct("TransitionLine", 14)?;
        line.serialize_field("type", "transition")?;
        line.serialize_field("ts_unix_ns", &self.ts_unix_ns)?;
        owner_and_addrs(&mut line, &t.owner, &t.addrs)?;
        line.serialize_field("old", &t.old)?;
        line.serialize_field("new", &t.new)?;
        line.serialize_field("old_held_ns", &t.old_held_ns)?;
        line.serialize_field("untracked", &t.untracked)?;
        line.serialize_field("skaddr", &Hex(t.skaddr))?;
        line.end()
    }
}

/// A flow's path, a JSON array of its states.
struct Steps<'a>(&'a [PathStep]);

/// One state of a flow's path.
#[derive(Serialize)]
struct Step {
    state: TcpState,
    held_ns: Option<u64>,
    rtx: u16,
}

impl Serialize for Steps<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|step| Step {
            state: step.state,
            held_ns: step.held_ns,
            rtx: step.retransmits,
        }))
    }
}

#[derive(Serialize)]
struct TimeWaitField {
    start_unix_ns: u64,
    held_ns: u64,
    end: TimeWaitEnd,
}

pub(super) struct FlowLine<'a> {
    pub ts_unix_ns: u64,
    /// The TIME_WAIT's start, in unix time, when one followed.
    pub time_wait_start_unix_ns: Option<u64>,
    pub f: &'a FinishedFlow,
}

impl Serialize for FlowLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.f;
        let mut line = s.serialize_struct("FlowLine", 23)?;
        line.serialize_field("type", "flow")?;
        line.serialize_field("ts_unix_ns", &self.ts_unix_ns)?;
        owner_and_addrs(&mut line, &f.lifecycle.owner, &f.addrs)?;
        line.serialize_field("path", &Steps(&f.lifecycle.path))?;
        line.serialize_field("life_ns", &f.life_ns())?;
        line.serialize_field("start_seen", &f.lifecycle.start_seen)?;
        line.serialize_field("truncated", &f.lifecycle.truncated)?;
        line.serialize_field("close", &f.close)?;
        line.serialize_field("cause", &f.cause)?;
        line.serialize_field("err", &f.evidence.err)?;
        line.serialize_field("reset_received", &f.evidence.reset_received)?;
        line.serialize_field("reset_reason", &f.evidence.reset_sent.as_deref())?;
        line.serialize_field("probes", &f.evidence.probes)?;
        line.serialize_field("rtx", &f.lifecycle.retransmits)?;
        let time_wait = f.time_wait.as_ref().map(|t| TimeWaitField {
            start_unix_ns: self.time_wait_start_unix_ns.unwrap_or_default(),
            held_ns: t.held_ns,
            end: t.end,
        });
        line.serialize_field("time_wait", &time_wait)?;
        line.serialize_field("skaddr", &Hex(f.skaddr))?;
        line.end()
    }
}

pub(super) struct RetransmitLine<'a> {
    pub ts_unix_ns: u64,
    pub r: &'a Retransmit,
}

impl Serialize for RetransmitLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.r;
        let mut line = s.serialize_struct("RetransmitLine", 13)?;
        line.serialize_field("type", "retransmit")?;
        line.serialize_field("ts_unix_ns", &self.ts_unix_ns)?;
        owner_and_addrs(&mut line, &r.owner, &r.addrs)?;
        line.serialize_field("state", &r.state)?;
        line.serialize_field("err", &r.err)?;
        line.serialize_field("untracked", &r.untracked)?;
        line.serialize_field("skaddr", &Hex(r.skaddr))?;
        line.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_socket_addresses_read_as_format_writes_them() {
        for n in [0u64, 1, 0xf, 0x10, 0xffff_8880_1234_5678, u64::MAX] {
            let json = serde_json::to_string(&Hex(n)).expect("serializes");
            assert_eq!(json, format!("\"{n:#x}\""));
        }
        for addr in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = addr.parse().expect("an address");
            assert_eq!(IpText::of(ip).0.as_str(), ip.to_string());
        }
    }
}
