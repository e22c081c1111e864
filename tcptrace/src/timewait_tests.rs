use super::*;
use crate::decode::{decode, tests as raw, Event};
use tcptrace_common::tcp_state as ts;

fn client_flow_closing_first() -> FinishedFlow {
    let flow = raw::client_flow(&[ts::ESTABLISHED, ts::FIN_WAIT1, ts::FIN_WAIT2, ts::CLOSE]);
    match decode(&raw::bytes_of(&raw::flow_end(flow, 5_000_000))) {
        Ok(Event::FlowEnd(f)) => f,
        other => panic!("fixture: {other:?}"),
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn a_flow_is_held_until_its_time_wait_expires() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    tw.start(7, flow.addrs, 4_999_000);
    assert!(tw.flow(flow.clone()).is_none(), "held until TIME_WAIT ends");
    tw.start(7, flow.addrs, 30 * S); // re-armed: the start stands
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
    tw.start(1, flow.addrs, 0);
    assert!(tw.flow(flow.clone()).is_none());
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
    tw.start(2, other, 0);
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
    assert!(tw.flow(passive).is_some());
    // A closer whose timewait socket never started (tcp_max_tw_buckets full).
    assert!(tw.flow(client_flow_closing_first()).is_some());
}

#[test]
fn gauges_count_per_destination_and_rate() {
    let mut tw = TimeWaitTracker::new();
    let flow = client_flow_closing_first();
    for i in 0..20u64 {
        let mut addrs = flow.addrs;
        addrs.local.port = 40_000 + i as u16;
        tw.start(100 + i, addrs, i * 100_000_000);
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
