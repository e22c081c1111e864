//! `cargo xtask setup | build | run | test | bench`: everything is built and run through here.
use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod guest;
mod image;
mod image_check;
mod image_workloads;
mod install;
mod oldkernels;
mod setup;
mod soak;
mod stackcheck;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test tcptrace")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building needs (rust-src, LLVM 22, bpf-linker) and the test tools
    /// (iproute2, iptables); does nothing when all is present.
    Setup,
    /// Build the eBPF programs and the tcptrace binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run tcptrace with ARGS (as root).
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for tcptrace (after `--`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Measure connections/s with the tracer off and on, kernel and user cost, memory per
    /// flow, aggregation throughput, against bpftrace (as root).
    Bench(bench::BenchArgs),
    /// Build (optimised) and install tcptrace: the binary into PREFIX/bin, its man page into
    /// PREFIX/share/man/man1, bash, zsh and fish completions under PREFIX/share.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage the files under this directory instead (a package's root).
        #[arg(long, value_name = "DIR")]
        destdir: Option<PathBuf>,
    },
    /// Build an OCI image of tcptrace with podman, offline (the binary and the libraries it
    /// loads, nothing else), tagged tcptrace:<version>; --push REGISTRY/NAME pushes it.
    Image(image::ImageArgs),
    /// Write shell completions (bash, zsh, fish) for tcptrace into DIR.
    Completions {
        #[arg(long, default_value = "target/completions")]
        out: PathBuf,
    },
    /// Write the tcptrace(1) man page into DIR.
    Man {
        #[arg(long, default_value = "target/man")]
        out: PathBuf,
    },
    /// Helper of `bench`: holds connections open.
    /// Loopback load only (for profiling by hand): connections/s for a while.
    #[command(hide = true)]
    BenchLoad {
        /// Connections per second (default: flat out).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    #[command(hide = true)]
    BenchHold {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        ports: String,
    },
    /// tcptrace under steady load, a burst and idle for --minutes (default 10), sampled;
    /// exits non-zero on any drift (flows vs connections, TIME_WAIT vs the kernel, memory,
    /// fds).
    Soak(soak::SoakArgs),
    /// Boot Debian's 6.1, 6.12 and newest kernels under qemu with tcptrace inside: loading,
    /// filters, and keepalive timeout, half-open, SYN timeout and TIME_WAIT expiry staged with
    /// iptables, and Debian 11's 5.10, which must be refused in one line (~4 minutes; `test`
    /// checks the stack budget the older kernels enforce).
    OldKernels,
    /// Build, then check the kernel programs' stack along every call chain against the
    /// 512-byte limit of kernels before 6.13 (also part of `test`).
    Stackcheck,
    /// Inside an `old-kernels` guest: the failure scenarios under one tracer.
    #[command(hide = true)]
    GuestScenarios {
        #[arg(long)]
        tcptrace: PathBuf,
    },
    /// Run every test: unit tests and, as root on the real kernel, the integration tests.
    Test {
        /// Only the fuzz targets (record decoder, recording reader, sock_diag parser, filter
        /// values), each for --fuzz-secs, optimised.
        #[arg(long)]
        fuzz: bool,
        /// How long each fuzz target runs with --fuzz.
        #[arg(long, default_value_t = 60, requires = "fuzz")]
        fuzz_secs: u64,
        /// Extra arguments for the test binaries (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// PATH with cargo's bin dir and LLVM 22's tools in front (bpf-linker needs both).
pub fn tool_path() -> OsString {
    let mut paths = vec![PathBuf::from(setup::LLVM_BIN)];
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        paths.push(Path::new(&home).join("bin"));
    }
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).expect("PATH entries contain no separator")
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()).env("PATH", tool_path());
    cmd
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(release: bool) -> Result<PathBuf> {
    build_with(release, &[])
}

/// Builds tcptrace with cargo `features` (`bench`: the benchmark's kernel programs).
fn build_with(release: bool, features: &[&str]) -> Result<PathBuf> {
    setup::ensure_build_tools()?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "tcptrace"]);
    if release {
        cmd.arg("--release");
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("tcptrace"))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{what} needs root (loading eBPF programs, network namespaces): run it as root");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The packages built for the host (the kernel crate builds only for BPF, inside tcptrace's
/// build script): what `test` lints and tests.
const HOST_PACKAGES: [&str; 6] = [
    "--package",
    "tcptrace-common",
    "--package",
    "tcptrace",
    "--package",
    "xtask",
];

fn test(args: &[OsString]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    setup::ensure_build_tools()?;
    setup::ensure_test_tools()?;
    setup::ensure_lint_tools()?;
    require_root("cargo xtask test")?;
    // The gates first: formatting and lints (warnings are errors), counted as tests.
    let gates = [
        (
            "formatting (cargo fmt --check)",
            vec!["fmt", "--all", "--", "--check"],
        ),
        (
            "lints (cargo clippy --all-targets -D warnings)",
            [
                &["clippy"][..],
                &HOST_PACKAGES,
                &["--all-targets", "--", "-D", "warnings"],
            ]
            .concat(),
        ),
    ];
    let mut gate_results = Vec::new();
    for (name, args) in gates {
        gate_results.push((name, run(cargo().args(&args))));
    }
    let mut cmd = cargo();
    cmd.args(["test", "--no-fail-fast"]).args(HOST_PACKAGES);
    cmd.arg("--").args(args);
    // Pass the output through, adding up every test binary's result line.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split([';', '.'])
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    // The checks xtask runs itself, printed and counted as cargo's own tests.
    let mut own = |result: Result<()>, ok: &str, failing: &str| match result {
        Ok(()) => {
            println!("test {ok} ... ok");
            passed += 1;
        }
        Err(e) => {
            println!("test {failing} ... FAILED: {e:#}");
            failed += 1;
        }
    };
    for (name, result) in gate_results {
        own(result, name, name);
    }
    own(
        stackcheck::check_built("debug"),
        "kernel programs fit the 512-byte stack of kernels before 6.13",
        "kernel programs fit the stack of kernels before 6.13",
    );
    own(
        install::check(&workspace_root().join("target/debug/tcptrace")),
        "cargo xtask install (binary, man page, completions) used as installed",
        "cargo xtask install",
    );
    own(
        image_check::check(&workspace_root().join("target/debug/tcptrace")),
        "the image (cargo xtask image) run as deploy/daemonset.yaml says traces and serves /metrics, names a pod and a podman container to a real Prometheus, and waits for a pod as `flows --pod`",
        "the image run as deploy/daemonset.yaml says",
    );
    // The short soak: the debug build under 60 s of load, a burst and idle.
    let soak_args = soak::SoakArgs::short(3_000.0);
    own(
        soak::run(&soak_args, &workspace_root().join("target/debug/tcptrace")),
        "soak (60 s: steady, burst, idle; flows, memory, fds)",
        "soak (60 s)",
    );
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// `cargo xtask test --fuzz`: each fuzz target for `secs`, in an optimised build.
fn fuzz(secs: u64) -> Result<()> {
    setup::ensure_build_tools()?;
    run(cargo()
        .args([
            "test",
            "--release",
            "--package",
            "tcptrace",
            "--bin",
            "tcptrace",
            "fuzz_tests::",
            "--",
            "--nocapture",
            "--test-threads",
            "2",
        ])
        .env("TCPTRACE_FUZZ_SECS", secs.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::ensure_build_tools()
            .and_then(|()| setup::ensure_test_tools())
            .map(|()| eprintln!("xtask: setup complete: build and test tools are installed")),
        Task::Build { release } => build(release).map(|bin| {
            eprintln!("xtask: built {}", bin.display());
        }),
        Task::Run { release, args } => build(release).and_then(|bin| {
            require_root("tcptrace")?;
            // Replace this process, so that Ctrl-C reaches tcptrace alone and its summary
            // and exit code are the command's.
            let err = Command::new(&bin).args(&args).exec();
            Err(err).with_context(|| format!("cannot start {}", bin.display()))
        }),
        Task::Test {
            fuzz: true,
            fuzz_secs,
            ..
        } => fuzz(fuzz_secs),
        Task::Test { args, .. } => test(&args),
        Task::Soak(args) => build(true).and_then(|bin| {
            require_root("cargo xtask soak")?;
            soak::run(&args, &bin)
        }),
        Task::Stackcheck => build(false).and_then(|_| {
            stackcheck::check_built("debug")?;
            println!("kernel programs fit the 512-byte stack of kernels before 6.13");
            Ok(())
        }),
        Task::OldKernels => build(false).and_then(|bin| {
            require_root("cargo xtask old-kernels")?;
            oldkernels::test(&bin)
        }),
        Task::GuestScenarios { tcptrace } => guest::run(&tcptrace),
        Task::BenchHold { count, ports } => bench::hold(count, &ports),
        Task::BenchLoad { rate, secs } => bench::load_only(rate, secs),
        Task::Image(args) => image::run(&args),
        Task::Install { prefix, destdir } => build(true).and_then(|bin| {
            let written = install::install(&bin, &prefix, destdir.as_deref())?;
            for file in &written {
                eprintln!("xtask: installed {}", file.display());
            }
            let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|dir| dir == prefix.join("bin"));
            if destdir.is_none() && !on_path {
                eprintln!(
                    "xtask: {} is not on PATH: add it, or run {}",
                    prefix.join("bin").display(),
                    written[0].display()
                );
            }
            Ok(())
        }),
        Task::Completions { out } => build(false).and_then(|bin| {
            let dir = workspace_root().join(out);
            install::completions(&bin, &dir)?;
            eprintln!("xtask: completions written to {}", dir.display());
            Ok(())
        }),
        Task::Man { out } => build(false).and_then(|bin| {
            let page = install::man(&bin, &workspace_root().join(out))?;
            eprintln!("xtask: man page written to {}", page.display());
            Ok(())
        }),
        Task::Bench(args) => bench::check_rows(&args)
            .and_then(|()| build_with(true, &["bench"]))
            .and_then(|bin| {
                require_root("cargo xtask bench")?;
                bench::run(&args, bin)
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
