//! `tcptrace hook-floor` (hidden, for `cargo xtask bench`): attaches an empty program to
//! inet_sock_set_state and waits for Ctrl-C or SIGTERM, so that the benchmark can measure
//! what the hook itself costs on this machine before any work is done in it; with
//! `--variant`, a program that keeps a small flow state in socket-local storage or in a
//! global hash instead (what the place a flow's state lives costs per transition), or the
//! hash's state and a record per transition into one ring or a ring per CPU (what a record
//! costs, and what sharing one ring between CPUs costs).
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{MapData, RingBuf},
    programs::BtfTracePoint,
    EbpfLoader,
};

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
    /// The hash's state and a 104-byte record per transition into one ring (16 MiB) that
    /// every CPU shares, drained here.
    HashRing,
    /// The same with the record into the ring of the CPU it runs on (two rings of 8 MiB,
    /// chosen by the CPU's parity).
    HashRingPerCpu,
}

impl Variant {
    fn program(self) -> &'static str {
        match self {
            Variant::Empty => "inet_sock_set_state_floor",
            Variant::SkStorage => "inet_sock_set_state_sk_storage",
            Variant::Hash => "inet_sock_set_state_hash",
            Variant::HashRing => "inet_sock_set_state_hash_ring",
            Variant::HashRingPerCpu => "inet_sock_set_state_hash_ring_per_cpu",
        }
    }

    /// The size of each ring the program writes to (none: 0).
    fn ring_bytes(self) -> u32 {
        match self {
            Variant::HashRing => 16 << 20,
            Variant::HashRingPerCpu => 8 << 20,
            _ => 0,
        }
    }
}

/// Reads and drops every record of the probe's rings, every 2 ms (the programs never wake a
/// reader), until the process is stopped.
async fn drain(mut rings: Vec<RingBuf<MapData>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(2));
    loop {
        tick.tick().await;
        for ring in &mut rings {
            while ring.next().is_some() {}
        }
    }
}

pub fn run(btf: &Path, variant: Variant) -> Result<()> {
    use tcptrace_common::names::map;
    let name = variant.program();
    let hash = matches!(
        variant,
        Variant::Hash | Variant::HashRing | Variant::HashRingPerCpu
    );
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(map::PROBE_HASH, if hash { 262_144 } else { 1 });
    if variant.ring_bytes() > 0 {
        loader.map_max_entries(map::PROBE_RING, variant.ring_bytes());
        loader.map_max_entries(map::PROBE_RING_ODD_CPU, variant.ring_bytes());
    }
    let mut ebpf = loader
        .load(crate::kernel::loader::EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let mut rings = Vec::new();
    if variant.ring_bytes() > 0 {
        for ring in [map::PROBE_RING, map::PROBE_RING_ODD_CPU] {
            let taken = ebpf
                .take_map(ring)
                .ok_or_else(|| anyhow!("map {ring} missing"))?;
            rings.push(RingBuf::try_from(taken).with_context(|| format!("{ring} is not a ring"))?);
        }
    }
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
            () = drain(rings) => Ok(()),
        }
    })?;
    Ok(())
}
