//! The shared vocabulary, at the bottom of the tree: TCP states and endpoints, the decoded
//! events, close causes, workloads, the kernel's counters and the settings every layer reads.
//! It imports nothing of the tool but `text`.
pub mod cause;
pub mod counters;
pub mod drop_reasons;
pub mod events;
pub mod facts;
pub mod filter;
pub mod keepalive;
pub mod nat;
pub mod port_failure;
pub mod tcp;
pub mod vitals;
pub mod workload;
