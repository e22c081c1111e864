//! tcptrace on other Debian kernels, booted under qemu with software emulation: the oldest
//! it claims (6.1, where the verifier is stricter — before Linux 6.13 a whole call chain shares
//! 512 bytes of stack — and the tracepoints older: tcp_retransmit_skb without `err`), 6.12, and
//! the newest Debian ships (unstable or stable-backports), where hooks and layouts move first.
//! In each guest: loading and filtering scenarios on loopback (the shell below), then the
//! failures tcptrace exists for — keepalive timeout, half-open FIN retransmits, SYN timeout,
//! TIME_WAIT expiry — staged with iptables (`guest.rs`). `cargo xtask old-kernels` runs it (not
//! part of `cargo xtask test`: it downloads ~400 MB of kernels once, and four emulated guests
//! take ~4 minutes; `test` checks the stack budget the older kernels enforce). Debian 11's 5.10
//! boots too: tcptrace must refuse it in one line.
mod image;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{guest, setup, workspace_root};
use image::Source;

/// What a kernel must do with tcptrace.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every scenario passes.
    Works,
    /// Older than the oldest claimed: tcptrace refuses to run with one line naming why.
    Refused,
}

/// A standard image's version (not cloud, rt, dbg or unsigned): `7.2.13+deb14`.
fn standard(version: &str) -> bool {
    version.starts_with(|c: char| c.is_ascii_digit()) && !version.contains('-')
}

/// (label, where the package comes from, what it must do) of each kernel.
const KERNELS: [(&str, Source, Expect); 4] = [
    (
        "6.1",
        Source::Apt(r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
        Expect::Works,
    ),
    (
        "6.12",
        Source::Apt(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"),
        Expect::Works,
    ),
    (
        "newest",
        Source::Index(&["unstable", "stable-backports"], standard),
        Expect::Works,
    ),
    // Debian 11's: older than the oldest claimed (its verifier refuses the programs).
    (
        "5.10",
        Source::Index(&["bullseye"], |v| {
            v.strip_prefix("5.10.0-")
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        }),
        Expect::Refused,
    ),
];

/// Each scenario the guest runs: (name, tcptrace arguments, check on (exit, flows, flows to
/// port 7000)). Every scenario makes 3 connections to port 7000 and 3 to port 7001.
/// `(exit code, flows printed, of which to port 7000, flows the summary says finished)`.
type Check = fn(u32, u32, u32, u32) -> bool;
const SCENARIOS: [(&str, &str, Check); 7] = [
    // Every program (transitions, flows, retransmits, alerts, TIME_WAIT): both sides of the
    // 6 connections and the 6 listeners.
    ("all", "all", |exit, flows, _, _| exit == 0 && flows >= 12),
    // A remote-port filter: the 3 clients of port 7000 only.
    ("remote-port", "flows -D 7000", |exit, flows, to, _| {
        exit == 0 && flows == 3 && to == 3
    }),
    // A pid filter that matches nothing here (pid 1 makes no connection).
    ("pid", "flows -p 1 --no-time-wait", |exit, flows, _, _| {
        exit == 0 && flows == 0
    }),
    // A cgroup filter (the root: everything) with a flow table allocated on demand.
    (
        "cgroup-on-demand",
        "flows --cgroup / --flow-memory on-demand --max-flows 1024",
        |exit, flows, _, _| exit == 0 && flows >= 12,
    ),
    // Counted in the kernel (the programs' metrics-only branches, which the verifier only
    // checks where they run): no flow printed, every flow closed in the summary.
    (
        "metrics",
        "metrics --metrics 127.0.0.1:9595",
        |exit, flows, _, closed| exit == 0 && flows == 0 && (12..u32::MAX).contains(&closed),
    ),
    // Flows in socket-local storage (`bpf_sk_storage_get` from every socket hook, the
    // keepalive index), every program attached.
    ("socket", "all --flow-memory socket", |exit, flows, _, _| {
        exit == 0 && flows >= 12
    }),
    // The same, counted in the kernel, with a remote-port filter judged once per flow.
    (
        "socket-metrics",
        "metrics --metrics 127.0.0.1:9595 --flow-memory socket -D 7000",
        |exit, flows, _, closed| exit == 0 && flows == 0 && closed == 3,
    ),
];

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
echo "KERNEL $(cat /proc/sys/kernel/osrelease)"
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "MODULE $m did not load"; done
conns() {
  for i in 1 2 3; do
    (echo hi | nc -l -p $1 > /dev/null &); sleep 0.5
    echo x | nc -w 1 127.0.0.1 $1 > /dev/null
  done
  sleep 0.5
}
scenario() {
  name=$1; shift
  # Emptied here, not by the background job's redirection: that runs after the fork, and a
  # wait reading the previous scenario's "tracing" line signalled a tracer still loading
  # (a background job ignores SIGINT until tcptrace installs its handler: it never stopped).
  : > /tmp/out.json; : > /tmp/err.txt
  /bin/tcptrace "$@" --json >> /tmp/out.json 2>> /tmp/err.txt &
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
  # stopped after 300 s is killed (and the scenario fails: exit 137). One that has not
  # stopped: where each of its threads waits in the kernel, once after 60 s.
  (sleep 60; kill -0 $pid 2>/dev/null && for t in /proc/$pid/task/*; do
     echo "SLOW $name thread $(cat $t/comm) wchan $(cat $t/wchan)"; sed "s/^/SLOW   /" $t/stack
   done; sleep 240; kill -9 $pid 2>/dev/null) &
  watchdog=$!
  wait $pid
  code=$?
  kill $watchdog 2>/dev/null
  echo "STOPPED $name in $(( $(date +%s) - t0 )) s"
  [ $code -ne 0 ] && echo "OUTPUT $(tail -c 300 /tmp/out.json)"
  sed 's/^/STDERR /' /tmp/err.txt
  # A refusal by the verifier: the end of its log, where the reason is.
  if [ -f /tmp/tcptrace-verifier.log ]; then
    tail -n 40 /tmp/tcptrace-verifier.log | sed 's/^/VERIFIER /'
    rm -f /tmp/tcptrace-verifier.log
  fi
  flows=$(grep -c '"type":"flow"' /tmp/out.json)
  to=$(grep '"type":"flow"' /tmp/out.json | grep -c '"rport":7000')
  closed=$(grep '"type":"summary"' /tmp/out.json | grep -o '"finished":[0-9]*' | head -1 | cut -d: -f2)
  echo "RESULT $name exit=$code flows=$flows to7000=$to closed=$closed"
}
"#;

/// The failure scenarios (the runner prints RESULT lines).
const GUEST_SCENARIOS: &str = r#"
/bin/xtask guest-scenarios --tcptrace /bin/tcptrace 2>&1 | sed 's/^xtask: /GUEST /'
sed 's/^/STDERR /' /tmp/scenarios.err
"#;

/// The `/init` of a kernel tcptrace must refuse: one start, its exit code and what it said.
const REFUSED: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "KERNEL $(cat /proc/sys/kernel/osrelease)"
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "MODULE $m did not load"; done
/bin/tcptrace flows > /tmp/out.txt 2> /tmp/err.txt
code=$?
sed 's/^/STDERR /' /tmp/err.txt
echo "RESULT refused exit=$code lines=$(grep -c . /tmp/err.txt)"
echo DONE
poweroff -f
"#;

/// What a kernel older than the oldest claimed must show: exit 2 and one line naming the
/// kernel as the cause.
fn check_refused(label: &str, log: &str) -> Result<()> {
    let kernel = booted(label, log)?;
    let result = log
        .lines()
        .find_map(|l| l.split_once("RESULT refused ").map(|(_, r)| r.trim()))
        .with_context(|| format!("on {kernel}: tcptrace did not finish"))?;
    let said: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("STDERR ").map(|(_, e)| e.trim()))
        .collect();
    let named = said
        .iter()
        .any(|l| l.contains("older than the oldest kernel tcptrace runs on"));
    if result != "exit=2 lines=1" || !named {
        bail!(
            "on {kernel}: expected exit 2 and one line naming the kernel as too old, got {result}: {}",
            said.join(" | ")
        );
    }
    eprintln!("xtask: {kernel}: refused as expected: {}", said.join(""));
    Ok(())
}

/// The release the guest printed on its `KERNEL` line.
fn booted<'a>(label: &str, log: &'a str) -> Result<&'a str> {
    log.lines()
        .find_map(|l| l.split_once("KERNEL ").map(|(_, k)| k.trim()))
        .with_context(|| format!("{label}: the guest did not start (see its log)"))
}

/// The guest's `/init`: the loading and filter scenarios, then the failure scenarios.
fn init() -> String {
    let mut init = INIT.to_string();
    for (name, args, _) in SCENARIOS {
        init.push_str(&format!("scenario {name} {args}\n"));
    }
    init.push_str(GUEST_SCENARIOS);
    init.push_str("echo DONE\npoweroff -f\n");
    init
}

/// What one guest printed, checked against every scenario; `series` is what the booted
/// release must start with.
fn check(series: &str, log: &str) -> Result<()> {
    let kernel = booted(series, log)?;
    // 6.1 is not 6.12: the series must end where a version part ends.
    let of_series = kernel
        .strip_prefix(series)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()));
    if !of_series {
        bail!("{series}: booted {kernel}");
    }
    // What tcptrace said in one scenario: the STDERR lines from its STOPPED line to the next
    // (the failure scenarios' tracer is `scenarios`).
    let stderr = |scenario: &str| {
        let mut lines = log
            .lines()
            .skip_while(|l| !l.contains(&format!("STOPPED {scenario} ")));
        lines.next();
        lines
            .take_while(|l| !l.contains("STOPPED "))
            .filter_map(|l| l.split_once("STDERR ").map(|(_, e)| e.trim()))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let result = |scenario: &str| {
        log.lines()
            .find_map(|l| {
                l.split_once(&format!("RESULT {scenario} "))
                    .map(|(_, r)| r.trim())
            })
            .with_context(|| {
                let guest: Vec<&str> = log
                    .lines()
                    .filter_map(|l| l.split_once("GUEST ").map(|(_, e)| e.trim()))
                    .collect();
                format!(
                    "on {kernel}: scenario {scenario} did not finish ({}; tcptrace said: {})",
                    guest.join(" | "),
                    stderr("scenarios")
                )
            })
    };
    for (scenario, args, ok) in SCENARIOS {
        let result = result(scenario)?;
        let field = |key: &str| {
            result
                .split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        };
        let (exit, flows, to) = (field("exit="), field("flows="), field("to7000="));
        let closed = field("closed=");
        if !ok(exit, flows, to, closed) {
            bail!(
                "on {kernel}: tcptrace {args}: exit {exit}, {flows} flows ({to} to port 7000), \
                 {closed} closed in its summary; tcptrace said: {}",
                stderr(scenario)
            );
        }
    }
    for scenario in guest::SCENARIOS {
        let result = result(scenario)?;
        if result != "ok" {
            bail!("on {kernel}: {scenario}: {result}");
        }
    }
    eprintln!(
        "xtask: {kernel}: every scenario passed ({} loading and filtering, {} under one \
         tracer learning the timer handlers: {})",
        SCENARIOS.len(),
        guest::SCENARIOS.len(),
        guest::SCENARIOS.join(", ")
    );
    Ok(())
}

/// Starts qemu (software emulation) on `vmlinuz` + `initrd`, its console into `log_path`.
fn boot(vmlinuz: &Path, initrd: &Path, log_path: &Path) -> Result<std::process::Child> {
    let log = fs::File::create(log_path)?;
    Command::new("timeout")
        // One host thread per guest: with a thread per vCPU, 7.2 was seen to panic while
        // booting (an int3 left by cross-CPU text patching) when the guests ran together.
        .args([
            "2400",
            "qemu-system-x86_64",
            "-accel",
            "tcg,thread=single",
            "-m",
            "1536",
        ])
        .args(["-smp", "2", "-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")
}

/// Boots each kernel with `bin` inside and checks what it traced.
pub fn test(bin: &Path) -> Result<()> {
    setup::ensure_vm_tools()?;
    setup::ensure_test_tools()?;
    let dir = workspace_root().join("target/old-kernels");
    fs::create_dir_all(&dir)?;
    let init = init();
    // Every kernel and image first: nothing boots unless all can.
    let mut images = Vec::new();
    // TCPTRACE_OLD_KERNELS=6.1,6.12 boots only those (while a failure is investigated).
    let only = std::env::var("TCPTRACE_OLD_KERNELS").ok();
    let wanted = |label: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|l| l == label))
    };
    for (label, source, expect) in KERNELS.iter().filter(|(label, _, _)| wanted(label)) {
        let kernel = image::kernel(&dir, source)?;
        let init = match expect {
            Expect::Works => init.as_str(),
            Expect::Refused => REFUSED,
        };
        let guest_dir = dir.join(format!("guest-{label}"));
        fs::create_dir_all(&guest_dir)?;
        let initrd = image::initramfs(bin, &kernel, init, &guest_dir)
            .with_context(|| format!("the initramfs for {}", kernel.package))?;
        images.push((label, kernel, initrd, *expect));
    }
    let mut guests = Vec::new();
    for (label, kernel, initrd, expect) in images {
        let log_path = dir.join(format!("{label}.log"));
        eprintln!(
            "xtask: booting {} under qemu (software emulation, ~4 minutes)",
            kernel.package
        );
        let child = boot(&kernel.vmlinuz, &initrd, &log_path)?;
        guests.push((kernel, initrd, log_path, child, expect));
    }
    let mut failures = Vec::new();
    for (kernel, initrd, log_path, mut child, expect) in guests {
        child.wait().context("waiting for qemu")?;
        let mut log = String::from_utf8_lossy(&fs::read(&log_path)?).into_owned();
        // A panic while booting, before our init runs, is emulation's, not tcptrace's: boot
        // it once more.
        if !log.contains("KERNEL ") && log.contains("Kernel panic") {
            eprintln!(
                "xtask: {} panicked while booting, before init (emulation); booting it again",
                kernel.package
            );
            boot(&kernel.vmlinuz, &initrd, &log_path)?
                .wait()
                .context("waiting for qemu")?;
            log = String::from_utf8_lossy(&fs::read(&log_path)?).into_owned();
        }
        let checked = match expect {
            Expect::Works => check(&kernel.series(), &log),
            Expect::Refused => check_refused(&kernel.series(), &log),
        };
        if let Err(e) = checked {
            failures.push(format!("{e:#} (log: {})", log_path.display()));
        }
    }
    if !failures.is_empty() {
        bail!("other kernels: {}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED_LOG: &str = "KERNEL 5.10.0-32-amd64\nSTDERR tcptrace: error: Linux \
        5.10.0-32-amd64 is older than the oldest kernel tcptrace runs on (6.1): …\nRESULT \
        refused exit=2 lines=1\nDONE\n";

    #[test]
    fn a_refusal_must_be_one_line_naming_the_kernel() {
        check_refused("5.10", REFUSED_LOG).expect("the expected refusal");
        let two_lines = REFUSED_LOG.replace("lines=1", "lines=2");
        assert!(check_refused("5.10", &two_lines).is_err());
        let other = REFUSED_LOG.replace("older than the oldest kernel", "something else");
        assert!(check_refused("5.10", &other).is_err());
        let loaded = REFUSED_LOG.replace("exit=2", "exit=0");
        assert!(check_refused("5.10", &loaded).is_err());
    }

    /// A guest log where every scenario passed, on `kernel`.
    fn passing_log(kernel: &str) -> String {
        let mut log = format!("KERNEL {kernel}\n");
        for (name, ..) in SCENARIOS {
            log.push_str(&format!(
                "STOPPED {name} in 0 s\nRESULT {name} exit=0 flows="
            ));
            log.push_str(match name {
                "remote-port" => "3 to7000=3 closed=3\n",
                "pid" => "0 to7000=0 closed=0\n",
                "metrics" => "0 to7000=0 closed=18\n",
                "socket-metrics" => "0 to7000=0 closed=3\n",
                _ => "18 to7000=3 closed=18\n",
            });
        }
        log.push_str("STOPPED scenarios in 0 s\n");
        for name in guest::SCENARIOS {
            log.push_str(&format!("RESULT {name} ok\n"));
        }
        log
    }

    #[test]
    fn every_scenario_must_pass_on_the_series_booted() {
        check("6.12", &passing_log("6.12.117+deb12-amd64")).expect("all passed");
        assert!(check("6.1", &passing_log("6.12.117+deb12-amd64")).is_err());
        let failed = passing_log("6.1.0-57-amd64").replace(
            "RESULT syn-timeout ok",
            "RESULT syn-timeout FAIL expected …",
        );
        let err = check("6.1", &failed).expect_err("a failure scenario failed");
        assert!(format!("{err}").contains("syn-timeout"), "{err}");
        let missing = passing_log("6.1.0-57-amd64").replace("RESULT time-wait-expiry ok\n", "");
        assert!(check("6.1", &missing).is_err());
        let filtered =
            passing_log("6.1.0-57-amd64").replace("flows=3 to7000=3", "flows=6 to7000=3");
        assert!(check("6.1", &filtered).is_err());
        // Metrics-only must count every flow in the kernel and print none.
        let uncounted = passing_log("6.1.0-57-amd64").replace(
            "RESULT metrics exit=0 flows=0 to7000=0 closed=18",
            "RESULT metrics exit=0 flows=0 to7000=0 closed=",
        );
        let err = check("6.1", &uncounted).expect_err("nothing counted");
        assert!(format!("{err}").contains("closed in its summary"), "{err}");
    }
}
