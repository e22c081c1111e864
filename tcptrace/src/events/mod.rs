//! drain → decode: the session driver that owns the ring buffer, the records' decoding into
//! typed events, recordings (`record` / `report`) and the synthetic replay benchmark.
pub mod consumer;
pub mod decode;
pub mod dispatch;
pub mod model;
pub mod namespace_upkeep;
pub mod port_failure;
pub mod recording;
pub mod replay;
pub mod session;
pub mod vitals;
