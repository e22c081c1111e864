use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the kernel programs (tcptrace-ebpf) for bpfel-unknown-none with bpf-linker and puts
/// the two objects (a ring per CPU, and one ring for every CPU) in OUT_DIR, where `loader.rs`
/// includes them; with the `bench` feature, with the benchmark's programs. `cargo xtask setup`
/// installs what this needs (rust-src, bpf-linker, LLVM).
fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "tcptrace-ebpf")
        .ok_or_else(|| anyhow!("tcptrace-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tcptrace-ebpf has no directory"))?
        .as_str();
    // The programs are built from tcptrace-common too (the records, the flow's code): a
    // change there must rebuild them, not only a change in tcptrace-ebpf.
    let common = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "tcptrace-common")
        .and_then(|p| p.manifest_path.parent())
        .ok_or_else(|| anyhow!("tcptrace-common package not found"))?;
    println!("cargo:rerun-if-changed={common}");
    // The benchmark-only programs (`cargo xtask bench` builds with `--features bench`).
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_BENCH");
    let bench: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH").is_some() {
        &["bench"]
    } else {
        &[]
    };
    let one_ring: Vec<&str> = bench.iter().copied().chain(["one-ring"]).collect();
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    let object = std::path::Path::new(&out_dir).join("tcptrace");
    // Two objects: first the one whose programs write into one ring for every CPU (for
    // kernels whose verifier cannot take a ring per CPU), moved aside; then the usual one.
    for (features, name) in [(&one_ring[..], Some("tcptrace-one-ring")), (bench, None)] {
        aya_build::build_ebpf(
            [Package {
                name: "tcptrace-ebpf",
                root_dir,
                features,
                ..Default::default()
            }],
            Toolchain::default(),
        )?;
        if let Some(name) = name {
            std::fs::rename(&object, object.with_file_name(name))
                .with_context(|| format!("moving {} aside", object.display()))?;
        }
    }
    Ok(())
}
