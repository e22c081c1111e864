//! tcptrace on Debian's older kernels (6.1 and 6.12), booted under qemu with software
//! emulation: the programs must load where the verifier is stricter (before Linux 6.13 a
//! whole call chain shares 512 bytes of stack) and the tracepoints older (tcp_retransmit_skb
//! without `err`). `cargo xtask old-kernels` runs it (not part of `cargo xtask test`: under
//! emulation a tracer occasionally took minutes to stop; `test` checks the stack budget).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{run, setup, workspace_root};

/// (name, apt package pattern) of each kernel.
const KERNELS: [(&str, &str); 2] = [
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
];

/// Each scenario the guest runs: (name, tcptrace arguments, check on (exit, flows, flows to
/// port 7000)). Every scenario makes 3 connections to port 7000 and 3 to port 7001.
type Check = fn(u32, u32, u32) -> bool;
const SCENARIOS: [(&str, &str, Check); 4] = [
    // Every program (transitions, flows, retransmits, alerts, TIME_WAIT): both sides of the
    // 6 connections and the 6 listeners.
    ("all", "all", |exit, flows, _| exit == 0 && flows >= 12),
    // A remote-port filter: the 3 clients of port 7000 only.
    ("remote-port", "flows -D 7000", |exit, flows, to| {
        exit == 0 && flows == 3 && to == 3
    }),
    // A pid filter that matches nothing here (pid 1 makes no connection).
    ("pid", "flows -p 1 --no-time-wait", |exit, flows, _| {
        exit == 0 && flows == 0
    }),
    // A cgroup filter (the root: everything) with a flow table allocated on demand.
    (
        "cgroup-on-demand",
        "flows --cgroup / --flow-memory on-demand --max-flows 1024",
        |exit, flows, _| exit == 0 && flows >= 12,
    ),
];

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
echo "KERNEL $(cat /proc/sys/kernel/osrelease)"
conns() {
  for i in 1 2 3; do
    (echo hi | nc -l -p $1 > /dev/null &); sleep 0.5
    echo x | nc -w 1 127.0.0.1 $1 > /dev/null
  done
  sleep 0.5
}
scenario() {
  name=$1; shift
  /bin/tcptrace "$@" --json > /tmp/out.json 2> /tmp/err.txt &
  pid=$!
  i=0
  while ! grep -q "tcptrace: tracing" /tmp/err.txt 2>/dev/null; do
    sleep 0.5; i=$((i+1))
    if [ $i -gt 240 ] || ! kill -0 $pid 2>/dev/null; then break; fi
  done
  conns 7000
  conns 7001
  t0=$(date +%s)
  kill -INT $pid 2>/dev/null
  # Detaching waits for RCU grace periods, slow under emulation; a tracer that has not
  # stopped after 300 s is killed (and the scenario fails: exit 137).
  (sleep 300; kill -9 $pid 2>/dev/null) &
  watchdog=$!
  wait $pid
  code=$?
  kill $watchdog 2>/dev/null
  echo "STOPPED $name in $(( $(date +%s) - t0 )) s"
  [ $code -ne 0 ] && echo "OUTPUT $(tail -c 300 /tmp/out.json)"
  sed 's/^/STDERR /' /tmp/err.txt
  flows=$(grep -c '"type":"flow"' /tmp/out.json)
  to=$(grep '"type":"flow"' /tmp/out.json | grep -c '"rport":7000')
  echo "RESULT $name exit=$code flows=$flows to7000=$to"
}
"#;

/// Picks the newest package matching `pattern` and unpacks it (once) under `dir`.
fn kernel(dir: &Path, pattern: &str) -> Result<PathBuf> {
    let list = Command::new("apt-cache")
        .args(["search", "--names-only", pattern])
        .output()
        .context("apt-cache search")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let version = |name: &str| -> Vec<u64> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    names.sort_by_key(|n| version(n));
    let Some(name) = names.pop() else {
        bail!("no Debian kernel package matches {pattern} (apt-get update?)");
    };
    let unpacked = dir.join(&name);
    let boot = unpacked.join("boot");
    if !boot.is_dir() {
        eprintln!("xtask: downloading {name} (to boot it under qemu)");
        fs::create_dir_all(dir)?;
        run(Command::new("apt-get")
            .args(["download", "-qq", &name])
            .current_dir(dir))?;
        let deb = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&name) && n.ends_with(".deb"))
            })
            .with_context(|| format!("{name}: the downloaded package"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::remove_file(&deb)?;
    }
    fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))
}

/// An initramfs with busybox, tcptrace (debug info stripped) and its libraries.
fn initramfs(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(sub))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    for applet in [
        "sh", "mount", "mkdir", "sleep", "cat", "grep", "sed", "nc", "ip", "kill", "poweroff",
        "date",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(root.join("bin/tcptrace"))
        .arg(bin))?;
    let ldd = Command::new("ldd").arg(bin).output().context("ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(lib) = lib {
            let target = root.join(lib.strip_prefix("/")?);
            fs::create_dir_all(target.parent().context("library directory")?)?;
            fs::copy(&lib, &target).with_context(|| format!("copy {}", lib.display()))?;
        }
    }
    let mut init = INIT.to_string();
    for (name, args, _) in SCENARIOS {
        init.push_str(&format!("scenario {name} {args}\n"));
    }
    init.push_str("echo DONE\npoweroff -f\n");
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    run(Command::new("chmod").arg("+x").arg(&init_path))?;
    let image = dir.join("initrd.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
        .current_dir(&root))?;
    Ok(image)
}

/// What one guest printed, checked against every scenario.
fn check(name: &str, log: &str) -> Result<()> {
    let kernel = log
        .lines()
        .find_map(|l| l.split_once("KERNEL ").map(|(_, k)| k.trim()))
        .with_context(|| format!("{name}: the guest did not start (see its log)"))?;
    if !kernel.starts_with(name) {
        bail!("{name}: booted {kernel}");
    }
    for (scenario, args, ok) in SCENARIOS {
        let result = log
            .lines()
            .find_map(|l| {
                l.split_once(&format!("RESULT {scenario} "))
                    .map(|(_, r)| r.trim())
            })
            .with_context(|| format!("{name}: scenario {scenario} did not finish"))?;
        let field = |key: &str| {
            result
                .split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        };
        let (exit, flows, to) = (field("exit="), field("flows="), field("to7000="));
        if !ok(exit, flows, to) {
            let stderr: Vec<&str> = log
                .lines()
                .filter_map(|l| l.split_once("STDERR ").map(|(_, e)| e.trim()))
                .collect();
            bail!(
                "on {kernel}: tcptrace {args}: exit {exit}, {flows} flows ({to} to port 7000); \
                 tcptrace said: {}",
                stderr.join(" | ")
            );
        }
    }
    eprintln!(
        "xtask: {kernel}: every scenario passed ({} of them)",
        SCENARIOS.len()
    );
    Ok(())
}

/// Boots each kernel with `bin` inside and checks what it traced.
pub fn test(bin: &Path) -> Result<()> {
    setup::ensure_vm_tools()?;
    let dir = workspace_root().join("target/old-kernels");
    fs::create_dir_all(&dir)?;
    let image = initramfs(bin, &dir)?;
    let mut guests = Vec::new();
    for (name, pattern) in KERNELS {
        let vmlinuz = kernel(&dir, pattern)?;
        let log_path = dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        eprintln!("xtask: booting Linux {name} under qemu (software emulation, ~3 minutes)");
        let child = Command::new("timeout")
            .args(["1800", "qemu-system-x86_64", "-accel", "tcg", "-m", "1024"])
            .args(["-smp", "2", "-nographic", "-no-reboot", "-kernel"])
            .arg(&vmlinuz)
            .arg("-initrd")
            .arg(&image)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        guests.push((name, log_path, child));
    }
    let mut failures = Vec::new();
    for (name, log_path, mut child) in guests {
        child.wait().context("waiting for qemu")?;
        let log = String::from_utf8_lossy(&fs::read(&log_path)?).into_owned();
        if let Err(e) = check(name, &log) {
            failures.push(format!("{e:#} (log: {})", log_path.display()));
        }
    }
    if !failures.is_empty() {
        bail!("older kernels: {}", failures.join("; "));
    }
    Ok(())
}
