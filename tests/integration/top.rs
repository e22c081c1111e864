//! `tcptrace top` under a pseudo-terminal, with real connections: the screen (parsed with a
//! VT100 emulator) shows the destination's row and the alerts; keys toggle and filter; q and
//! SIGTERM restore the terminal and print the summary; without a terminal it refuses.
use std::{
    fs::File,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, RwLockReadGuard},
    thread,
    time::{Duration, Instant},
};

use crate::{
    ports::{free_port_without_time_waits, RefusingPort},
    support::{shared_load, BIN},
};

const ROWS: u16 = 24;
const COLS: u16 = 80;

fn screen_size() -> (std::num::NonZeroU16, std::num::NonZeroU16) {
    match (
        std::num::NonZeroU16::new(ROWS),
        std::num::NonZeroU16::new(COLS),
    ) {
        (Some(rows), Some(cols)) => (rows, cols),
        _ => panic!("the screen has rows and columns"),
    }
}

/// tcptrace top running on the slave side of a pseudo-terminal of 80×24.
pub(crate) struct TopUnderPty {
    _shared: RwLockReadGuard<'static, ()>,
    child: Child,
    master: Option<File>,
    /// Everything the program wrote, and the screen it makes.
    output: Arc<Mutex<(Vec<u8>, vt100::Parser)>>,
    reader: Option<thread::JoinHandle<()>>,
}

fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new fds into the integers; the name, termios and size
    // arguments are null or point at a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

impl TopUnderPty {
    pub(crate) fn start(args: &[&str]) -> TopUnderPty {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TopUnderPty {
        let shared = shared_load();
        let (master, slave) = pty();
        let mut command = Command::new(BIN);
        command
            .arg("top")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::from(slave.try_clone().expect("dup slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
        // controlling terminal is the pty (stdin), as a login shell would have.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let master = File::from(master);
        let (rows, cols) = screen_size();
        let output = Arc::new(Mutex::new((Vec::new(), vt100::Parser::new(rows, cols, 0))));
        let mut from_child = master.try_clone().expect("dup master");
        let sink = output.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // EIO once the child has exited and the slave is closed.
            while let Ok(n @ 1..) = from_child.read(&mut buf) {
                let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
                out.0.extend_from_slice(&buf[..n]);
                out.1.process(&buf[..n]);
            }
        });
        TopUnderPty {
            _shared: shared,
            child,
            master: Some(master),
            output,
            reader: Some(reader),
        }
    }

    pub(crate) fn screen(&self) -> String {
        let out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        out.1.screen().contents()
    }

    /// Waits until the screen satisfies `ok` (it is redrawn every second).
    pub(crate) fn wait_for(&mut self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let raw = self
                    .output
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .clone();
                panic!(
                    "tcptrace top exited ({status}) while waiting for {what}; it wrote:\n{}",
                    String::from_utf8_lossy(&raw)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen within 20 s:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn keys(&mut self, keys: &str) {
        let master = self.master.as_mut().expect("the pty is open");
        master
            .write_all(keys.as_bytes())
            .expect("type into the pty");
        master.flush().expect("flush the pty");
    }

    /// Waits for exit 0; returns everything written and whether the screen is the main one.
    pub(crate) fn finish(self) -> (String, bool) {
        let (code, written, main_screen) = self.exit();
        assert_eq!(code, Some(0), "tcptrace top exited {code:?}:\n{written}");
        (written, main_screen)
    }

    /// Waits for the exit: (exit code, everything written, whether the screen is the main one).
    fn exit(mut self) -> (Option<i32>, String, bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "tcptrace top did not exit");
            thread::sleep(Duration::from_millis(50));
        };
        drop(self.master.take());
        if let Some(reader) = self.reader.take() {
            reader.join().expect("pty reader");
        }
        let out = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&out.0).into_owned();
        (status.code(), text, !out.1.screen().alternate_screen())
    }
}

impl Drop for TopUnderPty {
    /// A test that failed half-way leaves no tracer behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` connections to `port` whose client closes first: its TIME_WAITs point at the port.
fn connections(listener: &TcpListener, n: usize) {
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..n {
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.shutdown(Shutdown::Write).expect("client FIN first");
        let _ = server.read(&mut [0u8; 1]);
        drop(server);
        drop(client);
    }
}

fn row_of<'a>(screen: &'a str, endpoint: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .find(|l| l.starts_with(endpoint))
        .map(|l| l.split_whitespace().collect())
}

#[test]
fn top_shows_real_connections_keys_work_and_q_restores_the_terminal() {
    // Ports free of earlier TIME_WAITs, the refusing one held: the header counts every
    // TIME_WAIT the filter admits.
    let listener = TcpListener::bind(("127.0.0.1", free_port_without_time_waits())).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let refusing = RefusingPort::new();
    let refused = refusing.port;
    let filter = format!("{port},{refused}");
    let started = std::time::Instant::now();
    let mut top = TopUnderPty::start(&["-D", &filter, "--poll-interval", "20ms"]);
    top.wait_for("the header", |s| {
        s.contains("tcptrace top") && s.contains("DESTINATION")
    });
    let drawn = std::time::Instant::now();
    connections(&listener, 30);
    for _ in 0..2 {
        assert!(TcpStream::connect(("127.0.0.1", refused)).is_err());
    }
    let endpoint = format!("127.0.0.1:{port}");
    let screen = top.wait_for("the destination's row with 30 TIME_WAITs", |s| {
        row_of(s, &endpoint).is_some_and(|cells| cells.get(3) == Some(&"30"))
    });
    let seen = std::time::Instant::now();
    let cells = row_of(&screen, &endpoint).expect("the row");
    // DESTINATION CONN/s OPEN TW FCST% RTX RST KA_TO EADDR P99
    assert_eq!(cells.len(), 10, "{screen}");
    // 30 connections over the time traced (the 10 s window until it is full): tracing began
    // after `started` and before the first screen; this one was drawn up to a second ago.
    let rate: f64 = cells[1].parse().expect("CONN/s");
    let window = |d: Duration| d.as_secs_f64().clamp(1.0, 10.0);
    let (longest, shortest) = (
        window(seen - started),
        window((seen - drawn).saturating_sub(Duration::from_secs(1))),
    );
    assert!(
        (30.0 / longest - 0.1..=30.0 / shortest + 0.1).contains(&rate),
        "30 connections over {shortest:.1}..{longest:.1} s traced: {rate}/s\n{screen}"
    );
    assert_eq!(cells[2], "0", "all closed:\n{screen}");
    assert_eq!(&cells[5..9], ["0", "0", "0", "0"], "{screen}");
    assert!(
        cells[9].ends_with("us") || cells[9].ends_with("ms"),
        "{screen}"
    );
    let screen = top.wait_for("the refused connects in the alerts pane", |s| {
        s.matches(" refused 127.0.0.1:").count() == 2
    });
    assert!(screen.contains("TIME_WAIT 30 ("), "{screen}");
    assert!(
        screen.contains(&format!("only remote port {filter}")),
        "{screen}"
    );

    // t: local services (the accepting side is filtered out here), then workloads (the
    // pods test checks their rows), then destinations again.
    top.keys("t");
    top.wait_for("the services table", |s| s.contains("local services: 0"));
    top.keys("t");
    top.wait_for("the workloads table", |s| {
        s.contains("workloads (pods, containers, units):") && s.contains("POD / WORKLOAD")
    });
    top.keys("t/");
    top.keys("no-such-endpoint\r");
    top.wait_for("the filter", |s| {
        s.contains("destinations: 0") && s.contains("[filter: no-such-endpoint]")
    });
    top.keys("\x1b");
    top.wait_for("the row back", |s| row_of(s, &endpoint).is_some());
    top.keys("q");
    let (written, main_screen) = top.finish();
    assert!(main_screen, "the alternate screen was left:\n{written}");
    assert!(written.contains("\x1b[?1049l"), "left the alternate screen");
    assert!(
        written.contains("--- tcptrace summary:"),
        "the summary after the screen:\n{written}"
    );
}

#[test]
fn top_on_sigterm_restores_the_terminal_and_prints_the_summary() {
    let mut top = TopUnderPty::start(&["-D", "1"]);
    top.wait_for("the header", |s| s.contains("tcptrace top"));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(top.child.id() as i32, libc::SIGTERM) };
    let (written, main_screen) = top.finish();
    assert!(main_screen, "{written}");
    assert!(written.contains("--- tcptrace summary:"), "{written}");
}

#[test]
fn a_panic_while_handling_records_restores_the_terminal_and_sums_up() {
    let mut top =
        TopUnderPty::start_with_env(&["-D", "9"], &[("TCPTRACE_TEST_PANIC_IN_DRAIN", "1")]);
    top.wait_for("the header", |s| s.contains("tcptrace top"));
    // A record to handle: a refused connect to the filtered port.
    let _ = TcpStream::connect("127.0.0.1:9");
    let (code, written, main_screen) = top.exit();
    assert_eq!(code, Some(2), "{written}");
    assert!(main_screen, "{written}");
    assert!(written.contains("\x1b[?1049l"), "left the alternate screen");
    assert!(written.contains("--- tcptrace summary:"), "{written}");
    assert!(
        // The same words as every mode's (one driver): exits.rs checks the line modes'.
        written.contains("tcptrace: error: internal error while handling records"),
        "{written}"
    );
}

#[test]
fn top_without_a_terminal_points_to_the_line_modes() {
    let out = Command::new(BIN)
        .args(["top", "-D", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run tcptrace top");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("tcptrace: error: top needs a terminal") && stderr.contains("flows"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// A connection open before `top` starts, in a network namespace of its own (a pod's): the
/// start-up seed reads every namespace, so its destination's row counts it open.
#[test]
fn flows_open_in_other_namespaces_before_start_are_counted() {
    let pair = crate::netns::NetnsPair::new();
    let crate::netns::Connected {
        listener: _listener,
        client: _client,
        server: _server,
        server_port,
        ..
    } = pair.connect();
    let port = server_port.to_string();
    let mut top = TopUnderPty::start(&["-D", &port]);
    let endpoint = format!("{}:{server_port}", pair.addr_a);
    let screen = top.wait_for("the other namespace's open flow", |s| {
        row_of(s, &endpoint).is_some_and(|cells| cells.get(2) == Some(&"1"))
    });
    assert!(screen.contains("open: "), "{screen}");
    top.keys("q");
    top.finish();
}
