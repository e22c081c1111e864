//! Keepalive settings in force for a socket: the socket's own (TCP_KEEPIDLE / TCP_KEEPINTVL /
//! TCP_KEEPCNT, kept by the kernel in jiffies) or else the sysctls.
use std::{io::Read as _, sync::OnceLock};

use serde::Serialize;
use tcptrace_common::Keepalive;

/// Settings, converted to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeepaliveSettings {
    pub idle_ns: Option<u64>,
    pub intvl_ns: Option<u64>,
    pub probes: u8,
    /// "socket" when the application set any of them, else "sysctl".
    pub source: &'static str,
}

static HZ: OnceLock<Option<u64>> = OnceLock::new();
/// tcp_keepalive_time, _intvl and _probes of the machine that recorded (`tcptrace report`).
static RECORDED_SYSCTLS: OnceLock<[Option<u64>; 3]> = OnceLock::new();
const SYSCTLS: [&str; 3] = [
    "tcp_keepalive_time",
    "tcp_keepalive_intvl",
    "tcp_keepalive_probes",
];

/// A report renders with the recording machine's HZ and keepalive sysctls, not this one's.
pub fn use_recorded(hz: Option<u64>, sysctls: [Option<u64>; 3]) {
    let _ = HZ.set(hz);
    let _ = RECORDED_SYSCTLS.set(sysctls);
}

/// The kernel's tick rate (CONFIG_HZ), from /proc/config.gz or /boot/config-$(uname -r).
pub fn hz() -> Option<u64> {
    *HZ.get_or_init(|| {
        let mut text = String::new();
        if let Ok(file) = std::fs::File::open("/proc/config.gz") {
            let _ = flate2::read::GzDecoder::new(file).read_to_string(&mut text);
        }
        if text.is_empty() {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            text = std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
                .unwrap_or_default();
        }
        config_hz(&text)
    })
}

fn config_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

fn sysctl(name: &str) -> Option<u64> {
    if let (Some(recorded), Some(i)) = (
        RECORDED_SYSCTLS.get(),
        SYSCTLS.iter().position(|&s| s == name),
    ) {
        return recorded[i];
    }
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Converts jiffies to nanoseconds with the kernel's HZ.
pub fn jiffies_ns(jiffies: u32, hz: Option<u64>) -> Option<u64> {
    hz.filter(|&h| h > 0)
        .map(|h| u64::from(jiffies) * 1_000_000_000 / h)
}

/// The settings in force: the socket's where set, else the sysctls (of tcptrace's own
/// network namespace).
pub fn settings(raw: &Keepalive, hz: Option<u64>) -> KeepaliveSettings {
    let per_socket = raw.idle_j != 0 || raw.intvl_j != 0 || raw.probes != 0;
    let pick = |j: u32, sysctl_name: &str| {
        if j != 0 {
            jiffies_ns(j, hz)
        } else {
            sysctl(sysctl_name).map(|s| s * 1_000_000_000)
        }
    };
    KeepaliveSettings {
        idle_ns: pick(raw.idle_j, "tcp_keepalive_time"),
        intvl_ns: pick(raw.intvl_j, "tcp_keepalive_intvl"),
        probes: if raw.probes != 0 {
            raw.probes
        } else {
            sysctl("tcp_keepalive_probes").map_or(0, |p| p.min(255) as u8)
        },
        source: if per_socket { "socket" } else { "sysctl" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_is_read_from_the_kernel_config() {
        assert_eq!(
            config_hz("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(config_hz("CONFIG_HZ_1000=y\n"), None);
        assert!(hz().is_some(), "this machine exposes its kernel config");
    }

    #[test]
    fn socket_settings_win_over_sysctls() {
        let raw = Keepalive {
            idle_j: 250,
            intvl_j: 500,
            probes: 3,
            _pad: [0; 3],
            silent_j: 0,
        };
        let s = settings(&raw, Some(250));
        assert_eq!(
            (s.idle_ns, s.intvl_ns, s.probes, s.source),
            (Some(1_000_000_000), Some(2_000_000_000), 3, "socket")
        );
        let defaults = settings(&Keepalive::default(), Some(250));
        assert_eq!(defaults.source, "sysctl");
        assert_eq!(
            defaults.idle_ns,
            sysctl("tcp_keepalive_time").map(|s| s * 1_000_000_000)
        );
        assert_eq!(jiffies_ns(10, None), None);
    }
}
