//! The per-event JSON lines (transition, flow, retransmit): the ones written at line rate.
//! Written byte by byte into a line buffer: keys are literals written as they are (no
//! escaping pass over each key, no serializer state machine), numbers through `itoa`,
//! addresses on the stack; strings that come from the kernel (a task's name, a reset reason)
//! are escaped by serde_json. Field names and order are docs/reference.md's (pinned by a test).
use std::{fmt::Write as _, net::IpAddr};

use super::json_fields::{addr_fields, hex, owner_fields, workload_fields, Field};
use crate::{
    model::events::{FinishedFlow, Retransmit, Transition},
    model::tcp::{FlowAddrs, Process},
    model::vitals::{FlowVitals, PacketDrop},
    model::workload::Workload,
    text::digits,
    text::stackstr::StackStr,
};

/// One JSON object being written into `buf`. Keys are the callers' literals: plain ASCII
/// without quotes or backslashes.
struct Object<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn start(buf: &'a mut Vec<u8>) -> Object<'a> {
        buf.push(b'{');
        Object { buf, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.buf
    }

    fn number<N: itoa::Integer>(&mut self, key: &str, n: N) {
        let mut digits = itoa::Buffer::new();
        let text = digits.format(n);
        self.key(key).extend_from_slice(text.as_bytes());
    }

    fn optional_number<N: itoa::Integer>(&mut self, key: &str, n: Option<N>) {
        match n {
            Some(n) => self.number(key, n),
            None => self.key(key).extend_from_slice(b"null"),
        }
    }

    fn boolean(&mut self, key: &str, b: bool) {
        let text: &[u8] = if b { b"true" } else { b"false" };
        self.key(key).extend_from_slice(text);
    }

    /// A name of this program's own (a state, a cause): ASCII without anything to escape.
    fn name(&mut self, key: &str, name: &str) {
        let buf = self.key(key);
        buf.push(b'"');
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'"');
    }

    /// Any text, escaped as JSON requires.
    fn text(&mut self, key: &str, text: Option<&str>) {
        let buf = self.key(key);
        match text {
            // Writing into a Vec cannot fail.
            Some(text) => {
                let _ = serde_json::to_writer(&mut *buf, text);
            }
            None => buf.extend_from_slice(b"null"),
        }
    }

    /// A shared field (`json_fields`).
    fn field(&mut self, key: &str, value: Field) {
        match value {
            Field::Name(name) => self.name(key, name),
            Field::Text(text) => self.text(key, text),
            Field::Number(n) => self.optional_number(key, n),
            Field::Ip(ip) => self.name(key, ip_text(ip).as_str()),
        }
    }

    /// Two endpoints as an object under `names` (address, port, address, port), or null.
    fn endpoints(&mut self, key: &str, addrs: Option<&FlowAddrs>, names: [&str; 4]) {
        let Some(addrs) = addrs else {
            self.key(key).extend_from_slice(b"null");
            return;
        };
        let mut object = Object::start(self.key(key));
        object.name(names[0], ip_text(addrs.local.addr).as_str());
        object.number(names[1], addrs.local.port);
        object.name(names[2], ip_text(addrs.remote.addr).as_str());
        object.number(names[3], addrs.remote.port);
        object.end();
    }

    fn end(self) {
        self.buf.push(b'}');
    }
}

/// The names of a packet's or a conntrack tuple's endpoints: source first.
const PACKET_ENDPOINTS: [&str; 4] = ["saddr", "sport", "daddr", "dport"];

/// An IP address as text (IPv4 written without `core::fmt`).
fn ip_text(addr: IpAddr) -> StackStr<48> {
    let mut text = StackStr::new();
    let _ = match addr {
        IpAddr::V4(v4) => digits::ipv4(&mut text, v4),
        IpAddr::V6(v6) => write!(text, "{v6}"),
    };
    text
}

/// A per-event line's start: its type and time, the owner, its workload and the addresses.
fn start_event<'a>(
    buf: &'a mut Vec<u8>,
    kind: &str,
    ts_unix_ns: u64,
    owner: &Option<Process>,
    workload: &Workload,
    addrs: &FlowAddrs,
) -> Object<'a> {
    let mut line = Object::start(buf);
    line.name("type", kind);
    line.number("ts_unix_ns", ts_unix_ns);
    owner_fields(owner, |key, value| line.field(key, value));
    workload_fields(workload, |key, value| line.field(key, value));
    addr_fields(addrs, |key, value| line.field(key, value));
    line
}

/// A transition line, without its newline.
pub(super) fn transition_line(buf: &mut Vec<u8>, ts_unix_ns: u64, t: &Transition) {
    let mut line = start_event(
        buf,
        "transition",
        ts_unix_ns,
        &t.owner,
        &t.workload,
        &t.addrs,
    );
    line.name("old", t.old.name());
    line.name("new", t.new.name());
    line.optional_number("old_held_ns", t.old_held_ns);
    line.boolean("untracked", t.untracked);
    line.name("skaddr", hex(t.skaddr).as_str());
    line.end();
}

/// A flow line, without its newline; `time_wait_start_unix_ns` is the start of the TIME_WAIT
/// that followed, if one did; `time_wait_follows`: it is printed at its close, and a
/// `time_wait` record follows at that TIME_WAIT's end.
pub(super) fn flow_line(
    buf: &mut Vec<u8>,
    ts_unix_ns: u64,
    time_wait_start_unix_ns: Option<u64>,
    time_wait_follows: bool,
    f: &FinishedFlow,
) {
    let lifecycle = &f.lifecycle;
    let mut line = start_event(
        buf,
        "flow",
        ts_unix_ns,
        &lifecycle.owner,
        &lifecycle.workload,
        &f.addrs,
    );
    let path = line.key("path");
    path.push(b'[');
    for (i, step) in f.lifecycle.path.iter().enumerate() {
        if i > 0 {
            path.push(b',');
        }
        let mut step_object = Object::start(path);
        step_object.name("state", step.state.name());
        step_object.optional_number("held_ns", step.held_ns);
        step_object.number("rtx", step.retransmits);
        step_object.end();
    }
    path.push(b']');
    line.optional_number("life_ns", f.life_ns());
    line.boolean("start_seen", f.lifecycle.start_seen);
    line.boolean("truncated", f.lifecycle.truncated);
    line.name("close", f.close.name());
    line.name("cause", f.cause.name());
    line.number("err", f.evidence.err);
    line.boolean("reset_received", f.evidence.reset_received);
    line.text("reset_reason", f.evidence.reset_sent.as_deref());
    line.number("probes", f.evidence.probes);
    line.number("rtx", f.lifecycle.retransmits);
    vitals_fields(&mut line, f.vitals.as_ref());
    let drops = line.key("drops");
    drops.push(b'{');
    for (i, (reason, n)) in f.drops.0.iter().enumerate() {
        if i > 0 {
            drops.push(b',');
        }
        let _ = serde_json::to_writer(&mut *drops, reason);
        drops.push(b':');
        drops.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
    }
    drops.push(b'}');
    line.endpoints(
        "nat",
        f.translated.as_ref(),
        ["laddr", "lport", "raddr", "rport"],
    );
    match &f.time_wait {
        Some(t) => {
            let mut time_wait = Object::start(line.key("time_wait"));
            time_wait.number("start_unix_ns", time_wait_start_unix_ns.unwrap_or_default());
            time_wait.number("held_ns", t.held_ns);
            time_wait.name("end", t.end.name());
            time_wait.end();
        }
        None => line.key("time_wait").extend_from_slice(b"null"),
    }
    line.boolean("time_wait_follows", time_wait_follows);
    line.name("skaddr", hex(f.skaddr).as_str());
    line.end();
}

/// `bytes_acked`, `bytes_received`, `segs_in`, `segs_out`, `srtt_ns`, `rttvar_ns`,
/// `min_rtt_ns`, `total_retrans`: each null without vitals (an RTT without a sample).
fn vitals_fields(line: &mut Object, v: Option<&FlowVitals>) {
    line.optional_number("bytes_acked", v.map(|v| v.bytes_acked));
    line.optional_number("bytes_received", v.map(|v| v.bytes_received));
    line.optional_number("segs_in", v.map(|v| v.segs_in));
    line.optional_number("segs_out", v.map(|v| v.segs_out));
    line.optional_number("srtt_ns", v.and_then(|v| v.srtt_ns));
    line.optional_number("rttvar_ns", v.and_then(|v| v.rttvar_ns));
    line.optional_number("min_rtt_ns", v.and_then(|v| v.min_rtt_ns));
    line.optional_number("total_retrans", v.map(|v| v.total_retrans));
}

/// A drop line, without its newline: the packet's source and destination as it travelled.
pub(super) fn drop_line(buf: &mut Vec<u8>, ts_unix_ns: u64, d: &PacketDrop) {
    let mut line = Object::start(buf);
    line.name("type", "drop");
    line.number("ts_unix_ns", ts_unix_ns);
    let family = if d.addrs.local.addr.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    line.name("family", family);
    line.name("saddr", ip_text(d.addrs.local.addr).as_str());
    line.number("sport", d.addrs.local.port);
    line.name("daddr", ip_text(d.addrs.remote.addr).as_str());
    line.number("dport", d.addrs.remote.port);
    line.text("reason", Some(&d.reason));
    line.name("tcp_flags", &d.flags_text());
    line.number("netns", d.netns);
    line.name("skaddr", hex(d.skaddr).as_str());
    match &d.conntrack {
        Some(ct) => {
            let mut entry = Object::start(line.key("conntrack"));
            entry.endpoints("original", Some(&ct.original), PACKET_ENDPOINTS);
            entry.endpoints("reply", Some(&ct.reply), PACKET_ENDPOINTS);
            entry.boolean("src_nat", ct.source_translated());
            entry.boolean("dst_nat", ct.destination_translated());
            entry.boolean("confirmed", ct.confirmed());
            entry.end();
        }
        None => line.key("conntrack").extend_from_slice(b"null"),
    }
    line.end();
}

/// A retransmit line, without its newline.
pub(super) fn retransmit_line(buf: &mut Vec<u8>, ts_unix_ns: u64, r: &Retransmit) {
    let mut line = start_event(
        buf,
        "retransmit",
        ts_unix_ns,
        &r.owner,
        &r.workload,
        &r.addrs,
    );
    line.name("state", r.state.name());
    line.optional_number("err", r.err);
    line.boolean("untracked", r.untracked);
    line.boolean("synack", r.synack);
    line.name("skaddr", hex(r.skaddr).as_str());
    line.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_socket_addresses_read_as_format_writes_them() {
        for n in [0u64, 1, 0xf, 0x10, 0xffff_8880_1234_5678, u64::MAX] {
            assert_eq!(hex(n).as_str(), format!("{n:#x}"));
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
            assert_eq!(ip_text(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn text_from_the_kernel_is_escaped_and_the_object_parses() {
        for comm in ["curl", "a\"b", "back\\slash", "tab\there", "\u{1}ctl", "é✓"] {
            let mut buf = Vec::new();
            let mut object = Object::start(&mut buf);
            object.text("comm", Some(comm));
            object.text("none", None);
            object.optional_number("n", Some(-3i32));
            object.optional_number::<u64>("m", None);
            object.boolean("b", true);
            object.end();
            let parsed: serde_json::Value =
                serde_json::from_slice(&buf).expect("the object parses");
            assert_eq!(
                parsed,
                serde_json::json!({"comm": comm, "none": null, "n": -3, "m": null, "b": true}),
                "{}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}
