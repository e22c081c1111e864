//! render: printers (columns or JSON Lines, generic over `W: Write` so they are unit-tested
//! on buffers), the Prometheus exporter and `top`'s screen.
mod columns;
pub mod consumer;
pub mod exporter;
mod json;
mod json_alert;
mod json_events;
mod json_fields;
pub mod lines;
pub mod metrics;
mod metrics_conntrack;
mod metrics_http;
mod metrics_listen;
mod metrics_nat;
mod metrics_ports;
mod metrics_time_wait;
mod metrics_vitals;
mod metrics_workload;
mod text;
mod text_summary;
pub mod top;

use std::io::{self, Write};

pub use json::JsonPrinter;
pub use text::TextPrinter;

use crate::{
    host::clock::Clock, model::events::FinishedFlow, output::consumer::Seen,
    state::summary::Summary,
};

/// A printer's `render`: each event to the method that writes its line, the same for every
/// printer (an event without a line of its own is not printed).
macro_rules! printer_render {
    ($printer:ident) => {
        impl<W: std::io::Write> $printer<W> {
            pub fn render(&mut self, event: $crate::output::consumer::Seen) -> std::io::Result<()> {
                use $crate::{output::consumer::Seen, state::timewait::Finished};
                match event {
                    Seen::Transition(t) => self.transition(t),
                    Seen::Finished(Finished::Flow(f)) => self.flow(f),
                    Seen::Finished(Finished::Orphan(t)) => self.time_wait(t),
                    Seen::Retransmit(r) => self.retransmit(r),
                    Seen::PacketDrop(d) => self.packet_drop(d),
                    Seen::Alert(a) => self.alert(a),
                    Seen::TimeWaitGauges { now_ns, view } => self.time_wait_gauges(now_ns, view),
                    Seen::IdleReport { now_ns, report } => self.idle_report(now_ns, report),
                    Seen::Lost {
                        now_ns,
                        newly,
                        kernel,
                    } => self.lost(now_ns, newly, kernel),
                    Seen::Evicted {
                        now_ns,
                        newly,
                        total,
                    } => self.evicted(now_ns, newly, total),
                    Seen::Raw(_)
                    | Seen::FlowClosed { .. }
                    | Seen::PortFailure(_)
                    | Seen::TimeWaitEntered { .. }
                    | Seen::TimeWaitOverflowed { .. } => Ok(()),
                }
            }
        }
    };
}
pub(crate) use printer_render;

/// Either printer, chosen at start-up.
pub enum Printer<W: Write> {
    Text(TextPrinter<W>),
    Json(JsonPrinter<W>),
}

impl<W: Write> Printer<W> {
    pub fn render(&mut self, event: Seen) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.render(event),
            Printer::Json(p) => p.render(event),
        }
    }
    /// A flow as it closes (`--flows-at close`).
    pub fn flow_closed(&mut self, f: &FinishedFlow, time_wait_follows: bool) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.flow_closed(f, time_wait_follows),
            Printer::Json(p) => p.flow_closed(f, time_wait_follows),
        }
    }
    /// The end of the TIME_WAIT of a flow printed at its close.
    pub fn time_wait_ended(&mut self, f: &FinishedFlow) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.time_wait_ended(f),
            Printer::Json(p) => p.time_wait_ended(f),
        }
    }
    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.summary(s),
            Printer::Json(p) => p.summary(s),
        }
    }
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Printer::Text(p) => p.flush(),
            Printer::Json(p) => p.flush(),
        }
    }
    pub fn clock(&self) -> Clock {
        match self {
            Printer::Text(p) => p.clock(),
            Printer::Json(p) => p.clock(),
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
        event_flags, record_kind, tcp_state as ts, RetransmitEvent, TransitionEvent, COMM_LEN,
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
            comm: [0; COMM_LEN],
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
