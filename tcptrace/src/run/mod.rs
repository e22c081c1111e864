//! The drivers, at the top of the tree: the live session (load, attach, drain, signals, the
//! deadline, housekeeping), the dispatcher every driver feeds (decode → state → consumer),
//! recordings (`record`'s sink, `report` reading one back) and the synthetic replay benchmark.
pub mod dispatch;
pub mod namespace_upkeep;
pub mod recording;
pub mod replay;
pub mod session;
