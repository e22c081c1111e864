use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    decode::tests::finished,
    model::{
        facts::HostFacts,
        tcp::{Endpoint, FlowAddrs, TcpState},
        vitals::FlowVitals,
    },
};

fn addrs(local: u16, remote: u16) -> FlowAddrs {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    FlowAddrs {
        local: Endpoint::new(ip, local),
        remote: Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), remote),
    }
}

fn drop_of(addrs: FlowAddrs, reason: &str, ts_ns: u64) -> PacketDrop {
    PacketDrop {
        ts_ns,
        skaddr: 0,
        addrs,
        reason: reason.into(),
        netns: 1,
        tcp_flags: 2,
        conntrack: None,
    }
}

#[test]
fn drops_join_their_flow_whichever_way_the_packet_went() {
    let mut ledger = PacketLedger::default();
    let flow = addrs(40000, 80);
    let incoming = FlowAddrs {
        local: flow.remote,
        remote: flow.local,
    };
    ledger.dropped(&drop_of(flow, "NETFILTER_DROP", 1));
    ledger.dropped(&drop_of(incoming, "NETFILTER_DROP", 2));
    ledger.dropped(&drop_of(addrs(40001, 80), "NO_SOCKET", 3));
    let mut f = finished(flow);
    ledger.flow_ended(&mut f);
    assert_eq!(f.drops.text(), "NETFILTER_DROP:2");
    let s = ledger.summary(&[], &HostFacts::default());
    assert_eq!(
        s.drops_by_reason,
        [
            ("NETFILTER_DROP".to_string(), 2),
            ("NO_SOCKET".to_string(), 1)
        ]
    );
    // The kernel's own counts, where there are any, are the summary's.
    let mut kernel = vec![0u64; 16];
    kernel[12] = 7;
    let host = HostFacts::default()
        .with_drop_reasons(&[(12, "SKB_DROP_REASON_NETFILTER_DROP".to_string())]);
    let exact = ledger.summary(&kernel, &host);
    assert_eq!(exact.drops_by_reason, [("NETFILTER_DROP".to_string(), 7)]);
    // The other flow's mark is forgotten when no end comes for it.
    ledger.expire(3 + MARK_TTL_NS);
    assert_eq!((ledger.marks.len(), ledger.unclaimed), (0, 1));
}

#[test]
fn synack_retransmits_count_in_the_childs_syn_recv() {
    let mut ledger = PacketLedger::default();
    let flow = addrs(80, 40000);
    let r = Retransmit {
        ts_ns: 1,
        skaddr: 9,
        state: TcpState::SynRecv,
        addrs: flow,
        owner: None,
        workload: Default::default(),
        err: None,
        untracked: false,
        synack: true,
    };
    ledger.synack(&r);
    ledger.synack(&r);
    // The client's flow, ending first on this host, does not take them.
    let mut client = finished(FlowAddrs {
        local: flow.remote,
        remote: flow.local,
    });
    ledger.flow_ended(&mut client);
    assert_eq!(client.lifecycle.path[0].retransmits, 0);
    let mut f = finished(flow);
    f.lifecycle.path[0].state = TcpState::SynRecv;
    let before = f.lifecycle.retransmits;
    ledger.flow_ended(&mut f);
    assert_eq!(f.lifecycle.path[0].retransmits, 2);
    assert_eq!(f.lifecycle.retransmits, before + 2);
}

#[test]
fn vitals_are_summed_and_the_ledger_is_bounded() {
    let mut ledger = PacketLedger::default();
    for i in 0..3u64 {
        let mut f = finished(addrs(40000 + i as u16, 80));
        f.vitals = Some(FlowVitals {
            bytes_acked: 1000,
            bytes_received: 10,
            srtt_ns: Some((i + 1) * 1_000_000),
            ..FlowVitals::default()
        });
        ledger.flow_ended(&mut f);
    }
    let s = ledger.summary(&[], &HostFacts::default());
    let v = s.vitals.expect("flows with vitals");
    assert_eq!((v.flows, v.bytes_acked, v.bytes_received), (3, 3000, 30));
    let srtt = v.srtt.expect("RTT samples");
    let (p50, max) = (srtt.p50_ns, srtt.max_ns);
    assert!((1_990_000..=2_010_000).contains(&p50), "{p50}");
    assert!((2_990_000..=3_010_000).contains(&max), "{max}");
    for i in 0..MAX_MARKED_FLOWS as u32 + 10 {
        let a = FlowAddrs {
            local: Endpoint::new(IpAddr::V4(Ipv4Addr::from(i)), 1),
            remote: Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 2),
        };
        ledger.dropped(&drop_of(a, "TCP_CLOSE", 1));
    }
    assert_eq!(ledger.marks.len(), MAX_MARKED_FLOWS);
    assert_eq!(
        ledger.summary(&[], &HostFacts::default()).drops_overflowed,
        10
    );
}

fn endpoint(a: u8, port: u16) -> Endpoint {
    Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 77, a, 2)), port)
}

/// A client 10.77.2.2:34762 to 10.77.9.2:8080, source-NATed to 10.77.9.1:40000.
pub(crate) fn snat() -> crate::model::nat::Conntrack {
    let client = endpoint(2, 34762);
    let server = endpoint(9, 8080);
    let nat = Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 77, 9, 1)), 40000);
    crate::model::nat::Conntrack {
        original: FlowAddrs {
            local: client,
            remote: server,
        },
        reply: FlowAddrs {
            local: server,
            remote: nat,
        },
        status: tcptrace_common::ct_status::SRC_NAT,
    }
}

#[test]
fn a_drop_past_a_nat_joins_the_clients_flow_and_the_servers_with_the_other_sides_addresses() {
    let ct = snat();
    let translated = ct.translated();
    let mut ledger = PacketLedger::default();
    // Dropped after the NAT: the packet carries the translated addresses and the entry.
    let mut d = drop_of(translated, "NETFILTER_DROP", 1);
    d.conntrack = Some(ct);
    ledger.dropped(&d);
    ledger.dropped(&d);
    let mut client = finished(ct.original);
    ledger.flow_ended(&mut client);
    assert_eq!(client.drops.text(), "NETFILTER_DROP:2");
    assert_eq!(
        client.translated,
        Some(translated),
        "the client sees the NAT's side"
    );
    let server_side = FlowAddrs {
        local: translated.remote,
        remote: translated.local,
    };
    let mut server = finished(server_side);
    ledger.flow_ended(&mut server);
    assert_eq!(server.drops.text(), "NETFILTER_DROP:2");
    assert_eq!(
        server.translated,
        Some(FlowAddrs {
            local: ct.original.remote,
            remote: ct.original.local
        }),
        "the server sees the real client"
    );
    // A later drop of the translated packet with no entry (a PAWS rejection at the
    // server) is known to be the client's.
    assert_eq!(ledger.original_of(&translated), Some(ct.original));
    let mut late = drop_of(translated, "TCP_RFC7323_TW_PAWS", 2);
    late.skaddr = 0;
    ledger.dropped(&late);
    let mut again = finished(ct.original);
    ledger.flow_ended(&mut again);
    assert_eq!(again.drops.text(), "TCP_RFC7323_TW_PAWS:1");
}

#[test]
fn an_untranslated_entry_adds_no_second_mark() {
    let flow = addrs(40000, 80);
    let mut ledger = PacketLedger::default();
    let mut d = drop_of(flow, "NETFILTER_DROP", 1);
    d.conntrack = Some(crate::model::nat::Conntrack {
        original: flow,
        reply: FlowAddrs {
            local: flow.remote,
            remote: flow.local,
        },
        status: tcptrace_common::ct_status::CONFIRMED,
    });
    ledger.dropped(&d);
    let mut f = finished(flow);
    ledger.flow_ended(&mut f);
    assert_eq!(f.drops.text(), "NETFILTER_DROP:1", "counted once");
    assert_eq!(f.translated, None);
}
