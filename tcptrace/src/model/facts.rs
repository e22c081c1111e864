//! What decoding takes from the machine that traced, passed in rather than kept in globals:
//! its tick rate (keepalive times are in jiffies), its keepalive sysctls (for sockets that
//! set none of their own) and its kernel's names of reset and drop reasons. Live, they are this
//! host's, read once at start (`host::facts`); `report` uses the recording's.
use std::collections::HashMap;

/// The machine's facts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// CONFIG_HZ, where known.
    pub hz: Option<u64>,
    /// net.ipv4.tcp_keepalive_time (s), _intvl (s) and _probes.
    pub keepalive_sysctls: [Option<u64>; 3],
    /// `enum sk_rst_reason` by value, without the `SK_RST_REASON_` prefix.
    reset_reasons: HashMap<u8, String>,
    /// `enum skb_drop_reason` by value, without the `SKB_DROP_REASON_` prefix.
    drop_reasons: HashMap<u32, String>,
    /// The kernel's release (`uname -r`); empty where unknown.
    pub kernel_release: String,
}

/// The keepalive sysctls, in [`HostFacts::keepalive_sysctls`]' order.
pub const KEEPALIVE_SYSCTLS: [&str; 3] = [
    "tcp_keepalive_time",
    "tcp_keepalive_intvl",
    "tcp_keepalive_probes",
];

impl HostFacts {
    /// Another machine's, as a recording keeps them.
    pub fn recorded(
        hz: Option<u64>,
        keepalive_sysctls: [Option<u64>; 3],
        reset_reasons: &[(u32, String)],
    ) -> HostFacts {
        HostFacts {
            hz,
            keepalive_sysctls,
            reset_reasons: reset_reasons
                .iter()
                .filter_map(|(v, n)| {
                    let short = n.strip_prefix("SK_RST_REASON_").unwrap_or(n).to_string();
                    u8::try_from(*v).ok().map(|v| (v, short))
                })
                .collect(),
            drop_reasons: HashMap::new(),
            kernel_release: String::new(),
        }
    }

    /// With the kernel's release.
    pub fn with_kernel_release(mut self, release: &str) -> HostFacts {
        self.kernel_release = release.to_string();
        self
    }

    /// Whether a source NAT out of free ports may evict a closed connection's conntrack
    /// entry to reuse its port (Linux 6.5, `nf_nat_used_tuple_harder`); `None` where the
    /// release is unknown.
    pub fn nat_evicts_closed_entries(&self) -> Option<bool> {
        let mut numbers = self.kernel_release.split(['.', '-']);
        let major: u32 = numbers.next()?.parse().ok()?;
        let minor: u32 = numbers.next()?.parse().ok()?;
        Some((major, minor) >= (6, 5))
    }

    /// With the kernel's drop reasons (`enum skb_drop_reason`, read from its BTF: the numbers
    /// differ between kernels).
    pub fn with_drop_reasons(mut self, drop_reasons: &[(u32, String)]) -> HostFacts {
        self.drop_reasons = drop_reasons
            .iter()
            .map(|(v, n)| {
                let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(n);
                (*v, short.to_string())
            })
            .collect();
        self
    }

    /// The name of drop reason `value`, or its number when unknown.
    pub fn drop_reason_name(&self, value: u32) -> String {
        self.drop_reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| value.to_string())
    }

    /// The name of reset reason `value`, or its number when unknown.
    pub fn reset_reason_name(&self, value: u8) -> String {
        self.reset_reasons
            .get(&value)
            .cloned()
            .unwrap_or_else(|| value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_reasons_are_named_without_their_prefix() {
        let facts = HostFacts::recorded(
            Some(250),
            [None; 3],
            &[(15, "SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT".to_string())],
        );
        assert_eq!(facts.reset_reason_name(15), "TCP_KEEPALIVE_TIMEOUT");
        assert_eq!(facts.reset_reason_name(200), "200");
        assert_eq!(HostFacts::default().reset_reason_name(15), "15");
    }

    #[test]
    fn drop_reasons_are_named_without_their_prefix() {
        let facts = HostFacts::default().with_drop_reasons(&[
            (12, "SKB_DROP_REASON_NETFILTER_DROP".to_string()),
            (2, "SKB_DROP_REASON_NOT_SPECIFIED".to_string()),
        ]);
        assert_eq!(facts.drop_reason_name(12), "NETFILTER_DROP");
        assert_eq!(facts.drop_reason_name(2), "NOT_SPECIFIED");
        assert_eq!(facts.drop_reason_name(99), "99");
    }

    #[test]
    fn the_nats_eviction_of_closed_entries_is_told_by_the_release() {
        let on = |release: &str| {
            HostFacts::default()
                .with_kernel_release(release)
                .nat_evicts_closed_entries()
        };
        assert_eq!(on("6.18.0-1-amd64"), Some(true));
        assert_eq!(on("6.5.0"), Some(true));
        assert_eq!(on("6.1.0-31-amd64"), Some(false));
        assert_eq!(on("5.10.0"), Some(false));
        assert_eq!(on(""), None);
    }
}
