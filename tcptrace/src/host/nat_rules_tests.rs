use super::*;
use crate::host::netlink::attr;

/// A dump captured on this kernel from a namespace where iptables-nft (1.8.9) added, in
/// order: `-t nat -A POSTROUTING -o lo -p tcp -j MASQUERADE --to-ports 40000-40003`,
/// `-t nat -A POSTROUTING -o eth9 -j MASQUERADE`, `-t nat -A POSTROUTING -o eth8 -p tcp -j
/// SNAT --to-source 1.2.3.4:5000-5010` and `-A INPUT -p tcp --dport 22 -j ACCEPT`.
fn captured() -> Vec<u8> {
    let hex = include_str!("testdata/nft_rules_dump.hex").trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn iptables_nft_targets_are_read_with_their_ports_and_addresses() {
    let mut rules = Vec::new();
    let done = parse_batch(&captured(), 7, &mut rules).expect("parses");
    assert!(done, "the capture ends with NLMSG_DONE");
    let a: IpAddr = "1.2.3.4".parse().expect("ip");
    assert_eq!(
        rules,
        vec![
            SourceNatRule {
                addresses: None,
                ports: Some((40000, 40003))
            },
            SourceNatRule {
                addresses: None,
                ports: None
            },
            SourceNatRule {
                addresses: Some((a, a)),
                ports: Some((5000, 5010))
            },
        ],
        "the filter rule is no NAT"
    );
    let mut other = Vec::new();
    assert!(
        !parse_batch(&captured(), 8, &mut other).expect("parses"),
        "another request's messages are skipped"
    );
    assert!(other.is_empty());
}

fn expression(name: &str, data: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    attr(&mut e, NFTA_EXPR_NAME, format!("{name}\0").as_bytes());
    attr(&mut e, NFTA_EXPR_DATA | NLA_F_NESTED, data);
    e
}

fn immediate(reg: u32, value: &[u8]) -> Vec<u8> {
    let (mut data, mut inner) = (Vec::new(), Vec::new());
    attr(&mut data, NFTA_IMMEDIATE_DREG, &reg.to_be_bytes());
    attr(&mut inner, NFTA_DATA_VALUE, value);
    attr(&mut data, NFTA_IMMEDIATE_DATA | NLA_F_NESTED, &inner);
    expression("immediate", &data)
}

fn rule(expressions: &[Vec<u8>]) -> Vec<u8> {
    let mut list = Vec::new();
    for e in expressions {
        attr(&mut list, 1 | NLA_F_NESTED, e);
    }
    let mut attrs = Vec::new();
    attr(&mut attrs, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &list);
    attrs
}

#[test]
fn native_masquerade_and_snat_take_their_ports_from_registers() {
    let mut masq = Vec::new();
    attr(&mut masq, NFTA_MASQ_REG_PROTO_MIN, &1u32.to_be_bytes());
    attr(&mut masq, NFTA_MASQ_REG_PROTO_MAX, &2u32.to_be_bytes());
    let nft_masq = rule(&[
        immediate(1, &30000u16.to_be_bytes()),
        immediate(2, &30099u16.to_be_bytes()),
        expression("masq", &masq),
    ]);
    assert_eq!(
        parse_rule(&nft_masq).expect("parses"),
        Some(SourceNatRule {
            addresses: None,
            ports: Some((30000, 30099))
        })
    );
    let mut snat = Vec::new();
    attr(&mut snat, NFTA_NAT_TYPE, &NFT_NAT_SNAT.to_be_bytes());
    attr(&mut snat, NFTA_NAT_REG_ADDR_MIN, &9u32.to_be_bytes());
    let nft_snat = rule(&[immediate(9, &[10, 0, 0, 1]), expression("nat", &snat)]);
    let a: IpAddr = "10.0.0.1".parse().expect("ip");
    assert_eq!(
        parse_rule(&nft_snat).expect("parses"),
        Some(SourceNatRule {
            addresses: Some((a, a)),
            ports: None
        })
    );
    let mut dnat = Vec::new();
    attr(&mut dnat, NFTA_NAT_TYPE, &1u32.to_be_bytes());
    assert_eq!(
        parse_rule(&rule(&[expression("nat", &dnat)])).expect("parses"),
        None,
        "a destination NAT is not a source NAT"
    );
}

#[test]
fn the_range_is_the_one_rule_that_can_give_the_address_or_the_kernels_default() {
    let nat: IpAddr = "10.0.0.1".parse().expect("ip");
    let masq = |ports| SourceNatRule {
        addresses: None,
        ports,
    };
    let narrow = ports_for(Some(&[masq(Some((40000, 40003)))]), nat, None);
    assert_eq!(
        (narrow.range, narrow.basis, narrow.count()),
        ((40000, 40003), PortsBasis::Rule, 4)
    );
    let plain = ports_for(Some(&[masq(None)]), nat, Some(45000));
    assert_eq!(plain.basis, PortsBasis::KernelDefault);
    assert_eq!(plain.count(), 64512);
    assert_eq!(ports_for(None, nat, None).basis, PortsBasis::Assumed);
    let elsewhere = SourceNatRule {
        addresses: Some((
            "1.2.3.4".parse().expect("ip"),
            "1.2.3.4".parse().expect("ip"),
        )),
        ports: Some((5000, 5010)),
    };
    let two = [elsewhere, masq(Some((40000, 40003)))];
    assert_eq!(
        ports_for(Some(&two), nat, None).basis,
        PortsBasis::Rule,
        "an SNAT rule to another address cannot give this one"
    );
    let several = [masq(Some((40000, 40003))), masq(Some((50000, 50999)))];
    let picked = ports_for(Some(&several), nat, Some(50007));
    assert_eq!(
        picked.range,
        (50000, 50999),
        "the rule naming the port seen"
    );
    assert_eq!(picked.basis, PortsBasis::OneOfRules(2));
    assert!(
        picked
            .describe()
            .starts_with("1000 ports (50000-50999, one of 2"),
        "{}",
        picked.describe()
    );
}
