//! The host beside the eBPF programs: clocks, network namespaces and their port settings,
//! /proc/net counters and sock_diag dumps.
pub mod clock;
pub mod facts;
pub mod netns;
pub mod netns_reader;
pub mod procnet;
pub mod sockdiag;
