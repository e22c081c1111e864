//! The host beside the eBPF programs: clocks, /proc/net counters and sock_diag dumps.
pub mod clock;
pub mod facts;
pub mod procnet;
pub mod sockdiag;
