//! The ring records as `aya::Pod` (transparent wrappers: the common crate implements Pod only
//! for the types userspace passes to maps), for reading them unaligned.
use tcptrace_common::{
    DropEvent, FlowEndEvent, KeepaliveProbeEvent, PortFailureEvent, RetransmitEvent, TimeWaitEvent,
    TimeWaitFlowEvent, TransitionEvent,
};

#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawTransition(pub(super) TransitionEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawFlowEnd(pub(super) FlowEndEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawRetransmit(pub(super) RetransmitEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawProbe(pub(super) KeepaliveProbeEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawTimeWait(pub(super) TimeWaitEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawTimeWaitFlow(pub(super) TimeWaitFlowEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawPortFailure(pub(super) PortFailureEvent);
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct RawDrop(pub(super) DropEvent);
// SAFETY: as below.
unsafe impl aya::Pod for RawDrop {}
// SAFETY: as below.
unsafe impl aya::Pod for RawPortFailure {}
// SAFETY: as below.
unsafe impl aya::Pod for RawTimeWaitFlow {}
// SAFETY: as below.
unsafe impl aya::Pod for RawTimeWait {}
// SAFETY: as below.
unsafe impl aya::Pod for RawProbe {}
// SAFETY: transparent wrappers of #[repr(C)] records made only of integers with explicit
// padding (sizes asserted in tcptrace-common).
unsafe impl aya::Pod for RawTransition {}
// SAFETY: as above.
unsafe impl aya::Pod for RawFlowEnd {}
// SAFETY: as above.
unsafe impl aya::Pod for RawRetransmit {}
