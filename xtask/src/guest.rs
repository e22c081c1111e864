//! Runs inside the qemu guest of `cargo xtask old-kernels` (as `/bin/xtask guest-scenarios`):
//! the failures tcptrace exists for, staged for real on the guest's loopback with iptables DROP
//! rules (the peer falls silent, as if its cable were pulled), traced by one `tcptrace all`:
//! a keepalive timeout, a half-open connection retransmitting its FIN, a SYN timeout and a
//! TIME_WAIT that runs out (60 s). Prints `RESULT <scenario> ok` or `RESULT <scenario> FAIL …`
//! for the host to check.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// One port per scenario: iptables rules name it, the checks find the flows by it.
const KEEPALIVE_PORT: u16 = 7100;
const HALF_OPEN_PORT: u16 = 7101;
const SYN_TIMEOUT_PORT: u16 = 7102;
const TIME_WAIT_PORT: u16 = 7103;

/// The guest's names for its scenarios (the host requires each to say `ok`): the four
/// failures, then the TIME_WAIT timer handler the scenarios' tracer learnt (as a user
/// without CAP_SYSLOG has it do) compared with the guest's /proc/kallsyms.
pub const SCENARIOS: [&str; 5] = [
    "keepalive",
    "half-open",
    "syn-timeout",
    "time-wait-expiry",
    "learnt-handlers",
];

/// The learnt handlers, as the scenarios' tracer said them, equal to /proc/kallsyms'.
fn check_learnt() -> Result<()> {
    let err = fs::read_to_string("/tmp/scenarios.err")?;
    let said = err
        .lines()
        .find(|l| l.starts_with("tcptrace: test: learnt"))
        .with_context(|| {
            let said: Vec<&str> = err.lines().filter(|l| l.contains("test:")).collect();
            format!("the tracer never finished learning: {}", said.join(" | "))
        })?;
    let syms = fs::read_to_string("/proc/kallsyms")?;
    let address = |name: &str| {
        syms.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = parts.next()?;
            (parts.nth(1)? == name).then(|| u64::from_str_radix(addr, 16).ok())?
        })
    };
    let time_wait = address("tw_timer_handler").context("tw_timer_handler")?;
    let expected = format!("tcptrace: test: learnt tw_timer_handler {time_wait:#x}");
    if said != expected {
        bail!("learnt {said:?}, /proc/kallsyms says {expected:?}");
    }
    Ok(())
}

fn set_int(sock: &impl AsRawFd, level: i32, name: i32, value: i32) -> Result<()> {
    // SAFETY: setsockopt on an open socket with a valid int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt {level}/{name}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Silences `port` in both directions: every segment to or from it is dropped on input.
fn drop_port(port: u16) -> Result<()> {
    for dir in ["--dport", "--sport"] {
        let status = Command::new("iptables")
            .args(["-w", "-A", "INPUT", "-p", "tcp", dir, &port.to_string()])
            .args(["-j", "DROP"])
            .status()
            .context("iptables")?;
        if !status.success() {
            bail!("iptables -A INPUT -p tcp {dir} {port} -j DROP: {status}");
        }
    }
    Ok(())
}

/// Connects to a fresh listener on `port`; returns (listener, client, accepted server side).
fn pair(port: u16) -> Result<(TcpListener, TcpStream, TcpStream)> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("bind {port}"))?;
    let client = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let (server, _) = listener.accept().context("accept")?;
    Ok((listener, client, server))
}

/// The server side turns keepalive on (1 s idle, 1 s apart, 3 probes) and its peer falls
/// silent: the kernel gives up after ~4 s with ETIMEDOUT. Returns the client's port.
fn keepalive() -> Result<u16> {
    let (_listener, client, mut server) = pair(KEEPALIVE_PORT)?;
    set_int(&server, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(&server, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1)?;
    set_int(&server, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1)?;
    set_int(&server, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    drop_port(KEEPALIVE_PORT)?;
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    let err = match server.read(&mut [0u8; 1]) {
        Ok(n) => bail!("keepalive: read {n} bytes from a silent peer"),
        Err(e) => e,
    };
    if err.raw_os_error() != Some(libc::ETIMEDOUT) {
        bail!("keepalive: expected ETIMEDOUT, got {err}");
    }
    Ok(client.local_addr()?.port())
}

/// The client closes while its peer is silent: the FIN is retransmitted in FIN_WAIT1.
/// Returns the client's port.
fn half_open() -> Result<u16> {
    let (_listener, client, server) = pair(HALF_OPEN_PORT)?;
    let client_port = client.local_addr()?.port();
    drop_port(HALF_OPEN_PORT)?;
    drop(client);
    // Retransmitted at ~0.2 s, ~0.6 s, ~1.4 s.
    thread::sleep(Duration::from_secs(3));
    drop(server);
    Ok(client_port)
}

/// SYNs into the void with tcp_syn_retries = 1: connect fails after ~3 s with ETIMEDOUT.
fn syn_timeout() -> Result<u16> {
    drop_port(SYN_TIMEOUT_PORT)?;
    fs::write("/proc/sys/net/ipv4/tcp_syn_retries", "1").context("tcp_syn_retries")?;
    match TcpStream::connect(("127.0.0.1", SYN_TIMEOUT_PORT)) {
        Ok(_) => bail!("syn-timeout: connected through a DROP rule"),
        Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => Ok(0),
        Err(e) => bail!("syn-timeout: expected ETIMEDOUT, got {e}"),
    }
}

/// The client closes first, holds TIME_WAIT, which runs out 60 s later (the timer wheel rounds
/// up: 60-62 s). Returns the client's port.
fn time_wait() -> Result<u16> {
    let (_listener, client, mut server) = pair(TIME_WAIT_PORT)?;
    let client_port = client.local_addr()?.port();
    drop(client);
    if server
        .read(&mut [0u8; 1])
        .context("read the client's FIN")?
        != 0
    {
        bail!("time-wait: expected end of stream");
    }
    drop(server);
    thread::sleep(Duration::from_secs(65));
    Ok(client_port)
}

/// Starts `tcptrace all --json` and waits until it traces (BTF parsing and loading are slow
/// under emulation).
fn start(tcptrace: &Path) -> Result<Child> {
    let out = fs::File::create("/tmp/scenarios.json")?;
    let err = fs::File::create("/tmp/scenarios.err")?;
    let mut child = Command::new(tcptrace)
        .args(["all", "--json"])
        // The timer handlers learnt from the sockets, as without CAP_SYSLOG.
        .env("TCPTRACE_TEST_LEARN_SYMBOLS", "1")
        .stdout(out)
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .context("starting tcptrace")?;
    let started = Instant::now();
    loop {
        let err = fs::read_to_string("/tmp/scenarios.err").unwrap_or_default();
        if err.contains("tcptrace: tracing") {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!("tcptrace exited ({status}) before tracing: {}", err.trim());
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill().ok();
            bail!(
                "tcptrace did not start tracing within 300 s: {}",
                err.trim()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// SIGINT, then waits (detaching waits for RCU grace periods, slow under emulation); killed
/// after 300 s.
fn stop(mut child: Child) -> Result<Vec<Value>> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let mut said = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !said && started.elapsed() > Duration::from_secs(60) {
            said = true;
            where_it_waits(child.id());
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill().ok();
            bail!("tcptrace did not stop within 300 s of SIGINT");
        }
        thread::sleep(Duration::from_millis(200));
    };
    println!("STOPPED scenarios in {} s", started.elapsed().as_secs());
    if !status.success() {
        let err = fs::read_to_string("/tmp/scenarios.err").unwrap_or_default();
        bail!("tcptrace exited {status}: {}", err.trim());
    }
    let out = fs::read_to_string("/tmp/scenarios.json")?;
    out.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Where each thread of a tracer slow to stop waits in the kernel (for the log).
fn where_it_waits(pid: u32) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let read = |f: &str| fs::read_to_string(task.path().join(f)).unwrap_or_default();
        println!(
            "SLOW scenarios thread {} wchan {}",
            read("comm").trim(),
            read("wchan").trim()
        );
        for line in read("stack").lines() {
            println!("SLOW   {line}");
        }
    }
}

fn records<'a>(out: &'a [Value], kind: &str, lport: u16, rport: u16) -> Vec<&'a Value> {
    out.iter()
        .filter(|r| r["type"] == kind && r["lport"] == lport && r["rport"] == rport)
        .collect()
}

fn one_flow(out: &[Value], lport: u16, rport: u16) -> Result<&Value> {
    match records(out, "flow", lport, rport)[..] {
        [flow] => Ok(flow),
        ref flows => bail!("{} flows {lport} > {rport}: {flows:?}", flows.len()),
    }
}

fn states(flow: &Value) -> Vec<&str> {
    flow["path"]
        .as_array()
        .map(|p| p.iter().filter_map(|s| s["state"].as_str()).collect())
        .unwrap_or_default()
}

/// What each scenario must show in tcptrace's output.
fn check(scenario: &str, port: u16, out: &[Value]) -> Result<()> {
    match scenario {
        "keepalive" => {
            let flow = one_flow(out, KEEPALIVE_PORT, port)?;
            if flow["cause"] != "keepalive_timeout" || flow["probes"] != 3 {
                bail!("expected cause keepalive_timeout after 3 probes: {flow}");
            }
            let alerts = records(out, "alert", KEEPALIVE_PORT, port);
            if !alerts.iter().any(|a| a["kind"] == "keepalive_timeout") {
                bail!("no keepalive_timeout alert: {alerts:?}");
            }
        }
        "half-open" => {
            let alerts = records(out, "alert", port, HALF_OPEN_PORT);
            let fins = alerts
                .iter()
                .filter(|a| a["kind"] == "fin_retransmit" && a["state"] == "FIN_WAIT1")
                .count();
            if fins < 2 {
                bail!("expected FIN retransmits in FIN_WAIT1: {alerts:?}");
            }
        }
        "syn-timeout" => {
            let flows: Vec<&Value> = out
                .iter()
                .filter(|r| r["type"] == "flow" && r["rport"] == SYN_TIMEOUT_PORT)
                .collect();
            let [flow] = flows[..] else {
                bail!("expected one flow to port {SYN_TIMEOUT_PORT}: {flows:?}");
            };
            if states(flow) != ["SYN_SENT", "CLOSE"] || flow["cause"] != "syn_timeout" {
                bail!("expected SYN_SENT > CLOSE, cause syn_timeout: {flow}");
            }
        }
        "time-wait-expiry" => {
            let flow = one_flow(out, port, TIME_WAIT_PORT)?;
            let tw = &flow["time_wait"];
            let held = tw["held_ns"].as_u64().unwrap_or(0);
            if tw["end"] != "expired" || !(59_500_000_000..63_500_000_000).contains(&held) {
                bail!("expected a TIME_WAIT expired after 60-62 s: {flow}");
            }
        }
        other => bail!("unknown scenario {other}"),
    }
    Ok(())
}

/// Runs every scenario at once under one tracer, then checks each.
pub fn run(tcptrace: &Path) -> Result<()> {
    let tracer = start(tcptrace)?;
    let scenarios: [fn() -> Result<u16>; 4] = [keepalive, half_open, syn_timeout, time_wait];
    let handles: Vec<_> = scenarios.into_iter().map(thread::spawn).collect();
    let ports: Vec<Result<u16>> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
        })
        .collect();
    let out = stop(tracer)?;
    let mut failed = 0;
    for (name, port) in SCENARIOS.iter().zip(ports) {
        match port.and_then(|port| check(name, port, &out)) {
            Ok(()) => println!("RESULT {name} ok"),
            Err(e) => {
                failed += 1;
                println!("RESULT {name} FAIL {e:#}");
            }
        }
    }
    match check_learnt() {
        Ok(()) => println!("RESULT learnt-handlers ok"),
        Err(e) => {
            failed += 1;
            println!("RESULT learnt-handlers FAIL {e:#}");
        }
    }
    std::io::stdout().flush()?;
    if failed > 0 {
        bail!("{failed} scenarios failed");
    }
    Ok(())
}
