//! Sockets of every network namespace on the host (sock_diag answers for the namespace it is
//! asked in): tcptrace's own read here, every other from one short-lived thread that enters
//! each in turn, as the namespaces' settings are read. On a node every pod has a namespace of
//! its own: `top`'s start-up seed and its open flows' RTTs come from all of them.
use anyhow::Result;

use crate::host::{
    netns::own_netns,
    netns_reader::{discover_namespaces, enter, way_into},
    sockdiag::DiagSocket,
};

/// What reading every namespace gave: the sockets with their namespace, the namespaces that
/// could not be read (entered or dumped), with why, and how many could not be entered for
/// want of CAP_SYS_ADMIN (as the forecast's reads, not said: the operations guide says it).
#[derive(Debug, Default)]
pub struct EverySocket {
    pub sockets: Vec<(u32, DiagSocket)>,
    pub unread: Vec<(u32, String)>,
    pub not_permitted: usize,
}

/// `dump` run inside every namespace found on the host (/run/netns and every process's).
pub fn in_every_namespace(dump: fn() -> Result<Vec<DiagSocket>>) -> EverySocket {
    let own = own_netns();
    let mut found = EverySocket::default();
    match dump() {
        Ok(sockets) => found
            .sockets
            .extend(sockets.into_iter().map(|s| (own.unwrap_or(0), s))),
        Err(e) => found.unread.push((own.unwrap_or(0), format!("{e:#}"))),
    }
    let others: Vec<u32> = discover_namespaces()
        .into_keys()
        .filter(|&inode| Some(inode) != own)
        .collect();
    if others.is_empty() {
        return found;
    }
    let ways: Vec<_> = others.into_iter().map(|i| (i, way_into(i, None))).collect();
    let read: Vec<(u32, Result<Vec<DiagSocket>>)> = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                ways.into_iter()
                    .map(|(inode, way)| {
                        let sockets = way.and_then(|(path, file)| {
                            enter(&file, &path)?;
                            dump()
                        });
                        (inode, sockets)
                    })
                    .collect()
            })
            .join()
            .unwrap_or_default()
    });
    for (inode, sockets) in read {
        match sockets {
            Ok(sockets) => found
                .sockets
                .extend(sockets.into_iter().map(|s| (inode, s))),
            Err(e) if is_not_permitted(&e) => found.not_permitted += 1,
            Err(e) => found.unread.push((inode, format!("{e:#}"))),
        }
    }
    found
}

fn is_not_permitted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM))
    })
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd, process::Command, time::Instant};

    use super::*;
    use crate::host::netns::inode_of;

    /// Namespaces of their own, each with a listener: every one is read, with its inode.
    /// `TCPTRACE_NETNS_COUNT` (default 3) says how many: with 100, the time printed is what a
    /// read of every namespace costs (docs/performance.md).
    #[test]
    fn every_namespace_is_read_with_its_sockets() {
        let count: usize = std::env::var("TCPTRACE_NETNS_COUNT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3);
        let names: Vec<String> = (0..count)
            .map(|i| format!("tsk{}-{i}", std::process::id() % 100_000))
            .collect();
        struct Gone(Vec<String>);
        impl Drop for Gone {
            fn drop(&mut self) {
                for n in &self.0 {
                    let _ = Command::new("ip").args(["netns", "del", n]).status();
                }
            }
        }
        let _gone = Gone(names.clone());
        let mut listeners = Vec::new();
        for name in &names {
            let ok = Command::new("ip").args(["netns", "add", name]).status();
            assert!(
                ok.is_ok_and(|s| s.success()),
                "ip netns add {name} (as root)"
            );
            let path = format!("/run/netns/{name}");
            let inode = inode_of(std::path::Path::new(&path)).expect("its inode");
            let listener = std::thread::spawn(move || {
                let ns = std::fs::File::open(&path).expect("the namespace");
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns");
                let _ = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status();
                TcpListener::bind("127.0.0.1:0").expect("bind")
            })
            .join()
            .expect("the namespace's thread");
            let port = listener.local_addr().expect("addr").port();
            listeners.push((inode, port, listener));
        }
        let started = Instant::now();
        let found = in_every_namespace(crate::host::sockdiag::open_sockets);
        eprintln!(
            "{} namespaces read in {:?} ({} sockets)",
            count,
            started.elapsed(),
            found.sockets.len()
        );
        for (inode, port, _) in &listeners {
            assert!(
                found
                    .sockets
                    .iter()
                    .any(|(ns, s)| ns == inode && s.addrs.local.port == *port),
                "the listener on :{port} in namespace {inode}: {:?}",
                found.unread
            );
        }
    }
}
