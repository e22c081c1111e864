//! The flows that close into TIME_WAIT, joined to the timewait socket that took their
//! 4-tuple (its start follows the flow in the ring: sent by the same run of the state
//! tracepoint), and the flows that reuse a TIME_WAIT's 4-tuple.
use super::{decrement, remove_entry, Closing, Finished, TimeWaitEnd, TimeWaitTracker};
use crate::model::{
    events::{FinishedFlow, TimeWaitFlow},
    tcp::FlowAddrs,
};

/// Whether a finished flow handed its 4-tuple to a timewait socket, as the kernel judged it
/// (`CloseFacts::holds_time_wait`): it closed first, the FIN exchange completed, and no reset
/// or error ended it.
pub fn holds_time_wait(flow: &FinishedFlow) -> bool {
    let path = &flow.lifecycle.path;
    let before = path.len().checked_sub(2).map(|i| path[i].state);
    crate::model::cause::holds_time_wait(before, &flow.evidence)
}

/// When a flow began (0: before tracing).
fn flow_start_ns(flow: &FinishedFlow) -> u64 {
    flow.lifecycle.start_ns.unwrap_or(0)
}

impl TimeWaitTracker {
    /// A flow reached CLOSE: a TIME_WAIT of its 4-tuple from before the flow began ended
    /// then (the flow reused it: exact, the flow's start). Returned to be handed on first.
    pub fn reused_by(&mut self, flow: &FinishedFlow) -> Option<Finished> {
        let began = flow_start_ns(flow);
        let newest = self.active.get(&flow.addrs)?;
        if newest.start_ns >= began {
            return None;
        }
        let active = self.active.remove(&flow.addrs)?;
        Some(self.end(active, began, TimeWaitEnd::Reused))
    }

    /// A flow that closed into TIME_WAIT (see [`holds_time_wait`]): held until its
    /// TIME_WAIT ends when `keep`, else only its side is counted. Returns the flow when it
    /// is not held.
    pub fn closed_into(
        &mut self,
        flow: Box<FinishedFlow>,
        keep: bool,
    ) -> Option<Box<FinishedFlow>> {
        let accepted = flow.lifecycle.accepted();
        let (addrs, skaddr, ts_ns) = (flow.addrs, flow.skaddr, flow.ts_ns);
        let (kept, handed) = if keep {
            (Some(flow), None)
        } else {
            (None, Some(flow))
        };
        self.await_start(addrs, skaddr, ts_ns, accepted, kept);
        handed
    }

    /// A flow entering TIME_WAIT, sent in brief (`tcptrace metrics`): its side is counted.
    pub fn brief_flow(&mut self, flow: &TimeWaitFlow) {
        self.await_start(flow.addrs, flow.skaddr, flow.ts_ns, flow.accepted, None);
    }

    fn await_start(
        &mut self,
        addrs: FlowAddrs,
        skaddr: u64,
        ts_ns: u64,
        accepted: bool,
        flow: Option<Box<FinishedFlow>>,
    ) {
        // Before layout 7 the start came first.
        if self.keyed_by_timer {
            let waiting = (self.active.get(&addrs))
                .filter(|a| a.accepted.is_none())
                .map(|a| (a.netns, addrs));
            if let Some(key) = waiting {
                self.join(key, accepted, flow);
                return;
            }
        }
        let closing = Closing {
            skaddr,
            ts_ns,
            accepted,
            flow,
        };
        if let Some(flow) = self.closing.insert(addrs, closing).and_then(|c| c.flow) {
            // Its start never came: handed on at the next settle.
            self.start_lost.push(Finished::Flow(flow));
        }
    }

    /// Joins a flow to its TIME_WAIT: its side is counted; the flow, where kept, is held.
    pub(super) fn join(
        &mut self,
        key: super::TimeWaitKey,
        accepted: bool,
        flow: Option<Box<FinishedFlow>>,
    ) {
        let Some(active) = self.get_mut(key) else {
            return;
        };
        let (addrs, netns, start_ns) = (active.addrs, active.netns, active.start_ns);
        active.accepted = Some(accepted);
        active.flow = flow;
        self.count_side(accepted);
        if accepted {
            self.not_a_destination(&addrs, netns, start_ns);
        }
    }

    /// The accepting side's TIME_WAIT, known as such only after it was counted under its
    /// destination (recordings before layout 7: the start came before its flow): its entry
    /// time and count leave the per-destination maps (entry rates and forecasts are the
    /// connecting side's: its ephemeral ports run out) for its local service's, where it
    /// stays until it ends.
    fn not_a_destination(&mut self, addrs: &FlowAddrs, netns: u32, start_ns: u64) {
        decrement(&mut self.live_by_destination, (netns, addrs.remote));
        self.count_service_entry(netns, addrs.local, start_ns);
        remove_entry(
            &mut self.entries,
            (netns, addrs.local.addr, addrs.remote),
            start_ns,
        );
        decrement(&mut self.by_destination, addrs.remote);
    }
}
