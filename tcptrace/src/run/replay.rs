//! `tcptrace replay-bench`: the userspace pipeline alone (decode → aggregate → render to a
//! sink) on synthetic records, one core, no kernel — the aggregator's throughput.
use std::{io, time::Instant};

use anyhow::Result;
use tcptrace_common::{
    event_flags, record_kind, tcp_state as ts, FlowEndEvent, FlowState, Owner, TransitionEvent,
    Tuple,
};

use crate::{
    decode::{record_bytes as bytes_of, Decoder},
    host::clock::Clock,
    model::events::Event,
    output::TextPrinter,
    state::aggregate::Aggregator,
};

/// A realistic mix: per connection, the client and server flows reaching CLOSE (2 records)
/// and 10 transitions.
fn synthetic() -> Vec<Vec<u8>> {
    let mut tuple = Tuple {
        family: 2,
        sport: 40_000,
        dport: 443,
        ..Default::default()
    };
    tuple.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    tuple.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let owner = Owner {
        pid: 4242,
        comm: *b"loadgen\0\0\0\0\0\0\0\0\0",
        _pad: [0; 4],
        cgroup: 1,
    };
    let mut flow = FlowState::start(ts::CLOSE, ts::SYN_SENT, 1_000);
    flow.set_owner(&owner, false);
    for (i, s) in [ts::ESTABLISHED, ts::FIN_WAIT1, ts::FIN_WAIT2, ts::CLOSE]
        .into_iter()
        .enumerate()
    {
        flow.enter(s, 2_000 + i as u64 * 1_000);
    }
    let end = FlowEndEvent {
        kind: record_kind::FLOW_END,
        _pad0: 0,
        ts_ns: 6_000,
        skaddr: 0xffff_8880_0000_0000,
        tuple,
        flow,
        keepalive: Default::default(),
        vitals: Default::default(),
    };
    let transition = TransitionEvent {
        kind: record_kind::TRANSITION,
        old_state: ts::SYN_SENT,
        new_state: ts::ESTABLISHED,
        flags: event_flags::OLD_DURATION_KNOWN | event_flags::OWNER_KNOWN,
        _pad0: 0,
        ts_ns: 2_000,
        old_state_ns: 1_000,
        skaddr: 0xffff_8880_0000_0000,
        tuple,
        pid: owner.pid,
        comm: owner.comm,
        _pad1: [0; 4],
        cgroup: owner.cgroup,
    };
    let mut records = vec![bytes_of(&end), bytes_of(&end)];
    records.extend(std::iter::repeat_n(bytes_of(&transition), 10));
    records
}

/// Decodes and aggregates `records` of the mix; renders flows (as the flows mode does) and,
/// with `render_transitions`, every transition too (as the live mode does). Returns records/s.
fn pass(mix: &[Vec<u8>], records: u64, render_transitions: bool) -> Result<f64> {
    let mut agg = Aggregator::new();
    let mut printer = TextPrinter::new(io::sink(), Clock::now(), false);
    let decoder = Decoder::default();
    let start = Instant::now();
    for i in 0..records {
        let bytes = &mix[(i % mix.len() as u64) as usize];
        agg.delivered();
        match decoder.decode(bytes)? {
            Event::FlowEnd(f) => {
                agg.finished_flow(&f);
                printer.flow(&f)?;
            }
            Event::Transition(t) if render_transitions => printer.transition(&t)?,
            _ => {}
        }
    }
    Ok(records as f64 / start.elapsed().as_secs_f64())
}

pub fn run(records: u64) -> Result<()> {
    let mix = synthetic();
    let aggregate = pass(&mix, records, false)?;
    let render_all = pass(&mix, records, true)?;
    println!(
        "{{\"records\":{records},\"events_per_s\":{aggregate:.0},\"render_all_events_per_s\":{render_all:.0}}}"
    );
    Ok(())
}
