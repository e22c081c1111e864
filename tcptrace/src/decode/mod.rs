//! Ring-buffer bytes → typed events. Every record's length is checked, it is read unaligned,
//! and converted field by field with `TryFrom`; nothing is transmuted.
use std::mem::size_of;

use anyhow::{anyhow, bail, Context as _, Result};
use arrayvec::ArrayVec;
use tcptrace_common::{
    close_flags, drop_flags, event_flags, family, flow_flags, record_kind, time_wait,
    time_wait_flow, DropEvent, FlowEndEvent, FlowState, RetransmitEvent, TransitionEvent,
    PATH_SLOTS,
};

use crate::model::{
    cause::{classify, CloseEvidence},
    events::{
        Event, FinishedFlow, KeepaliveInForce, KeepaliveProbe, Lifecycle, Retransmit, TimeWaitFlow,
        TimeWaitRecord, Transition,
    },
    facts::HostFacts,
    nat::Conntrack,
    port_failure::PortFailure,
    tcp::{comm_to_string, CloseSide, FlowAddrs, PathStep, Process, TcpState},
    vitals::{DropTally, FlowVitals, PacketDrop},
    workload::Workload,
};

mod port_failure;

fn state(raw: u8) -> Result<TcpState> {
    TcpState::try_from(raw).map_err(|raw| anyhow!("unknown TCP state {raw}"))
}

fn owner(known: bool, pid: u32, comm: &[u8]) -> Option<Process> {
    known.then(|| Process {
        pid,
        comm: comm_to_string(comm),
    })
}

/// Reads a `T` from the front of `bytes` after checking the length.
fn read_record<T: aya::Pod>(bytes: &[u8], name: &str) -> Result<T> {
    if bytes.len() < size_of::<T>() {
        bail!(
            "{name} record is {} bytes, expected {}",
            bytes.len(),
            size_of::<T>()
        );
    }
    // SAFETY: the length was checked above, `read_unaligned` has no alignment requirement,
    // and `T: Pod` is plain integers for which every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a record, as the ring buffer hands them over (synthetic records for the replay
/// benchmark and the tests).
pub(crate) fn record_bytes<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: `T` is one of the #[repr(C)] records of tcptrace-common, with explicit padding:
    // every byte is initialised, so viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// When a record's program ran (its `ts_ns`), read without decoding it: what orders the
/// records of the rings. 0 for a record too short or of no known kind (decoding reports it).
pub fn record_time(bytes: &[u8]) -> u64 {
    use std::mem::offset_of;
    use tcptrace_common::{
        KeepaliveProbeEvent, PortFailureEvent, TimeWaitEvent, TimeWaitFlowEvent,
    };
    let Some(kind) = bytes.get(..4).and_then(|b| b.try_into().ok()) else {
        return 0;
    };
    let at = match u32::from_ne_bytes(kind) {
        record_kind::TRANSITION => offset_of!(TransitionEvent, ts_ns),
        record_kind::FLOW_END => offset_of!(FlowEndEvent, ts_ns),
        record_kind::RETRANSMIT => offset_of!(RetransmitEvent, ts_ns),
        record_kind::KEEPALIVE_PROBE => offset_of!(KeepaliveProbeEvent, ts_ns),
        record_kind::TIME_WAIT => offset_of!(TimeWaitEvent, ts_ns),
        record_kind::TIME_WAIT_FLOW => offset_of!(TimeWaitFlowEvent, ts_ns),
        record_kind::PORT_FAILURE => offset_of!(PortFailureEvent, ts_ns),
        record_kind::DROP => offset_of!(DropEvent, ts_ns),
        _ => return 0,
    };
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// For a transition record: checks it as [`decode`] would and returns only its time, for
/// consumers that do not look at transitions (a report of a recording as flows reads every
/// transition of the file). `None` for any other record.
pub fn transition_time(bytes: &[u8]) -> Option<Result<u64>> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    if kind != record_kind::TRANSITION {
        return None;
    }
    Some(
        read_record::<RawTransition>(bytes, "transition").and_then(|RawTransition(raw)| {
            state(raw.old_state)?;
            state(raw.new_state)?;
            FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?;
            Ok(raw.ts_ns)
        }),
    )
}

/// Reads ring-buffer items with the facts of the machine that traced.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    pub host: HostFacts,
}

/// Reads a ring-buffer item with no host facts (tests, the synthetic replay).
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Result<Event> {
    Decoder::default().decode(bytes)
}

impl Decoder {
    pub fn new(host: HostFacts) -> Decoder {
        Decoder { host }
    }

    /// Reads a ring-buffer item.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event> {
        let kind_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("record of {} bytes has no kind", bytes.len()))?;
        match u32::from_ne_bytes(kind_bytes) {
            record_kind::TRANSITION => Ok(Event::Transition(Transition::try_from(
                &read_record::<RawTransition>(bytes, "transition")?.0,
            )?)),
            record_kind::FLOW_END => Ok(Event::FlowEnd(Box::new(FinishedFlow::decode(
                &read_record::<RawFlowEnd>(bytes, "flow")?.0,
                &self.host,
            )?))),
            record_kind::RETRANSMIT => Ok(Event::Retransmit(Retransmit::try_from(
                &read_record::<RawRetransmit>(bytes, "retransmit")?.0,
            )?)),
            record_kind::KEEPALIVE_PROBE => {
                let raw = read_record::<RawProbe>(bytes, "keepalive probe")?.0;
                Ok(Event::KeepaliveProbe(KeepaliveProbe {
                    ts_ns: raw.ts_ns,
                    skaddr: raw.skaddr,
                    addrs: FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?,
                    owner: owner(
                        raw.flags & event_flags::OWNER_KNOWN != 0,
                        raw.pid,
                        &raw.comm,
                    ),
                    workload: Workload::unresolved(raw.cgroup),
                    probe: raw.probe,
                    keepalive: KeepaliveInForce::of(&raw.keepalive, &self.host),
                }))
            }
            record_kind::TIME_WAIT => {
                let raw = read_record::<RawTimeWait>(bytes, "time-wait")?.0;
                if !(time_wait::START..=time_wait::EXPIRE).contains(&raw.what) {
                    bail!("unknown time-wait event {}", raw.what);
                }
                Ok(Event::TimeWait(TimeWaitRecord {
                    what: raw.what,
                    in_connect: raw.flags & time_wait::IN_CONNECT != 0,
                    ts_ns: raw.ts_ns,
                    timer: raw.timer,
                    // On START; on EXPIRE from layout 7 (before, its tuple is zero).
                    addrs: if raw.what == time_wait::START || raw.tuple.family != 0 {
                        Some(FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?)
                    } else {
                        None
                    },
                    netns: raw.netns,
                }))
            }
            record_kind::TIME_WAIT_FLOW => {
                let raw = read_record::<RawTimeWaitFlow>(bytes, "time-wait flow")?.0;
                if raw.flags & !time_wait_flow::ACCEPTED != 0 {
                    bail!("unknown time-wait flow flags {:#x}", raw.flags);
                }
                Ok(Event::TimeWaitFlow(TimeWaitFlow {
                    ts_ns: raw.ts_ns,
                    skaddr: raw.skaddr,
                    addrs: FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?,
                    accepted: raw.flags & time_wait_flow::ACCEPTED != 0,
                }))
            }
            record_kind::PORT_FAILURE => {
                let raw = read_record::<RawPortFailure>(bytes, "port-failure")?.0;
                Ok(Event::PortFailure(PortFailure::try_from(&raw)?))
            }
            record_kind::DROP => {
                let raw = read_record::<RawDrop>(bytes, "drop")?.0;
                Ok(Event::Drop(packet_drop(&raw, &self.host)?))
            }
            other => bail!("unknown record kind {other}"),
        }
    }
}

// The records as `aya::Pod`, read unaligned.
mod raw;
use raw::*;

/// A drop record, its reason named with the facts of the machine that traced it.
fn packet_drop(raw: &DropEvent, host: &HostFacts) -> Result<PacketDrop> {
    let family_v6 = raw.tuple.family == family::INET6;
    if family_v6 != (raw.flags & drop_flags::IPV6 != 0) {
        return Err(anyhow!("drop record's family and flags disagree"));
    }
    Ok(PacketDrop {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        addrs: FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?,
        reason: host.drop_reason_name(raw.reason),
        netns: raw.netns,
        tcp_flags: raw.tcp_flags,
        conntrack: match raw.flags & drop_flags::CONNTRACK {
            0 => None,
            _ => Some(Conntrack {
                original: FlowAddrs::try_from(&raw.conntrack.original).map_err(|e| anyhow!(e))?,
                reply: FlowAddrs::try_from(&raw.conntrack.reply).map_err(|e| anyhow!(e))?,
                status: raw.conntrack.status,
            }),
        },
    })
}

impl TryFrom<&TransitionEvent> for Transition {
    type Error = anyhow::Error;
    fn try_from(raw: &TransitionEvent) -> Result<Self> {
        Ok(Transition {
            ts_ns: raw.ts_ns,
            skaddr: raw.skaddr,
            old: state(raw.old_state)?,
            new: state(raw.new_state)?,
            old_held_ns: (raw.flags & event_flags::OLD_DURATION_KNOWN != 0)
                .then_some(raw.old_state_ns),
            addrs: FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?,
            owner: owner(
                raw.flags & event_flags::OWNER_KNOWN != 0,
                raw.pid,
                &raw.comm,
            ),
            workload: Workload::unresolved(raw.cgroup),
            untracked: raw.flags & event_flags::UNTRACKED != 0,
        })
    }
}

impl TryFrom<&FlowState> for Lifecycle {
    type Error = anyhow::Error;
    fn try_from(raw: &FlowState) -> Result<Self> {
        let len = usize::from(raw.len);
        if len == 0 || len > PATH_SLOTS {
            bail!("flow path length {len} out of range");
        }
        let truncated = raw.flags & flow_flags::TRUNCATED != 0;
        let mut path = ArrayVec::new();
        for i in 0..len {
            let entered = raw.entered_ns[i];
            let next = raw.entered_ns.get(i + 1).copied().filter(|_| i + 1 < len);
            // With a truncated path, the slot before the last covers the states overwritten
            // in the last slot: its duration is not its own.
            let elided = truncated && i + 2 == len;
            let held_ns = match next {
                Some(next) if entered != 0 && next >= entered && !elided => Some(next - entered),
                _ => None,
            };
            path.push(PathStep {
                state: state(raw.states[i]).context("flow path")?,
                held_ns,
                retransmits: raw.rtx[i],
            });
        }
        let start_seen = raw.flags & flow_flags::START_SEEN != 0;
        Ok(Lifecycle {
            path,
            start_ns: start_seen.then_some(raw.entered_ns[0]),
            last_entered_ns: Some(raw.entered_ns[len - 1]).filter(|&ns| ns != 0),
            start_seen,
            truncated,
            retransmits: raw.rtx_total,
            owner: owner(raw.flags & flow_flags::OWNER_KNOWN != 0, raw.pid, &raw.comm),
            workload: Workload::unresolved(raw.cgroup),
        })
    }
}

impl FinishedFlow {
    /// A flow-end record, with the facts of the machine that traced it.
    fn decode(raw: &FlowEndEvent, host: &HostFacts) -> Result<Self> {
        let lifecycle = Lifecycle::try_from(&raw.flow)?;
        let states: ArrayVec<TcpState, PATH_SLOTS> =
            lifecycle.path.iter().map(|step| step.state).collect();
        let f = &raw.flow;
        let evidence = CloseEvidence::of(f, |reason| host.reset_reason_name(reason));
        Ok(FinishedFlow {
            ts_ns: raw.ts_ns,
            skaddr: raw.skaddr,
            addrs: FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?,
            close: CloseSide::of_path(&states),
            cause: classify(&states, &evidence),
            keepalive: evidence
                .keepalive_on
                .then(|| KeepaliveInForce::of(&raw.keepalive, host)),
            time_wait: None,
            vitals: (f.close_flags & close_flags::VITALS != 0)
                .then(|| FlowVitals::from(&raw.vitals)),
            drops: DropTally::default(),
            translated: None,
            evidence,
            lifecycle,
        })
    }
}

impl TryFrom<&RetransmitEvent> for Retransmit {
    type Error = anyhow::Error;
    fn try_from(raw: &RetransmitEvent) -> Result<Self> {
        Ok(Retransmit {
            ts_ns: raw.ts_ns,
            skaddr: raw.skaddr,
            state: state(raw.state)?,
            addrs: FlowAddrs::try_from(&raw.tuple).map_err(|e| anyhow!(e))?,
            owner: owner(
                raw.flags & event_flags::OWNER_KNOWN != 0,
                raw.pid,
                &raw.comm,
            ),
            workload: Workload::unresolved(raw.cgroup),
            err: (raw.flags & event_flags::ERR_VALID != 0).then_some(raw.err),
            untracked: raw.flags & event_flags::UNTRACKED != 0,
            synack: raw.flags & event_flags::SYNACK != 0,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
