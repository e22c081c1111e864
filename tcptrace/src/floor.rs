//! `tcptrace hook-floor` (hidden, for `cargo xtask bench`): attaches an empty program to
//! inet_sock_set_state and waits for Ctrl-C or SIGTERM, so that the benchmark can measure
//! what the hook itself costs on this machine before any work is done in it.
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use aya::{programs::BtfTracePoint, EbpfLoader};

pub fn run(btf: &Path) -> Result<()> {
    let mut ebpf = EbpfLoader::new()
        .load(crate::loader::EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let kernel_btf = aya::Btf::parse_file(btf, aya::Endianness::default())
        .with_context(|| format!("cannot parse BTF from {}", btf.display()))?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut("inet_sock_set_state_floor")
        .ok_or_else(|| anyhow!("program inet_sock_set_state_floor missing"))?
        .try_into()
        .context("inet_sock_set_state_floor is not a BTF tracepoint")?;
    prog.load("inet_sock_set_state", &kernel_btf)
        .context("loading inet_sock_set_state_floor")?;
    prog.attach()
        .context("attaching inet_sock_set_state_floor")?;
    eprintln!("tcptrace: tracing nothing: an empty tp_btf/inet_sock_set_state (Ctrl-C to stop)");
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
