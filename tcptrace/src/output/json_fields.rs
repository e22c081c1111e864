//! The fields every JSON line type shares — a flow's addresses, its owner, its workload — are
//! named and ordered here, once. The per-event lines (written byte by byte, `json_events`)
//! and the other lines (serde: alerts, idle reports, TIME_WAITs) both take them from these
//! functions: each calls `put(key, value)` for the fields it has.
use std::{fmt::Write as _, net::IpAddr};

use serde::{ser::SerializeMap as _, Serialize, Serializer};

use crate::{
    model::{
        tcp::{FlowAddrs, Process},
        workload::Workload,
    },
    text::stackstr::StackStr,
};

/// A shared field's value.
#[derive(Clone, Copy)]
pub(super) enum Field<'a> {
    /// A name of this program's own (nothing to escape).
    Name(&'static str),
    /// Text from outside (a task's name, a pod's): escaped.
    Text(Option<&'a str>),
    Number(Option<u64>),
    Ip(IpAddr),
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Field::Name(name) => s.serialize_str(name),
            Field::Text(text) => text.serialize(s),
            Field::Number(n) => n.serialize(s),
            Field::Ip(ip) => s.collect_str(&ip),
        }
    }
}

/// `pid`, `comm` (null when the owner is unknown).
pub(super) fn owner_fields(owner: &Option<Process>, mut put: impl FnMut(&'static str, Field)) {
    put(
        "pid",
        Field::Number(owner.as_ref().map(|p| u64::from(p.pid))),
    );
    put("comm", Field::Text(owner.as_ref().map(|p| p.comm.as_str())));
}

/// `cgroup_id`, `container_id`, `container_runtime`, `pod_uid`, `namespace`, `pod`,
/// `container`, `unit`: each absent when unknown.
pub(super) fn workload_fields(workload: &Workload, mut put: impl FnMut(&'static str, Field)) {
    if !workload.known() {
        return;
    }
    put("cgroup_id", Field::Number(Some(workload.cgroup)));
    let Some(identity) = workload.identity.as_deref() else {
        return;
    };
    for (key, value) in [
        ("container_id", &identity.container_id),
        ("container_runtime", &identity.runtime),
        ("pod_uid", &identity.pod_uid),
        ("namespace", &identity.namespace),
        ("pod", &identity.pod),
        ("container", &identity.container),
        ("unit", &identity.unit),
    ] {
        if let Some(value) = value {
            put(key, Field::Text(Some(value)));
        }
    }
}

/// `family`, `laddr`, `lport`, `raddr`, `rport`.
pub(super) fn addr_fields(addrs: &FlowAddrs, mut put: impl FnMut(&'static str, Field)) {
    let family = if addrs.local.addr.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    put("family", Field::Name(family));
    put("laddr", Field::Ip(addrs.local.addr));
    put("lport", Field::Number(Some(u64::from(addrs.local.port))));
    put("raddr", Field::Ip(addrs.remote.addr));
    put("rport", Field::Number(Some(u64::from(addrs.remote.port))));
}

/// Serialises the fields `fields` puts as a map (for `#[serde(flatten)]`).
fn serialize_fields<S: Serializer>(
    s: S,
    fields: impl FnOnce(&mut dyn FnMut(&'static str, Field)),
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    let mut failed = None;
    fields(&mut |key, value| {
        if failed.is_none() {
            failed = map.serialize_entry(key, &value).err();
        }
    });
    match failed {
        Some(e) => Err(e),
        None => map.end(),
    }
}

/// A socket's kernel address, `0x…` in lower-case hex.
pub(super) fn hex(n: u64) -> StackStr<24> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 18];
    let mut at = buf.len();
    let mut rest = n;
    loop {
        at -= 1;
        buf[at] = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    buf[at - 2..at].copy_from_slice(b"0x");
    let mut text = StackStr::new();
    // Only ASCII digits and "0x" were written.
    let _ = text.write_str(std::str::from_utf8(&buf[at - 2..]).unwrap_or("0x?"));
    text
}

/// A socket's kernel address as a serde value.
pub(super) struct Hex(pub(super) u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hex(self.0).as_str())
    }
}

/// A flow's addresses, for serde lines.
pub(super) struct Addrs<'a>(&'a FlowAddrs);

impl<'a> From<&'a FlowAddrs> for Addrs<'a> {
    fn from(a: &'a FlowAddrs) -> Self {
        Addrs(a)
    }
}

impl Serialize for Addrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(s, |put| addr_fields(self.0, put))
    }
}

/// Who owns a socket, for serde lines.
pub(super) struct Owner<'a>(&'a Option<Process>);

impl<'a> From<&'a Option<Process>> for Owner<'a> {
    fn from(p: &'a Option<Process>) -> Self {
        Owner(p)
    }
}

impl Serialize for Owner<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(s, |put| owner_fields(self.0, put))
    }
}

/// A workload's fields, for serde lines (none for a line without a workload).
pub(super) struct WorkloadFields<'a>(Option<&'a Workload>);

impl<'a> From<Option<&'a Workload>> for WorkloadFields<'a> {
    fn from(w: Option<&'a Workload>) -> Self {
        WorkloadFields(w)
    }
}

impl Serialize for WorkloadFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(s, |put| {
            if let Some(w) = self.0 {
                workload_fields(w, put);
            }
        })
    }
}
