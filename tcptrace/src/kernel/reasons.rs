//! The kernel's reason enums, read from its BTF (the numbers differ between kernels), turned
//! into what the programs are told at load time.
use tcptrace_common::{drop_ignore_bit, DROP_IGNORE_WORDS, DROP_REASON_SLOTS};

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
pub fn drop_ignore(reasons: &[(u32, String)], all: bool) -> [u64; DROP_IGNORE_WORDS] {
    const NOT_DROPS: [&str; 2] = ["SKB_NOT_DROPPED_YET", "SKB_CONSUMED"];
    const RARELY_DROPS: [&str; 2] = [
        "SKB_DROP_REASON_QUEUE_PURGE",
        "SKB_DROP_REASON_NOT_SPECIFIED",
    ];
    let mut bits = [0u64; DROP_IGNORE_WORDS];
    for (value, name) in reasons {
        let ignored =
            NOT_DROPS.contains(&name.as_str()) || (!all && RARELY_DROPS.contains(&name.as_str()));
        if (*value as usize) < DROP_REASON_SLOTS && ignored {
            let (word, bit) = drop_ignore_bit(*value);
            bits[word] |= bit;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::{KernelBtf, VMLINUX_BTF};

    fn bit(bits: &[u64; DROP_IGNORE_WORDS], value: u32) -> bool {
        let (word, bit) = drop_ignore_bit(value);
        bits[word] & bit != 0
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

    /// A raw BTF blob holding one `enum name` (a kernel's BTF, cut down to what is tested).
    fn enum_btf(name: &str, members: &[(&str, i32)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut add = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let mut types = Vec::new();
        let name_off = add(name);
        const BTF_KIND_ENUM: u32 = 6;
        for word in [name_off, (BTF_KIND_ENUM << 24) | members.len() as u32, 4] {
            types.extend_from_slice(&word.to_le_bytes());
        }
        for (member, value) in members {
            types.extend_from_slice(&add(member).to_le_bytes());
            types.extend_from_slice(&value.to_le_bytes());
        }
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]); // version 1, no flags
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    /// Two kernels number the same reasons differently: what the programs are told and what
    /// userspace prints follow each kernel's own BTF.
    #[test]
    fn drop_reasons_follow_each_kernels_btf() {
        let kernels: [(&str, &[(&str, i32)]); 2] = [
            // This machine's 6.18, as kernel-evidence.md records it.
            (
                "6.18",
                &[
                    ("SKB_NOT_DROPPED_YET", 0),
                    ("SKB_CONSUMED", 1),
                    ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                    ("SKB_DROP_REASON_NO_SOCKET", 3),
                    ("SKB_DROP_REASON_NETFILTER_DROP", 12),
                    ("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW", 40),
                    ("SKB_DROP_REASON_QUEUE_PURGE", 105),
                ],
            ),
            // An older numbering: no SKB_CONSUMED, everything one lower.
            (
                "older",
                &[
                    ("SKB_NOT_DROPPED_YET", 0),
                    ("SKB_DROP_REASON_NOT_SPECIFIED", 1),
                    ("SKB_DROP_REASON_NO_SOCKET", 2),
                    ("SKB_DROP_REASON_NETFILTER_DROP", 11),
                    ("SKB_DROP_REASON_QUEUE_PURGE", 104),
                ],
            ),
        ];
        let dir = std::env::temp_dir().join(format!("tcptrace-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (kernel, members) in kernels {
            let path = dir.join(kernel);
            std::fs::write(&path, enum_btf("skb_drop_reason", members)).expect("write BTF");
            let btf = KernelBtf::open(&path).expect("a BTF file");
            let reasons = btf.enum_members("skb_drop_reason").expect("reads");
            assert_eq!(reasons.len(), members.len(), "{kernel}");
            let value = |name: &str| {
                members
                    .iter()
                    .find(|(n, _)| n.ends_with(name))
                    .expect(name)
                    .1 as u32
            };
            let bits = drop_ignore(&reasons, false);
            assert!(bit(&bits, value("QUEUE_PURGE")), "{kernel}");
            assert!(bit(&bits, value("NOT_SPECIFIED")), "{kernel}");
            assert!(!bit(&bits, value("NETFILTER_DROP")), "{kernel}");
            let host = crate::model::facts::HostFacts::default().with_drop_reasons(&reasons);
            assert_eq!(
                host.drop_reason_name(value("NETFILTER_DROP")),
                "NETFILTER_DROP"
            );
            assert_eq!(host.drop_reason_name(value("NO_SOCKET")), "NO_SOCKET");
        }
        let _ = std::fs::remove_dir_all(&dir);
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
