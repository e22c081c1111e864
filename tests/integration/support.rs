//! Starting and stopping the tracer, and reading its JSON Lines.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tcptrace");

/// Tests that generate bursts of connections run alone: under their load the kernel may skip
/// a hook run (counted, but it would make timing-exact tests flaky). Every other tracer holds
/// this shared.
static LOAD: RwLock<()> = RwLock::new(());

/// Held by a test that generates heavy load, for its whole run.
pub fn heavy_load() -> RwLockWriteGuard<'static, ()> {
    LOAD.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
/// Held by a test that runs a tracer of its own (not through [`Tracer`]).
pub fn shared_load() -> RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until no socket on any of `ports` (either end), in network namespace `netns` (`None`:
/// this one), is in a state other than LISTEN or TIME_WAIT: the closes a test started have run
/// their course in the kernel, so every transition they made is in the tracer's ring buffer,
/// which it drains before it exits.
pub fn wait_for_closes_in(netns: Option<&str>, ports: &[u16]) {
    let ends: Vec<String> = ports.iter().map(|p| format!(":{p}")).collect();
    wait_until(
        &format!("the connections on ports {ports:?} to close"),
        Duration::from_secs(15),
        || {
            let mut ss = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "ss"]);
                    c
                }
                None => Command::new("ss"),
            };
            let out = ss.arg("-Htan").output().expect("ss runs");
            String::from_utf8_lossy(&out.stdout).lines().all(|line| {
                let cells: Vec<&str> = line.split_whitespace().collect();
                let ours = cells
                    .iter()
                    .skip(3)
                    .take(2)
                    .any(|end| ends.iter().any(|e| end.ends_with(e.as_str())));
                !ours || matches!(cells.first(), Some(&"LISTEN" | &"TIME-WAIT"))
            })
        },
    );
}

/// [`wait_for_closes_in`] this network namespace.
pub fn wait_for_closes(ports: &[u16]) {
    wait_for_closes_in(None, ports);
}

/// The TIME_WAITs tcptrace said were skipped (`N TIME_WAITs skipped …` warnings), added up.
pub fn time_waits_skipped(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.split_once(" TIME_WAITs skipped"))
        .filter_map(|(head, _)| head.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Reads a child's stderr line by line on a thread of its own.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Spawns `command` (stderr piped) and waits until tcptrace says it is tracing; returns the
/// child and the rest of its stderr.
pub fn spawn_attached(command: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stderr = stderr_lines(&mut child);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match stderr.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with(READY) => return (child, stderr),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{command:?} exited before attaching: {:?}", child.wait())
            }
        }
        assert!(Instant::now() < deadline, "{command:?} did not attach");
    }
}

const READY: &str = "tcptrace: tracing";

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it holds, for at most `timeout`; panics saying what was awaited. Tests
/// wait for what they check with this instead of sleeping a fixed time (CI shares its
/// machine: the tracer's once-a-second work may come late).
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} for {what}, in vain"
        );
        thread::sleep(POLL);
    }
}
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `tcptrace --json …`.
pub struct Tracer {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    child: Child,
    /// Stdout's lines as they arrive (read on a thread of their own).
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stdout: thread::JoinHandle<()>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What the tracer printed, parsed.
pub struct Output {
    pub records: Vec<Value>,
    pub stderr: String,
}

impl Tracer {
    /// Starts the tracer and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Tracer {
        let shared = LOAD.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut tracer = Self::start_with(&[], args);
        tracer._shared = Some(shared);
        tracer
    }

    /// A second tracer beside `first` in the same test: `first` holds the shared load lock
    /// for both (taking it twice could deadlock behind a waiting heavy test).
    pub fn start_beside(_first: &Tracer, args: &[&str]) -> Tracer {
        Self::start_with(&[], args)
    }

    /// For a test that holds [`heavy_load`].
    pub fn start_alone(_load: &RwLockWriteGuard<'static, ()>, args: &[&str]) -> Tracer {
        Self::start_with(&[], args)
    }

    /// For a test that holds [`heavy_load`], with `env` set for the tracer.
    pub fn start_alone_with_env(
        _load: &RwLockWriteGuard<'static, ()>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Tracer {
        let assignments: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut prefix = vec!["env"];
        prefix.extend(assignments.iter().map(String::as_str));
        Self::start_with(&prefix, args)
    }

    /// Starts the tracer inside network namespace `ns` (its /proc/net is that namespace's).
    pub fn start_in(ns: &str, args: &[&str]) -> Tracer {
        let shared = LOAD.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut tracer = Self::start_with(&["ip", "netns", "exec", ns], args);
        tracer._shared = Some(shared);
        tracer
    }

    fn start_with(prefix: &[&str], args: &[&str]) -> Tracer {
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stdout_lines);
        let stdout = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("stdout lines").push(line);
            }
        });
        let stderr = stderr_lines(&mut child);
        let mut tracer = Tracer {
            _shared: None,
            child,
            stdout_lines,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match tracer.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let ready = line.starts_with(READY);
                    tracer.stderr_seen.push(line);
                    if ready {
                        return tracer;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = tracer.child.wait().expect("wait for tracer");
                    panic!(
                        "tcptrace exited ({status}) before attaching; BPF must load for these \
                         tests. stderr:\n{}",
                        tracer.stderr_seen.join("\n")
                    );
                }
            }
            if Instant::now() > deadline {
                let _ = tracer.child.kill();
                panic!(
                    "tcptrace did not attach within {START_TIMEOUT:?}; stderr:\n{}",
                    tracer.stderr_seen.join("\n")
                );
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the records printed so far (parsed) satisfy `check`.
    pub fn wait_for_records(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let records: Vec<Value> = self
                .stdout_lines
                .lock()
                .expect("stdout lines")
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if check(&records) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}, in vain; the records so far: {records:#?}"
            );
            thread::sleep(POLL);
        }
    }

    /// Whether a record satisfying `check` was printed so far.
    pub fn has_record(&self, check: impl Fn(&Value) -> bool) -> bool {
        let lines = self.stdout_lines.lock().expect("stdout lines");
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| check(&r))
    }

    /// Waits until a record of `kind` satisfying `check` was printed.
    pub fn wait_for_record(&self, kind: &str, timeout: Duration, check: impl Fn(&Value) -> bool) {
        self.wait_for_records(&format!("a {kind} record"), timeout, |records| {
            records.iter().any(|r| r["type"] == kind && check(r))
        });
    }

    /// Waits until a line of stderr contains `text`.
    pub fn wait_for_stderr(&mut self, text: &str, timeout: Duration) {
        self.wait_for_stderr_lines(&format!("{text:?} on stderr"), timeout, |lines| {
            lines.iter().any(|l| l.contains(text))
        });
    }

    /// Waits until stderr's lines so far satisfy `check`.
    pub fn wait_for_stderr_lines(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[String]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !check(&self.stderr_seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {timeout:?} for {what}; stderr said:\n{}",
                self.stderr_seen.join("\n")
            );
            if let Ok(line) = self.stderr.recv_timeout(left.min(POLL)) {
                self.stderr_seen.push(line);
            }
        }
    }

    /// Sends `signal`, waits for exit 0 and returns everything printed. The tracer drains its
    /// ring buffer before it exits: what the kernel did before the signal is all there (a test
    /// waits for the kernel first where that takes time: [`wait_for_closes`]).
    pub fn stop_with(mut self, signal: i32) -> Output {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
        let status = self.child.wait().expect("wait for tracer");
        self.stdout.join().expect("stdout reader");
        let lines = std::mem::take(&mut *self.stdout_lines.lock().expect("stdout lines"));
        self.stderr_seen.extend(self.stderr.try_iter());
        let stderr = self.stderr_seen.join("\n");
        assert!(
            status.success(),
            "tcptrace exited {status}; stderr:\n{stderr}"
        );
        let records = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        Output { records, stderr }
    }

    pub fn stop(self) -> Output {
        self.stop_with(libc::SIGINT)
    }
}

impl Output {
    pub fn of_type(&self, kind: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["type"] == kind).collect()
    }

    pub fn summary(&self) -> &Value {
        let summaries = self.of_type("summary");
        assert_eq!(summaries.len(), 1, "exactly one summary, the last record");
        assert_eq!(
            self.records.last().map(|r| &r["type"]),
            Some(&Value::from("summary"))
        );
        summaries[0]
    }

    /// Records of `kind` whose local and remote endpoints are these.
    pub fn for_tuple(&self, kind: &str, local: (&str, u16), remote: (&str, u16)) -> Vec<&Value> {
        self.of_type(kind)
            .into_iter()
            .filter(|r| {
                r["laddr"] == local.0
                    && r["lport"] == local.1
                    && r["raddr"] == remote.0
                    && r["rport"] == remote.1
            })
            .collect()
    }

    /// The one flow record for this 4-tuple.
    pub fn flow(&self, local: (&str, u16), remote: (&str, u16)) -> &Value {
        let flows = self.for_tuple("flow", local, remote);
        assert_eq!(
            flows.len(),
            1,
            "one flow for {local:?} -> {remote:?}; got {flows:#?}\nall records: {:#?}\nstderr:\n{}",
            self.records,
            self.stderr
        );
        flows[0]
    }
}

/// Runs a staged scenario again (three tries in all) while what it checks for is missing and
/// the tracer counted events lost: under the other tests' load the kernel may skip a hook run
/// or the ring may fill, and the tracer counts either (`lost.total`). A record missing with
/// nothing counted lost is a failure on the first try.
pub fn again_while_counted_lost<T>(
    mut scenario: impl FnMut() -> (Output, T),
    complete: impl Fn(&Output, &T) -> bool,
) -> (Output, T) {
    for _ in 1..3 {
        let (out, staged) = scenario();
        let lost = out.summary()["lost"]["total"].as_u64().unwrap_or(0);
        if complete(&out, &staged) || lost == 0 {
            return (out, staged);
        }
        eprintln!("{lost} events counted lost and the scenario's record missing: once more");
    }
    scenario()
}

/// The state names of a flow record's path.
pub fn path_states(flow: &Value) -> Vec<String> {
    flow["path"]
        .as_array()
        .expect("path is a list")
        .iter()
        .map(|s| s["state"].as_str().expect("state is a string").to_string())
        .collect()
}

/// The calling thread's comm, as the kernel reports it.
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("read /proc/thread-self/comm")
        .trim_end()
        .to_string()
}
