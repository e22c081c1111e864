use super::*;

/// TCP header flags the kernel sends in a drop record.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
use crate::state::packets::tests::snat;

fn dropped(reason: &str, addrs: FlowAddrs, conntrack: Option<Conntrack>, flags: u8) -> PacketDrop {
    PacketDrop {
        ts_ns: 7,
        skaddr: 0,
        addrs,
        reason: reason.into(),
        netns: 42,
        tcp_flags: flags,
        conntrack,
    }
}

#[test]
fn a_syn_the_source_nat_could_not_place_is_an_snat_alert_naming_client_nat_and_destination() {
    let ct = snat();
    let mut watch = NatWatch::default();
    let d = dropped("NETFILTER_DROP", ct.translated(), Some(ct), SYN);
    let first = watch.admit(&d, None).expect("an alert");
    assert_eq!(first.kind(), "snat_exhausted");
    assert_eq!(first.addrs, ct.original, "the client's own connection");
    assert_eq!(first.translated, Some(ct.translated()));
    assert_eq!(watch.admit(&d, None).expect("again").count, 2);
    let text = first.detail();
    for part in [
        "10.77.2.2:34762",
        "10.77.9.2:8080",
        "10.77.9.1",
        "40000",
        "netns 42",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    // A confirmed entry's drop (a firewall rule on an established NATed flow) is not one;
    // nor is a packet that is not a first SYN.
    let confirmed = Conntrack {
        status: ct.status | tcptrace_common::ct_status::CONFIRMED,
        ..ct
    };
    assert!(watch
        .admit(
            &dropped("NETFILTER_DROP", ct.translated(), Some(confirmed), SYN),
            None
        )
        .is_none());
    assert!(watch
        .admit(
            &dropped("NETFILTER_DROP", ct.translated(), Some(ct), SYN | ACK),
            None
        )
        .is_none());
}

#[test]
fn a_syn_a_time_wait_rejected_is_a_paws_alert_with_the_client_behind_the_nat_when_known() {
    let ct = snat();
    let arriving = ct.translated();
    let mut watch = NatWatch::default();
    let d = dropped("TCP_RFC7323_TW_PAWS", arriving, None, SYN);
    let alert = watch.admit(&d, Some(ct.original)).expect("an alert");
    assert_eq!(alert.kind(), "time_wait_paws");
    assert_eq!(alert.addrs.local, arriving.remote, "ours first");
    let text = alert.detail();
    for part in [
        "10.77.9.1:40000",
        "local port 8080",
        "10.77.2.2:34762",
        "closed first",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(watch
        .admit(&dropped("NO_SOCKET", arriving, None, SYN), None)
        .is_none());
}

#[test]
fn a_conntrack_table_is_alerted_on_once_when_90_percent_full_and_on_every_drop() {
    let table = |entries, drop| ConntrackTable {
        entries,
        max: 100,
        drop,
        ..ConntrackTable::default()
    };
    let mut watch = ConntrackWatch::default();
    assert!(watch.read(5, "5 \"r\"", None, table(50, 0), 1).is_none());
    let full = watch
        .read(5, "5 \"r\"", Some(table(50, 0)), table(92, 0), 2)
        .expect("crossing 90%");
    assert_eq!(full.kind(), "conntrack_full");
    assert!(
        full.detail().contains("92% full: 92 of 100"),
        "{}",
        full.detail()
    );
    assert!(
        watch
            .read(5, "5 \"r\"", Some(table(92, 0)), table(95, 0), 3)
            .is_none(),
        "said once per crossing"
    );
    let dropping = watch
        .read(5, "5 \"r\"", Some(table(95, 0)), table(100, 7), 4)
        .expect("drops are said each time");
    assert_eq!(dropping.count, 7);
    assert!(
        dropping.detail().contains("7 packets dropped"),
        "{}",
        dropping.detail()
    );
    // A clash (a NAT out of ports) counts as a drop and as insert_failed: not the table.
    let clash = ConntrackTable {
        insert_failed: 3,
        ..table(100, 10)
    };
    assert!(watch.read(5, "x", Some(table(100, 7)), clash, 5).is_none());
    assert!(watch
        .read(5, "x", Some(table(100, 7)), table(10, 7), 5)
        .is_none());
    assert!(
        watch
            .read(5, "x", Some(table(10, 7)), table(91, 7), 6)
            .is_some(),
        "rearmed after falling under 75%"
    );
    // Drops within 10 s of the last drop alert are summed into the next one.
    let mut watch = ConntrackWatch::default();
    assert!(watch
        .read(6, "y", Some(table(50, 0)), table(50, 2), 1)
        .is_some());
    assert!(watch
        .read(6, "y", Some(table(50, 2)), table(50, 5), 2)
        .is_none());
    let later = watch
        .read(6, "y", Some(table(50, 5)), table(50, 6), 10_000_000_001)
        .expect("10 s on");
    assert_eq!(later.count, 4, "3 + 1 since the last alert");
}
