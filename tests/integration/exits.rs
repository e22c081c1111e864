//! Every way tcptrace can end — SIGINT, SIGTERM, SIGHUP, SIGKILL, a panic while handling
//! records, a closed stdout — leaves none of its BPF programs, links or maps behind (their
//! kernel ids, read from /proc/PID/fdinfo while it ran, are gone), and all but SIGKILL print
//! the summary. Two tracers at once work independently.
use std::{
    collections::BTreeSet,
    io::Read,
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::support::{shared_load, spawn_attached, Tracer, BIN};

/// The kernel ids of a process's BPF objects: (programs, links, maps).
type BpfIds = (BTreeSet<u32>, BTreeSet<u32>, BTreeSet<u32>);

fn bpf_ids_of(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("the tracer's fdinfo");
    for fd in fds.map_while(Result::ok) {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            let id = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            if let Some(id) = id("prog_id:") {
                ids.0.insert(id);
            } else if let Some(id) = id("link_id:") {
                ids.1.insert(id);
            } else if let Some(id) = id("map_id:") {
                ids.2.insert(id);
            }
        }
    }
    ids
}

/// The ids among `ids` that still exist in the kernel.
fn still_loaded(ids: &BpfIds) -> BpfIds {
    let programs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| ids.0.contains(id))
        .collect();
    let links = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .filter(|id| ids.1.contains(id))
        .collect();
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .filter(|id| ids.2.contains(id))
        .collect();
    (programs, links, maps)
}

/// Waits (the kernel frees programs and maps after an RCU grace period) until none of `ids`
/// is left.
fn assert_all_gone(ids: &BpfIds, how: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = still_loaded(ids);
        if left.0.is_empty() && left.1.is_empty() && left.2.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {how}: programs {:?}, links {:?}, maps {:?} still loaded",
            left.0,
            left.1,
            left.2
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A tcptrace with stderr piped, attached.
struct Run {
    child: Child,
    stderr: mpsc::Receiver<String>,
    ids: BpfIds,
}

impl Run {
    fn start(args: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Run {
        let (child, stderr) = spawn_attached(
            Command::new(BIN)
                .args(args)
                .envs(env.iter().copied())
                .stdout(stdout),
        );
        let ids = bpf_ids_of(child.id());
        assert!(
            ids.0.len() >= 5 && !ids.1.is_empty() && !ids.2.is_empty(),
            "the tracer holds its programs, links and maps: {ids:?}"
        );
        Run { child, stderr, ids }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the exit; (exit code, stdout if piped, stderr).
    fn wait(mut self) -> (Option<i32>, String, String, BpfIds) {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let status = self.child.wait().expect("wait for tcptrace");
        let err: Vec<String> = self.stderr.iter().collect();
        (status.code(), out, err.join("\n"), self.ids)
    }
}

/// Flows of remote port 9 only: this test's refused connects.
const FLOWS: &[&str] = &["flows", "-D", "9"];

/// A connection to a port the filter admits (remote port 9, the discard port: refused), so
/// the drain has a record to handle.
fn some_traffic() {
    let _ = TcpStream::connect("127.0.0.1:9");
}

#[test]
fn every_exit_detaches_and_all_but_sigkill_print_the_summary() {
    let _shared = shared_load();
    let mut outcomes = Vec::new();
    for (how, signal) in [
        ("SIGINT", libc::SIGINT),
        ("SIGTERM", libc::SIGTERM),
        ("SIGHUP", libc::SIGHUP),
        ("SIGKILL", libc::SIGKILL),
    ] {
        let run = Run::start(FLOWS, &[], Stdio::piped());
        some_traffic();
        thread::sleep(Duration::from_millis(300));
        run.signal(signal);
        let (code, out, err, ids) = run.wait();
        // Columns carry the lines only: the summary is said on stderr.
        let summary = err.contains("--- tcptrace summary:");
        assert!(
            !out.contains("--- tcptrace summary:"),
            "{how}: on stdout:\n{out}"
        );
        if signal == libc::SIGKILL {
            assert_eq!(code, None, "killed");
            assert!(!summary);
        } else {
            assert_eq!(code, Some(0), "{how}: {err}");
            assert!(summary, "{how}: no summary:\n{err}");
            assert!(
                out.contains("connect_failed"),
                "{how}: the refused flow:\n{out}"
            );
        }
        assert_all_gone(&ids, how);
        outcomes.push(format!("{how}: exit {code:?}, summary {summary}, detached"));
    }

    // A bug in the drain: the panic is caught, the programs detached, the summary printed,
    // and the error said (exit 2).
    let run = Run::start(
        FLOWS,
        &[("TCPTRACE_TEST_PANIC_IN_DRAIN", "1")],
        Stdio::piped(),
    );
    some_traffic();
    let (code, out, err, ids) = run.wait();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tcptrace: error: internal error while handling records"),
        "{err}"
    );
    assert!(err.contains("--- tcptrace summary:"), "{err}");
    assert!(!out.contains("--- tcptrace summary:"), "{out}");
    assert_all_gone(&ids, "a panic in the drain");

    // stdout closed under it (`| head` that has read enough): exit 0, the summary on stderr.
    let mut run = Run::start(FLOWS, &[], Stdio::piped());
    drop(run.child.stdout.take());
    for _ in 0..20 {
        some_traffic();
    }
    thread::sleep(Duration::from_millis(300));
    let (code, _, err, ids) = run.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("--- tcptrace summary:"), "{err}");
    assert_all_gone(&ids, "a closed stdout");
}

#[test]
fn two_tracers_at_once_work_independently() {
    let (a, b) = (
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        TcpListener::bind("127.0.0.1:0").expect("bind"),
    );
    let (pa, pb) = (
        a.local_addr().expect("addr").port().to_string(),
        b.local_addr().expect("addr").port().to_string(),
    );
    let first = Tracer::start(&["flows", "-D", &pa]);
    let second = Run::start(&["flows", "-D", &pb], &[], Stdio::null());
    for listener in [&a, &b] {
        let port = listener.local_addr().expect("addr").port();
        for _ in 0..3 {
            drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
            drop(listener.accept().expect("accept"));
        }
    }
    // The second stops; the first still traces.
    second.signal(libc::SIGKILL);
    let (_, _, _, ids) = second.wait();
    assert_all_gone(&ids, "SIGKILL of the second tracer");
    drop(TcpStream::connect(("127.0.0.1", a.local_addr().expect("addr").port())).expect("connect"));
    drop(a.accept().expect("accept"));
    let out = first.stop();
    let flows = out.of_type("flow");
    assert_eq!(
        flows.len(),
        4,
        "only its own port, before and after the other stopped"
    );
    assert!(flows.iter().all(|f| f["rport"].as_u64() == pa.parse().ok()));
}
