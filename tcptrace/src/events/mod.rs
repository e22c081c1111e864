//! drain → decode: the session driver that owns the ring buffer, the records' decoding into
//! typed events, recordings (`record` / `report`) and the synthetic replay benchmark.
pub mod decode;
pub mod drain;
pub mod model;
pub mod pipeline;
pub mod recording;
pub mod replay;
