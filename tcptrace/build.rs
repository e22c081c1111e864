use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the kernel programs (tcptrace-ebpf) for bpfel-unknown-none with bpf-linker and puts
/// the object in OUT_DIR, where `loader.rs` includes it; with the `bench` feature, with the
/// benchmark's programs. `cargo xtask setup` installs what
/// this needs (rust-src, bpf-linker, LLVM).
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
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [Package {
            name: "tcptrace-ebpf",
            root_dir,
            features,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
