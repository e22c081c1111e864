//! The validated filters, as every layer reads them: the command line's, once checked (`cli`),
//! what the kernel programs are configured with (`kernel::filter` writes them) and what
//! userspace applies to what it reads without the programs (sock_diag).
use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use tcptrace_common::{filter_kind, port_bits, FilterConfig};

use crate::model::{
    events::Event,
    tcp::{FlowAddrs, Process, AF_INET, AF_INET6},
    workload::{short_id, Identity},
};

/// The kernel's table of filtered cgroups (`WORKLOAD_CGROUPS`).
pub const MAX_FILTERED_CGROUPS: usize = 4096;

/// Validated filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    pub pids: Vec<u32>,
    pub local_ports: Vec<(u16, u16)>,
    pub remote_ports: Vec<(u16, u16)>,
    /// `--port`: either side.
    pub ports: Vec<(u16, u16)>,
    pub local_addrs: Vec<IpNet>,
    pub remote_addrs: Vec<IpNet>,
    /// (as given, cgroup id)
    pub cgroups: Vec<(String, u64)>,
    /// (as given, namespace inode)
    pub netns: Vec<(String, u32)>,
    /// `AF_INET` or `AF_INET6`.
    pub family: Option<u16>,
    /// Pods, Kubernetes namespaces and containers (resolved to cgroups with the identity
    /// settings, see `Config`).
    pub workloads: WorkloadFilter,
}

fn port_ranges_allow(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges
        .iter()
        .any(|&(low, high)| (low..=high).contains(&port))
}

fn addr_allowed(nets: &[IpNet], addr: IpAddr) -> bool {
    let mapped = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    nets.iter()
        .any(|net| net.contains(&addr) || mapped.is_some_and(|m| net.contains(&m)))
}

impl FilterSpec {
    pub fn is_empty(&self) -> bool {
        self.active() == 0
    }

    /// Bits of `filter_kind`.
    pub fn active(&self) -> u32 {
        let mut bits = 0;
        let mut set = |on: bool, bit: u32| {
            if on {
                bits |= bit;
            }
        };
        set(self.family.is_some(), filter_kind::FAMILY);
        set(!self.local_ports.is_empty(), filter_kind::LOCAL_PORT);
        set(!self.remote_ports.is_empty(), filter_kind::REMOTE_PORT);
        set(!self.ports.is_empty(), filter_kind::EITHER_PORT);
        set(!self.local_addrs.is_empty(), filter_kind::LOCAL_ADDR);
        set(!self.remote_addrs.is_empty(), filter_kind::REMOTE_ADDR);
        set(!self.pids.is_empty(), filter_kind::PID);
        set(!self.cgroups.is_empty(), filter_kind::CGROUP);
        set(!self.netns.is_empty(), filter_kind::NETNS);
        set(!self.workloads.is_empty(), filter_kind::WORKLOAD);
        bits
    }

    pub fn has_ports(&self) -> bool {
        !self.local_ports.is_empty() || !self.remote_ports.is_empty() || !self.ports.is_empty()
    }

    /// The programs' view.
    pub fn program_config(&self) -> FilterConfig {
        let mut config = FilterConfig {
            active: self.active(),
            family: self.family.unwrap_or(0),
            pid_count: self.pids.len() as u8,
            netns_count: self.netns.len() as u8,
            cgroup_count: self.cgroups.len() as u8,
            ..FilterConfig::default()
        };
        for (slot, pid) in config.pids.iter_mut().zip(&self.pids) {
            *slot = *pid;
        }
        for (slot, (_, inode)) in config.netns.iter_mut().zip(&self.netns) {
            *slot = *inode;
        }
        for (slot, (_, id)) in config.cgroups.iter_mut().zip(&self.cgroups) {
            *slot = *id;
        }
        config
    }

    /// The `PORT_FILTER` bytes of the ports that are allowed (others stay 0).
    pub fn port_bits(&self) -> Vec<(u16, u8)> {
        (1..=u16::MAX)
            .filter_map(|port| {
                let mut bits = 0;
                if port_ranges_allow(&self.local_ports, port) {
                    bits |= port_bits::LOCAL;
                }
                if port_ranges_allow(&self.remote_ports, port) {
                    bits |= port_bits::REMOTE;
                }
                if port_ranges_allow(&self.ports, port) {
                    bits |= port_bits::EITHER;
                }
                (bits != 0).then_some((port, bits))
            })
            .collect()
    }

    /// The filters in words, for the start-up line.
    pub fn describe(&self) -> String {
        let ports = |r: &[(u16, u16)]| {
            r.iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let join = |v: Vec<String>| v.join(",");
        let mut parts = Vec::new();
        if !self.pids.is_empty() {
            parts.push(format!(
                "pid {}",
                join(self.pids.iter().map(u32::to_string).collect())
            ));
        }
        if !self.local_ports.is_empty() {
            parts.push(format!("local port {}", ports(&self.local_ports)));
        }
        if !self.remote_ports.is_empty() {
            parts.push(format!("remote port {}", ports(&self.remote_ports)));
        }
        if !self.ports.is_empty() {
            parts.push(format!("port {} (either side)", ports(&self.ports)));
        }
        if !self.local_addrs.is_empty() {
            parts.push(format!(
                "local addr {}",
                join(self.local_addrs.iter().map(IpNet::to_string).collect())
            ));
        }
        if !self.remote_addrs.is_empty() {
            parts.push(format!(
                "remote addr {}",
                join(self.remote_addrs.iter().map(IpNet::to_string).collect())
            ));
        }
        if !self.cgroups.is_empty() {
            parts.push(format!(
                "cgroup {}",
                join(
                    self.cgroups
                        .iter()
                        .map(|(t, id)| format!("{t} (id {id})"))
                        .collect()
                )
            ));
        }
        if !self.netns.is_empty() {
            parts.push(format!(
                "netns {}",
                join(
                    self.netns
                        .iter()
                        .map(|(t, i)| format!("{t} ({i})"))
                        .collect()
                )
            ));
        }
        if !self.workloads.is_empty() {
            parts.push(self.workloads.describe());
        }
        match self.family {
            Some(AF_INET) => parts.push("IPv4".into()),
            Some(_) => parts.push("IPv6".into()),
            None => {}
        }
        parts.join(" and ")
    }

    /// The family filter, judged from an address.
    fn admits_family(&self, addr: IpAddr) -> bool {
        let family = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
        self.family.is_none_or(|f| f == family)
    }

    /// The pid filter, judged from an owner (unknown: not admitted under `-p`).
    fn admits_pid(&self, pid: Option<u32>) -> bool {
        self.pids.is_empty() || pid.is_some_and(|p| self.pids.contains(&p))
    }

    /// Family, ports and addresses, judged from a 4-tuple (local side first).
    fn admits_endpoints(&self, addrs: &FlowAddrs) -> bool {
        let ports_ok =
            |ranges: &[(u16, u16)], port: u16| ranges.is_empty() || port_ranges_allow(ranges, port);
        let addrs_ok = |nets: &[IpNet], addr: IpAddr| nets.is_empty() || addr_allowed(nets, addr);
        self.admits_family(addrs.local.addr)
            && ports_ok(&self.local_ports, addrs.local.port)
            && ports_ok(&self.remote_ports, addrs.remote.port)
            && (self.ports.is_empty()
                || port_ranges_allow(&self.ports, addrs.local.port)
                || port_ranges_allow(&self.ports, addrs.remote.port))
            && addrs_ok(&self.local_addrs, addrs.local.addr)
            && addrs_ok(&self.remote_addrs, addrs.remote.addr)
    }

    /// Whether a decoded event passes the filters that what it carries can be judged by
    /// (`tcptrace report FILE -D 5432`): family, ports, addresses, the owner's pid. A dropped
    /// packet is judged either way round (it may be coming or going); a TIME_WAIT's cancel or
    /// expiry carries only its timer, and follows its start (the tracker ignores the end of a
    /// TIME_WAIT it never saw start).
    pub fn admits_event(&self, event: &Event) -> bool {
        let owned = |addrs: &FlowAddrs, owner: &Option<Process>| {
            self.admits_endpoints(addrs) && self.admits_pid(owner.as_ref().map(|o| o.pid))
        };
        match event {
            Event::Transition(t) => owned(&t.addrs, &t.owner),
            Event::FlowEnd(f) => owned(&f.addrs, &f.lifecycle.owner),
            Event::Retransmit(r) => owned(&r.addrs, &r.owner),
            Event::KeepaliveProbe(p) => owned(&p.addrs, &p.owner),
            Event::TimeWait(r) => r
                .addrs
                .is_none_or(|a| self.admits_endpoints(&a) && self.pids.is_empty()),
            Event::TimeWaitFlow(f) => self.admits_endpoints(&f.addrs) && self.pids.is_empty(),
            // A failed connect() or bind() has no local port: judged by what it asked for.
            Event::PortFailure(p) => {
                let asked = p.asked.is_none_or(|asked| {
                    self.admits_family(asked.addr)
                        && (self.remote_ports.is_empty()
                            || port_ranges_allow(&self.remote_ports, asked.port))
                        && (self.ports.is_empty() || port_ranges_allow(&self.ports, asked.port))
                        && (self.remote_addrs.is_empty()
                            || addr_allowed(&self.remote_addrs, asked.addr))
                });
                asked && self.admits_pid(Some(p.owner.pid))
            }
            Event::Drop(d) => {
                let back = FlowAddrs {
                    local: d.addrs.remote,
                    remote: d.addrs.local,
                };
                (self.admits_endpoints(&d.addrs) || self.admits_endpoints(&back))
                    && self.pids.is_empty()
            }
        }
    }

    /// Whether a socket found by sock_diag (in tcptrace's own namespace, owner and cgroup
    /// when known from /proc) passes the filters: used for what tcptrace lists without the kernel programs
    /// (pre-existing TIME_WAIT sockets, the idle report).
    pub fn admits_diag(
        &self,
        addrs: &FlowAddrs,
        own_netns: Option<u32>,
        owner: Option<u32>,
    ) -> bool {
        let in_netns = self.netns.is_empty()
            || own_netns.is_some_and(|n| self.netns.iter().any(|(_, i)| *i == n));
        if !in_netns || !self.admits_endpoints(addrs) || !self.admits_pid(owner) {
            return false;
        }
        // The cgroup is unknown here: a cgroup or workload filter admits nothing.
        self.cgroups.is_empty() && self.workloads.is_empty()
    }
}

/// `--pod`, `--namespace`, `--container`: the workloads traced (they combine with AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFilter {
    pub pods: Vec<String>,
    pub namespaces: Vec<String>,
    /// Names, or container ids (12 hex digits or more: a prefix).
    pub containers: Vec<String>,
    /// The cgroups they name now (sorted).
    pub cgroups: Vec<u64>,
}

fn is_id_prefix(text: &str) -> bool {
    text.len() >= 12 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl WorkloadFilter {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.namespaces.is_empty() && self.containers.is_empty()
    }

    pub fn container_matches(&self, wanted: &str, identity: &Identity) -> bool {
        identity.container.as_deref() == Some(wanted)
            || (is_id_prefix(wanted)
                && identity
                    .container_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(wanted)))
    }

    /// Whether a cgroup is one of the filtered workloads' (its descendants then are too).
    pub fn matches(&self, identity: &Identity) -> bool {
        let pod_ok =
            self.pods.is_empty() || identity.pod.as_ref().is_some_and(|p| self.pods.contains(p));
        let ns_ok = self.namespaces.is_empty()
            || identity
                .namespace
                .as_ref()
                .is_some_and(|n| self.namespaces.contains(n));
        let container_ok = self.containers.is_empty()
            || self
                .containers
                .iter()
                .any(|c| self.container_matches(c, identity));
        pod_ok
            && ns_ok
            && container_ok
            && (identity.pod_uid.is_some() || !self.containers.is_empty())
    }

    /// The cgroups of the tree that match, sorted.
    pub fn select(&self, tree: &[Arc<Identity>]) -> Vec<u64> {
        let ids: BTreeSet<u64> = tree
            .iter()
            .filter(|identity| self.matches(identity))
            .map(|identity| identity.cgroup_id)
            .collect();
        ids.into_iter().take(MAX_FILTERED_CGROUPS).collect()
    }

    /// The filter in words.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("pod", &self.pods),
            ("namespace", &self.namespaces),
            ("container", &self.containers),
        ] {
            if !names.is_empty() {
                let names: Vec<&str> = names
                    .iter()
                    .map(|n| if is_id_prefix(n) { short_id(n) } else { n })
                    .collect();
                parts.push(format!("{what} {}", names.join(",")));
            }
        }
        parts.join(" and ")
    }
}
