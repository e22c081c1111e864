use super::*;
use crate::{
    decode::{decode, tests as raw},
    model::events::Event,
};
use tcptrace_common::tcp_state as ts;

fn client_flow_closing_first() -> Box<FinishedFlow> {
    let flow = raw::client_flow(&[ts::ESTABLISHED, ts::FIN_WAIT1, ts::FIN_WAIT2, ts::CLOSE]);
    match decode(&raw::bytes_of(&raw::flow_end(flow, 5_000_000))) {
        Ok(Event::FlowEnd(f)) => f,
        other => panic!("fixture: {other:?}"),
    }
}

const S: u64 = 1_000_000_000;
/// The namespace the fixtures' TIME_WAITs live in.
const NETNS: u32 = 4026531840;

#[test]
fn a_flow_is_held_until_its_time_wait_expires() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(tw.start(7, flow.addrs, NETNS, 4_999_000).is_none());
    assert!(
        tw.flow(flow.clone(), true).is_none(),
        "held until TIME_WAIT ends"
    );
    assert!(
        tw.start(7, flow.addrs, NETNS, 30 * S).is_none(),
        "re-armed: the start stands"
    );
    tw.cancel(7, 61 * S, false);
    let Some(Finished::Flow(done)) = tw.expire(7, 61 * S + 3_000) else {
        panic!("the flow comes back when the timer fires");
    };
    let t = done.time_wait.expect("time_wait filled");
    assert_eq!(t.end, TimeWaitEnd::Expired);
    assert!((60 * S..62 * S).contains(&t.held_ns), "{t:?}");
    let s = tw.summary();
    assert_eq!((s.entered, s.client_side, s.server_side), (1, 1, 0));
    assert_eq!(s.ends, vec![(TimeWaitEnd::Expired, 1)]);
    assert!(tw.settle(100 * S).is_empty());
}

#[test]
fn early_ends_are_reused_in_connect_else_killed() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(tw.start(1, flow.addrs, NETNS, 0).is_none());
    assert!(tw.flow(flow.clone(), true).is_none());
    tw.cancel(1, 2 * S, true);
    assert!(
        tw.settle(2 * S + 1_000).is_empty(),
        "an expiry may still follow"
    );
    let ended = tw.settle(3 * S);
    let [Finished::Flow(done)] = ended.as_slice() else {
        panic!("one flow")
    };
    let t = done.time_wait.as_ref().expect("time_wait");
    assert_eq!((t.end, t.held_ns), (TimeWaitEnd::Reused, 2 * S));

    let mut other = flow.addrs;
    other.local.port += 1;
    assert!(tw.start(2, other, NETNS, 0).is_none());
    tw.cancel(2, S, false);
    let ended = tw.settle(2 * S);
    let [Finished::Orphan(t)] = ended.as_slice() else {
        panic!("no flow joined: one orphan")
    };
    assert_eq!(t.end, TimeWaitEnd::Killed);
}

#[test]
fn flows_that_do_not_enter_time_wait_pass_through() {
    let mut tw = TimeWaitTracker::new();
    let passive = match decode(&raw::bytes_of(&raw::flow_end(
        raw::client_flow(&[ts::ESTABLISHED, ts::CLOSE_WAIT, ts::LAST_ACK, ts::CLOSE]),
        9,
    ))) {
        Ok(Event::FlowEnd(f)) => f,
        other => panic!("fixture: {other:?}"),
    };
    assert!(tw.flow(passive, true).is_some());
    // A closer whose timewait socket never started (tcp_max_tw_buckets full).
    assert!(tw.flow(client_flow_closing_first(), true).is_some());
}

#[test]
fn gauges_count_per_destination_and_rate() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    for i in 0..20u64 {
        let mut addrs = flow.addrs;
        addrs.local.port = 40_000 + i as u16;
        assert!(tw.start(100 + i, addrs, NETNS, i * 100_000_000).is_none());
    }
    let g = tw.gauges(2 * S);
    assert_eq!(g.total, 20);
    let (dest, (count, rate)) = g.by_destination[0];
    assert_eq!(dest, flow.addrs.remote);
    assert_eq!(count, 20);
    assert!((rate - 2.0).abs() < 1e-9, "20 in a 10 s window: {rate}");
    assert_eq!(g.by_local, vec![(flow.addrs.local.addr, 20)]);
    let in_progress = tw.drain_in_progress(3 * S);
    assert_eq!(in_progress.len(), 20);
}

#[test]
fn a_timer_address_reused_before_its_cancel_settled_ends_the_old_time_wait() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(tw.start(9, flow.addrs, NETNS, 0).is_none());
    tw.cancel(9, S, false);
    let mut next = flow.addrs;
    next.local.port += 1;
    let Some(Finished::Orphan(old)) = tw.start(9, next, NETNS, S + 1_000) else {
        panic!("the cancelled TIME_WAIT ends when its address is reused")
    };
    assert_eq!((old.end, old.held_ns), (TimeWaitEnd::Killed, S));
    assert!(
        tw.settle(10 * S).is_empty(),
        "its cancel is not settled twice"
    );
    assert_eq!(tw.gauges(2 * S).total, 1, "the new one is in TIME_WAIT");
}

#[test]
fn preexisting_time_waits_count_until_they_expire() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    let mut other = flow.addrs;
    other.local.port += 1;
    tw.preexisting(NETNS, [(other, 30 * S), (flow.addrs, 10 * S)]);
    assert!(tw.start(5, flow.addrs, NETNS, S).is_none());
    tw.expire_preexisting(5 * S);
    let g = tw.gauges(5 * S);
    assert_eq!((g.total, g.by_destination[0].1 .0), (3, 3));
    tw.expire_preexisting(20 * S);
    assert_eq!(tw.gauges(20 * S).total, 2, "one pre-existing ran out");
    tw.expire_preexisting(40 * S);
    let g = tw.gauges(40 * S);
    assert_eq!((g.total, g.by_local[0].1), (1, 1));
    assert_eq!(tw.preexisting_count(), 2, "counted as there at start");
}

#[test]
fn a_burst_of_server_side_time_waits_gives_its_memory_back() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    // A server's burst: 50,000 TIME_WAITs, each keyed by a client's ephemeral port.
    for i in 0..50_000u64 {
        let mut addrs = flow.addrs;
        addrs.remote.port = 1 + (i % 60_000) as u16;
        addrs.remote.addr = std::net::IpAddr::from([10, 0, (i / 60_000) as u8, 1]);
        assert!(tw.start(1_000 + i, addrs, NETNS, i * 10_000).is_none());
    }
    let grown = (tw.entries.capacity(), tw.active.capacity());
    assert!(grown.0 >= 50_000 && grown.1 >= 50_000, "{grown:?}");
    assert!(!tw.shrink_sparse_maps(), "full maps are left alone");
    // They run out; their entry times leave the rate window.
    for i in 0..50_000u64 {
        assert!(tw.expire(1_000 + i, 61 * S).is_some());
    }
    tw.prune_entry_rates(80 * S);
    assert!(tw.shrink_sparse_maps(), "the emptied maps are shrunk");
    assert!(tw.entries.capacity() < 4_096 && tw.active.capacity() < 4_096);
    assert!(!tw.shrink_sparse_maps(), "once");
}

#[test]
fn a_timer_re_armed_by_mod_timer_is_the_same_time_wait() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(tw.start(7, flow.addrs, NETNS, S).is_none());
    // mod_timer: a cancel, then the start, microseconds apart.
    tw.cancel(7, S + 1_000, false);
    assert!(tw.rearms(7, &flow.addrs, S + 3_000));
    assert!(tw.start(7, flow.addrs, NETNS, S + 3_000).is_none());
    assert!(tw.settle(S + S).is_empty(), "not ended early");
    let Some(Finished::Orphan(t)) = tw.expire(7, 61 * S) else {
        panic!("the TIME_WAIT runs out once")
    };
    assert_eq!(
        (t.end, t.held_ns),
        (TimeWaitEnd::Expired, 60 * S),
        "from the first start"
    );
    let summary = tw.summary();
    assert_eq!(
        (summary.entered, summary.ends.clone()),
        (1, vec![(TimeWaitEnd::Expired, 1)])
    );
    // A start at the same address for another 4-tuple is a new TIME_WAIT.
    assert!(tw.start(8, flow.addrs, NETNS, 70 * S).is_none());
    tw.cancel(8, 71 * S, false);
    let mut other = flow.addrs;
    other.local.port += 1;
    assert!(!tw.rearms(8, &other, 71 * S + 1_000));
}

#[test]
fn a_second_flow_for_a_time_wait_that_holds_one_is_printed_not_lost() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(tw.start(7, flow.addrs, NETNS, S).is_none());
    assert!(
        tw.flow(flow.clone(), true).is_none(),
        "held for its TIME_WAIT"
    );
    // The same timer address and 4-tuple start again at once (a cancel inside connect() that
    // was not recognised as such), and a second flow closes into it.
    tw.cancel(7, S + 1_000, false);
    assert!(tw.start(7, flow.addrs, NETNS, S + 2_000).is_none());
    let mut second = flow.clone();
    second.ts_ns += 1;
    assert_eq!(
        tw.flow(second.clone(), true),
        Some(second),
        "printed at once"
    );
    let Some(Finished::Flow(first)) = tw.expire(7, 61 * S) else {
        panic!("the first flow ends with the TIME_WAIT")
    };
    assert_eq!(first.ts_ns, flow.ts_ns);
}

/// A server's flow to `client_port` that closed first (its TIME_WAIT is the server's).
fn server_flow_closing_first(client_port: u16) -> Box<FinishedFlow> {
    let mut flow = tcptrace_common::FlowState::start(ts::LISTEN, ts::SYN_RECV, 1_000_000);
    for (i, &state) in [ts::ESTABLISHED, ts::FIN_WAIT1, ts::FIN_WAIT2, ts::CLOSE]
        .iter()
        .enumerate()
    {
        flow.enter(state, 1_000_000 * (i as u64 + 2));
    }
    let mut end = raw::flow_end(flow, 5_000_000);
    end.tuple = raw::v4_tuple(443, client_port);
    match decode(&raw::bytes_of(&end)) {
        Ok(Event::FlowEnd(f)) => f,
        other => panic!("fixture: {other:?}"),
    }
}

#[test]
fn the_accepting_side_s_time_waits_are_not_destinations() {
    let mut tw = TimeWaitTracker::new();
    // A server closing first: one TIME_WAIT per client port, which must not each become a
    // destination (entry rates, the summary's counts): that grew without bound.
    for port in 1..=1_000u16 {
        let flow = server_flow_closing_first(30_000 + port);
        assert!(tw.start(u64::from(port), flow.addrs, NETNS, S).is_none());
        assert!(tw.flow(flow, false).is_none(), "counted, not held");
    }
    assert!(tw.entries.is_empty(), "no entry rate per client port");
    assert!(tw.by_destination.is_empty(), "no count per client port");
    let s = tw.summary();
    assert_eq!((s.entered, s.server_side, s.client_side), (1_000, 1_000, 0));
    assert!(s.top_destinations.is_empty(), "{:?}", s.top_destinations);
    let gauges = tw.gauges(S);
    assert_eq!(gauges.total, 1_000, "still in TIME_WAIT");
    // Live, they are the service's: one row for 443, none per client port.
    assert!(
        gauges.by_destination.is_empty(),
        "{:?}",
        gauges.by_destination
    );
    assert_eq!(gauges.by_service.len(), 1, "{:?}", gauges.by_service);
    let (service, (count, rate)) = gauges.by_service[0];
    assert_eq!((service.port, count), (443, 1_000));
    assert!(rate > 0.0, "entry rate per service");
    let sides: Vec<Option<bool>> = tw.live_addrs().map(|(_, side)| side).collect();
    assert!(
        sides.iter().all(|&s| s == Some(true)),
        "accepting side known"
    );

    // The connecting side's TIME_WAIT is a destination's.
    let client = client_flow_closing_first();
    assert!(tw.start(5_000, client.addrs, NETNS, S).is_none());
    assert!(tw.flow(client.clone(), false).is_none());
    let s = tw.summary();
    assert_eq!(s.top_destinations, vec![(client.addrs.remote, 1)]);
    assert_eq!((s.entered, s.client_side), (1_001, 1));
    assert_eq!(tw.entry_rates(S).len(), 1);
    assert_eq!(
        tw.gauges(S).by_destination,
        vec![(client.addrs.remote, (1, 0.1))]
    );
    // Their end leaves the service's row.
    for port in 1..=1_000u16 {
        assert!(tw.expire(u64::from(port), 2 * S).is_some());
    }
    assert!(tw
        .gauges(2 * S)
        .by_service
        .iter()
        .all(|(_, (n, _))| *n == 0));
}

/// A flow sent in brief (`tcptrace metrics`) joins its TIME_WAIT as the whole flow does.
fn in_brief(flow: &FinishedFlow) -> TimeWaitFlow {
    TimeWaitFlow {
        ts_ns: flow.ts_ns,
        skaddr: flow.skaddr,
        addrs: flow.addrs,
        accepted: flow.lifecycle.accepted(),
    }
}

#[test]
fn flows_in_brief_count_their_side_as_whole_flows_do() {
    let (mut whole, mut brief) = (TimeWaitTracker::new(), TimeWaitTracker::new());
    let mut flows: Vec<Box<FinishedFlow>> = (1..=20u16).map(server_flow_closing_first).collect();
    flows.push(client_flow_closing_first());
    for (timer, flow) in flows.iter().enumerate() {
        let timer = timer as u64 + 1;
        whole.start(timer, flow.addrs, NETNS, S);
        brief.start(timer, flow.addrs, NETNS, S);
        assert!(whole.flow(flow.clone(), false).is_none(), "joined");
        brief.brief_flow(&in_brief(flow));
    }
    // A flow without a timewait socket (tcp_max_tw_buckets overflow) joins nothing.
    let orphan = server_flow_closing_first(9_999);
    assert!(whole.flow(orphan.clone(), false).is_some());
    brief.brief_flow(&in_brief(&orphan));
    let (w, b) = (whole.summary(), brief.summary());
    assert_eq!((b.entered, b.server_side, b.client_side), (21, 20, 1));
    assert_eq!(
        (w.entered, w.server_side, w.client_side),
        (b.entered, b.server_side, b.client_side)
    );
    assert_eq!(w.top_destinations, b.top_destinations);
    assert_eq!(whole.gauges(S).total, brief.gauges(S).total);
    assert_eq!(whole.entry_rates(S), brief.entry_rates(S));
}

#[test]
fn rates_are_kept_per_namespace_and_namespaces_in_use_follow_the_live_sockets() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    // The same 4-tuple space in two namespaces: two spaces, each with its own ports.
    assert!(tw.start(1, flow.addrs, NETNS, S).is_none());
    assert!(tw.start(2, flow.addrs, 7, S).is_none());
    let mut rates = tw.entry_rates(S);
    rates.sort_by_key(|(k, _)| k.0);
    let namespaces: Vec<u32> = rates.iter().map(|(k, _)| k.0).collect();
    assert_eq!(namespaces, vec![7, NETNS], "{rates:?}");
    let mut in_use: Vec<u32> = tw.namespaces_in_use().collect();
    in_use.sort_unstable();
    assert_eq!(in_use, vec![7, NETNS]);
    assert!(tw.expire(2, 61 * S).is_some());
    assert_eq!(tw.namespaces_in_use().collect::<Vec<_>>(), vec![NETNS]);
}
