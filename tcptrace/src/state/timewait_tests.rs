use super::*;
use crate::model::events::TimeWaitFlow;
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

/// A flow closes into TIME_WAIT as the kernel sends it: the flow, then the start (keyed by
/// the flow's socket), at the flow's close.
fn close_into(
    tw: &mut TimeWaitTracker,
    flow: &FinishedFlow,
    netns: u32,
    keep: bool,
) -> Vec<Finished> {
    assert!(holds_time_wait(flow), "fixture closes first: {flow:?}");
    if let Some(handed) = tw.closed_into(Box::new(flow.clone()), keep) {
        assert!(!keep, "handed on only where not kept: {handed:?}");
    }
    tw.start(flow.skaddr, flow.addrs, netns, flow.ts_ns)
}

fn expire(tw: &mut TimeWaitTracker, addrs: FlowAddrs, netns: u32, ts: u64) -> Option<Finished> {
    tw.expire(Some(addrs), netns, 0xdead, ts)
}

#[test]
fn a_flow_is_held_until_its_time_wait_expires() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(close_into(&mut tw, &flow, NETNS, true).is_empty());
    assert!(
        tw.settle(flow.ts_ns + 5 * S).is_empty(),
        "held until TIME_WAIT ends"
    );
    assert!(
        expire(&mut tw, flow.addrs, 7, 61 * S).is_none(),
        "another namespace's"
    );
    let Some(Finished::Flow(done)) = expire(&mut tw, flow.addrs, NETNS, flow.ts_ns + 60 * S) else {
        panic!("the flow comes back when the timer fires");
    };
    let t = done.time_wait.expect("time_wait filled");
    assert_eq!((t.end, t.held_ns), (TimeWaitEnd::Expired, 60 * S));
    let s = tw.summary();
    assert_eq!((s.entered, s.client_side, s.server_side), (1, 1, 0));
    assert_eq!(s.ends, vec![(TimeWaitEnd::Expired, 1)]);
    assert!(tw.settle(100 * S).is_empty());
}

#[test]
fn a_flow_of_the_same_4_tuple_ends_it_as_reused_when_it_began() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    close_into(&mut tw, &flow, NETNS, true);
    // The same 4-tuple again (tcp_tw_reuse), a flow that began 2 s after and closed later.
    let mut next = flow.clone();
    next.lifecycle.start_ns = Some(flow.ts_ns + 2 * S);
    next.ts_ns = flow.ts_ns + 3 * S;
    let Some(Finished::Flow(done)) = tw.reused_by(&next) else {
        panic!("the first flow ends with its TIME_WAIT");
    };
    let t = done.time_wait.expect("time_wait");
    assert_eq!((t.end, t.held_ns), (TimeWaitEnd::Reused, 2 * S));
    assert!(tw.reused_by(&next).is_none(), "once");
    // The new flow's own TIME_WAIT is not the one it reused.
    assert!(close_into(&mut tw, &next, NETNS, true).is_empty());
    assert!(tw.reused_by(&next).is_none(), "its own began after it did");
    // Where no flow says so (flows not sent), the 4-tuple's next start ends it.
    let ended = tw.start(1, next.addrs, NETNS, next.ts_ns + 5 * S);
    let [Finished::Flow(second)] = ended.as_slice() else {
        panic!("reused at the next start: {}", ended.len())
    };
    assert_eq!(
        second.time_wait.as_ref().map(|t| t.end),
        Some(TimeWaitEnd::Reused)
    );
}

#[test]
fn a_start_that_never_comes_hands_the_flow_on_without_one() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    assert!(tw.closed_into(flow.clone(), true).is_none());
    assert!(
        tw.settle(flow.ts_ns + S / 2).is_empty(),
        "its start may follow"
    );
    let ended = tw.settle(flow.ts_ns + 2 * S);
    let [Finished::Flow(f)] = ended.as_slice() else {
        panic!("handed on: {}", ended.len())
    };
    assert!(f.time_wait.is_none());
    assert_eq!(tw.summary().entered, 0);
}

#[test]
fn missing_from_a_read_is_killed_reused_or_never_made() {
    use std::collections::{HashMap, HashSet};
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    let at = |port: u16| {
        let mut f = flow.clone();
        f.addrs.local.port = port;
        f.skaddr = u64::from(port);
        f
    };
    let (kept, killed, reused, overflowed) = (at(1001), at(1002), at(1003), at(1004));
    for f in [&kept, &killed, &reused] {
        close_into(&mut tw, f, NETNS, true);
    }
    let read_ns = flow.ts_ns + S;
    tw.reconcile(
        NETNS,
        read_ns,
        &[kept.addrs, killed.addrs, reused.addrs]
            .into_iter()
            .collect(),
    );
    assert!(tw.apply_suspects(&HashMap::new()).is_empty(), "all there");
    // One more, never made: its namespace's overflow counter grew.
    close_into(&mut tw, &overflowed, NETNS, true);
    tw.overflowed(NETNS, 1);
    tw.reconcile(NETNS, read_ns + S, &[kept.addrs].into_iter().collect());
    let wanted = tw.suspects_to_look_up(10);
    assert_eq!(
        wanted[&NETNS].len(),
        2,
        "the two a read saw; not the one an overflow accounts for: {wanted:?}"
    );
    let held = HashMap::from([(NETNS, HashSet::from([reused.addrs]))]);
    let ended = tw.apply_suspects(&held);
    let end_of = |port: u16| {
        ended.iter().find_map(|f| match f {
            Finished::Flow(f) if f.addrs.local.port == port => {
                Some(f.time_wait.as_ref().map(|t| t.end))
            }
            _ => None,
        })
    };
    assert_eq!(end_of(1002), Some(Some(TimeWaitEnd::Killed)));
    assert_eq!(end_of(1003), Some(Some(TimeWaitEnd::Reused)));
    assert_eq!(
        end_of(1004),
        Some(Some(TimeWaitEnd::Overflow)),
        "no TIME_WAIT was made"
    );
    let s = tw.summary();
    assert_eq!((s.entered, s.client_side, s.overflows), (3, 3, 1));
    assert_eq!(s.overflow_destinations, vec![(flow.addrs.remote, 1)]);
    assert_eq!(tw.gauges(read_ns).total, 1);
    // Its namespace gone: the rest went with it.
    tw.namespace_gone(NETNS, read_ns + 3 * S);
    assert_eq!(tw.apply_suspects(&HashMap::new()).len(), 1);
    assert_eq!(tw.gauges(read_ns).total, 0);
}

#[test]
fn flows_that_do_not_enter_time_wait_pass_through() {
    let passive = match decode(&raw::bytes_of(&raw::flow_end(
        raw::client_flow(&[ts::ESTABLISHED, ts::CLOSE_WAIT, ts::LAST_ACK, ts::CLOSE]),
        9,
    ))) {
        Ok(Event::FlowEnd(f)) => f,
        other => panic!("fixture: {other:?}"),
    };
    assert!(!holds_time_wait(&passive));
    // A reset in FIN_WAIT2 closes without a timewait socket.
    let mut reset = client_flow_closing_first();
    reset.evidence.reset_received = true;
    assert!(!holds_time_wait(&reset));
}

#[test]
fn gauges_count_per_destination_and_rate() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    for i in 0..20u64 {
        let mut addrs = flow.addrs;
        addrs.local.port = 40_000 + i as u16;
        assert!(tw.start(100 + i, addrs, NETNS, i * 100_000_000).is_empty());
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

/// Recordings before layout 7: the timer hooks' start (before the flow), cancel and expiry.
#[test]
fn recordings_of_the_timer_hooks_still_read() {
    let mut tw = TimeWaitTracker::new();
    tw.keyed_by_timer();
    let flow = client_flow_closing_first();
    assert!(tw.start(7, flow.addrs, NETNS, 4_999_000).is_empty());
    assert!(tw.closed_into(flow.clone(), true).is_none(), "joined: held");
    // mod_timer: a cancel, then the start, microseconds apart: the same TIME_WAIT.
    tw.cancel(7, S + 1_000, false);
    assert!(!tw.is_new(7, &flow.addrs, S + 3_000));
    assert!(tw.start(7, flow.addrs, NETNS, S + 3_000).is_empty());
    assert!(tw.settle(2 * S).is_empty(), "not ended early");
    tw.cancel(7, 61 * S, false);
    let Some(Finished::Flow(done)) = tw.expire(None, 0, 7, 61 * S + 3_000) else {
        panic!("the flow comes back when the timer fires");
    };
    assert_eq!(done.time_wait.map(|t| t.end), Some(TimeWaitEnd::Expired));
    // A cancel inside connect() not followed by an expiry: reused; otherwise killed.
    let mut other = flow.addrs;
    other.local.port += 1;
    assert!(tw.start(8, other, NETNS, 70 * S).is_empty());
    tw.cancel(8, 72 * S, true);
    assert!(
        tw.settle(72 * S + 1_000).is_empty(),
        "an expiry may still follow"
    );
    let ended = tw.settle(73 * S);
    let [Finished::Orphan(t)] = ended.as_slice() else {
        panic!("no flow joined: one orphan")
    };
    assert_eq!((t.end, t.held_ns), (TimeWaitEnd::Reused, 2 * S));
}

#[test]
fn preexisting_time_waits_count_until_they_expire() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    let mut other = flow.addrs;
    other.local.port += 1;
    tw.preexisting(NETNS, [(other, 30 * S), (flow.addrs, 10 * S)]);
    assert!(tw.start(5, flow.addrs, NETNS, S).is_empty());
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
    let addrs_of = |i: u64| {
        let mut addrs = flow.addrs;
        addrs.remote.port = 1 + (i % 60_000) as u16;
        addrs.remote.addr = std::net::IpAddr::from([10, 0, (i / 60_000) as u8, 1]);
        addrs
    };
    for i in 0..50_000u64 {
        assert!(tw
            .start(1_000 + i, addrs_of(i), NETNS, i * 10_000)
            .is_empty());
    }
    let grown = (tw.entries.capacity(), tw.active.capacity());
    assert!(grown.0 >= 50_000 && grown.1 >= 50_000, "{grown:?}");
    assert!(!tw.shrink_sparse_maps(), "full maps are left alone");
    // They run out; their entry times leave the rate window.
    for i in 0..50_000u64 {
        assert!(expire(&mut tw, addrs_of(i), NETNS, 61 * S).is_some());
    }
    tw.prune_entry_rates(80 * S);
    assert!(tw.shrink_sparse_maps(), "the emptied maps are shrunk");
    assert!(tw.entries.capacity() < 4_096 && tw.active.capacity() < 4_096);
    assert!(tw.elsewhere.is_empty());
    assert!(!tw.shrink_sparse_maps(), "once");
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
    let mut servers = Vec::new();
    for port in 1..=1_000u16 {
        let flow = server_flow_closing_first(30_000 + port);
        assert!(
            close_into(&mut tw, &flow, NETNS, false).is_empty(),
            "counted, not held"
        );
        servers.push(flow.addrs);
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
    let mut client = client_flow_closing_first();
    client.ts_ns = S;
    close_into(&mut tw, &client, NETNS, false);
    let s = tw.summary();
    assert_eq!(s.top_destinations, vec![(client.addrs.remote, 1)]);
    assert_eq!((s.entered, s.client_side), (1_001, 1));
    assert_eq!(tw.entry_rates(S).len(), 1);
    assert_eq!(
        tw.gauges(S).by_destination,
        vec![(client.addrs.remote, (1, 0.1))]
    );
    // Their end leaves the service's row.
    for addrs in servers {
        assert!(expire(&mut tw, addrs, NETNS, 2 * S).is_some());
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
    for flow in &flows {
        close_into(&mut whole, flow, NETNS, false);
        brief.brief_flow(&in_brief(flow));
        brief.start(flow.skaddr, flow.addrs, NETNS, flow.ts_ns);
    }
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
    assert!(tw.start(1, flow.addrs, NETNS, S).is_empty());
    assert!(tw.start(2, flow.addrs, 7, S).is_empty());
    let mut rates = tw.entry_rates(S);
    rates.sort_by_key(|(k, _)| k.0);
    let namespaces: Vec<u32> = rates.iter().map(|(k, _)| k.0).collect();
    assert_eq!(namespaces, vec![7, NETNS], "{rates:?}");
    let mut in_use: Vec<u32> = tw.namespaces_in_use().collect();
    in_use.sort_unstable();
    assert_eq!(in_use, vec![7, NETNS]);
    assert!(expire(&mut tw, flow.addrs, 7, 61 * S).is_some());
    assert_eq!(tw.namespaces_in_use().collect::<Vec<_>>(), vec![NETNS]);
}
