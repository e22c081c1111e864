//! Parsing and resolving filter values: ports, networks, pids, cgroups, namespaces.
use std::{
    fs,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use ipnet::IpNet;
use tcptrace_common::FILTER_SLOTS;

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`) and `CLONE_NEWNET`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
const CLONE_NEWNET: i32 = 0x4000_0000;

pub(super) fn limited<T>(flag: &str, list: Vec<T>) -> Result<Vec<T>> {
    if list.len() > FILTER_SLOTS {
        bail!("{flag} takes at most {FILTER_SLOTS} values");
    }
    Ok(list)
}

/// A process id, as a number (a recorded one need not exist now).
pub fn parse_pid_number(text: &str) -> Result<u32> {
    text.trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| anyhow!("invalid --pid '{text}': expected a process id"))
}

/// A process id of a process that exists now.
pub fn parse_pid(text: &str) -> Result<u32> {
    let pid = parse_pid_number(text)?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("invalid --pid '{text}': no such process");
    }
    Ok(pid)
}

/// `80` or `8000-8100` (1-65535).
pub fn parse_ports(text: &str, flag: &str) -> Result<(u16, u16)> {
    let bad =
        || anyhow!("invalid {flag} '{text}': expected a port (1-65535) or a range like 8000-8100");
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(bad)
    };
    let (low, high) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(text)?, port(text)?),
    };
    if low > high {
        bail!("invalid {flag} '{text}': the range is backwards");
    }
    Ok((low, high))
}

/// An address (a /32 or /128) or a network; host bits are cleared.
pub fn parse_cidr(text: &str, flag: &str) -> Result<IpNet> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(text.parse::<IpAddr>().map_err(|_| {
            anyhow!("invalid {flag} '{text}': expected an address or a CIDR like 10.0.0.0/8")
        })?),
    };
    Ok(net.trunc())
}

use crate::host::identity_resolver::is_cgroup2;

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_mount() -> Result<PathBuf> {
    crate::host::identity_resolver::cgroup2_mount().context("--cgroup")
}

/// A cgroup id (the directory's inode in cgroup v2), from an id or a path.
pub(super) fn cgroup_id(text: &str) -> Result<u64> {
    if let Ok(id) = text.trim().parse::<u64>() {
        return Ok(id);
    }
    let given = Path::new(text);
    let path = if given.is_absolute() && is_cgroup2(given) {
        given.to_path_buf()
    } else {
        cgroup2_mount()?.join(text.trim_start_matches('/'))
    };
    if !path.is_dir() || !is_cgroup2(&path) {
        bail!(
            "invalid --cgroup '{text}': {} is not a cgroup v2 directory",
            path.display()
        );
    }
    Ok(fs::metadata(&path)
        .with_context(|| format!("--cgroup: reading {}", path.display()))?
        .ino())
}

/// A network namespace's inode, from a name, a path or a number.
pub(super) fn netns_inode(text: &str) -> Result<u32> {
    if let Ok(inode) = text.trim().parse::<u32>() {
        return Ok(inode);
    }
    let path = if text.contains('/') {
        PathBuf::from(text)
    } else {
        Path::new("/run/netns").join(text)
    };
    let file = fs::File::open(&path)
        .map_err(|e| anyhow!("invalid --netns '{text}': {}: {e}", path.display()))?;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != CLONE_NEWNET {
        bail!(
            "invalid --netns '{text}': {} is not a network namespace",
            path.display()
        );
    }
    let inode = file.metadata().context("--netns: stat")?.ino();
    u32::try_from(inode).map_err(|_| anyhow!("--netns: inode {inode} out of range"))
}
