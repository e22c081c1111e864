//! load → attach: what to load (the plan), preflight checks and their errors, BTF offsets,
//! the eBPF object, and the kernel-side state read back (counters, histograms, open flows).
pub mod btf;
pub mod floor;
pub mod histogram;
pub mod load_error;
pub mod loader;
