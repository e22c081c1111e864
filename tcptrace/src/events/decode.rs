//! Ring-buffer bytes → typed events. Every record's length is checked, it is read unaligned,
//! and converted field by field with `TryFrom`; nothing is transmuted.
use std::mem::size_of;

use anyhow::{anyhow, bail, Context as _, Result};
use arrayvec::ArrayVec;
use tcptrace_common::{
    close_flags, event_flags, flow_flags, record_kind, time_wait, time_wait_flow, FlowEndEvent,
    FlowState, Keepalive, RetransmitEvent, TransitionEvent, PATH_SLOTS,
};

use crate::{
    events::model::{comm_to_string, CloseSide, FlowAddrs, PathStep, Process, TcpState, TimeWait},
    events::port_failure::PortFailure,
    events::vitals::{DropTally, FlowVitals, PacketDrop},
    host::{facts::HostFacts, identity::Workload},
    state::{
        cause::{classify, CloseCause, CloseEvidence},
        keepalive::{jiffies_ns, settings, KeepaliveSettings},
    },
};

/// Keepalive as it stood on a socket: the settings in force and how long the peer had been
/// silent (resolved with the tracing machine's HZ and sysctls when decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepaliveInForce {
    pub settings: KeepaliveSettings,
    pub silent_ns: Option<u64>,
}

impl KeepaliveInForce {
    fn of(raw: &Keepalive, host: &HostFacts) -> KeepaliveInForce {
        KeepaliveInForce {
            settings: settings(raw, host),
            silent_ns: jiffies_ns(raw.silent_j, host.hz),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub old: TcpState,
    pub new: TcpState,
    /// Time spent in `old`, when the flow was seen entering it.
    pub old_held_ns: Option<u64>,
    pub addrs: FlowAddrs,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
    /// The flow table was full: this flow is not tracked.
    pub untracked: bool,
}

/// A flow's path as the kernel kept it (at most `PATH_SLOTS` states, held inline: no
/// allocation per flow read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub path: ArrayVec<PathStep, PATH_SLOTS>,
    /// When the first state was entered, if seen.
    pub start_ns: Option<u64>,
    /// When the current (last) state was entered.
    pub last_entered_ns: Option<u64>,
    pub start_seen: bool,
    pub truncated: bool,
    pub retransmits: u32,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedFlow {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub addrs: FlowAddrs,
    pub lifecycle: Lifecycle,
    pub close: CloseSide,
    pub cause: CloseCause,
    pub evidence: CloseEvidence,
    /// Keepalive settings and the peer's silence at CLOSE, when SO_KEEPALIVE was on.
    pub keepalive: Option<KeepaliveInForce>,
    /// The TIME_WAIT that followed, when this side closed first (filled by the tracker).
    pub time_wait: Option<TimeWait>,
    /// Bytes, segments and RTT at CLOSE (a TCP socket's; none in recordings before layout 5).
    pub vitals: Option<FlowVitals>,
    /// Its packets the kernel dropped, by reason (joined by the dispatcher).
    pub drops: DropTally,
}

/// A timewait socket's timer armed, cancelled or fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWaitRecord {
    pub what: u8,
    pub in_connect: bool,
    pub ts_ns: u64,
    pub timer: u64,
    pub addrs: Option<FlowAddrs>,
    /// The timewait socket's network namespace (inode; on START, 0 in layout-1 recordings).
    pub netns: u32,
}

/// A flow reached CLOSE and enters TIME_WAIT, in brief (`tcptrace metrics`, which counts
/// everything else in the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWaitFlow {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub addrs: FlowAddrs,
    /// The accepting (server) side: its path began in SYN_RECV.
    pub accepted: bool,
}

/// A keepalive probe went out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepaliveProbe {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub addrs: FlowAddrs,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
    /// This probe's number (1 for the first unanswered probe).
    pub probe: u8,
    pub keepalive: KeepaliveInForce,
}

impl FinishedFlow {
    /// Total lifetime, when the start was seen.
    pub fn life_ns(&self) -> Option<u64> {
        let start = self.lifecycle.start_ns?;
        self.ts_ns.checked_sub(start)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retransmit {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub state: TcpState,
    pub addrs: FlowAddrs,
    pub owner: Option<Process>,
    /// The socket's cgroup and, once resolved, who that is (container, pod, unit).
    pub workload: Workload,
    pub err: Option<i32>,
    pub untracked: bool,
    /// A listener's SYN-ACK sent again (`skaddr` is the request socket; the child's flow
    /// counts it in SYN_RECV when it ends).
    pub synack: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    /// Boxed (~460 bytes, its path inline): moved as a pointer from here to the printer, or
    /// into the TIME_WAIT tracker that holds it until its TIME_WAIT ends.
    FlowEnd(Box<FinishedFlow>),
    Retransmit(Retransmit),
    KeepaliveProbe(KeepaliveProbe),
    TimeWait(TimeWaitRecord),
    TimeWaitFlow(TimeWaitFlow),
    PortFailure(PortFailure),
    Drop(PacketDrop),
}

impl Event {
    /// The workload the event names, to resolve (none for TIME_WAIT records).
    pub fn workload_mut(&mut self) -> Option<&mut Workload> {
        match self {
            Event::Transition(t) => Some(&mut t.workload),
            Event::FlowEnd(f) => Some(&mut f.lifecycle.workload),
            Event::Retransmit(r) => Some(&mut r.workload),
            Event::KeepaliveProbe(p) => Some(&mut p.workload),
            Event::PortFailure(p) => Some(&mut p.workload),
            Event::TimeWait(_) | Event::TimeWaitFlow(_) | Event::Drop(_) => None,
        }
    }

    /// When it happened (kernel time).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Transition(t) => t.ts_ns,
            Event::FlowEnd(f) => f.ts_ns,
            Event::Retransmit(r) => r.ts_ns,
            Event::KeepaliveProbe(p) => p.ts_ns,
            Event::TimeWait(t) => t.ts_ns,
            Event::TimeWaitFlow(f) => f.ts_ns,
            Event::PortFailure(p) => p.ts_ns,
            Event::Drop(d) => d.ts_ns,
        }
    }
}

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
                    addrs: if raw.what == time_wait::START {
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
                Ok(Event::Drop(PacketDrop::decode(&raw, &self.host)?))
            }
            other => bail!("unknown record kind {other}"),
        }
    }
}

// The records as `aya::Pod`, read unaligned.
#[path = "decode_raw.rs"]
mod raw;
use raw::*;

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

impl Lifecycle {
    /// The accepting side's flow: its path began in SYN_RECV (a listener's child). The kernel
    /// sends the same of a flow in brief (`time_wait_flow::ACCEPTED`).
    pub fn accepted(&self) -> bool {
        self.path.first().map(|s| s.state) == Some(TcpState::SynRecv)
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
        let evidence = CloseEvidence {
            err: f.err,
            reset_received: f.close_flags & close_flags::RESET_RECEIVED != 0,
            reset_sent: (f.close_flags & close_flags::RESET_SENT != 0)
                .then(|| host.reset_reason_name(f.reset_reason)),
            keepalive_on: f.close_flags & close_flags::KEEPALIVE_ON != 0,
            user_timeout: f.close_flags & close_flags::USER_TIMEOUT != 0,
            probes: f.probes,
            retransmits: f.rtx_total,
        };
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
#[path = "decode_tests.rs"]
pub(crate) mod tests;
