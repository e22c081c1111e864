//! The benchmark's reference rows, measured like tcptrace's own: Debian's libbpf-tools
//! tcpstates and tcplife, and a one-line bpftrace printf. Each tool is installed with apt-get
//! if it is missing.
use std::{path::Path, process::Command};

use anyhow::Result;

use super::{
    tracer::{mount_tracefs, RunningTracer},
    Bench, ModeRow,
};

/// Installs Debian's `package` unless `installed` says it is there.
fn install_package(package: &str, installed: bool) -> Result<()> {
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing {package} (a reference row of the benchmark) with apt-get");
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// tcpstates and tcplife, started as they are (output to a file; ready once they hold their
/// programs: they say nothing on attaching).
pub(super) fn libbpf_tools(bench: &Bench) -> Result<Vec<ModeRow>> {
    install_package("libbpf-tools", Path::new("/usr/sbin/tcpstates").exists())?;
    [
        ("libbpf-tools tcpstates", "/usr/sbin/tcpstates"),
        ("libbpf-tools tcplife", "/usr/sbin/tcplife"),
    ]
    .into_iter()
    .map(|(name, tool)| {
        let start = |out: &Path| RunningTracer::start(Command::new(tool), out, "");
        bench.mode(name, &start, tool, None)
    })
    .collect()
}

/// bpftrace printing every transition to a file.
pub(super) fn bpftrace(bench: &Bench) -> Result<ModeRow> {
    let installed = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    install_package("bpftrace", installed)?;
    mount_tracefs()?;
    let start = |out: &Path| {
        let mut cmd = Command::new("bpftrace");
        cmd.args([
            "-e",
            "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { printf(\"%d %s %d %d %d %d\\n\", pid, comm, args->sport, args->dport, args->oldstate, args->newstate); }",
        ]);
        RunningTracer::start(cmd, out, "Attaching")
    };
    bench.mode(
        "bpftrace (reference)",
        &start,
        "bpftrace -e 'tracepoint:sock:inet_sock_set_state { printf(...) }'",
        None,
    )
}
