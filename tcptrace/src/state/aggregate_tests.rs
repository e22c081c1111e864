use super::*;
use crate::{
    decode::{decode, tests as fixtures},
    model::events::Event,
};
use tcptrace_common::tcp_state as ts;
use tcptrace_common::TRANSITION_SLOTS;

fn finished(states: &[u8]) -> FinishedFlow {
    let raw = fixtures::flow_end(fixtures::client_flow(states), 99);
    match decode(&fixtures::bytes_of(&raw)).expect("decodes") {
        Event::FlowEnd(flow) => *flow,
        other => panic!("expected a flow, got {other:?}"),
    }
}

#[test]
fn counted_in_the_kernel_the_summary_reads_the_kernels_counts_only() {
    use tcptrace_common::{close_cause, close_side, duration_bucket, DURATION_BUCKETS};
    use ts::*;
    let mut agg = Aggregator::new();
    agg.count_in_kernel();
    // A flow record (one that entered TIME_WAIT) and an open flow add nothing twice.
    agg.finished_flow(&finished(&[ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE]));
    agg.count_open(1);
    let mut syn_sent = DurationHistogram {
        buckets: [0; DURATION_BUCKETS],
        sum_ns: 0,
        max_ns: 5_000_000,
    };
    // 90 connects of ~10 µs, 10 of ~5 ms.
    syn_sent.buckets[duration_bucket(10_000)] = 90;
    syn_sent.buckets[duration_bucket(5_000_000)] = 10;
    let mut histograms = vec![syn_sent; 16];
    for (i, h) in histograms.iter_mut().enumerate() {
        if i != usize::from(SYN_SENT) {
            h.buckets = [0; DURATION_BUCKETS];
        }
    }
    agg.kernel_durations(histograms);
    let mut kernel = KernelCounters {
        transitions: vec![0; TRANSITION_SLOTS as usize],
        closes: vec![0; close_cause::COUNT],
        sides: vec![0; close_side::COUNT],
        rtx_by_state: vec![0; 16],
        ..Default::default()
    };
    kernel.closes[usize::from(close_cause::NORMAL)] = 98;
    kernel.closes[usize::from(close_cause::REFUSED)] = 2;
    kernel.sides[usize::from(close_side::ACTIVE)] = 98;
    kernel.sides[usize::from(close_side::CONNECT_FAILED)] = 2;
    kernel.rtx_by_state[usize::from(FIN_WAIT1)] = 4;
    let summary = agg.finish(&kernel, 1_000);
    assert_eq!((summary.flows.finished, summary.flows.open), (100, 1));
    assert_eq!(
        summary.causes,
        vec![(CloseCause::Normal, 98), (CloseCause::Refused, 2)]
    );
    assert_eq!(
        summary.close,
        vec![(CloseSide::Active, 98), (CloseSide::ConnectFailed, 2)]
    );
    assert_eq!(summary.retransmits_by_state, vec![(TcpState::FinWait1, 4)]);
    assert_eq!(summary.held.len(), 1, "{:?}", summary.held);
    let d = &summary.held[0];
    assert_eq!(
        (d.state, d.count, d.max_ns),
        (TcpState::SynSent, 100, 5_000_000)
    );
    let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 / 8.0;
    assert!(near(d.p50_ns, 10_000), "{d:?}");
    assert!(near(d.p99_ns, 5_000_000), "{d:?}");
}

#[test]
fn summary_counts_flows_durations_and_close_sides() {
    use ts::*;
    let mut agg = Aggregator::new();
    agg.finished_flow(&finished(&[ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE]));
    agg.finished_flow(&finished(&[ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE]));
    agg.finished_flow(&finished(&[CLOSE]));
    // A flow that retransmitted while ESTABLISHED, then closed.
    let mut retransmitted = fixtures::client_flow(&[ESTABLISHED]);
    retransmitted.count_retransmit();
    for state in [FIN_WAIT1, FIN_WAIT2, CLOSE] {
        let now = retransmitted.entered_ns[retransmitted.last()] + 1_000_000;
        retransmitted.enter(state, now);
    }
    let retransmitted = fixtures::flow_end(retransmitted, 99);
    match decode(&fixtures::bytes_of(&retransmitted)).expect("decodes") {
        Event::FlowEnd(flow) => agg.finished_flow(&flow),
        other => panic!("expected a flow, got {other:?}"),
    }
    agg.count_open(1);

    let mut kernel = KernelCounters {
        transitions: vec![0; TRANSITION_SLOTS as usize],
        ..Default::default()
    };
    kernel.stats[stat::FLOWS_SEEN as usize] = 4;
    kernel.stats[stat::RETRANSMITS as usize] = 1;
    kernel.stats[stat::LOST_FLOW_END as usize] = 2;
    kernel.transitions[tcptrace_common::transition_slot(SYN_SENT, ESTABLISHED)] = 3;
    let summary = agg.finish(&kernel, 1_000);

    assert_eq!(
        (
            summary.flows.finished,
            summary.flows.open,
            summary.flows.seen
        ),
        (4, 1, 4)
    );
    assert_eq!(
        summary.close,
        vec![(CloseSide::Active, 3), (CloseSide::ConnectFailed, 1)]
    );
    let syn_sent = summary
        .held
        .iter()
        .find(|d| d.state == TcpState::SynSent)
        .expect("SYN_SENT durations");
    // Four finished flows each held SYN_SENT for 1 ms.
    assert_eq!(syn_sent.count, 4);
    assert!(
        // Histograms keep 2 significant digits: within 1%.
        (990_000..=1_010_000).contains(&syn_sent.p50_ns),
        "{syn_sent:?}"
    );
    assert!(syn_sent.max_ns >= syn_sent.p99_ns && syn_sent.p99_ns >= syn_sent.p50_ns);
    assert!(
        !summary.held.iter().any(|d| d.state == TcpState::Close),
        "CLOSE is final: it has no hold time"
    );
    assert_eq!(
        summary.retransmits_by_state,
        vec![(TcpState::Established, 1)]
    );
    assert_eq!(summary.lost(), 2);
    assert_eq!(
        summary
            .transitions
            .iter()
            .map(|t| (t.old, t.new, t.count))
            .collect::<Vec<_>>(),
        vec![(TcpState::SynSent, TcpState::Established, 3)]
    );
}

#[test]
fn counters_of_an_older_recording_read_the_missing_ones_as_zero() {
    let older = format!(
        r#"{{"stats":{:?},"transitions":[],"missed":0}}"#,
        vec![7u64; stat::COUNT as usize - 1]
    );
    let counters: KernelCounters = serde_json::from_str(&older).expect("an older recording reads");
    assert_eq!(counters.stat(0), 7);
    assert_eq!(
        counters.stat(stat::COUNT - 1),
        0,
        "a counter it did not have"
    );
    let newer = format!(
        r#"{{"stats":{:?},"transitions":[],"missed":0}}"#,
        vec![7u64; stat::COUNT as usize + 1]
    );
    let err = serde_json::from_str::<KernelCounters>(&newer).expect_err("from a newer tcptrace");
    assert!(err.to_string().contains("newer"), "{err}");
}
