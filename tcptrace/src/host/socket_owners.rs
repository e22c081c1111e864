//! Which process holds a socket: socket inode → owner, from /proc/*/fd (as `ss -p` does).
use std::{collections::BTreeMap, fs};

use crate::model::tcp::Process;

/// Socket inode → owning process, from /proc/*/fd.
pub fn socket_owners() -> BTreeMap<u32, Process> {
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
