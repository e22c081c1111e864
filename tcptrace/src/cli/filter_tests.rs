use super::*;
use crate::{
    host::netns::own_netns,
    kernel::filter::trie_key,
    model::tcp::{Endpoint, FlowAddrs},
};
use tcptrace_common::{filter_kind, mapped_v4, port_bits};

fn spec(args: FilterArgs) -> Result<FilterSpec> {
    FilterSpec::try_from(args)
}

#[test]
fn ports_and_ranges_parse_and_bad_ones_are_named() {
    assert_eq!(parse_ports("80", "-L").expect("valid"), (80, 80));
    assert_eq!(parse_ports("8000-8100", "-L").expect("valid"), (8000, 8100));
    for (bad, needle) in [
        ("0", "1-65535"),
        ("70000", "1-65535"),
        ("http", "1-65535"),
        ("90-80", "backwards"),
        ("1-", "1-65535"),
    ] {
        let err = parse_ports(bad, "--local-port").expect_err(bad);
        let text = err.to_string();
        assert!(
            text.contains(needle) && text.contains("--local-port"),
            "{bad}: {text}"
        );
    }
}

#[test]
fn addresses_parse_as_networks_with_host_bits_cleared() {
    assert_eq!(
        parse_cidr("10.1.2.3/8", "--remote-addr")
            .expect("valid")
            .to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        parse_cidr("127.0.0.1", "--remote-addr")
            .expect("valid")
            .to_string(),
        "127.0.0.1/32"
    );
    assert_eq!(
        parse_cidr("2001:db8::1/32", "--remote-addr")
            .expect("valid")
            .to_string(),
        "2001:db8::/32"
    );
    for bad in ["10.0.0.0/33", "host.example", "10.0.0/8", ""] {
        let err = parse_cidr(bad, "--remote-addr").expect_err(bad);
        assert!(err.to_string().contains("--remote-addr"), "{bad}: {err}");
    }
}

#[test]
fn ipv4_networks_are_stored_ipv4_mapped() {
    let net = parse_cidr("192.168.0.0/16", "x").expect("valid");
    assert_eq!(trie_key(&net), (112, mapped_v4([192, 168, 0, 0])));
    let net = parse_cidr("fe80::/10", "x").expect("valid");
    assert_eq!(trie_key(&net).0, 10);
}

#[test]
fn the_config_names_every_filter_in_force() {
    let s = spec(FilterArgs {
        local_ports: vec!["80".into(), "8000-8001".into()],
        remote_addrs: vec!["127.0.0.0/8".into()],
        ipv6: true,
        ..FilterArgs::default()
    })
    .expect("valid");
    let c = s.program_config();
    assert_eq!(
        c.active,
        filter_kind::LOCAL_PORT | filter_kind::REMOTE_ADDR | filter_kind::FAMILY
    );
    assert_eq!(c.family, AF_INET6);
    assert_eq!(
        s.port_bits(),
        vec![
            (80, port_bits::LOCAL),
            (8000, port_bits::LOCAL),
            (8001, port_bits::LOCAL)
        ]
    );
    assert_eq!(
        s.describe(),
        "local port 80,8000-8001 and remote addr 127.0.0.0/8 and IPv6"
    );
    assert!(spec(FilterArgs::default()).expect("valid").is_empty());
}

#[test]
fn pids_namespaces_and_cgroups_are_checked() {
    let me = std::process::id().to_string();
    let s = spec(FilterArgs {
        pids: vec![me.clone()],
        netns: vec!["/proc/self/ns/net".into()],
        ..FilterArgs::default()
    })
    .expect("own pid and namespace are valid");
    assert_eq!(s.program_config().pids[0].to_string(), me);
    assert_eq!(Some(s.netns[0].1), own_netns());
    for (args, needle) in [
        (
            FilterArgs {
                pids: vec!["abc".into()],
                ..FilterArgs::default()
            },
            "--pid 'abc'",
        ),
        (
            FilterArgs {
                pids: vec!["4000000000".into()],
                ..FilterArgs::default()
            },
            "--pid",
        ),
        (
            FilterArgs {
                pids: vec!["999999999".into()],
                ..FilterArgs::default()
            },
            "no such process",
        ),
        (
            FilterArgs {
                netns: vec!["no-such-ns-xyz".into()],
                ..FilterArgs::default()
            },
            "--netns 'no-such-ns-xyz'",
        ),
        (
            FilterArgs {
                netns: vec!["/proc/self/ns/uts".into()],
                ..FilterArgs::default()
            },
            "not a network namespace",
        ),
        (
            FilterArgs {
                cgroups: vec!["/no/such/cgroup-xyz".into()],
                ..FilterArgs::default()
            },
            "--cgroup '/no/such/cgroup-xyz'",
        ),
        (
            FilterArgs {
                pids: vec![me.clone(); 9],
                ..FilterArgs::default()
            },
            "at most 8",
        ),
    ] {
        let err = spec(args).expect_err(needle);
        assert!(format!("{err:#}").contains(needle), "{needle}: {err:#}");
    }
}

#[test]
fn sock_diag_sockets_are_judged_by_what_they_show() {
    let s = spec(FilterArgs {
        remote_ports: vec!["7000-7010".into()],
        remote_addrs: vec!["127.0.0.0/8".into()],
        ..FilterArgs::default()
    })
    .expect("valid");
    let addrs = |remote: &str, port: u16| FlowAddrs {
        local: Endpoint::new("127.0.0.1".parse().expect("ip"), 40000),
        remote: Endpoint::new(remote.parse().expect("ip"), port),
    };
    assert!(s.admits_diag(&addrs("127.0.0.9", 7005), own_netns(), None));
    assert!(
        s.admits_diag(&addrs("::ffff:127.0.0.1", 7000), own_netns(), None),
        "IPv4-mapped IPv6 matches IPv4 networks"
    );
    assert!(!s.admits_diag(&addrs("127.0.0.9", 7011), own_netns(), None));
    assert!(!s.admits_diag(&addrs("10.0.0.1", 7005), own_netns(), None));
    let by_pid = spec(FilterArgs {
        pids: vec![std::process::id().to_string()],
        ..FilterArgs::default()
    })
    .expect("valid");
    assert!(
        !by_pid.admits_diag(&addrs("127.0.0.1", 7000), own_netns(), None),
        "owner unknown: not admitted"
    );
    assert!(by_pid.admits_diag(
        &addrs("127.0.0.1", 7000),
        own_netns(),
        Some(std::process::id())
    ));
    assert!(!by_pid.admits_diag(&addrs("127.0.0.1", 7000), own_netns(), Some(1)));
}

#[test]
fn a_port_on_either_side_is_one_filter() {
    let s = spec(FilterArgs {
        ports: vec!["8080".into(), "5432".into()],
        ..FilterArgs::default()
    })
    .expect("valid");
    assert_eq!(s.active(), tcptrace_common::filter_kind::EITHER_PORT);
    let bits: Vec<(u16, u8)> = s.port_bits();
    assert_eq!(
        bits,
        vec![
            (5432, tcptrace_common::port_bits::EITHER),
            (8080, tcptrace_common::port_bits::EITHER)
        ]
    );
    assert_eq!(
        s.describe(),
        "port 5432,8080 (either side)".replace("5432,8080", "8080,5432")
    );
    let addrs = |local: u16, remote: u16| FlowAddrs {
        local: Endpoint::new("127.0.0.1".parse().expect("ip"), local),
        remote: Endpoint::new("127.0.0.1".parse().expect("ip"), remote),
    };
    assert!(
        s.admits_diag(&addrs(8080, 40000), own_netns(), None),
        "a service"
    );
    assert!(
        s.admits_diag(&addrs(40000, 5432), own_netns(), None),
        "a destination"
    );
    assert!(!s.admits_diag(&addrs(40000, 443), own_netns(), None));
    let err = spec(FilterArgs {
        ports: vec!["80-70".into()],
        ..FilterArgs::default()
    })
    .expect_err("a backwards range");
    assert!(format!("{err:#}").contains("--port"), "{err:#}");
}
