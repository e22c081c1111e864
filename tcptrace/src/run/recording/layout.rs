//! The layout of the records a recording holds: this build's, and the older ones still read
//! (their records widened to this build's as they are read).
use serde::{Deserialize, Serialize};
use tcptrace_common::{
    record_kind, DropEvent, FlowEndEvent, FlowState, KeepaliveProbeEvent, PortFailureEvent,
    RetransmitEvent, TimeWaitEvent, TransitionEvent, RECORD_LAYOUT_VERSION,
};

/// Sizes of the record structs: a recording is read only by a build with the same layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub version: u32,
    pub little_endian: bool,
    pub transition: u32,
    pub flow_end: u32,
    pub retransmit: u32,
    pub keepalive_probe: u32,
    pub time_wait: u32,
    /// Absent (0) before layout 3.
    #[serde(default)]
    pub port_failure: u32,
    /// Absent (0) before layout 5.
    #[serde(default)]
    pub drop: u32,
}

impl Layout {
    pub fn this_build() -> Layout {
        let size = |n: usize| n as u32;
        Layout {
            version: RECORD_LAYOUT_VERSION,
            little_endian: cfg!(target_endian = "little"),
            transition: size(size_of::<TransitionEvent>()),
            flow_end: size(size_of::<FlowEndEvent>()),
            retransmit: size(size_of::<RetransmitEvent>()),
            keepalive_probe: size(size_of::<KeepaliveProbeEvent>()),
            time_wait: size(size_of::<TimeWaitEvent>()),
            port_failure: size(size_of::<PortFailureEvent>()),
            drop: size(size_of::<DropEvent>()),
        }
    }

    /// Layout 6: the sizes of this build's; its TIME_WAITs are the timer hooks' (a start
    /// and a cancel keyed by the timer's address, an expiry without the 4-tuple).
    pub fn version_6() -> Layout {
        Layout {
            version: 6,
            ..Layout::this_build()
        }
    }

    /// Layout 5: as layout 6, with drop records that end before the conntrack entry.
    /// Still read: its drops are widened (no entry).
    pub fn version_5() -> Layout {
        Layout {
            version: 5,
            drop: V5_DROP as u32,
            ..Layout::version_6()
        }
    }

    /// Layout 4: as layout 5, with flow records that end before the vitals (layout 5's
    /// drop records did not exist). Still read: its flows are widened (no vitals).
    pub fn version_4() -> Layout {
        Layout {
            version: 4,
            flow_end: V4_FLOW_END as u32,
            drop: 0,
            ..Layout::version_5()
        }
    }

    /// Layout 3: as layout 4, without the owner's cgroup id (8 bytes less each record,
    /// inside the flow in a flow record). Still read: its records are widened as they are
    /// read (cgroup 0: unknown).
    pub fn version_3() -> Layout {
        Layout {
            version: 3,
            transition: V3_TRANSITION as u32,
            flow_end: V3_FLOW_END as u32,
            retransmit: V3_RETRANSMIT as u32,
            keepalive_probe: V3_KEEPALIVE_PROBE as u32,
            port_failure: V3_PORT_FAILURE as u32,
            ..Layout::version_4()
        }
    }

    /// Layout 2: as layout 3, without port-failure records.
    pub fn version_2() -> Layout {
        Layout {
            version: 2,
            port_failure: 0,
            ..Layout::version_3()
        }
    }

    /// Layout 1: as layout 2, with a 64-byte `TimeWaitEvent` (no namespace: widened to
    /// namespace 0, the recording host's).
    pub fn version_1() -> Layout {
        Layout {
            version: 1,
            time_wait: V1_TIME_WAIT as u32,
            ..Layout::version_2()
        }
    }

    /// Whether this build reads recordings of this layout.
    pub(super) fn readable(&self) -> bool {
        [
            Layout::this_build(),
            Layout::version_6(),
            Layout::version_5(),
            Layout::version_4(),
            Layout::version_3(),
            Layout::version_2(),
            Layout::version_1(),
        ]
        .contains(self)
    }
}

/// Sizes of the records before layout 4 added the cgroup id.
pub(super) const V3_TRANSITION: usize = std::mem::offset_of!(TransitionEvent, cgroup);
pub(super) const V3_RETRANSMIT: usize = std::mem::offset_of!(RetransmitEvent, cgroup);
pub(super) const V3_KEEPALIVE_PROBE: usize = std::mem::offset_of!(KeepaliveProbeEvent, cgroup);
pub(super) const V3_PORT_FAILURE: usize = std::mem::offset_of!(PortFailureEvent, cgroup);
pub(super) const V3_FLOW_END: usize = V4_FLOW_END - 8;
/// A flow record's size before layout 5 appended the vitals.
pub(super) const V4_FLOW_END: usize = std::mem::offset_of!(FlowEndEvent, vitals);
/// Where a flow record's cgroup id lies (before layout 4, the keepalive settings began there).
pub(in crate::run::recording) const FLOW_END_CGROUP: usize =
    std::mem::offset_of!(FlowEndEvent, flow) + std::mem::offset_of!(FlowState, cgroup);
const _: () = assert!(
    V3_TRANSITION == 96
        && V3_RETRANSMIT == 88
        && V3_KEEPALIVE_PROBE == 104
        && V3_PORT_FAILURE == 64
        && V3_FLOW_END == 200
        && V4_FLOW_END == 208
        && V4_FLOW_END + size_of::<tcptrace_common::Vitals>() == size_of::<FlowEndEvent>()
        && FLOW_END_CGROUP + 8 == std::mem::offset_of!(FlowEndEvent, keepalive)
);

/// A drop record's size before layout 6 appended the conntrack entry.
pub(super) const V5_DROP: usize = std::mem::offset_of!(DropEvent, conntrack);
const _: () = assert!(V5_DROP == 72);

/// A layout-1 `TimeWaitEvent`'s size: the fields up to `netns`.
pub(super) const V1_TIME_WAIT: usize = std::mem::offset_of!(TimeWaitEvent, netns);
const _: () = assert!(V1_TIME_WAIT == 64);

/// A record of an older layout widened to this build's: the fields added since are 0 (the
/// namespace of a layout-1 TIME_WAIT, the cgroup before layout 4, a flow's vitals before
/// layout 5, with its `close_flags::VITALS` clear; a drop's conntrack entry before layout 6,
/// with `drop_flags::CONNTRACK` clear). Records already of this build's size are
/// handed back untouched.
pub(super) fn widen_record<'a>(record: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if kind_of(record) == Some(record_kind::FLOW_END)
        && (record.len() == V3_FLOW_END || record.len() == V4_FLOW_END)
    {
        scratch.clear();
        if record.len() == V3_FLOW_END {
            scratch.extend_from_slice(&record[..FLOW_END_CGROUP]);
            scratch.resize(FLOW_END_CGROUP + 8, 0);
            scratch.extend_from_slice(&record[FLOW_END_CGROUP..]);
        } else {
            scratch.extend_from_slice(record);
        }
        scratch.resize(size_of::<FlowEndEvent>(), 0);
        return scratch;
    }
    widen_other(record, scratch)
}

fn kind_of(record: &[u8]) -> Option<u32> {
    record
        .get(..4)
        .map(|k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]))
}

/// [`widen_record`] for records that gained one field in one place.
fn widen_other<'a>(record: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let Some(kind) = kind_of(record) else {
        return record;
    };
    let (old, new, insert_at) = match kind {
        record_kind::TIME_WAIT => (V1_TIME_WAIT, size_of::<TimeWaitEvent>(), V1_TIME_WAIT),
        record_kind::TRANSITION => (V3_TRANSITION, size_of::<TransitionEvent>(), V3_TRANSITION),
        record_kind::RETRANSMIT => (V3_RETRANSMIT, size_of::<RetransmitEvent>(), V3_RETRANSMIT),
        record_kind::KEEPALIVE_PROBE => (
            V3_KEEPALIVE_PROBE,
            size_of::<KeepaliveProbeEvent>(),
            V3_KEEPALIVE_PROBE,
        ),
        record_kind::PORT_FAILURE => (
            V3_PORT_FAILURE,
            size_of::<PortFailureEvent>(),
            V3_PORT_FAILURE,
        ),
        record_kind::DROP => (V5_DROP, size_of::<DropEvent>(), V5_DROP),
        _ => return record,
    };
    if record.len() != old {
        return record;
    }
    scratch.clear();
    scratch.extend_from_slice(&record[..insert_at]);
    scratch.resize(insert_at + (new - old), 0);
    scratch.extend_from_slice(&record[insert_at..]);
    scratch
}
