//! `tcptrace record` and `tcptrace report`: the raw event stream to a file at ring-buffer
//! speed, rendered later in any line mode (like `perf record` / `perf report`).
pub mod format;
mod record;
mod report;

pub use record::Recorder;
pub use report::run as report;
