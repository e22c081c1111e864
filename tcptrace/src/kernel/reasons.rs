//! The kernel's reason enums, read from its BTF (the numbers differ between kernels), turned
//! into what the programs are told at load time.

/// The running kernel's number for the reset it sends when keepalive gives up
/// (`SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT`, Linux 6.10+), for the kernel's close causes.
pub fn keepalive_reset_reason(reasons: &[(u32, String)]) -> u8 {
    reasons
        .iter()
        .find(|(_, name)| name == "SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT")
        .and_then(|&(value, _)| u8::try_from(value).ok())
        .filter(|&v| v != tcptrace_common::NO_RESET_REASON)
        .unwrap_or(tcptrace_common::NO_RESET_REASON)
}

/// Frees with a reason that are not drops worth showing, as `ProgramConfig::drop_ignore`'s
/// bits: the "not dropped yet" / "consumed" markers where a kernel passes them through the
/// drop tracepoint; and unless `all` is asked for, a closed socket's queue purged (about once
/// per connection) and NOT_SPECIFIED (on this kernel mostly segments consumed at teardown,
/// in `tcp_rcv_state_process` and a timewait socket's `tcp_v4_rcv`).
pub fn drop_ignore(reasons: &[(u32, String)], all: bool) -> [u64; 4] {
    const NOT_DROPS: [&str; 2] = ["SKB_NOT_DROPPED_YET", "SKB_CONSUMED"];
    const RARELY_DROPS: [&str; 2] = [
        "SKB_DROP_REASON_QUEUE_PURGE",
        "SKB_DROP_REASON_NOT_SPECIFIED",
    ];
    let mut bits = [0u64; 4];
    for (value, name) in reasons {
        let ignored =
            NOT_DROPS.contains(&name.as_str()) || (!all && RARELY_DROPS.contains(&name.as_str()));
        if *value < 256 && ignored {
            bits[(*value / 64) as usize] |= 1 << (value % 64);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::{KernelBtf, VMLINUX_BTF};

    fn bit(bits: &[u64; 4], value: u32) -> bool {
        (bits[(value / 64) as usize] >> (value % 64)) & 1 == 1
    }

    #[test]
    fn rarely_drops_are_ignored_unless_all_are_asked_for() {
        let reasons = vec![
            (2, "SKB_DROP_REASON_NOT_SPECIFIED".to_string()),
            (12, "SKB_DROP_REASON_NETFILTER_DROP".to_string()),
            (105, "SKB_DROP_REASON_QUEUE_PURGE".to_string()),
            (0, "SKB_NOT_DROPPED_YET".to_string()),
            (300, "SKB_DROP_REASON_QUEUE_PURGE".to_string()),
        ];
        let default = drop_ignore(&reasons, false);
        assert!(bit(&default, 2) && bit(&default, 105) && bit(&default, 0));
        assert!(!bit(&default, 12), "a real drop is kept");
        let all = drop_ignore(&reasons, true);
        assert!(!bit(&all, 2) && !bit(&all, 105) && bit(&all, 0));
    }

    #[test]
    fn this_kernels_drop_reasons_are_read_from_btf() {
        let btf = KernelBtf::open(std::path::Path::new(VMLINUX_BTF)).expect("kernel BTF");
        let reasons = btf.enum_members("skb_drop_reason").expect("reads");
        let value = |name: &str| {
            reasons
                .iter()
                .find(|(_, n)| n == name)
                .map(|(v, _)| *v)
                .unwrap_or_else(|| panic!("{name} in this kernel's enum skb_drop_reason"))
        };
        let bits = drop_ignore(&reasons, false);
        assert!(bit(&bits, value("SKB_DROP_REASON_QUEUE_PURGE")));
        assert!(!bit(&bits, value("SKB_DROP_REASON_NETFILTER_DROP")));
    }
}
