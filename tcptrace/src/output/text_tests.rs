use super::*;
use crate::{
    model::counters::KernelCounters,
    model::tcp::{Endpoint, TcpState},
    output::fixtures,
    state::aggregate::Aggregator,
};
use tcptrace_common::{tcp_state as ts, TRANSITION_SLOTS};

fn printer() -> TextPrinter<Vec<u8>> {
    // ktime 0 = 16:52:03.000000 UTC
    TextPrinter::new(Vec::new(), Clock::fixed(1_795_279_923_000_000_000), false)
}

fn text(p: TextPrinter<Vec<u8>>) -> String {
    String::from_utf8(p.into_inner()).expect("utf-8 output")
}

#[test]
fn transitions_print_under_a_header_in_aligned_columns() {
    let mut p = printer();
    p.transition(&fixtures::transition(
        ts::SYN_SENT,
        ts::ESTABLISHED,
        Some(1_200_000),
    ))
    .expect("write");
    p.transition(&fixtures::transition(ts::CLOSE, ts::SYN_SENT, None))
        .expect("write");
    let out = text(p);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("TIME"), "{out}");
    assert!(lines[1].contains("16:52:03.000005"), "{out}");
    assert!(lines[1].contains("curl"), "{out}");
    assert!(lines[1].contains("127.0.0.1:51234"), "{out}");
    assert!(lines[1].contains("SYN_SENT -> ESTABLISHED"), "{out}");
    assert!(lines[1].trim_end().ends_with("1.2ms"), "{out}");
    assert!(
        lines[2].trim_end().ends_with('?'),
        "unknown duration: {out}"
    );
    // Every column starts at the same offset on every line.
    let arrow: Vec<usize> = lines[1..]
        .iter()
        .map(|l| l.find("->").expect("arrow"))
        .collect();
    assert_eq!(arrow[0], arrow[1], "{out}");
    assert_eq!(lines[0].find("NEW"), Some(arrow[0] + 3), "{out}");
}

#[test]
fn a_wider_address_widens_the_column_and_repeats_the_header() {
    let mut p = printer();
    let narrow = fixtures::transition(ts::SYN_SENT, ts::ESTABLISHED, Some(1));
    let mut wide = narrow.clone();
    wide.addrs.local = Endpoint::new("2001:db8:85a3::8a2e:370:7334".parse().expect("ip"), 51234);
    p.transition(&narrow).expect("write");
    p.transition(&wide).expect("write");
    p.transition(&narrow).expect("write");
    let out = text(p);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[2].starts_with("TIME"),
        "header again after widening: {out}"
    );
    let remote_at: Vec<usize> = [2, 3, 4]
        .iter()
        .map(|&i| {
            lines[i]
                .find("REMOTE")
                .or_else(|| lines[i].find("127.0.0.1:443"))
                .expect("col")
        })
        .collect();
    assert!(remote_at.iter().all(|&c| c == remote_at[0]), "{out}");
}

#[test]
fn flow_line_shows_every_state_life_close_and_rtx() {
    let mut p = printer();
    p.flow(&fixtures::client_flow()).expect("write");
    let out = text(p);
    let line = out.lines().nth(1).expect("a flow line under the header");
    assert!(line.contains("curl"), "{line}");
    assert!(line.contains("4242"), "{line}");
    assert!(line.contains("127.0.0.1:51234 "), "{line}");
    assert!(line.contains("> 127.0.0.1:443 "), "{line}");
    assert!(
        line.contains(
            "SYN_SENT 1.0ms > ESTABLISHED 1.0ms > FIN_WAIT1 1.0ms > FIN_WAIT2 1.0ms > CLOSE  life 4.0ms active cause=normal rtx=0"
        ),
        "{line}"
    );
    assert!(line.ends_with("rtx=0"), "no vitals, nothing more: {line}");
}

#[test]
fn a_flow_line_ends_with_its_vitals_and_drops() {
    let mut flow = fixtures::client_flow();
    flow.vitals = Some(crate::model::vitals::FlowVitals {
        bytes_acked: 300_002,
        bytes_received: 3,
        srtt_ns: Some(103_000_000),
        ..Default::default()
    });
    flow.drops.add("QDISC_DROP", 93);
    let mut p = printer();
    p.flow(&flow).expect("write");
    flow.vitals.as_mut().expect("vitals").srtt_ns = None;
    flow.drops = Default::default();
    p.flow(&flow).expect("write");
    let out = text(p);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].ends_with("rtx=0 tx=300.0KB rx=3B rtt=103ms drops=QDISC_DROP:93"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with("rtx=0 tx=300.0KB rx=3B rtt=-"),
        "{}",
        lines[2]
    );
}

#[test]
fn retransmits_and_tagged_lines() {
    let mut p = TextPrinter::new(Vec::new(), Clock::fixed(0), true);
    p.retransmit(&fixtures::retransmit()).expect("write");
    p.flow(&fixtures::client_flow()).expect("write");
    let out = text(p);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "no headers when kinds are mixed: {out}");
    assert!(
        lines[0].starts_with("rtx ") && lines[0].contains("FIN_WAIT1"),
        "{out}"
    );
    assert!(lines[1].starts_with("flow "), "{out}");
}

#[test]
fn summary_lists_counts_and_percentiles() {
    let mut agg = Aggregator::new();
    agg.finished_flow(&fixtures::client_flow());
    let mut kernel = KernelCounters {
        transitions: vec![0; TRANSITION_SLOTS as usize],
        ..Default::default()
    };
    kernel.transitions[tcptrace_common::transition_slot(ts::SYN_SENT, ts::ESTABLISHED)] = 1;
    kernel.stats[tcptrace_common::stat::LOST_TRANSITION as usize] = 7;
    let mut p = printer();
    p.summary(&agg.finish(&kernel, 2_000_000_000))
        .expect("write");
    let out = text(p);
    assert!(out.contains("2.0s traced"), "{out}");
    assert!(out.contains("7 lost"), "{out}");
    assert!(out.contains("close: active 1"), "{out}");
    assert!(
        out.contains("\ncauses: normal 1\n"),
        "the causes beside the sides: {out}"
    );
    assert!(out.contains("SYN_SENT -> ESTABLISHED"), "{out}");
    let established = out
        .lines()
        .find(|l| l.trim_start().starts_with(TcpState::Established.name()))
        .expect("a percentile row for ESTABLISHED");
    assert!(established.contains("1.0ms"), "{out}");
}

#[test]
fn a_flow_that_closed_first_ends_with_its_time_wait() {
    use crate::state::timewait::{TimeWait, TimeWaitEnd};
    let mut flow = fixtures::client_flow();
    flow.time_wait = Some(TimeWait {
        addrs: flow.addrs,
        start_ns: flow.ts_ns,
        held_ns: 60_000_000_000,
        end: TimeWaitEnd::Expired,
    });
    let mut p = printer();
    p.flow(&flow).expect("write");
    let out = text(p);
    assert!(
        out.contains("FIN_WAIT2 1.0ms > TIME_WAIT 60.0s (expired)  life 4.0ms active"),
        "{out}"
    );
    assert!(
        !out.contains("> CLOSE"),
        "TIME_WAIT replaces the final CLOSE: {out}"
    );
}

/// A flow whose TIME_WAIT the kernel did not make (`tcp_max_tw_buckets` full) says so, at
/// its end and, printed at its close, on the line that would have held the TIME_WAIT's end.
#[test]
fn a_flow_whose_time_wait_overflowed_says_none_was_made() {
    use crate::state::timewait::{TimeWait, TimeWaitEnd};
    let mut flow = fixtures::client_flow();
    flow.time_wait = Some(TimeWait {
        addrs: flow.addrs,
        start_ns: flow.ts_ns,
        held_ns: 0,
        end: TimeWaitEnd::Overflow,
    });
    let mut p = printer();
    p.flow(&flow).expect("write");
    p.time_wait_ended(&flow).expect("write");
    let out = text(p);
    assert!(
        out.contains("FIN_WAIT2 1.0ms > CLOSE (no TIME_WAIT: tcp_max_tw_buckets full)  life"),
        "{out}"
    );
    assert!(
        out.contains("… > no TIME_WAIT (tcp_max_tw_buckets full)"),
        "{out}"
    );
}

#[test]
fn time_wait_gauges_say_what_the_list_leaves_out() {
    use std::net::Ipv4Addr;

    use crate::state::{forecast::TimeWaitView, timewait::Gauges};
    let by_destination: Vec<(Endpoint, (u64, f64))> = (0..25u16)
        .map(|i| {
            let port = 8000 + i;
            (
                Endpoint::new(Ipv4Addr::LOCALHOST.into(), port),
                (u64::from(i) + 1, 0.0),
            )
        })
        .collect();
    let view = TimeWaitView {
        gauges: Gauges {
            total: (1..=25).sum::<u64>() + 7,
            by_destination,
            by_service: vec![(Endpoint::new(Ipv4Addr::LOCALHOST.into(), 8080), (7, 2.0))],
            by_local: Vec::new(),
        },
        forecasts: Vec::new(),
        overflows: 0,
        preexisting: 0,
    };
    let mut p = printer();
    p.time_wait_gauges(5_000, &view).expect("write");
    let out = text(p);
    assert!(out.contains(" 332 sockets "), "{out}");
    // The 20 busiest (25 down to 6), then the 5 others: 1+2+3+4+5 sockets.
    assert!(out.contains("127.0.0.1:8024"), "{out}");
    assert!(!out.contains("127.0.0.1:8004 "), "{out}");
    let more = out
        .lines()
        .find(|l| l.starts_with("(and 5 more destinations)"))
        .unwrap_or_else(|| panic!("the rest summed: {out}"));
    assert!(more.trim_end().ends_with(" 15"), "{more}");
    // A server's own TIME_WAITs under its service, after the destinations.
    let services = out
        .find("LOCAL SERVICE (closed first)")
        .unwrap_or_else(|| panic!("a services table: {out}"));
    assert!(services > out.find("(and 5 more").unwrap_or(0), "{out}");
    assert!(
        out[services..]
            .lines()
            .any(|l| l.starts_with("127.0.0.1:8080 ") && l.trim_end().ends_with("7      2.0")),
        "{out}"
    );
}

/// Every kind of line has its owner as COMM then PID, at the same place.
#[test]
fn every_line_kind_puts_comm_then_pid_in_the_same_columns() {
    let headers = [
        {
            let mut p = printer();
            p.transition(&fixtures::transition(ts::SYN_SENT, ts::ESTABLISHED, None))
                .expect("write");
            text(p)
        },
        {
            let mut p = printer();
            p.retransmit(&fixtures::retransmit()).expect("write");
            text(p)
        },
        {
            let mut p = printer();
            p.flow(&fixtures::client_flow()).expect("write");
            text(p)
        },
    ];
    for out in &headers {
        let header = out.lines().next().expect("a header");
        assert_eq!(header.find("COMM"), Some(16), "{out}");
        assert_eq!(header.find(" PID").map(|i| i + 4), Some(40), "{out}");
        let line = out.lines().nth(1).expect("a line");
        let (comm, pid) = (line[16..33].trim(), line[33..40].trim());
        assert!(["curl", "-"].contains(&comm), "COMM at 16: {out}");
        assert!(
            pid == "-" || pid.parse::<u32>().is_ok(),
            "PID ending at 40: {out}"
        );
    }
}

/// `--flows-at close`: the flow as it closes, its path ending `TIME_WAIT …`; the TIME_WAIT's
/// end later on a line of its own, under the flow's owner, at the time it ended.
#[test]
fn a_flow_printed_at_close_has_its_time_wait_end_after() {
    use crate::model::tcp::{TimeWait, TimeWaitEnd};
    let mut flow = fixtures::client_flow();
    let mut p = printer();
    p.flow_closed(&flow, true).expect("write");
    flow.time_wait = Some(TimeWait {
        addrs: flow.addrs,
        start_ns: 5_000_000,
        held_ns: 60_000_000_000,
        end: TimeWaitEnd::Expired,
    });
    p.time_wait_ended(&flow).expect("write");
    let out = text(p);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("127.0.0.1:443"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("FIN_WAIT2 1.0ms > TIME_WAIT …  life"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("curl") && lines[1].contains("4242"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].ends_with("… > TIME_WAIT 60.0s (expired)"),
        "{}",
        lines[1]
    );
    // The second line is stamped when the TIME_WAIT ended: 60 s after the first.
    let t = |l: &str| l[..15].to_string();
    assert!(t(lines[1]) > t(lines[0]), "{out}");
}
