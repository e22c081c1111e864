//! `aya::Pod` for the types userspace passes to maps (the `user` feature).
use super::*;
// SAFETY: every type below is #[repr(C)], Copy, made only of integers and integer arrays with
// explicit padding fields, so every bit pattern is valid and there are no implicit holes.
unsafe impl aya::Pod for Tuple {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowState {}
// SAFETY: as above.
unsafe impl aya::Pod for ProgramConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Owner {}
// SAFETY: as above (arrays of u64 only).
unsafe impl aya::Pod for Counters {}
// SAFETY: as above.
unsafe impl aya::Pod for TimerEntry {}
// SAFETY: as above (arrays of u64 only).
unsafe impl aya::Pod for DurationHistogram {}
// SAFETY: as above.
unsafe impl aya::Pod for CallArgs {}
// SAFETY: as above.
unsafe impl aya::Pod for AddrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for TimeWaitKey {}
// SAFETY: as above (an array of u64 only).
unsafe impl aya::Pod for DropCounts {}
