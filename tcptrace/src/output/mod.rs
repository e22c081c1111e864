//! render: printers (columns or JSON Lines, generic over `W: Write` so they are unit-tested
//! on buffers), the Prometheus exporter and `top`'s screen.
mod columns;
pub mod consumer;
pub mod exporter;
mod json;
mod json_alert;
mod json_events;
mod json_fields;
mod json_summary;
pub mod lines;
pub mod metrics;
mod metrics_listen;
mod metrics_ports;
mod metrics_vitals;
mod metrics_workload;
mod text;
mod text_summary;
pub mod top;

use std::io::{self, Write};

pub use json::JsonPrinter;
pub use text::TextPrinter;

use crate::{
    model::counters::KernelCounters,
    model::events::{FinishedFlow, Retransmit, Transition},
    model::vitals::PacketDrop,
    state::aggregate::Summary,
    state::alert::Alert,
    state::forecast::TimeWaitView,
    state::idle::IdleReport,
    state::timewait::TimeWait,
};

/// What a printer can be asked to print.
pub trait Render {
    fn transition(&mut self, t: &Transition) -> io::Result<()>;
    fn flow(&mut self, f: &FinishedFlow) -> io::Result<()>;
    fn retransmit(&mut self, r: &Retransmit) -> io::Result<()>;
    fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()>;
    fn alert(&mut self, a: &Alert) -> io::Result<()>;
    /// `now_ns` is kernel time.
    fn idle_report(&mut self, now_ns: u64, r: &IdleReport) -> io::Result<()>;
    /// A TIME_WAIT whose flow was not seen.
    fn time_wait(&mut self, t: &TimeWait) -> io::Result<()>;
    /// Live TIME_WAIT gauges and the exhaustion forecast.
    fn time_wait_gauges(&mut self, now_ns: u64, g: &TimeWaitView) -> io::Result<()>;
    /// Records were lost since the last report (`now_ns` is kernel time).
    fn lost(&mut self, now_ns: u64, newly_lost: u64, kernel: &KernelCounters) -> io::Result<()>;
    /// Flows were evicted from the kernel's flow table (`total` since start).
    fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()>;
    fn summary(&mut self, s: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Either printer, chosen at start-up.
pub enum Printer<W: Write> {
    Text(TextPrinter<W>),
    Json(JsonPrinter<W>),
}

impl<W: Write> Render for Printer<W> {
    fn transition(&mut self, t: &Transition) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.transition(t),
            Printer::Json(p) => p.transition(t),
        }
    }
    fn flow(&mut self, f: &FinishedFlow) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.flow(f),
            Printer::Json(p) => p.flow(f),
        }
    }
    fn retransmit(&mut self, r: &Retransmit) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.retransmit(r),
            Printer::Json(p) => p.retransmit(r),
        }
    }
    fn packet_drop(&mut self, d: &PacketDrop) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.packet_drop(d),
            Printer::Json(p) => p.packet_drop(d),
        }
    }
    fn alert(&mut self, a: &Alert) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.alert(a),
            Printer::Json(p) => p.alert(a),
        }
    }
    fn idle_report(&mut self, now_ns: u64, r: &IdleReport) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.idle_report(now_ns, r),
            Printer::Json(p) => p.idle_report(now_ns, r),
        }
    }
    fn time_wait(&mut self, t: &TimeWait) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.time_wait(t),
            Printer::Json(p) => p.time_wait(t),
        }
    }
    fn time_wait_gauges(&mut self, now_ns: u64, g: &TimeWaitView) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.time_wait_gauges(now_ns, g),
            Printer::Json(p) => p.time_wait_gauges(now_ns, g),
        }
    }
    fn lost(&mut self, now_ns: u64, newly_lost: u64, kernel: &KernelCounters) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.lost(now_ns, newly_lost, kernel),
            Printer::Json(p) => p.lost(now_ns, newly_lost, kernel),
        }
    }
    fn evicted(&mut self, now_ns: u64, newly: u64, total: u64) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.evicted(now_ns, newly, total),
            Printer::Json(p) => p.evicted(now_ns, newly, total),
        }
    }
    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.summary(s),
            Printer::Json(p) => p.summary(s),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.flush(),
            Printer::Json(p) => p.flush(),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::{
        decode::{decode, tests as raw},
        model::events::{Event, FinishedFlow, Retransmit, Transition},
        model::tcp::TcpState,
    };
    use tcptrace_common::{
        event_flags, record_kind, tcp_state as ts, RetransmitEvent, TransitionEvent,
    };

    pub fn transition(old: u8, new: u8, held: Option<u64>) -> Transition {
        let owner = raw::owner(4242, "curl");
        let record = TransitionEvent {
            kind: record_kind::TRANSITION,
            old_state: old,
            new_state: new,
            flags: event_flags::OWNER_KNOWN
                | if held.is_some() {
                    event_flags::OLD_DURATION_KNOWN
                } else {
                    0
                },
            _pad0: 0,
            ts_ns: 5_000,
            old_state_ns: held.unwrap_or(0),
            skaddr: 0xffff_8880_1234_5678,
            tuple: raw::v4_tuple(51234, 443),
            pid: owner.pid,
            comm: owner.comm,
            _pad1: [0; 4],
            cgroup: 0,
        };
        match decode(&raw::bytes_of(&record)) {
            Ok(Event::Transition(t)) => t,
            other => panic!("fixture must decode: {other:?}"),
        }
    }

    pub fn client_flow() -> FinishedFlow {
        use ts::*;
        let flow = raw::client_flow(&[ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE]);
        match decode(&raw::bytes_of(&raw::flow_end(flow, 5_000_000))) {
            Ok(Event::FlowEnd(f)) => *f,
            other => panic!("fixture must decode: {other:?}"),
        }
    }

    pub fn retransmit() -> Retransmit {
        let record = RetransmitEvent {
            kind: record_kind::RETRANSMIT,
            state: ts::FIN_WAIT1,
            flags: event_flags::ERR_VALID,
            _pad0: [0; 2],
            ts_ns: 5_000,
            skaddr: 1,
            tuple: raw::v4_tuple(12345, 41690),
            err: 0,
            pid: 0,
            comm: [0; 16],
            cgroup: 0,
        };
        match decode(&raw::bytes_of(&record)) {
            Ok(Event::Retransmit(r)) => {
                assert_eq!(r.state, TcpState::FinWait1);
                r
            }
            other => panic!("fixture must decode: {other:?}"),
        }
    }
}
