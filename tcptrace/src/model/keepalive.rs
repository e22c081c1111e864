//! Keepalive settings in force for a socket: the socket's own (TCP_KEEPIDLE / TCP_KEEPINTVL /
//! TCP_KEEPCNT, kept by the kernel in jiffies) or else the sysctls.
use serde::Serialize;
use tcptrace_common::Keepalive;

use crate::model::facts::{HostFacts, KEEPALIVE_SYSCTLS};

/// Settings, converted to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KeepaliveSettings {
    pub idle_ns: Option<u64>,
    pub intvl_ns: Option<u64>,
    pub probes: u8,
    /// "socket" when the application set any of them, else "sysctl".
    pub source: &'static str,
}

/// Converts jiffies to nanoseconds with the kernel's HZ.
pub fn jiffies_ns(jiffies: u32, hz: Option<u64>) -> Option<u64> {
    hz.filter(|&h| h > 0)
        .map(|h| u64::from(jiffies) * 1_000_000_000 / h)
}

/// The settings in force: the socket's where set, else the host's sysctls.
pub fn settings(raw: &Keepalive, host: &HostFacts) -> KeepaliveSettings {
    let hz = host.hz;
    let sysctl = |name: &str| {
        KEEPALIVE_SYSCTLS
            .iter()
            .position(|&s| s == name)
            .and_then(|i| host.keepalive_sysctls[i])
    };
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
    fn socket_settings_win_over_sysctls() {
        let raw = Keepalive {
            idle_j: 250,
            intvl_j: 500,
            probes: 3,
            _pad: [0; 3],
            silent_j: 0,
        };
        let host = HostFacts::recorded(Some(250), [Some(7200), Some(75), Some(9)], &[]);
        let s = settings(&raw, &host);
        assert_eq!(
            (s.idle_ns, s.intvl_ns, s.probes, s.source),
            (Some(1_000_000_000), Some(2_000_000_000), 3, "socket")
        );
        let defaults = settings(&Keepalive::default(), &host);
        assert_eq!(defaults.source, "sysctl");
        assert_eq!(
            (defaults.idle_ns, defaults.intvl_ns, defaults.probes),
            (Some(7_200_000_000_000), Some(75_000_000_000), 9)
        );
        assert_eq!(jiffies_ns(10, None), None);
    }
}
