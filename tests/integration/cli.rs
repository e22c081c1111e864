//! The binary as a user meets it: bad input, missing privileges, `| head`, SIGTERM.
use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::support::{Tracer, BIN};

/// Runs tcptrace to completion; returns (exit code, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert!(out.stdout.is_empty(), "errors never go to stdout");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, stderr) = run(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line for {args:?}: {stderr}");
    assert!(stderr.starts_with("tcptrace: error: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?} should mention {needle}: {stderr}"
    );
}

#[test]
fn bad_arguments_get_one_line_and_exit_2() {
    assert_one_line_error(&["--ring-size", "3000"], "power of two");
    assert_one_line_error(&["--no-such-flag"], "--no-such-flag");
    assert_one_line_error(&["flow"], "flow");
    assert_one_line_error(&["--duration", "soon"], "--duration");
    assert_one_line_error(&["--max-flows=lots"], "--max-flows");
}

#[test]
fn bad_filters_get_one_line_and_exit_2() {
    assert_one_line_error(&["-L", "0"], "--local-port '0'");
    assert_one_line_error(&["flows", "-D", "9000-80"], "backwards");
    assert_one_line_error(
        &["--remote-addr", "10.0.0.0/33"],
        "--remote-addr '10.0.0.0/33'",
    );
    assert_one_line_error(&["--local-addr", "localhost"], "--local-addr 'localhost'");
    assert_one_line_error(&["-p", "999999999"], "no such process");
    assert_one_line_error(
        &["--netns", "no-such-netns-xyz"],
        "--netns 'no-such-netns-xyz'",
    );
    assert_one_line_error(&["--netns", "/proc/self/ns/pid"], "not a network namespace");
    assert_one_line_error(
        &["--cgroup", "no/such/cgroup-xyz"],
        "--cgroup 'no/such/cgroup-xyz'",
    );
    assert_one_line_error(&["-4", "-6"], "cannot be used with");
}

#[test]
fn a_missing_btf_file_is_named_as_given() {
    // A file given with --btf that is not there is the user's path, not the kernel's lack
    // of BTF (that is said of the default path, /sys/kernel/btf/vmlinux).
    assert_one_line_error(
        &["--btf", "/nonexistent/vmlinux"],
        "--btf /nonexistent/vmlinux: no such file",
    );
}

#[test]
fn unprivileged_user_is_told_what_is_needed() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            BIN,
        ])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("root"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["--help", "--version"] {
        let out = Command::new(BIN).arg(flag).output().expect("runs");
        assert!(out.status.success(), "{flag}");
        assert!(!out.stdout.is_empty(), "{flag} prints to stdout");
    }
}

/// `tcptrace | head -n 3`: the reader goes away; tcptrace exits 0 without an error, its
/// summary on stderr.
#[test]
fn closed_pipe_exits_0_quietly() {
    let _load = crate::support::heavy_load();
    let mut child = Command::new(BIN)
        .args(["--poll-interval", "10ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcptrace");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("ready line");
    assert!(line.starts_with("tcptrace: tracing"), "{line}");

    let done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let done = done.clone();
        thread::spawn(move || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            for _ in 0..5_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let c = TcpStream::connect(addr).expect("connect");
                let (s, _) = listener.accept().expect("accept");
                drop((c, s));
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let first: Vec<String> = stdout.lines().take(3).map(|l| l.expect("line")).collect();
    assert_eq!(first.len(), 3);
    assert!(first[0].starts_with("TIME"), "{first:?}");
    // `head` exits: the pipe's read end closes here.
    let status = child.wait().expect("wait");
    done.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic thread");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    assert!(status.success(), "exit status {status}; stderr: {rest}");
    assert!(
        !rest.contains("tcptrace: error"),
        "no error message: {rest}"
    );
    // Nothing more can go to stdout: the summary comes on stderr.
    assert!(rest.contains("--- tcptrace summary:"), "{rest}");
}

#[test]
fn sigterm_detaches_and_prints_the_summary() {
    let tracer = Tracer::start(&["flows"]);
    let out = tracer.stop_with(libc::SIGTERM);
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    let summary = out.summary();
    assert_eq!(summary["lost"]["total"], 0, "{summary}");
    assert!(summary["elapsed_ns"].as_u64() > Some(0), "{summary}");
}

#[test]
fn duration_stops_by_itself() {
    let out = Command::new(BIN)
        .args(["--json", "--duration", "500ms"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::to_string)
        .expect("a summary line");
    let summary: serde_json::Value = serde_json::from_str(&last).expect("JSON summary");
    assert_eq!(summary["type"], "summary");
}

/// Every flag with wrong values, and the environment going wrong: one line each, naming the
/// cause, exit 2 — never a panic or a backtrace.
#[test]
fn every_bad_input_is_one_line_naming_the_cause() {
    // Some of these load the programs before failing: not while kallsyms is hidden.
    let _shared = crate::support::shared_load();
    let dir = std::env::temp_dir().join(format!("tcptrace-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let empty_btf = dir.join("empty-btf");
    std::fs::write(&empty_btf, b"").expect("an empty file");
    let not_a_recording = dir.join("not.rec");
    std::fs::write(&not_a_recording, b"hello").expect("a file");
    let (empty_btf, not_a_recording) = (
        empty_btf.to_str().expect("utf-8"),
        not_a_recording.to_str().expect("utf-8"),
    );
    let cases: &[(&[&str], &str)] = &[
        (&["-L", "70000"], "--local-port '70000'"),
        (&["-L", "0"], "--local-port '0'"),
        (&["-D", "http"], "--remote-port 'http'"),
        (&["-D", "9000-80"], "backwards"),
        (&["-D", "1-2-3"], "--remote-port"),
        (&["-L", ""], "--local-port"),
        (&["--remote-addr", "300.1.1.1"], "--remote-addr"),
        (&["--remote-addr", "10.0.0.0/33"], "--remote-addr"),
        (&["--local-addr", "::1/129"], "--local-addr"),
        (&["--local-addr", "10.0.0.0/8/8"], "--local-addr"),
        (&["-p", "999999999"], "no such process"),
        (&["-p", "nginx"], "--pid"),
        (&["-p", "-5"], "unexpected argument"),
        (&["--cgroup", "no/such/cgroup-xyz"], "cgroup"),
        (&["--cgroup", "/nonexistent/cgroup"], "cgroup"),
        (&["--netns", "no-such-netns-xyz"], "netns"),
        (&["--netns", "/proc/self/ns/pid"], "not a network namespace"),
        (&["--netns", "99999999999"], "netns"),
        (&["-4", "-6"], "cannot be used with"),
        (&["--cgroup-root", "/tmp"], "not a cgroup v2 hierarchy"),
        (&["--cgroup-root", "/nonexistent"], "--cgroup-root"),
        (&["--identity-column", "sometimes"], "--identity-column"),
        (&["--metrics-max-workloads", "0"], "--metrics-max-workloads"),
        (
            &["--pod", "No_Such_Pod"],
            "--pod 'No_Such_Pod' is not a Kubernetes name",
        ),
        (&["--max-flows", "0"], "--max-flows"),
        (&["--max-flows", "99999999999"], "--max-flows"),
        (&["--max-flows", "-1"], "unexpected argument"),
        (&["--max-flows", "lots"], "--max-flows"),
        (&["--flow-memory", "lazy"], "--flow-memory"),
        (&["--ring-size", "3000"], "power of two"),
        (&["--ring-size", "2GiB"], "power of two"),
        (&["--ring-size", "8Mo"], "unknown unit"),
        (&["--poll-interval", "0ms"], "between 1ms and 10s"),
        (&["--poll-interval", "1h"], "between 1ms and 10s"),
        (&["--duration", "0s"], "longer than zero"),
        (&["--duration", "soon"], "--duration"),
        (&["--idle-report", "10ms"], "--idle-report"),
        (&["timewait", "--interval", "0s"], "--interval"),
        (&["timewait", "--interval", "often"], "--interval"),
        (&["timewait", "--no-time-wait"], "contradicts"),
        (&["idle", "--min-idle", "forever"], "--min-idle"),
        (&["metrics"], "--metrics ADDR"),
        (&["--metrics", "9595"], "--metrics"),
        (&["--metrics", "300.0.0.1:80"], "--metrics"),
        (&["top", "--json"], "draws a screen"),
        (&["flow"], "unrecognized subcommand"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["record"], "--output"),
        (
            &["record", "-o", "/nonexistent/dir/x.rec"],
            "does not exist",
        ),
        (
            &["record", "-o", "/sys/kernel/btf/vmlinux"],
            "cannot write there",
        ),
        (&["record", "-o", "/proc/version"], "writing /proc/version"),
        (&["record", "-o", "/tmp"], "give a file"),
        (&["record", "-o", "x.rec", "--json"], "binary file"),
        (&["record", "-o", "x.rec", "--max-size", "10"], "--max-size"),
        (
            &["record", "-o", "x.rec", "--max-files", "0"],
            "--max-files",
        ),
        (&["report"], "<FILE>"),
        (&["report", "/nonexistent.rec"], "cannot open"),
        (&["report", not_a_recording], "not a tcptrace recording"),
        (&["report", empty_btf], "is empty"),
        (&["report", not_a_recording, "--mode", "top"], "--mode"),
        (
            &["report", not_a_recording, "--pod", "web-0"],
            "give them to `tcptrace record`",
        ),
        (
            &["report", not_a_recording, "-D", "http"],
            "--remote-port 'http'",
        ),
        (&["--btf", "/nonexistent/vmlinux"], "no such file"),
        (&["--btf", empty_btf], "BTF"),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line for {args:?}: {stderr}");
        assert!(
            stderr.starts_with("tcptrace: error: "),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?} should mention {needle}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file("x.rec");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("bad inputs tried: {}", cases.len());
}

/// Where /proc/kallsyms hides the timer handlers' addresses (no CAP_SYSLOG; or
/// `kptr_restrict = 2`, hidden even from root), the programs learn TIME_WAIT's from the
/// sockets: the address learnt, at the first timewait socket's expiry, is the real one, and
/// TIME_WAIT is followed from the first connection; keepalive probes, which need the real
/// address, are said not to be traced. The first expiry comes in a second: in a namespace
/// whose `tcp_fin_timeout` is 1 s, a client that closes while its server keeps the connection
/// open leaves a timewait socket in its FIN_WAIT2 substate for that long.
#[test]
fn hidden_kallsyms_are_learnt_from_the_sockets() {
    // Alone: other tracers starting meanwhile would meet the hidden addresses too.
    let _load = crate::support::heavy_load();
    const SYSCTL: &str = "/proc/sys/kernel/kptr_restrict";
    let real = |name: &str| -> u64 {
        let syms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
        syms.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                let addr = parts.next()?;
                (parts.nth(1)? == name).then(|| u64::from_str_radix(addr, 16).ok())?
            })
            .unwrap_or_else(|| panic!("{name} in /proc/kallsyms"))
    };
    let (keepalive, time_wait) = (real("tcp_keepalive_timer"), real("tw_timer_handler"));
    assert!(keepalive != 0 && time_wait != 0, "root sees the addresses");
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(SYSCTL, &self.0);
        }
    }
    let before = std::fs::read_to_string(SYSCTL).expect("read kptr_restrict");
    let _restore = Restore(before);
    std::fs::write(SYSCTL, "2").expect("set kptr_restrict");
    assert_eq!(real("tw_timer_handler"), 0, "hidden even from root");
    let pair = crate::netns::NetnsPair::new();
    pair.sysctl(&pair.a, "net.ipv4.tcp_fin_timeout", "1");
    let listener = pair.run_in(&pair.a, || TcpListener::bind("127.0.0.1:0").expect("bind"));
    let addr = listener.local_addr().expect("addr");
    let mut tracer = Tracer::start_alone_with_env(
        &_load,
        &[("TCPTRACE_TEST_LEARN_SYMBOLS", "1")],
        &["all", "--flows-at", "close", "-D", &addr.port().to_string()],
    );
    let client = pair.run_in(&pair.a, move || TcpStream::connect(addr).expect("connect"));
    let client_port = client.local_addr().expect("addr").port();
    let (server, _) = listener.accept().expect("accept");
    drop(client);
    tracer.wait_for_record("flow", Duration::from_secs(5), |r| {
        r["lport"] == client_port && r["time_wait_follows"] == true
    });
    tracer.wait_for_stderr("tcptrace: test: learnt", Duration::from_secs(5));
    drop(server);
    let out = tracer.stop();
    let learnt = out
        .stderr
        .lines()
        .find(|l| l.starts_with("tcptrace: test: learnt"))
        .expect("the learnt addresses");
    assert_eq!(
        learnt,
        format!("tcptrace: test: learnt tw_timer_handler {time_wait:#x}"),
        "{}",
        out.stderr
    );
    // Keepalive probes need the real address: one warning, and the rest traces on.
    assert_eq!(
        out.stderr
            .matches("keepalive probes are not traced")
            .count(),
        1,
        "{}",
        out.stderr
    );
    assert!(keepalive != 0);
    assert!(!out.stderr.contains("tcptrace: error"), "{}", out.stderr);
}

/// Connections opened while the programs load and attach cannot be traced: how many there
/// were is said (the kernel's own count), on stderr and in the summary.
#[test]
fn connections_opened_during_start_up_are_counted() {
    let _load = crate::support::heavy_load();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut made = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let client = TcpStream::connect(addr).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                drop((client, server));
                made += 1;
                thread::sleep(Duration::from_millis(2));
            }
            made
        })
    };
    let tracer = Tracer::start_alone(&_load, &["metrics", "--metrics", "127.0.0.1:0"]);
    stop.store(true, Ordering::Relaxed);
    let made = busy.join().expect("the client thread");
    let out = tracer.stop();
    let startup = &out.summary()["startup"];
    let missed = startup["connections_opened"].as_u64().expect("a count");
    assert!(
        missed >= 1 && missed <= 2 * made,
        "{missed} of {made} made: {startup}"
    );
    assert!(startup["ns"].as_u64() > Some(0), "{startup}");
    assert!(
        out.stderr
            .contains("were opened in this network namespace during the"),
        "{}",
        out.stderr
    );
}
