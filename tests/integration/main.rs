//! Integration tests: the real tcptrace binary on the real kernel, as root.
//!
//! These never skip: if BPF cannot be loaded, the tracer does not start and every test
//! here fails with the tracer's own error message.
mod causes;
mod cli;
mod containers;
mod deploy;
mod exits;
mod exposition;
mod filters;
mod forecast;
mod idle;
mod kubelet;
mod lifecycle;
mod listen;
mod metrics;
mod nat;
mod nat_lab;
mod netns;
mod overload;
mod pods;
mod pods_churn;
mod ports;
mod privileges;
mod prometheus;
mod readme;
mod recording;
mod retransmit;
mod socket_storage;
mod support;
mod timewait;
mod top;
mod vitals;
