//! Installs what is missing, idempotently, saying what it does.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::{run, tool_path};

pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const LLVM_PACKAGE: &str = "llvm-22-dev";
/// The bpf-linker release proven with LLVM 22 and Rust 1.95 on these machines.
const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TOOLCHAIN: &str = "nightly";

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn say(what: &str) {
    eprintln!("xtask: {what}");
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .contains("install ok installed")
}

fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing {} ({why}) with apt-get",
        missing.join(" ")
    ));
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!(
            "{} missing and apt-get is not available: install them by hand",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {}", missing.join(" ")))
}

fn ensure_nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]));
    if !toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        say("installing the nightly toolchain with rust-src (the eBPF crate builds core with -Z build-std)");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]));
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to the nightly toolchain (needed by -Z build-std=core)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    if succeeds(
        Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", tool_path()),
    ) {
        return Ok(());
    }
    say(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (cargo install, about a minute)"
    ));
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", tool_path()))
}

/// rustfmt and clippy on the workspace's (stable) toolchain: the gates `cargo xtask test`
/// runs first.
pub fn ensure_lint_tools() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]));
    for component in ["rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            say(&format!(
                "adding {component} (cargo xtask test checks formatting and lints)"
            ));
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// rust-src, LLVM 22 and bpf-linker: what building the eBPF object needs.
pub fn ensure_build_tools() -> Result<()> {
    if !succeeds(Command::new("rustup").arg("--version")) {
        bail!("rustup not found: the eBPF build needs rustup's nightly toolchain");
    }
    ensure_nightly_rust_src()?;
    apt_install(&[LLVM_PACKAGE], "bpf-linker links against LLVM 22")?;
    ensure_bpf_linker()
}

/// qemu, busybox, cpio, curl and the decompressors: `old-kernels` boots Debian's kernels
/// (6.1, 6.12 and the newest, fetched from deb.debian.org) with tcptrace inside.
pub fn ensure_vm_tools() -> Result<()> {
    apt_install(
        &[
            "qemu-system-x86",
            "busybox-static",
            "cpio",
            "curl",
            "xz-utils",
            "zstd",
        ],
        "old-kernels boots Debian's 6.1, 6.12 and newest kernels under qemu",
    )
}

/// iproute2 and iptables: the integration tests stage drops in network namespaces;
/// prometheus (with promtool): a real server scrapes tcptrace and checks the shipped rules and
/// dashboard; podman with runc and busybox-static: a real container, from an image built
/// locally (no registry), is named by its container id; libbpf-tools and bpftrace: the
/// benchmark's reference rows (tcpstates, tcplife, a bpftrace one-liner), and what the
/// kernel emits is checked by hand with them; bpftool: the benchmark names each program
/// whole.
pub fn ensure_test_tools() -> Result<()> {
    apt_install(
        &[
            "iproute2",
            "iptables",
            "prometheus",
            "podman",
            "runc",
            "busybox-static",
            "libbpf-tools",
            "bpftrace",
            "bpftool",
        ],
        "the integration tests use network namespaces, DROP rules, a real Prometheus and a \
         real container runtime; the benchmark compares with libbpf-tools and bpftrace",
    )
}
