use serde_json::Value;

use super::*;
use crate::{output::fixtures, state::aggregate::Aggregator};
use tcptrace_common::{tcp_state as ts, TRANSITION_SLOTS};

fn lines(p: JsonPrinter<Vec<u8>>) -> Vec<Value> {
    String::from_utf8(p.into_inner())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

#[test]
fn evictions_are_a_record() {
    let mut p = JsonPrinter::new(Vec::new(), Clock::fixed(1_000));
    p.evicted(5_000, 3, 10).expect("write");
    let v = lines(p);
    assert_eq!(v[0]["type"], "evicted");
    assert_eq!(v[0]["ts_unix_ns"], 6_000);
    assert_eq!(
        (v[0]["new"].as_u64(), v[0]["total"].as_u64()),
        (Some(3), Some(10))
    );
}

/// A printer that wrote a transition, a flow and a retransmit (the fixtures').
fn three_event_lines() -> JsonPrinter<Vec<u8>> {
    let mut p = JsonPrinter::new(Vec::new(), Clock::fixed(1_000));
    p.transition(&fixtures::transition(ts::SYN_SENT, ts::ESTABLISHED, None))
        .expect("write");
    p.flow(&fixtures::client_flow()).expect("write");
    p.retransmit(&fixtures::retransmit()).expect("write");
    p
}

#[test]
fn records_have_stable_field_names() {
    let v = lines(three_event_lines());
    assert_eq!(v[0]["type"], "transition");
    assert_eq!(v[0]["ts_unix_ns"], 6_000);
    assert_eq!(v[0]["pid"], 4242);
    assert_eq!(v[0]["comm"], "curl");
    assert_eq!(v[0]["family"], "ipv4");
    assert_eq!(v[0]["laddr"], "127.0.0.1");
    assert_eq!(v[0]["lport"], 51234);
    assert_eq!(v[0]["rport"], 443);
    assert_eq!(v[0]["old"], "SYN_SENT");
    assert_eq!(v[0]["new"], "ESTABLISHED");
    assert!(v[0]["old_held_ns"].is_null(), "unknown, not invented");
    assert_eq!(v[1]["type"], "flow");
    assert_eq!(v[1]["close"], "active");
    assert_eq!(v[1]["cause"], "normal");
    assert_eq!(v[1]["err"], 0);
    assert!(v[1]["reset_reason"].is_null());
    assert!(v[1]["time_wait"].is_null(), "none recorded for this flow");
    assert_eq!(v[1]["life_ns"], 4_000_000);
    assert_eq!(v[1]["path"][0]["state"], "SYN_SENT");
    assert_eq!(v[1]["path"][0]["held_ns"], 1_000_000);
    assert_eq!(v[1]["path"][4]["state"], "CLOSE");
    assert!(v[1]["path"][4]["held_ns"].is_null());
    assert_eq!(v[2]["type"], "retransmit");
    assert_eq!(v[2]["state"], "FIN_WAIT1");
    assert_eq!(v[2]["err"], 0);
    assert!(v[2]["pid"].is_null());
}

#[test]
fn summary_and_lost_are_objects() {
    let mut agg = Aggregator::new();
    agg.finished_flow(&fixtures::client_flow());
    let mut kernel = KernelCounters {
        transitions: vec![0; TRANSITION_SLOTS as usize],
        ..Default::default()
    };
    kernel.stats[tcptrace_common::stat::LOST_RETRANSMIT as usize] = 3;
    let mut p = JsonPrinter::new(Vec::new(), Clock::fixed(0));
    p.lost(10, 3, &kernel).expect("write");
    p.summary(&agg.finish(&kernel, 5)).expect("write");
    let v = lines(p);
    assert_eq!(v[0]["type"], "lost");
    assert_eq!(v[0]["lost"]["total"], 3);
    assert_eq!(v[1]["type"], "summary");
    assert_eq!(v[1]["flows"]["finished"], 1);
    assert_eq!(v[1]["close"]["active"], 1);
    assert_eq!(v[1]["causes"]["normal"], 1);
    assert_eq!(v[1]["lost"]["retransmits"], 3);
    let held = v[1]["held"].as_array().expect("held is a list");
    assert!(held
        .iter()
        .any(|h| h["state"] == "ESTABLISHED" && h["p50_ns"].as_u64() > Some(0)));
}

/// The bytes of the per-event lines, field order included (a consumer may rely on it).
#[test]
fn per_event_lines_keep_their_bytes() {
    let text = String::from_utf8(three_event_lines().into_inner()).expect("utf-8");
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got, EXPECTED_LINES);
}

/// The parts the line above leaves empty: a TIME_WAIT, a reset reason, a task name to escape,
/// IPv6, a start not seen, a retransmit's error.
#[test]
fn per_event_lines_with_every_optional_part() {
    use crate::model::tcp::{Endpoint, Process, TimeWait, TimeWaitEnd};
    let mut flow = fixtures::client_flow();
    flow.lifecycle.owner = Some(Process {
        pid: 7,
        comm: "a\"b\\c\u{1}".to_string(),
    });
    flow.addrs.local = Endpoint::new("fe80::1".parse().expect("v6"), 80);
    flow.addrs.remote = Endpoint::new("::1".parse().expect("v6"), 443);
    flow.lifecycle.start_seen = false;
    flow.lifecycle.start_ns = None;
    flow.evidence.reset_sent = Some("TCP_KEEPALIVE_TIMEOUT".to_string());
    flow.time_wait = Some(TimeWait {
        addrs: flow.addrs,
        start_ns: 5_000_000,
        held_ns: 60_000_000_000,
        end: TimeWaitEnd::Reused,
    });
    flow.vitals = Some(crate::model::vitals::FlowVitals {
        bytes_acked: 300_001,
        bytes_received: 3,
        segs_in: 40,
        segs_out: 220,
        srtt_ns: Some(91_000_000),
        rttvar_ns: Some(1_000_000),
        min_rtt_ns: Some(80_000_000),
        total_retrans: 2,
    });
    flow.drops.add("NETFILTER_DROP", 3);
    flow.drops.add("TCP_CLOSE", 1);
    let mut rtx = fixtures::retransmit();
    rtx.err = Some(-110);
    let drop = crate::model::vitals::PacketDrop {
        ts_ns: 7_000,
        skaddr: 0,
        addrs: flow.addrs,
        reason: "NETFILTER_DROP".into(),
        netns: 4026531840,
        tcp_flags: 2,
        conntrack: None,
    };
    let mut p = JsonPrinter::new(Vec::new(), Clock::fixed(1_000));
    p.flow(&flow).expect("write");
    p.retransmit(&rtx).expect("write");
    p.packet_drop(&drop).expect("write");
    let text = String::from_utf8(p.into_inner()).expect("utf-8");
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(
        got[0],
        r#"{"type":"flow","ts_unix_ns":5001000,"pid":7,"comm":"a\"b\\c\u0001","family":"ipv6","laddr":"fe80::1","lport":80,"raddr":"::1","rport":443,"path":[{"state":"SYN_SENT","held_ns":1000000,"rtx":0},{"state":"ESTABLISHED","held_ns":1000000,"rtx":0},{"state":"FIN_WAIT1","held_ns":1000000,"rtx":0},{"state":"FIN_WAIT2","held_ns":1000000,"rtx":0},{"state":"CLOSE","held_ns":null,"rtx":0}],"life_ns":null,"start_seen":false,"truncated":false,"close":"active","cause":"normal","err":0,"reset_received":false,"reset_reason":"TCP_KEEPALIVE_TIMEOUT","probes":0,"rtx":0,"bytes_acked":300001,"bytes_received":3,"segs_in":40,"segs_out":220,"srtt_ns":91000000,"rttvar_ns":1000000,"min_rtt_ns":80000000,"total_retrans":2,"drops":{"NETFILTER_DROP":3,"TCP_CLOSE":1},"nat":null,"time_wait":{"start_unix_ns":5001000,"held_ns":60000000000,"end":"reused"},"time_wait_follows":false,"skaddr":"0xffff888000001000"}"#
    );
    let parsed: Value = serde_json::from_str(got[0]).expect("the line parses");
    assert_eq!(parsed["comm"], "a\"b\\c\u{1}");
    assert!(
        got[1].contains(r#""state":"FIN_WAIT1","err":-110,"untracked":false"#),
        "{}",
        got[1]
    );
    assert_eq!(
        got[2],
        r#"{"type":"drop","ts_unix_ns":8000,"family":"ipv6","saddr":"fe80::1","sport":80,"daddr":"::1","dport":443,"reason":"NETFILTER_DROP","tcp_flags":"SYN","netns":4026531840,"skaddr":"0x0","conntrack":null}"#
    );
}

const EXPECTED_LINES: [&str; 3] = [
    r#"{"type":"transition","ts_unix_ns":6000,"pid":4242,"comm":"curl","family":"ipv4","laddr":"127.0.0.1","lport":51234,"raddr":"127.0.0.1","rport":443,"old":"SYN_SENT","new":"ESTABLISHED","old_held_ns":null,"untracked":false,"skaddr":"0xffff888012345678"}"#,
    r#"{"type":"flow","ts_unix_ns":5001000,"pid":4242,"comm":"curl","family":"ipv4","laddr":"127.0.0.1","lport":51234,"raddr":"127.0.0.1","rport":443,"path":[{"state":"SYN_SENT","held_ns":1000000,"rtx":0},{"state":"ESTABLISHED","held_ns":1000000,"rtx":0},{"state":"FIN_WAIT1","held_ns":1000000,"rtx":0},{"state":"FIN_WAIT2","held_ns":1000000,"rtx":0},{"state":"CLOSE","held_ns":null,"rtx":0}],"life_ns":4000000,"start_seen":true,"truncated":false,"close":"active","cause":"normal","err":0,"reset_received":false,"reset_reason":null,"probes":0,"rtx":0,"bytes_acked":null,"bytes_received":null,"segs_in":null,"segs_out":null,"srtt_ns":null,"rttvar_ns":null,"min_rtt_ns":null,"total_retrans":null,"drops":{},"nat":null,"time_wait":null,"time_wait_follows":false,"skaddr":"0xffff888000001000"}"#,
    r#"{"type":"retransmit","ts_unix_ns":6000,"pid":null,"comm":null,"family":"ipv4","laddr":"127.0.0.1","lport":12345,"raddr":"127.0.0.1","rport":41690,"state":"FIN_WAIT1","err":0,"untracked":false,"synack":false,"skaddr":"0x1"}"#,
];
