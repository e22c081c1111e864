//! The fields every JSON line type shares, written one way: a flow's addresses, its owner,
//! its workload and a socket's kernel address.
use serde::Serialize;

use super::json_events::hex;
use crate::model::{
    tcp::{FlowAddrs, Process},
    workload::{Identity, Workload},
};

/// A socket's kernel address, `0x…` in lower-case hex.
pub(super) struct Hex(pub(super) u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hex(self.0).as_str())
    }
}

#[derive(Serialize)]
pub(super) struct Addrs<'a> {
    family: &'a str,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
}

impl From<&FlowAddrs> for Addrs<'_> {
    fn from(a: &FlowAddrs) -> Self {
        Addrs {
            family: if a.local.addr.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            },
            laddr: a.local.addr.to_string(),
            lport: a.local.port,
            raddr: a.remote.addr.to_string(),
            rport: a.remote.port,
        }
    }
}

#[derive(Serialize)]
pub(super) struct Owner<'a> {
    pid: Option<u32>,
    comm: Option<&'a str>,
}

impl<'a> From<&'a Option<Process>> for Owner<'a> {
    fn from(p: &'a Option<Process>) -> Self {
        Owner {
            pid: p.as_ref().map(|p| p.pid),
            comm: p.as_ref().map(|p| p.comm.as_str()),
        }
    }
}

/// A workload's fields, each absent when unknown (as on event lines).
#[derive(Serialize, Default)]
pub(super) struct WorkloadFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_runtime: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

impl<'a> From<Option<&'a Workload>> for WorkloadFields<'a> {
    fn from(w: Option<&'a Workload>) -> Self {
        let Some(w) = w.filter(|w| w.known()) else {
            return WorkloadFields::default();
        };
        let i = w.identity.as_deref();
        let field = |f: fn(&'a Identity) -> &'a Option<String>| i.and_then(|i| f(i).as_deref());
        WorkloadFields {
            cgroup_id: Some(w.cgroup),
            container_id: field(|i| &i.container_id),
            container_runtime: field(|i| &i.runtime),
            pod_uid: field(|i| &i.pod_uid),
            namespace: field(|i| &i.namespace),
            pod: field(|i| &i.pod),
            container: field(|i| &i.container),
            unit: field(|i| &i.unit),
        }
    }
}
