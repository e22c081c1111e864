//! In-kernel filters: the command-line flags, their validation into a [`FilterSpec`], and what
//! the loader writes into the programs' configuration and maps.
use std::net::IpAddr;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    Ebpf,
};
use clap::Args;
use ipnet::IpNet;
use tcptrace_common::{
    family, filter_kind, mapped_v4, names::map, port_bits, AddrKey, FilterConfig,
};

use crate::{cli::identity::WorkloadFilter, events::model::FlowAddrs};

/// Filter flags, applied in the kernel before anything is tracked or sent.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Filters (in the kernel; different filters combine with AND)")]
pub struct FilterArgs {
    /// Only sockets owned by these processes (pid; comma-separated or repeated). Accepted
    /// connections belong to their listener's process.
    #[arg(
        short = 'p',
        long = "pid",
        global = true,
        value_name = "PID",
        value_delimiter = ','
    )]
    pub pids: Vec<String>,
    /// Only these local ports: numbers or ranges (80,443,8000-8100).
    #[arg(
        short = 'L',
        long = "local-port",
        global = true,
        value_name = "PORTS",
        value_delimiter = ','
    )]
    pub local_ports: Vec<String>,
    /// Only these remote ports: numbers or ranges.
    #[arg(
        short = 'D',
        long = "remote-port",
        global = true,
        value_name = "PORTS",
        value_delimiter = ','
    )]
    pub remote_ports: Vec<String>,
    /// Only these local addresses or networks (10.0.0.0/8, 2001:db8::/32, 127.0.0.1).
    #[arg(
        long = "local-addr",
        global = true,
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub local_addrs: Vec<String>,
    /// Only these remote addresses or networks.
    #[arg(
        long = "remote-addr",
        global = true,
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub remote_addrs: Vec<String>,
    /// Only sockets of this cgroup (v2) or its descendants: a path (absolute, or relative to
    /// the cgroup2 mount, as in /proc/PID/cgroup) or a cgroup id.
    #[arg(
        long = "cgroup",
        global = true,
        value_name = "PATH|ID",
        value_delimiter = ','
    )]
    pub cgroups: Vec<String>,
    /// Only sockets in this network namespace: a name (ip netns), a path (/proc/PID/ns/net,
    /// /run/netns/NAME) or an inode number.
    #[arg(
        long = "netns",
        global = true,
        value_name = "NAME|PATH|INODE",
        value_delimiter = ','
    )]
    pub netns: Vec<String>,
    /// Only sockets of these Kubernetes pods (names, as in /var/log/pods), followed as they
    /// come and go (checked every second).
    #[arg(
        long = "pod",
        global = true,
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub pods: Vec<String>,
    /// Only sockets of pods in these Kubernetes namespaces.
    #[arg(
        long = "namespace",
        global = true,
        value_name = "NS",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Only sockets of these containers: names (Kubernetes) or ids (12+ hex digits).
    #[arg(
        long = "container",
        global = true,
        value_name = "NAME|ID",
        value_delimiter = ','
    )]
    pub containers: Vec<String>,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", global = true, conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets (IPv4-mapped addresses included).
    #[arg(short = '6', long = "ipv6", global = true)]
    pub ipv6: bool,
}

impl FilterArgs {
    /// No filter flag was given.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.local_ports.is_empty()
            && self.remote_ports.is_empty()
            && self.local_addrs.is_empty()
            && self.remote_addrs.is_empty()
            && self.cgroups.is_empty()
            && self.netns.is_empty()
            && self.pods.is_empty()
            && self.namespaces.is_empty()
            && self.containers.is_empty()
            && !self.ipv4
            && !self.ipv6
    }
}

/// Validated filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    pub pids: Vec<u32>,
    pub local_ports: Vec<(u16, u16)>,
    pub remote_ports: Vec<(u16, u16)>,
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

const AF_INET: u16 = family::INET;
const AF_INET6: u16 = family::INET6;

impl TryFrom<FilterArgs> for FilterSpec {
    type Error = anyhow::Error;
    fn try_from(args: FilterArgs) -> Result<FilterSpec> {
        let spec = FilterSpec {
            pids: limited(
                "--pid",
                args.pids
                    .iter()
                    .map(|p| parse_pid(p))
                    .collect::<Result<_>>()?,
            )?,
            local_ports: args
                .local_ports
                .iter()
                .map(|p| parse_ports(p, "--local-port"))
                .collect::<Result<_>>()?,
            remote_ports: args
                .remote_ports
                .iter()
                .map(|p| parse_ports(p, "--remote-port"))
                .collect::<Result<_>>()?,
            local_addrs: args
                .local_addrs
                .iter()
                .map(|a| parse_cidr(a, "--local-addr"))
                .collect::<Result<_>>()?,
            remote_addrs: args
                .remote_addrs
                .iter()
                .map(|a| parse_cidr(a, "--remote-addr"))
                .collect::<Result<_>>()?,
            cgroups: limited(
                "--cgroup",
                args.cgroups
                    .iter()
                    .map(|c| Ok((c.clone(), cgroup_id(c)?)))
                    .collect::<Result<_>>()?,
            )?,
            netns: limited(
                "--netns",
                args.netns
                    .iter()
                    .map(|n| Ok((n.clone(), netns_inode(n)?)))
                    .collect::<Result<_>>()?,
            )?,
            family: match (args.ipv4, args.ipv6) {
                (true, _) => Some(AF_INET),
                (_, true) => Some(AF_INET6),
                _ => None,
            },
            workloads: WorkloadFilter {
                pods: args.pods,
                namespaces: args.namespaces,
                containers: args.containers,
                cgroups: Vec::new(),
            },
        };
        Ok(spec)
    }
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
        set(!self.local_addrs.is_empty(), filter_kind::LOCAL_ADDR);
        set(!self.remote_addrs.is_empty(), filter_kind::REMOTE_ADDR);
        set(!self.pids.is_empty(), filter_kind::PID);
        set(!self.cgroups.is_empty(), filter_kind::CGROUP);
        set(!self.netns.is_empty(), filter_kind::NETNS);
        set(!self.workloads.is_empty(), filter_kind::WORKLOAD);
        bits
    }

    pub fn has_ports(&self) -> bool {
        !self.local_ports.is_empty() || !self.remote_ports.is_empty()
    }

    /// Whether TIME_WAIT sockets are judged by their flow (pid, cgroup and workload filters).
    pub fn needs_owner(&self) -> bool {
        self.active() & filter_kind::NEEDS_OWNER != 0
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
                (bits != 0).then_some((port, bits))
            })
            .collect()
    }

    /// Writes the port bitmap, the address tries and the workloads' cgroups (after load,
    /// before attach).
    pub fn install(&self, ebpf: &mut Ebpf) -> Result<()> {
        if !self.workloads.is_empty() {
            sync_workload_cgroups(ebpf, &[], &self.workloads.cgroups)?;
        }
        if self.has_ports() {
            let mut ports: Array<&mut MapData, u8> = Array::try_from(
                ebpf.map_mut(map::PORT_FILTER)
                    .ok_or_else(|| anyhow!("map PORT_FILTER missing from the eBPF object"))?,
            )
            .context("map PORT_FILTER is not an array")?;
            for (port, bits) in self.port_bits() {
                ports
                    .set(u32::from(port), bits, 0)
                    .context("writing map PORT_FILTER")?;
            }
        }
        for (map, nets) in [
            (map::LOCAL_ADDRS, &self.local_addrs),
            (map::REMOTE_ADDRS, &self.remote_addrs),
        ] {
            if nets.is_empty() {
                continue;
            }
            let mut trie: LpmTrie<&mut MapData, AddrKey, u8> = LpmTrie::try_from(
                ebpf.map_mut(map)
                    .ok_or_else(|| anyhow!("map {map} missing from the eBPF object"))?,
            )
            .with_context(|| format!("map {map} is not an LPM trie"))?;
            for net in nets {
                let (prefix, addr) = trie_key(net);
                trie.insert(&Key::new(prefix, AddrKey { addr }), 1, 0)
                    .with_context(|| format!("writing map {map}"))?;
            }
        }
        Ok(())
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

    /// Whether a socket found by sock_diag (in tcptrace's own namespace, owner and cgroup
    /// when known from /proc) passes the filters: used for what tcptrace lists without the kernel programs
    /// (pre-existing TIME_WAIT sockets, the idle report).
    pub fn admits_diag(
        &self,
        addrs: &FlowAddrs,
        own_netns: Option<u32>,
        owner: Option<u32>,
    ) -> bool {
        let family = if addrs.local.addr.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        if self.family.is_some_and(|f| f != family) {
            return false;
        }
        if !self.netns.is_empty()
            && !own_netns.is_some_and(|n| self.netns.iter().any(|(_, i)| *i == n))
        {
            return false;
        }
        if !self.local_ports.is_empty() && !port_ranges_allow(&self.local_ports, addrs.local.port) {
            return false;
        }
        if !self.remote_ports.is_empty()
            && !port_ranges_allow(&self.remote_ports, addrs.remote.port)
        {
            return false;
        }
        if !self.local_addrs.is_empty() && !addr_allowed(&self.local_addrs, addrs.local.addr) {
            return false;
        }
        if !self.remote_addrs.is_empty() && !addr_allowed(&self.remote_addrs, addrs.remote.addr) {
            return false;
        }
        if !self.pids.is_empty() && !owner.is_some_and(|pid| self.pids.contains(&pid)) {
            return false;
        }
        // The cgroup is unknown here: a cgroup or workload filter admits nothing.
        self.cgroups.is_empty() && self.workloads.is_empty()
    }
}

/// Makes the kernel's `WORKLOAD_CGROUPS` hold `now` where it held `before`.
pub fn sync_workload_cgroups(ebpf: &mut Ebpf, before: &[u64], now: &[u64]) -> Result<()> {
    let mut cgroups: aya::maps::HashMap<&mut MapData, u64, u8> = aya::maps::HashMap::try_from(
        ebpf.map_mut(map::WORKLOAD_CGROUPS)
            .ok_or_else(|| anyhow!("map WORKLOAD_CGROUPS missing from the eBPF object"))?,
    )
    .context("map WORKLOAD_CGROUPS is not a hash")?;
    for gone in before.iter().filter(|id| !now.contains(id)) {
        // Already gone is as good.
        let _ = cgroups.remove(gone);
    }
    for id in now.iter().filter(|id| !before.contains(id)) {
        cgroups
            .insert(id, 1, 0)
            .context("writing map WORKLOAD_CGROUPS")?;
    }
    Ok(())
}

/// The trie key of a network: IPv4 as IPv4-mapped IPv6.
pub fn trie_key(net: &IpNet) -> (u32, [u8; 16]) {
    match net {
        IpNet::V4(v4) => (
            96 + u32::from(v4.prefix_len()),
            mapped_v4(v4.addr().octets()),
        ),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.addr().octets()),
    }
}

pub use crate::host::netns::own_netns;

#[path = "filter_parse.rs"]
mod parse;
use parse::{cgroup_id, limited, netns_inode};
pub use parse::{parse_cidr, parse_pid, parse_ports};

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
