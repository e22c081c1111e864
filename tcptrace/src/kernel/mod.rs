//! load → attach: what to load (`plan`), preflight checks and their errors, BTF offsets,
//! the eBPF object, and the kernel-side state read back (counters, histograms, open flows).
pub mod btf;
pub mod evict;
pub mod filter;
#[cfg(feature = "bench")]
pub mod floor;
pub mod histogram;
pub mod load_error;
pub mod loader;
pub mod plan;
pub mod reasons;
pub mod rings;
pub mod syscalls;
