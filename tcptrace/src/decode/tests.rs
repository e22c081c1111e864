use tcptrace_common::{tcp_state as ts, Owner, Tuple, COMM_LEN};

use super::*;

pub(crate) use super::record_bytes as bytes_of;

pub(crate) fn v4_tuple(sport: u16, dport: u16) -> Tuple {
    let mut tuple = Tuple {
        family: crate::model::tcp::AF_INET,
        sport,
        dport,
        ..Default::default()
    };
    tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple
}

pub(crate) fn owner(pid: u32, name: &str) -> Owner {
    let mut comm = [0u8; COMM_LEN];
    comm[..name.len()].copy_from_slice(name.as_bytes());
    Owner {
        pid,
        comm,
        _pad: [0; 4],
        cgroup: 0,
    }
}

/// A client flow: CLOSE→SYN_SENT at 1 ms, then the given states 1 ms apart, owned by curl.
pub(crate) fn client_flow(states: &[u8]) -> FlowState {
    let mut flow = FlowState::start(ts::CLOSE, ts::SYN_SENT, 1_000_000);
    flow.set_owner(&owner(4242, "curl"), false);
    for (i, &state) in states.iter().enumerate() {
        flow.enter(state, 1_000_000 * (i as u64 + 2));
    }
    flow
}

pub(crate) fn flow_end(flow: FlowState, end_ns: u64) -> FlowEndEvent {
    FlowEndEvent {
        kind: record_kind::FLOW_END,
        _pad0: 0,
        ts_ns: end_ns,
        skaddr: 0xffff_8880_0000_1000,
        tuple: v4_tuple(51234, 443),
        flow,
        keepalive: Default::default(),
        vitals: Default::default(),
    }
}

/// A finished client flow (ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE) between `addrs`.
pub(crate) fn finished(addrs: crate::model::tcp::FlowAddrs) -> FinishedFlow {
    let raw = flow_end(
        client_flow(&[ts::ESTABLISHED, ts::FIN_WAIT1, ts::FIN_WAIT2, ts::CLOSE]),
        9_000_000,
    );
    let mut f = FinishedFlow::decode(&raw, &HostFacts::default()).expect("decodes");
    f.addrs = addrs;
    f
}

#[test]
fn transition_decodes_with_duration_and_owner() {
    let raw = TransitionEvent {
        kind: record_kind::TRANSITION,
        old_state: ts::SYN_SENT,
        new_state: ts::ESTABLISHED,
        flags: event_flags::OLD_DURATION_KNOWN | event_flags::OWNER_KNOWN,
        _pad0: 0,
        ts_ns: 5,
        old_state_ns: 1_200_000,
        skaddr: 0xdead,
        tuple: v4_tuple(51234, 443),
        pid: 4242,
        comm: owner(4242, "curl").comm,
        _pad1: [0; 4],
        cgroup: 0,
    };
    let Event::Transition(t) = decode(&bytes_of(&raw)).expect("decodes") else {
        panic!("expected a transition");
    };
    assert_eq!((t.old, t.new), (TcpState::SynSent, TcpState::Established));
    assert_eq!(t.old_held_ns, Some(1_200_000));
    assert_eq!(t.owner.expect("owner known").comm, "curl");
    assert_eq!(t.addrs.remote.to_string(), "127.0.0.1:443");
}

#[test]
fn a_transition_checked_for_its_time_only_fails_where_decoding_fails() {
    let raw = TransitionEvent {
        kind: record_kind::TRANSITION,
        old_state: ts::SYN_SENT,
        new_state: ts::ESTABLISHED,
        flags: event_flags::OWNER_KNOWN,
        _pad0: 0,
        ts_ns: 77,
        old_state_ns: 0,
        skaddr: 0xdead,
        tuple: v4_tuple(51234, 443),
        pid: 4242,
        comm: owner(4242, "curl").comm,
        _pad1: [0; 4],
        cgroup: 0,
    };
    let good = bytes_of(&raw);
    assert_eq!(
        transition_time(&good)
            .expect("a transition")
            .expect("valid"),
        77
    );
    let bad_state = bytes_of(&TransitionEvent {
        new_state: 200,
        ..raw
    });
    let bad_family = bytes_of(&TransitionEvent {
        tuple: Tuple {
            family: 99,
            ..raw.tuple
        },
        ..raw
    });
    for bad in [&good[..good.len() - 1], &bad_state[..], &bad_family[..]] {
        let checked = transition_time(bad).expect("a transition");
        assert!(checked.is_err() && decode(bad).is_err(), "{checked:?}");
    }
    let flow = bytes_of(&flow_end(client_flow(&[ts::ESTABLISHED]), 9));
    assert!(transition_time(&flow).is_none(), "not a transition");
    assert!(transition_time(&[1, 0]).is_none(), "no kind");
}

#[test]
fn unknown_duration_and_owner_stay_unknown() {
    let raw = TransitionEvent {
        kind: record_kind::TRANSITION,
        old_state: ts::ESTABLISHED,
        new_state: ts::FIN_WAIT1,
        flags: 0,
        _pad0: 0,
        ts_ns: 5,
        old_state_ns: 77,
        skaddr: 1,
        tuple: v4_tuple(1, 2),
        pid: 9,
        comm: [0; COMM_LEN],
        _pad1: [0; 4],
        cgroup: 0,
    };
    let Event::Transition(t) = decode(&bytes_of(&raw)).expect("decodes") else {
        panic!("expected a transition");
    };
    assert_eq!(t.old_held_ns, None);
    assert_eq!(t.owner, None);
}

#[test]
fn short_unknown_and_corrupt_records_are_errors() {
    let flow = flow_end(client_flow(&[ts::ESTABLISHED, ts::CLOSE]), 9);
    let bytes = bytes_of(&flow);
    assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "short record");
    assert!(decode(&bytes[..3]).is_err(), "no kind");
    let mut unknown = bytes.clone();
    unknown[0] = 99;
    assert!(decode(&unknown).is_err(), "unknown kind");
    let mut bad_state = flow;
    bad_state.flow.states[1] = 15;
    assert!(decode(&bytes_of(&bad_state)).is_err(), "state 15");
    let mut bad_len = flow;
    bad_len.flow.len = 0;
    assert!(decode(&bytes_of(&bad_len)).is_err(), "empty path");
}

#[test]
fn client_path_has_durations_and_active_close() {
    use ts::*;
    let mut raw2 = client_flow(&[ESTABLISHED]);
    raw2.count_retransmit();
    raw2.count_retransmit();
    raw2.enter(FIN_WAIT1, 3_000_000);
    raw2.enter(FIN_WAIT2, 4_000_000);
    raw2.enter(CLOSE, 5_000_000);
    let Event::FlowEnd(flow) = decode(&bytes_of(&flow_end(raw2, 5_000_000))).expect("decodes")
    else {
        panic!("expected a flow");
    };
    let states: Vec<_> = flow.lifecycle.path.iter().map(|s| s.state.name()).collect();
    assert_eq!(
        states,
        ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]
    );
    let held: Vec<_> = flow.lifecycle.path.iter().map(|s| s.held_ns).collect();
    assert_eq!(
        held,
        [
            Some(1_000_000),
            Some(1_000_000),
            Some(1_000_000),
            Some(1_000_000),
            None
        ]
    );
    assert_eq!(flow.lifecycle.path[1].retransmits, 2);
    assert_eq!(flow.lifecycle.retransmits, 2);
    assert_eq!(flow.close, CloseSide::Active);
    assert_eq!(flow.life_ns(), Some(4_000_000));
    assert_eq!(flow.lifecycle.owner.as_ref().expect("owner").pid, 4242);
}

#[test]
fn flow_older_than_the_tracer_has_unknown_start() {
    use ts::*;
    let mut raw = FlowState::start(ESTABLISHED, CLOSE_WAIT, 10);
    raw.enter(LAST_ACK, 20);
    raw.enter(CLOSE, 30);
    let Event::FlowEnd(flow) = decode(&bytes_of(&flow_end(raw, 30))).expect("decodes") else {
        panic!("expected a flow");
    };
    assert!(!flow.lifecycle.start_seen);
    assert_eq!(flow.lifecycle.path[0].state, TcpState::Established);
    assert_eq!(flow.lifecycle.path[0].held_ns, None, "never invented");
    assert_eq!(flow.lifecycle.path[1].held_ns, Some(10));
    assert_eq!(flow.life_ns(), None);
    assert_eq!(flow.close, CloseSide::Passive);
}

#[test]
fn truncated_path_keeps_first_states_and_the_last() {
    use ts::*;
    let mut raw = FlowState::start(CLOSE, SYN_SENT, 1);
    for (i, state) in [
        ESTABLISHED,
        FIN_WAIT1,
        CLOSING,
        FIN_WAIT1,
        CLOSING,
        FIN_WAIT1,
        CLOSING,
    ]
    .into_iter()
    .enumerate()
    {
        raw.enter(state, 2 + i as u64);
    }
    raw.enter(CLOSE, 100);
    assert_eq!(raw.flags & flow_flags::TRUNCATED, flow_flags::TRUNCATED);
    let lifecycle = Lifecycle::try_from(&raw).expect("decodes");
    assert!(lifecycle.truncated);
    assert_eq!(lifecycle.path.len(), PATH_SLOTS);
    assert_eq!(lifecycle.path.last().expect("last").state, TcpState::Close);
    assert_eq!(lifecycle.path[PATH_SLOTS - 2].held_ns, None);
}

#[test]
fn child_owner_from_listener_is_refined_by_process_context() {
    use ts::*;
    let mut raw = FlowState::start(LISTEN, SYN_RECV, 1);
    assert_eq!(raw.flags & flow_flags::START_SEEN, flow_flags::START_SEEN);
    raw.set_owner(&owner(1, "nginx-master"), true);
    raw.set_owner(&owner(2, "other-listener"), true);
    assert_eq!(raw.pid, 1, "an inherited owner never replaces a known one");
    raw.set_owner(&owner(3, "nginx-worker"), false);
    assert_eq!(
        raw.pid, 3,
        "the process that closes refines an inherited owner"
    );
    raw.set_owner(&owner(4, "softirq-victim"), false);
    assert_eq!(raw.pid, 3, "a process-context owner is kept");
}

#[test]
fn retransmit_decodes_err_only_when_valid() {
    let mut raw = RetransmitEvent {
        kind: record_kind::RETRANSMIT,
        state: ts::SYN_SENT,
        flags: event_flags::ERR_VALID,
        _pad0: [0; 2],
        ts_ns: 1,
        skaddr: 2,
        tuple: v4_tuple(3, 4),
        err: -1,
        pid: 0,
        comm: [0; COMM_LEN],
        cgroup: 0,
    };
    let Event::Retransmit(r) = decode(&bytes_of(&raw)).expect("decodes") else {
        panic!("expected a retransmit");
    };
    assert_eq!((r.state, r.err), (TcpState::SynSent, Some(-1)));
    raw.flags = 0;
    let Event::Retransmit(r) = decode(&bytes_of(&raw)).expect("decodes") else {
        panic!("expected a retransmit");
    };
    assert_eq!(r.err, None);
}

#[test]
fn a_missed_transition_leaves_a_gap_with_unknown_times() {
    use ts::*;
    let mut raw = client_flow(&[ESTABLISHED]);
    // ESTABLISHED -> FIN_WAIT1 was missed; FIN_WAIT1 -> FIN_WAIT2 arrives.
    assert_eq!(raw.current(), ESTABLISHED);
    raw.enter_unseen(FIN_WAIT1);
    assert_eq!(
        raw.enter(FIN_WAIT2, 9_000_000),
        None,
        "FIN_WAIT1's start is unknown"
    );
    raw.enter(CLOSE, 10_000_000);
    let lifecycle = Lifecycle::try_from(&raw).expect("decodes");
    let held: Vec<_> = lifecycle
        .path
        .iter()
        .map(|s| (s.state, s.held_ns))
        .collect();
    assert_eq!(
        held,
        [
            (TcpState::SynSent, Some(1_000_000)),
            (TcpState::Established, None),
            (TcpState::FinWait1, None),
            (TcpState::FinWait2, Some(1_000_000)),
            (TcpState::Close, None),
        ]
    );
}

#[test]
fn a_flow_entering_time_wait_in_brief_decodes_its_side_and_addresses() {
    let raw = tcptrace_common::TimeWaitFlowEvent {
        kind: record_kind::TIME_WAIT_FLOW,
        flags: time_wait_flow::ACCEPTED,
        _pad0: [0; 3],
        ts_ns: 7_000,
        skaddr: 0xffff_8880_0000_2000,
        tuple: v4_tuple(8080, 51234),
    };
    let bytes = bytes_of(&raw);
    let Ok(Event::TimeWaitFlow(f)) = decode(&bytes) else {
        panic!("not a time-wait flow: {:?}", decode(&bytes));
    };
    assert!(f.accepted, "the accepting side");
    assert_eq!((f.ts_ns, f.skaddr), (7_000, 0xffff_8880_0000_2000));
    assert_eq!((f.addrs.local.port, f.addrs.remote.port), (8080, 51234));
    let client = tcptrace_common::TimeWaitFlowEvent { flags: 0, ..raw };
    let Ok(Event::TimeWaitFlow(f)) = decode(&bytes_of(&client)) else {
        panic!("the client's record did not decode");
    };
    assert!(!f.accepted, "the connecting side");
    let e = decode(&bytes[..bytes.len() - 1]).expect_err("a short record");
    assert_eq!(
        format!("{e:#}"),
        "time-wait flow record is 63 bytes, expected 64"
    );
    let unknown = tcptrace_common::TimeWaitFlowEvent { flags: 0x80, ..raw };
    let e = decode(&bytes_of(&unknown)).expect_err("unknown flags");
    assert_eq!(format!("{e:#}"), "unknown time-wait flow flags 0x80");
    let mut bad_family = raw;
    bad_family.tuple.family = 99;
    assert!(decode(&bytes_of(&bad_family)).is_err(), "family 99");
}
