//! The "ghost connections" report: ESTABLISHED sockets idle past a threshold with no
//! keepalive armed, grouped by owning process. Read from sock_diag (what `ss` uses), with
//! `tcp_info` for the idle time and the socket's timer for keepalive.
use std::{collections::BTreeMap, fs, time::Duration};

use anyhow::{bail, Context as _, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::model::{Endpoint, FlowAddrs, Process};

/// One ESTABLISHED socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub addrs: FlowAddrs,
    /// Time since data last went either way.
    pub idle: Duration,
    pub keepalive_armed: bool,
    pub inode: u32,
}

/// Sockets of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleGroup {
    pub owner: Option<Process>,
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

fn dump(family: u8) -> Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::ESTABLISHED,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;

    let mut sockets = Vec::new();
    let mut receive = vec![0u8; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .context("reading sock_diag")?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&receive[offset..size])
                .map_err(|e| anyhow::anyhow!("undecodable sock_diag message: {e}"))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(sockets),
                NetlinkPayload::Error(e) => bail!("sock_diag refused the dump: {e:?}"),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let id = &response.header.socket_id;
                    let idle_ms = response.nlas.iter().find_map(|nla| match nla {
                        Nla::TcpInfo(info) => Some(info.last_data_recv.min(info.last_data_sent)),
                        _ => None,
                    });
                    if let Some(idle_ms) = idle_ms {
                        sockets.push(DiagSocket {
                            addrs: FlowAddrs {
                                local: Endpoint::new(id.source_address, id.source_port),
                                remote: Endpoint::new(id.destination_address, id.destination_port),
                            },
                            idle: Duration::from_millis(u64::from(idle_ms)),
                            keepalive_armed: matches!(
                                response.header.timer,
                                Some(Timer::KeepAlive(_))
                            ),
                            inode: response.header.inode,
                        });
                    }
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Socket inode → owning process, from /proc/*/fd.
fn socket_owners() -> BTreeMap<u32, Process> {
    let mut owners = BTreeMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok());
            if let Some(inode) = inode {
                owners.entry(inode).or_insert_with(|| Process {
                    pid,
                    comm: comm.clone(),
                });
            }
        }
    }
    owners
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
            IdleGroup { owner, sockets }
        })
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.sockets.len()));
    IdleReport {
        min_idle,
        scanned,
        groups,
    }
}

/// Scans the host (tcptrace's network namespace) now.
pub fn report(min_idle: Duration) -> Result<IdleReport> {
    let mut sockets = dump(AF_INET)?;
    sockets.extend(dump(AF_INET6)?);
    Ok(group(sockets, min_idle, &socket_owners()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let report = report(Duration::ZERO).expect("sock_diag dump");
        assert!(report.scanned >= 2, "{report:?}");
    }
}
