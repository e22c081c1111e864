//! `tcptrace hook-floor` (hidden, for `cargo xtask bench`): attaches an empty program to
//! inet_sock_set_state and waits for Ctrl-C or SIGTERM, so that the benchmark can measure
//! what the hook itself costs on this machine before any work is done in it; with
//! `--variant`, a program that keeps a small flow state in socket-local storage or in a
//! global hash instead (what the place a flow's state lives costs per transition).
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use aya::{programs::BtfTracePoint, EbpfLoader};

/// Which program `hook-floor` attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Nothing: the hook's own cost.
    Empty,
    /// A flow state in socket-local storage, created at the socket's first transition.
    SkStorage,
    /// A flow state in a preallocated global hash keyed by the socket's address, deleted at
    /// CLOSE.
    Hash,
}

impl Variant {
    fn program(self) -> &'static str {
        match self {
            Variant::Empty => "inet_sock_set_state_floor",
            Variant::SkStorage => "inet_sock_set_state_sk_storage",
            Variant::Hash => "inet_sock_set_state_hash",
        }
    }
}

pub fn run(btf: &Path, variant: Variant) -> Result<()> {
    let name = variant.program();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(
            tcptrace_common::names::map::PROBE_HASH,
            if variant == Variant::Hash { 262_144 } else { 1 },
        )
        .load(crate::kernel::loader::EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let kernel_btf = aya::Btf::parse_file(btf, aya::Endianness::default())
        .with_context(|| format!("cannot parse BTF from {}", btf.display()))?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .try_into()
        .with_context(|| format!("{name} is not a BTF tracepoint"))?;
    prog.load("inet_sock_set_state", &kernel_btf).map_err(|e| {
        crate::kernel::load_error::explain(e.into(), &format!("loading program {name}"))
    })?;
    prog.attach().with_context(|| format!("attaching {name}"))?;
    eprintln!("tcptrace: tracing nothing: {name} on tp_btf/inet_sock_set_state (Ctrl-C to stop)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
