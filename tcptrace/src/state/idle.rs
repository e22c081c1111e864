//! The "ghost connections" report: ESTABLISHED sockets idle past a threshold with no
//! keepalive armed, grouped by owning process. Read from sock_diag (what `ss` uses), with
//! `tcp_info` for the idle time and the socket's timer for keepalive.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use netlink_packet_sock_diag::inet::StateFlags;

use crate::{
    host::{identity_resolver::IdentityResolver, sockdiag},
    model::filter::FilterSpec,
    model::tcp::{FlowAddrs, Process},
    model::workload::Workload,
};

/// One ESTABLISHED socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub addrs: FlowAddrs,
    /// Time since data last went either way.
    pub idle: Duration,
    pub keepalive_armed: bool,
    pub inode: u32,
    /// The socket's cgroup (v2) id; 0: not said.
    pub cgroup: u64,
}

/// Sockets of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleGroup {
    pub owner: Option<Process>,
    /// Who that is (its first socket's cgroup): container, pod, unit.
    pub workload: Workload,
    pub sockets: Vec<DiagSocket>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleReport {
    pub min_idle: Duration,
    /// ESTABLISHED sockets looked at.
    pub scanned: usize,
    /// Largest group first.
    pub groups: Vec<IdleGroup>,
}

impl IdleReport {
    pub fn total(&self) -> usize {
        self.groups.iter().map(|g| g.sockets.len()).sum()
    }
}

/// Groups idle, keepalive-less sockets by owner.
pub fn group(
    sockets: Vec<DiagSocket>,
    min_idle: Duration,
    owners: &BTreeMap<u32, Process>,
) -> IdleReport {
    let scanned = sockets.len();
    let mut by_owner: BTreeMap<Option<Process>, Vec<DiagSocket>> = BTreeMap::new();
    for socket in sockets {
        if socket.keepalive_armed || socket.idle < min_idle {
            continue;
        }
        by_owner
            .entry(owners.get(&socket.inode).cloned())
            .or_default()
            .push(socket);
    }
    let mut groups: Vec<IdleGroup> = by_owner
        .into_iter()
        .map(|(owner, mut sockets)| {
            sockets.sort_by_key(|s| std::cmp::Reverse(s.idle));
            let workload = Workload::unresolved(sockets.first().map_or(0, |s| s.cgroup));
            IdleGroup {
                owner,
                workload,
                sockets,
            }
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.sockets.len()));
    IdleReport {
        min_idle,
        scanned,
        groups,
    }
}

/// Scans the host (tcptrace's network namespace) now; each group's workload is named with
/// `identities`.
pub fn report(
    min_idle: Duration,
    filter: &FilterSpec,
    identities: &mut IdentityResolver,
) -> Result<IdleReport> {
    let netns = crate::host::netns::own_netns();
    let owners = crate::host::socket_owners::socket_owners();
    let sockets = sockdiag::dump(StateFlags::ESTABLISHED, true)?
        .into_iter()
        .filter(|s| filter.admits_diag(&s.addrs, netns, owners.get(&s.inode).map(|p| p.pid)))
        .filter_map(|s| {
            Some(DiagSocket {
                addrs: s.addrs,
                idle: s.idle?,
                keepalive_armed: s.keepalive_armed,
                inode: s.inode,
                cgroup: s.cgroup,
            })
        })
        .collect();
    let mut report = group(sockets, min_idle, &owners);
    for g in &mut report.groups {
        g.workload = identities.resolve(g.workload.cgroup).0;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tcp::Endpoint;

    fn socket(port: u16, idle_s: u64, keepalive: bool, inode: u32) -> DiagSocket {
        let ep = |p| Endpoint::new("127.0.0.1".parse().expect("ip"), p);
        DiagSocket {
            addrs: FlowAddrs {
                local: ep(port),
                remote: ep(80),
            },
            idle: Duration::from_secs(idle_s),
            keepalive_armed: keepalive,
            inode,
            cgroup: 0,
        }
    }

    #[test]
    fn only_idle_sockets_without_keepalive_are_grouped_by_owner() {
        let owners = BTreeMap::from([
            (
                1,
                Process {
                    pid: 10,
                    comm: "nginx".into(),
                },
            ),
            (
                2,
                Process {
                    pid: 10,
                    comm: "nginx".into(),
                },
            ),
            (
                3,
                Process {
                    pid: 20,
                    comm: "java".into(),
                },
            ),
        ]);
        let report = group(
            vec![
                socket(1001, 600, false, 1),
                socket(1002, 900, false, 2),
                socket(1003, 900, true, 3), // keepalive armed: not a ghost
                socket(1004, 10, false, 3), // not idle long enough
                socket(1005, 700, false, 99), // owner unknown
            ],
            Duration::from_secs(300),
            &owners,
        );
        assert_eq!(report.scanned, 5);
        assert_eq!(report.total(), 3);
        assert_eq!(report.groups[0].owner.as_ref().map(|p| p.pid), Some(10));
        assert_eq!(
            report.groups[0].sockets[0].idle,
            Duration::from_secs(900),
            "longest first"
        );
        assert_eq!(report.groups[1].owner, None);
    }

    #[test]
    fn the_live_dump_works() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let report = report(
            Duration::ZERO,
            &FilterSpec::default(),
            &mut IdentityResolver::recorded(),
        )
        .expect("sock_diag dump");
        assert!(report.scanned >= 2, "{report:?}");
    }
}
