//! This host's facts for decoding, read once at start: CONFIG_HZ and the `net.ipv4` sysctls.
use std::io::Read as _;

use crate::model::facts::{HostFacts, KEEPALIVE_SYSCTLS};

/// A sysctl of `net.ipv4` in tcptrace's own network namespace.
pub fn ipv4_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Connections this network namespace has opened so far, both ways (`/proc/net/snmp`:
/// `Tcp:` ActiveOpens + PassiveOpens).
pub fn tcp_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let field = |name: &str| -> Option<u64> {
        let at = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(at)?.parse().ok()
    };
    Some(field("ActiveOpens")? + field("PassiveOpens")?)
}

/// The running kernel's release (`uname -r`); empty where it cannot be read.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The kernel's tick rate (CONFIG_HZ), from /proc/config.gz or /boot/config-$(uname -r).
pub fn read_hz() -> Option<u64> {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open("/proc/config.gz") {
        let _ = flate2::read::GzDecoder::new(file).read_to_string(&mut text);
    }
    if text.is_empty() {
        text = std::fs::read_to_string(format!("/boot/config-{}", kernel_release()))
            .unwrap_or_default();
    }
    config_hz(&text)
}

fn config_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

impl HostFacts {
    /// This host's, with the reason names read from its kernel's BTF.
    pub fn this_host(reset_reasons: &[(u32, String)]) -> HostFacts {
        HostFacts::recorded(read_hz(), KEEPALIVE_SYSCTLS.map(ipv4_sysctl), reset_reasons)
            .with_kernel_release(&kernel_release())
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
    }
}
