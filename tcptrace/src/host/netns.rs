//! Network namespaces and the settings that bound their ephemeral ports: each namespace has
//! its own `ip_local_port_range`, `ip_local_reserved_ports`, `tcp_tw_reuse` (and its delay),
//! `tcp_timestamps` and `tcp_max_tw_buckets`, and its own TIME_WAIT overflow counter. Another
//! namespace's are read from a short-lived thread that enters it (`setns`), through its name
//! under /run/netns or a process that lives in it.
use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::Path};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::host::conntrack::ConntrackTable;

/// The kernel's TIME_WAIT length (TCP_TIMEWAIT_LEN).
pub const TIME_WAIT_LEN_S: f64 = 60.0;

/// The inode of the file at `path` (a namespace's, for /proc/PID/ns/net or /run/netns/NAME).
pub fn inode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// The inode of tcptrace's own network namespace.
pub fn own_netns() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// What bounds a namespace's ephemeral ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortSettings {
    /// `ip_local_port_range`.
    pub port_range: (u16, u16),
    /// Ports of the range not in `ip_local_reserved_ports`.
    pub usable_ports: u32,
    /// `tcp_tw_reuse`: 0 off, 1 on, 2 loopback only.
    pub tw_reuse: u8,
    /// `tcp_tw_reuse_delay` in ms (Linux 6.13+; 1000 before).
    pub tw_reuse_delay_ms: u32,
    /// `tcp_timestamps` on (reuse needs them).
    pub timestamps: bool,
    /// `tcp_max_tw_buckets`, where readable.
    pub max_tw_buckets: Option<u64>,
}

impl PortSettings {
    /// A new namespace's defaults (the kernel's, not the host's: a namespace does not inherit
    /// them), assumed where a namespace cannot be entered.
    pub fn kernel_defaults() -> PortSettings {
        PortSettings {
            port_range: (32768, 60999),
            usable_ports: 28232,
            tw_reuse: 2,
            tw_reuse_delay_ms: 1000,
            timestamps: true,
            max_tw_buckets: None,
        }
    }

    /// Whether connect() may take a TIME_WAIT's 4-tuple toward this peer before its 60 s.
    pub fn reuses(&self, loopback: bool) -> bool {
        self.timestamps && (self.tw_reuse == 1 || (self.tw_reuse == 2 && loopback))
    }

    /// Seconds a closed 4-tuple stays unusable to connect(): the TIME_WAIT, or the reuse
    /// delay where reuse applies.
    pub fn hold_s(&self, loopback: bool) -> f64 {
        if self.reuses(loopback) {
            f64::from(self.tw_reuse_delay_ms.max(1)) / 1000.0
        } else {
            TIME_WAIT_LEN_S
        }
    }

    /// Reads them in the calling thread's namespace.
    pub fn read_here() -> Result<PortSettings> {
        let sysctl = |name: &str| -> Result<String> {
            fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(name))
                .with_context(|| format!("reading net.ipv4.{name}"))
        };
        let number = |name: &str| -> Option<u64> { sysctl(name).ok()?.trim().parse().ok() };
        let port_range = parse_port_range(&sysctl("ip_local_port_range")?)?;
        let reserved = parse_reserved(&sysctl("ip_local_reserved_ports").unwrap_or_default())?;
        Ok(PortSettings {
            port_range,
            usable_ports: usable_ports(port_range, &reserved),
            tw_reuse: number("tcp_tw_reuse").map_or(2, |v| v.min(2) as u8),
            tw_reuse_delay_ms: number("tcp_tw_reuse_delay").map_or(1000, |v| v as u32),
            timestamps: number("tcp_timestamps").is_none_or(|v| v != 0),
            max_tw_buckets: number("tcp_max_tw_buckets"),
        })
    }
}

/// `net.ipv4.ip_local_port_range`, e.g. "32768\t60999".
pub fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi)), None) = (parts.next(), parts.next(), parts.next()) else {
        bail!("ip_local_port_range is not two ports: {text:?}");
    };
    if lo > hi {
        bail!("ip_local_port_range is empty: {lo} > {hi}");
    }
    Ok((lo, hi))
}

/// `net.ipv4.ip_local_reserved_ports`, e.g. "8080,9000-9010" (empty: none).
pub fn parse_reserved(text: &str) -> Result<Vec<(u16, u16)>> {
    text.trim()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let port = |p: &str| -> Result<u16> {
                p.trim()
                    .parse()
                    .with_context(|| format!("bad reserved port {part:?}"))
            };
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                bail!("bad reserved range {part:?}");
            }
            Ok((lo, hi))
        })
        .collect()
}

/// Ports of `range` not reserved.
pub fn usable_ports(range: (u16, u16), reserved: &[(u16, u16)]) -> u32 {
    (range.0..=range.1)
        .filter(|p| !reserved.iter().any(|&(lo, hi)| (lo..=hi).contains(p)))
        .count() as u32
}

/// A network namespace as the forecast names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its inode number (what `ip netns identify`, `lsns -t net` and /proc/PID/ns/net show).
    pub inode: u32,
    /// Its name under /run/netns, if it has one.
    pub name: Option<String>,
    /// tcptrace's own namespace.
    pub own: bool,
    /// Its settings; `None` where it could not be entered (the kernel's defaults are assumed).
    pub settings: Option<PortSettings>,
    /// Its conntrack table; `None` where not read (or the kernel has no conntrack).
    #[serde(default)]
    pub conntrack: Option<ConntrackTable>,
}

impl Namespace {
    /// How a person finds it: `4026532770 "ka"`, `4026531840 (tcptrace's own)`.
    pub fn label(&self) -> String {
        match (&self.name, self.own) {
            (Some(name), _) => format!("{} \"{name}\"", self.inode),
            (None, true) => format!("{} (tcptrace's own)", self.inode),
            (None, false) => self.inode.to_string(),
        }
    }

    /// The settings in force, or the kernel's defaults where they could not be read.
    pub fn settings_or_defaults(&self) -> (PortSettings, bool) {
        match &self.settings {
            Some(s) => (s.clone(), false),
            None => (PortSettings::kernel_defaults(), true),
        }
    }
}

/// The namespaces known, by inode (namespace 0: a recording that did not say, the recording
/// host's own).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Namespaces {
    pub by_inode: HashMap<u32, Namespace>,
}

impl Namespace {
    /// A namespace not read (yet): named by its inode, the kernel's defaults assumed.
    pub fn unknown(inode: u32) -> Namespace {
        Namespace {
            inode,
            name: None,
            own: false,
            settings: None,
            conntrack: None,
        }
    }
}

impl Namespaces {
    pub fn get(&self, inode: u32) -> Option<&Namespace> {
        self.by_inode.get(&inode)
    }

    /// The namespace, or [`Namespace::unknown`] where it was not read.
    pub fn get_or_unknown(&self, inode: u32) -> Namespace {
        self.get(inode)
            .cloned()
            .unwrap_or_else(|| Namespace::unknown(inode))
    }

    /// How a person finds it ([`Namespace::label`]; its inode where it was not read).
    pub fn label(&self, inode: u32) -> String {
        self.get(inode)
            .map_or_else(|| inode.to_string(), Namespace::label)
    }

    pub fn insert(&mut self, ns: Namespace) {
        self.by_inode.insert(ns.inode, ns);
    }
}

#[cfg(test)]
#[path = "netns_tests.rs"]
mod tests;
