use super::*;
use crate::{
    host::netns::{Namespace, PortSettings},
    model::counters::KernelCounters,
    model::events::{FinishedFlow, Retransmit, Transition},
    model::tcp::{Endpoint, FlowAddrs, TcpState},
    output::fixtures,
};
use tcptrace_common::{stat, tcp_state as ts, TRANSITION_SLOTS};

const S: u64 = 1_000_000_000;

pub fn ep(text: &str) -> Endpoint {
    let (addr, port) = text.rsplit_once(':').expect("addr:port");
    Endpoint::new(
        addr.parse().expect("an address"),
        port.parse().expect("a port"),
    )
}

pub fn addrs(local: &str, remote: &str) -> FlowAddrs {
    FlowAddrs {
        local: ep(local),
        remote: ep(remote),
    }
}

/// A recorded transition of socket `sk` at `ts_ns`.
pub fn transition(
    sk: u64,
    old: u8,
    new: u8,
    held: Option<u64>,
    a: FlowAddrs,
    ts_ns: u64,
) -> Transition {
    let mut t = fixtures::transition(old, new, held);
    t.skaddr = sk;
    t.addrs = a;
    t.ts_ns = ts_ns;
    t
}

/// One client connection's transitions: connect, established after `connect_ns`, closed.
pub fn connection(top: &mut TopModel, sk: u64, a: FlowAddrs, at: u64, connect_ns: u64) {
    top.transition(&transition(sk, ts::CLOSE, ts::SYN_SENT, None, a, at));
    top.transition(&transition(
        sk,
        ts::SYN_SENT,
        ts::ESTABLISHED,
        Some(connect_ns),
        a,
        at + connect_ns,
    ));
}

pub fn closed(top: &mut TopModel, sk: u64, a: FlowAddrs, at: u64) {
    top.transition(&transition(sk, ts::FIN_WAIT2, ts::CLOSE, Some(1), a, at));
}

pub fn counters() -> KernelCounters {
    KernelCounters {
        transitions: vec![0; TRANSITION_SLOTS as usize],
        ..Default::default()
    }
}

pub fn flow_with(cause: CloseCause, a: FlowAddrs) -> FinishedFlow {
    let mut f = fixtures::client_flow();
    f.cause = cause;
    f.addrs = a;
    f
}

pub fn retransmit_of(sk: u64, a: FlowAddrs) -> Retransmit {
    let mut r = fixtures::retransmit();
    r.skaddr = sk;
    r.addrs = a;
    r
}

#[test]
fn rate_window_counts_the_last_ten_seconds() {
    let mut w = RateWindow::default();
    for s in 100..110 {
        for _ in 0..5 {
            w.add(s);
        }
    }
    assert_eq!(w.per_second(109, 10.0), 5.0);
    // Two seconds later the two oldest seconds left the window.
    assert_eq!(w.per_second(111, 10.0), 4.0);
    w.add(111);
    assert_eq!(w.per_second(111, 10.0), 4.1);
    assert_eq!(w.per_second(200, 10.0), 0.0);
    assert!(w.idle(121) && !w.idle(120));
    // Until tracing has run the whole window, the rate is over the time traced: 5 s in at
    // 5 events a second reads 5, not 2.5.
    let mut young = RateWindow::default();
    for s in 0..5 {
        for _ in 0..5 {
            young.add(s);
        }
    }
    let window = super::super::rate_window::window_s(0, 5_000_000_000);
    assert_eq!(window, 5.0);
    assert_eq!(young.per_second(4, window), 5.0);
    assert_eq!(super::super::rate_window::window_s(0, 300_000_000), 1.0);
    assert_eq!(super::super::rate_window::window_s(0, 99_000_000_000), 10.0);
    // A late record from a second still in the window counts there.
    w.add(105);
    assert_eq!(w.per_second(111, 10.0), 4.2);
}

#[test]
fn connects_count_under_their_destination_accepts_under_their_service() {
    let mut top = TopModel::started_at(0);
    let db = addrs("10.0.0.1:0", "10.0.0.9:5432");
    for i in 0..20 {
        connection(&mut top, i, db, 100 * S + i * S / 2, 2_000_000);
    }
    for i in 0..5 {
        closed(&mut top, i, db, 111 * S);
    }
    let listener = addrs("0.0.0.0:8080", "0.0.0.0:0");
    top.transition(&transition(
        50,
        ts::CLOSE,
        ts::LISTEN,
        None,
        listener,
        100 * S,
    ));
    let accepted = addrs("10.0.0.1:8080", "10.0.0.7:40000");
    top.transition(&transition(
        51,
        ts::LISTEN,
        ts::SYN_RECV,
        None,
        accepted,
        101 * S,
    ));

    let rows = top.rows(GroupKind::Destination, 109 * S, std::iter::empty());
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.endpoint, ep("10.0.0.9:5432"));
    assert_eq!(row.open, 15);
    // 20 connects within the last 10 seconds.
    assert_eq!(row.conn_per_s, 2.0);
    assert_eq!(row.connect_p99_ns.map(|ns| ns / 100_000), Some(20), "~2ms");
    let services = top.rows(GroupKind::Service, 109 * S, std::iter::empty());
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(
        (services[0].endpoint, services[0].open),
        (ep("10.0.0.1:8080"), 1)
    );
}

#[test]
fn time_wait_resets_keepalive_and_retransmits_land_in_their_row() {
    let mut top = TopModel::started_at(0);
    // A namespace with 600 ports and no reuse: 10 new connections a second fill it.
    top.set_namespaces(&namespaces_with_ports(NETNS, (40000, 40599)));
    let dst = addrs("10.0.0.1:40000", "10.0.0.9:443");
    connection(&mut top, 1, dst, 100 * S, 1_000);
    top.retransmit(&retransmit_of(1, dst));
    top.flow_end(&flow_with(CloseCause::KeepaliveTimeout, dst), false);
    top.flow_end(&flow_with(CloseCause::ResetReceived, dst), false);
    top.flow_end(&flow_with(CloseCause::Normal, dst), false);
    // 50 TIME_WAITs entered from one local address in the window: 5/s of 10/s capacity.
    for i in 0..50u64 {
        let a = addrs(&format!("10.0.0.1:{}", 40_000 + i), "10.0.0.9:443");
        top.time_wait_entered(&a, NETNS, 100 * S + i * S / 5);
    }
    let live: Vec<FlowAddrs> = (0..7)
        .map(|i| addrs(&format!("10.0.0.1:{}", 41_000 + i), "10.0.0.9:443"))
        .chain([addrs("10.0.0.1:41000", "10.0.0.8:80")]) // left from before tracing
        .collect();
    let rows = top.rows(
        GroupKind::Destination,
        109 * S,
        live.iter().map(|a| (a, None)),
    );
    let row = rows
        .iter()
        .find(|r| r.endpoint == ep("10.0.0.9:443"))
        .expect("the destination's row");
    assert_eq!(
        (
            row.retransmits,
            row.resets,
            row.keepalive_timeouts,
            row.time_wait
        ),
        (1, 1, 1, 7)
    );
    let pct = row.forecast_pct.expect("a forecast");
    assert!((pct - 50.0).abs() < 0.01, "{pct}");
    top.tick(counters(), 109 * S, (7, 0));
    let busiest = top
        .header
        .busiest_forecast
        .clone()
        .expect("the header's forecast");
    assert!(
        busiest.starts_with(
            "busiest forecast 50% (5/s of 10.0/s): netns 4026532770 \"ka\" 10.0.0.1 > 10.0.0.9:443"
        ) && busiest.contains("600 ports of 40000-40599, 60s TIME_WAIT, tcp_tw_reuse=0"),
        "{busiest}"
    );
    let old = rows
        .iter()
        .find(|r| r.endpoint == ep("10.0.0.8:80"))
        .expect("a row for a TIME_WAIT from before tracing");
    assert_eq!((old.time_wait, old.open), (1, 0));
}

#[test]
fn header_counts_open_flows_by_state_from_the_seed_and_transitions() {
    let mut top = TopModel::started_at(0);
    let a = addrs("127.0.0.1:80", "127.0.0.1:40000");
    let mut at_seed = counters();
    at_seed.transitions[tcptrace_common::transition_slot(ts::CLOSE, ts::SYN_SENT)] = 1_000;
    top.seed(
        [
            (ts::LISTEN, addrs("0.0.0.0:80", "0.0.0.0:0")),
            (ts::ESTABLISHED, a),
            (ts::ESTABLISHED, a),
        ],
        at_seed.clone(),
    );
    let mut now = at_seed.clone();
    // Since the seed: 3 connects, 2 of them established, 1 established flow closed actively.
    now.transitions[tcptrace_common::transition_slot(ts::CLOSE, ts::SYN_SENT)] += 3;
    now.transitions[tcptrace_common::transition_slot(ts::SYN_SENT, ts::ESTABLISHED)] = 2;
    now.transitions[tcptrace_common::transition_slot(ts::ESTABLISHED, ts::FIN_WAIT1)] = 1;
    // 4 accepted children, 3 of them established: the listener stays.
    now.transitions[tcptrace_common::transition_slot(ts::LISTEN, ts::SYN_RECV)] = 4;
    now.transitions[tcptrace_common::transition_slot(ts::SYN_RECV, ts::ESTABLISHED)] = 3;
    now.stats[stat::STATE_EVENTS as usize] = 6;
    now.stats[stat::LOST_TRANSITION as usize] = 4;
    top.tick(at_seed, 10 * S, (0, 0));
    top.tick(now, 12 * S, (9, 2));
    let open: Vec<(TcpState, u64)> = top
        .header
        .open_by_state
        .iter()
        .copied()
        .filter(|&(_, n)| n > 0)
        .collect();
    assert_eq!(
        open,
        vec![
            (TcpState::Established, 6),
            (TcpState::SynSent, 1),
            (TcpState::SynRecv, 1),
            (TcpState::FinWait1, 1),
            (TcpState::Listen, 1)
        ]
    );
    assert_eq!(top.header.transitions_per_s, 3.0);
    assert_eq!((top.header.time_wait, top.header.time_wait_skipped), (9, 2));
    assert_eq!(top.header.lost, 4);
    // The seeded accepted connections belong to the listening port's service.
    let services = top.rows(GroupKind::Service, 12 * S, std::iter::empty());
    assert_eq!(services.len(), 1);
    assert_eq!(
        (services[0].endpoint, services[0].open),
        (ep("127.0.0.1:80"), 2)
    );
}

#[test]
fn a_flow_from_before_tracing_that_closes_leaves_its_row() {
    let mut top = TopModel::started_at(0);
    let a = addrs("127.0.0.1:40000", "127.0.0.1:9000");
    top.seed([(ts::ESTABLISHED, a)], counters());
    closed(&mut top, 77, a, 5 * S);
    top.tick(counters(), 30 * S, (0, 0));
    assert!(top
        .rows(GroupKind::Destination, 30 * S, std::iter::empty())
        .is_empty());
}

const NETNS: u32 = 4026532770;

/// A namespace named "ka" with these ephemeral ports, no reuse.
fn namespaces_with_ports(inode: u32, range: (u16, u16)) -> Namespaces {
    let mut namespaces = Namespaces::default();
    namespaces.insert(Namespace {
        conntrack: None,
        inode,
        name: Some("ka".into()),
        own: false,
        settings: Some(PortSettings {
            port_range: range,
            usable_ports: u32::from(range.1 - range.0) + 1,
            tw_reuse: 0,
            tw_reuse_delay_ms: 1000,
            timestamps: true,
            max_tw_buckets: None,
        }),
    });
    namespaces
}

#[test]
fn port_failures_land_in_the_destination_or_the_local_service() {
    use crate::model::port_failure::{Call, Errno, PortFailure};
    let mut top = TopModel::started_at(0);
    let failure = |call, asked: &str| PortFailure {
        ts_ns: 100 * S,
        call,
        errno: Errno::AddrNotAvail,
        owner: crate::model::tcp::Process {
            pid: 1,
            comm: "curl".into(),
        },
        netns: NETNS,
        asked: Some(ep(asked)),
        workload: Default::default(),
    };
    for _ in 0..3 {
        top.port_failure(&failure(Call::Connect, "10.0.0.9:443"));
    }
    top.port_failure(&failure(Call::Bind, "10.0.0.1:8080"));
    let live: Vec<FlowAddrs> = Vec::new();
    let dests = top.rows(
        GroupKind::Destination,
        101 * S,
        live.iter().map(|a| (a, None)),
    );
    let row = dests
        .iter()
        .find(|r| r.endpoint == ep("10.0.0.9:443"))
        .expect("the destination's row");
    assert_eq!(row.port_failures, 3);
    let services = top.rows(GroupKind::Service, 101 * S, live.iter().map(|a| (a, None)));
    assert_eq!(
        services
            .iter()
            .map(|r| (r.endpoint, r.port_failures))
            .collect::<Vec<_>>(),
        [(ep("10.0.0.1:8080"), 1)]
    );
}

#[test]
fn the_workloads_table_groups_a_pods_containers() {
    use crate::model::workload::{Identity, Workload};
    use std::sync::Arc;
    let in_pod = |container: &str, cgroup: u64| {
        Workload::resolved(
            cgroup,
            Arc::new(Identity {
                cgroup_id: cgroup,
                namespace: Some("shop".into()),
                pod: Some("cart-0".into()),
                container: Some(container.into()),
                ..Identity::default()
            }),
        )
    };
    let mut top = TopModel::started_at(0);
    let a = addrs("10.0.0.1:40000", "10.0.0.2:443");
    for (sk, workload) in [
        (1, in_pod("app", 11)),
        (2, in_pod("sidecar", 12)),
        (3, Workload::unresolved(99)),
    ] {
        let mut t = transition(sk, ts::CLOSE, ts::SYN_SENT, None, a, 100 * S);
        t.workload = workload;
        top.transition(&t);
    }
    let mut rows = top.rows(GroupKind::Workload, 101 * S, std::iter::empty());
    rows.sort_by(|x, y| x.label.cmp(&y.label));
    let labels: Vec<(Option<&str>, u64)> =
        rows.iter().map(|r| (r.label.as_deref(), r.open)).collect();
    assert_eq!(
        labels,
        [(Some("cgroup:99"), 1), (Some("shop/cart-0"), 2)],
        "a pod's containers in one row"
    );
    top.transition(&transition(1, ts::ESTABLISHED, ts::CLOSE, None, a, 102 * S));
    top.tick(counters(), 103 * S, (0, 0));
    let rows = top.rows(GroupKind::Workload, 103 * S, std::iter::empty());
    let pod = rows
        .iter()
        .find(|r| r.label.as_deref() == Some("shop/cart-0"));
    assert_eq!(pod.map(|r| r.open), Some(1), "{rows:?}");

    // The pod's connections that closed first hold TIME_WAIT: its TW, as the metric counts
    // them (the connecting side's), until the tracker no longer has them.
    let mut live = Vec::new();
    for port in 0..3u16 {
        let mut f = flow_with(
            CloseCause::Normal,
            addrs(&format!("10.0.0.1:{}", 41_000 + port), "10.0.0.2:443"),
        );
        f.lifecycle.workload = in_pod("app", 11);
        top.flow_end(&f, true);
        live.push(f.addrs);
    }
    let mut accepted = flow_with(CloseCause::Normal, addrs("10.0.0.1:8080", "10.0.0.9:50000"));
    accepted.lifecycle.path[0].state = crate::model::tcp::TcpState::SynRecv;
    accepted.lifecycle.workload = in_pod("app", 11);
    top.flow_end(&accepted, true);
    live.push(accepted.addrs);
    let tw = |top: &TopModel| {
        top.rows(GroupKind::Workload, 104 * S, std::iter::empty())
            .iter()
            .find(|r| r.label.as_deref() == Some("shop/cart-0"))
            .map(|r| r.time_wait)
    };
    assert_eq!(tw(&top), Some(3), "the connecting side's");
    top.forget_ended_time_waits(live[1..].iter());
    assert_eq!(tw(&top), Some(2), "one ended");
}

/// A refused connect() is a reset (RST), not a lost packet (DROP): its SYN's NO_SOCKET was
/// answered. A firewall's drop is loss.
#[test]
fn refused_connects_are_resets_not_drops() {
    let mut top = TopModel::started_at(0);
    let dst = addrs("127.0.0.1:40000", "127.0.0.1:9");
    for _ in 0..30 {
        let mut f = flow_with(CloseCause::Refused, dst);
        f.drops.add("NO_SOCKET", 1);
        top.flow_end(&f, false);
    }
    let mut filtered = flow_with(CloseCause::SynTimeout, dst);
    filtered.drops.add("NETFILTER_DROP", 3);
    top.flow_end(&filtered, false);
    let rows = top.rows(GroupKind::Destination, 101 * S, std::iter::empty());
    let row = rows
        .iter()
        .find(|r| r.endpoint == dst.remote)
        .expect("the row");
    assert_eq!((row.resets, row.drops), (30, 3), "{row:?}");
}

#[test]
fn the_header_names_the_fullest_conntrack_table() {
    use crate::host::{conntrack::ConntrackTable, netns::Namespace};
    let mut namespaces = Namespaces::default();
    assert_eq!(
        super::fullest_conntrack(&namespaces),
        None,
        "no table, no words"
    );
    for (inode, entries, name) in [(1, 10, "a"), (2, 95, "r"), (3, 0, "c")] {
        let mut ns = Namespace::unknown(inode);
        ns.name = Some(name.into());
        ns.conntrack = Some(ConntrackTable {
            entries,
            max: 100,
            ..ConntrackTable::default()
        });
        namespaces.insert(ns);
    }
    assert_eq!(
        super::fullest_conntrack(&namespaces).as_deref(),
        Some("conntrack 95% (95/100) netns 2 \"r\"")
    );
}
