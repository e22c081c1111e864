//! In-kernel filters: the command-line flags, their validation into a [`FilterSpec`], and what
//! the loader writes into the programs' configuration and maps.
use anyhow::Result;
use clap::Args;

use crate::model::{
    filter::{FilterSpec, WorkloadFilter},
    tcp::{AF_INET, AF_INET6},
};

/// Filter flags, applied in the kernel before anything is tracked or sent.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Filters (in the kernel; different filters combine with AND)")]
pub struct FilterArgs {
    /// Only sockets owned by these processes (pids comma- or space-separated, or repeated:
    /// -p "$(pidof nginx)"). Accepted
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
    /// Only connections with one of these ports on either side, local or remote (a service
    /// and its clients, or a destination): numbers or ranges (8080,5432).
    #[arg(
        long = "port",
        global = true,
        value_name = "PORTS",
        value_delimiter = ','
    )]
    pub ports: Vec<String>,
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

/// The pids of one `--pid` value: separated by spaces too (`-p "$(pidof nginx)"`); a blank
/// value stays whole, to be refused.
fn pid_words(value: &str) -> Vec<&str> {
    match value.split_whitespace().collect::<Vec<_>>() {
        words if words.is_empty() => vec![value],
        words => words,
    }
}

impl TryFrom<FilterArgs> for FilterSpec {
    type Error = anyhow::Error;
    fn try_from(args: FilterArgs) -> Result<FilterSpec> {
        let mut spec = args.portable(parse_pid)?;
        spec.pids = limited("--pid", spec.pids)?;
        spec.cgroups = limited(
            "--cgroup",
            args.cgroups
                .iter()
                .map(|c| Ok((c.clone(), cgroup_id(c)?)))
                .collect::<Result<_>>()?,
        )?;
        spec.netns = limited(
            "--netns",
            args.netns
                .iter()
                .map(|n| Ok((n.clone(), netns_inode(n)?)))
                .collect::<Result<_>>()?,
        )?;
        spec.workloads = WorkloadFilter {
            pods: args.pods,
            namespaces: args.namespaces,
            containers: args.containers,
            cgroups: Vec::new(),
        };
        Ok(spec)
    }
}

impl FilterArgs {
    /// The filters judged from what a socket or a record carries, wherever it was traced:
    /// pids (each read by `pid`), ports, addresses and family.
    fn portable(&self, pid: fn(&str) -> Result<u32>) -> Result<FilterSpec> {
        let ports = |list: &[String], flag: &str| -> Result<Vec<(u16, u16)>> {
            list.iter().map(|p| parse_ports(p, flag)).collect()
        };
        let nets = |list: &[String], flag: &str| -> Result<Vec<ipnet::IpNet>> {
            list.iter().map(|a| parse_cidr(a, flag)).collect()
        };
        Ok(FilterSpec {
            pids: self
                .pids
                .iter()
                .flat_map(|p| pid_words(p))
                .map(pid)
                .collect::<Result<_>>()?,
            local_ports: ports(&self.local_ports, "--local-port")?,
            remote_ports: ports(&self.remote_ports, "--remote-port")?,
            ports: ports(&self.ports, "--port")?,
            local_addrs: nets(&self.local_addrs, "--local-addr")?,
            remote_addrs: nets(&self.remote_addrs, "--remote-addr")?,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(AF_INET),
                (_, true) => Some(AF_INET6),
                _ => None,
            },
            ..FilterSpec::default()
        })
    }

    /// The filters `tcptrace report` applies to a recording's records, as `tcpdump -r FILE
    /// expr` does: ports, addresses, family and pids (a recorded process need not exist
    /// now). Those that name this host's objects are refused: a recording's cgroups,
    /// namespaces and pods are the traced host's, at the time.
    pub fn for_recording(&self) -> Result<FilterSpec> {
        if !(self.cgroups.is_empty()
            && self.netns.is_empty()
            && self.pods.is_empty()
            && self.namespaces.is_empty()
            && self.containers.is_empty())
        {
            anyhow::bail!(
                "report filters by port, address, family and pid; --cgroup, --netns, --pod, \
                 --namespace and --container name the traced host's objects: give them to \
                 `tcptrace record`"
            );
        }
        self.portable(parse_pid_number)
    }
}

#[path = "filter_parse.rs"]
mod parse;
use parse::{cgroup_id, limited, netns_inode, parse_pid_number};
pub use parse::{parse_cidr, parse_pid, parse_ports};

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
