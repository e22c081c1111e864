use super::*;
use tcptrace_common::tcp_state as ts;

#[test]
fn counters_and_histograms_follow_the_kernels_counts() {
    let mut m = Metrics::new(None);
    let mut k = KernelCounters {
        transitions: vec![0; tcptrace_common::TRANSITION_SLOTS as usize],
        closes: vec![0; close_cause::COUNT],
        rtx_by_state: vec![0; 16],
        ..Default::default()
    };
    k.transitions[tcptrace_common::transition_slot(ts::SYN_SENT, ts::ESTABLISHED)] = 3;
    k.stats[stat::FLOWS_SEEN as usize] = 4;
    k.closes[usize::from(close_cause::NORMAL)] = 1;
    k.missed = 2;
    m.kernel(&k);
    k.transitions[tcptrace_common::transition_slot(ts::SYN_SENT, ts::ESTABLISHED)] = 5;
    k.closes[usize::from(close_cause::NORMAL)] = 3;
    k.closes[usize::from(close_cause::KEEPALIVE_TIMEOUT)] = 2;
    k.rtx_by_state[usize::from(ts::FIN_WAIT1)] = 7;
    m.kernel(&k);
    let mut established = DurationHistogram {
        buckets: [0; tcptrace_common::DURATION_BUCKETS],
        sum_ns: 3_000_000,
        max_ns: 2_000_000,
    };
    established.buckets[tcptrace_common::duration_bucket(1_000_000)] = 1;
    established.buckets[tcptrace_common::duration_bucket(2_000_000)] = 1;
    let mut histograms = vec![established; 16];
    histograms[usize::from(ts::SYN_SENT)].buckets = [0; tcptrace_common::DURATION_BUCKETS];
    m.durations(&histograms);
    let text = m.render();
    for expected in [
        r#"tcptrace_transitions_total{from="SYN_SENT",to="ESTABLISHED"} 5"#,
        "tcptrace_flows_opened_total 4",
        r#"tcptrace_flows_closed_total{cause="normal"} 3"#,
        r#"tcptrace_flows_closed_total{cause="keepalive_timeout"} 2"#,
        "tcptrace_keepalive_timeouts_total 2",
        r#"tcptrace_flow_retransmits_total{state="FIN_WAIT1"} 7"#,
        r#"tcptrace_lost_events_total{reason="skipped_by_kernel"} 2"#,
        r#"tcptrace_state_duration_seconds_count{state="ESTABLISHED"} 2"#,
        r#"tcptrace_state_duration_seconds_sum{state="ESTABLISHED"} 0.003"#,
        r#"tcptrace_state_duration_seconds_bucket{le="0.002097152",state="ESTABLISHED"} 2"#,
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    assert!(
        text.contains(r#"tcptrace_state_duration_seconds_count{state="SYN_SENT"} 0"#),
        "every state's histogram from the start, empty where never held"
    );
    assert!(
        text.contains(r#"tcptrace_build_info{version=""#),
        "build_info: {text}"
    );
    assert!(
        text.contains(r#"tcptrace_flows_closed_total{cause="rto"} 0"#),
        "every cause from the start"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}
