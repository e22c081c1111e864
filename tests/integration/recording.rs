//! `tcptrace record` and `tcptrace report` on real connections: the report renders exactly what
//! the live tool printed beside it, rotation caps the disk used, and a recorder killed
//! mid-write leaves a file that reports up to the cut and says where.
use std::{
    io::Read,
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
};

use serde_json::Value;

use crate::{
    ports::RefusingPort,
    support::{heavy_load, shared_load, spawn_attached, Tracer, BIN},
};

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A running `tcptrace record`, attached.
pub struct Recorder {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Recorder {
    pub fn start(args: &[&str]) -> Recorder {
        let (child, stderr) = spawn_attached(
            Command::new(BIN)
                .arg("record")
                .args(args)
                .stdout(Stdio::null()),
        );
        Recorder { child, stderr }
    }

    /// Stops with `signal`; returns the exit status and the rest of stderr.
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("wait for the recorder");
        let rest: Vec<String> = self.stderr.iter().collect();
        (status, rest.join("\n"))
    }
}

pub fn report(file: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("report")
        .arg(file)
        .args(args)
        .output()
        .expect("run tcptrace report")
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// What a flow record says that does not depend on which tracer measured it (each tracer's
/// programs read the clock themselves: durations differ by nanoseconds).
fn comparable(flow: &Value) -> String {
    let path: Vec<&Value> = flow["path"]
        .as_array()
        .expect("a path")
        .iter()
        .map(|step| &step["state"])
        .collect();
    let fields = [
        "laddr",
        "lport",
        "raddr",
        "rport",
        "pid",
        "comm",
        "close",
        "cause",
        "err",
        "probes",
        "rtx",
        "start_seen",
        "reset_received",
        "skaddr",
        "bytes_acked",
        "bytes_received",
        "segs_in",
        "segs_out",
        "srtt_ns",
        "total_retrans",
        "drops",
    ]
    .map(|f| format!("{f}={}", flow[f]));
    let time_wait = &flow["time_wait"]["end"];
    format!("{} path={path:?} time_wait={time_wait}", fields.join(" "))
}

fn connections(listener: &TcpListener, n: usize, client_first: bool) {
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..n {
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        if client_first {
            client.shutdown(Shutdown::Write).expect("client FIN");
            let _ = server.read(&mut [0u8; 1]);
        }
        drop(server);
        drop(client);
    }
}

#[test]
fn report_renders_what_the_live_tool_printed() {
    let dir = temp_dir("record");
    let file = dir.join("live.rec");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let refusing = RefusingPort::new();
    let refused = refusing.port;
    let filter = format!("{port},{refused}");
    // (Tracer holds the shared load lock for the recorder too.)
    let live = Tracer::start(&["flows", "-D", &filter]);
    let recorder = Recorder::start(&["-o", file.to_str().expect("utf-8 path"), "-D", &filter]);
    connections(&listener, 20, true);
    connections(&listener, 5, false);
    assert!(TcpStream::connect(("127.0.0.1", refused)).is_err());
    let (status, said) = recorder.stop_with(libc::SIGINT);
    assert!(status.success(), "{said}");
    assert!(
        said.contains("recorded") && said.contains("0 lost"),
        "{said}"
    );
    let live = live.stop();

    let out = report(&file, &["--mode", "flows", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = json_lines(&out);
    let flows = |records: &[Value]| -> Vec<String> {
        let mut flows: Vec<String> = records
            .iter()
            .filter(|r| r["type"] == "flow")
            .map(comparable)
            .collect();
        flows.sort();
        flows
    };
    let (reported, printed) = (flows(&records), flows(&live.records));
    assert_eq!(
        reported.len(),
        26,
        "20 + 5 client flows and the refused connect"
    );
    assert_eq!(reported.len(), printed.len());
    for (r, p) in reported.iter().zip(&printed) {
        assert_eq!(r, p, "the report equals the live flow");
    }
    let summary = records.last().expect("a summary");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["transitions"], live.summary()["transitions"]);
    assert_eq!(summary["causes"], live.summary()["causes"]);

    // Every mode renders, in text too.
    for mode in ["states", "flows", "retrans", "alerts", "all", "timewait"] {
        let out = report(&file, &["--mode", mode]);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("--- tcptrace summary:"), "{mode}: {text}");
    }
    let alerts = String::from_utf8_lossy(&report(&file, &["--mode", "alerts"]).stdout).into_owned();
    assert!(alerts.contains("refused"), "{alerts}");

    // Filtered after the fact, as `tcpdump -r FILE expr`: the refused connect only.
    let refused_arg = refused.to_string();
    let out = report(&file, &["--mode", "flows", "--json", "-D", &refused_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = json_lines(&out);
    let only: Vec<&Value> = records.iter().filter(|r| r["type"] == "flow").collect();
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["rport"], refused, "{}", only[0]);
    let summary = records.last().expect("a summary");
    assert!(
        summary["filters"]
            .as_str()
            .is_some_and(|f| f.contains(&format!("reported: remote port {refused}"))),
        "{summary}"
    );
    // By pid: the recorded owner (this test process), which need not be alive to match.
    let me = std::process::id().to_string();
    let out = report(
        &file,
        &[
            "--mode",
            "flows",
            "--json",
            "-p",
            &me,
            "--port",
            &port.to_string(),
        ],
    );
    let mine = json_lines(&out)
        .iter()
        .filter(|r| r["type"] == "flow")
        .count();
    assert_eq!(mine, 25, "{}", String::from_utf8_lossy(&out.stderr));
    // What names the traced host's objects is refused, in one line.
    let out = report(&file, &["--netns", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("give them to `tcptrace record`") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_size_rotates_and_caps_the_disk_used() {
    let dir = temp_dir("rotate");
    let file = dir.join("burst.rec");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let load = heavy_load();
    let recorder = Recorder::start(&[
        "-o",
        file.to_str().expect("utf-8 path"),
        "--max-size",
        "1MiB",
        "--max-files",
        "2",
        "-D",
        &port,
    ]);
    // ~700 bytes a connection (client side only): ~4 MB in all, four times the cap.
    connections(&listener, 6_000, true);
    let (status, said) = recorder.stop_with(libc::SIGTERM);
    drop(load);
    assert!(status.success(), "{said}");
    assert!(said.contains("rotations"), "{said}");
    let older = dir.join("burst.rec.1");
    assert!(
        !dir.join("burst.rec.2").exists(),
        "at most --max-files files"
    );
    let mut flows = 0;
    for part in [&file, &older] {
        let size = std::fs::metadata(part).expect("the file").len();
        assert!(size <= 1 << 20, "{}: {size} bytes", part.display());
        let out = report(part, &["--mode", "flows", "--json"]);
        assert!(
            out.status.success(),
            "{}: {}",
            part.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        flows += json_lines(&out)
            .iter()
            .filter(|r| r["type"] == "flow")
            .count();
    }
    assert!(
        (1_000..6_000).contains(&flows),
        "{flows} flows in the two newest files"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_recorder_leaves_a_file_that_reports_up_to_the_cut() {
    let dir = temp_dir("killed");
    let file = dir.join("cut.rec");
    let _shared = shared_load();
    let recorder = Recorder::start(&["-o", file.to_str().expect("utf-8 path"), "-D", "1"]);
    let (status, _) = recorder.stop_with(libc::SIGKILL);
    assert!(!status.success());
    let out = report(&file, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        stderr.trim_end().ends_with(errors[0]),
        "the error is the last line: {stderr}"
    );
    assert!(
        stderr.contains("without an end frame") || stderr.contains("truncated at offset"),
        "{stderr}"
    );
    assert!(stderr.contains("offset"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording made before the namespace was added to TIME_WAIT records (layout 1, kept in
/// the fuzz corpus) still renders: its TIME_WAITs are read widened, joined to their flows.
#[test]
fn a_layout_1_recording_still_renders() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/recording/small.rec");
    let out = report(&seed, &["--mode", "flows", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<Value> = json_lines(&out)
        .into_iter()
        .filter(|l| l["type"] == "flow")
        .collect();
    assert_eq!(flows.len(), 6, "{flows:#?}");
    assert!(
        flows.iter().any(|f| f["time_wait"].is_object()),
        "a TIME_WAIT joined to its flow: {flows:#?}"
    );
}

/// A recording of layout 5 (in the fuzz corpus, made on this machine between two namespaces:
/// a token bucket, SYNs dropped by iptables, a handshake's ACK lost) renders each flow's
/// vitals, drops by reason and the SYN-ACK sent again.
#[test]
fn a_layout_5_recording_renders_vitals_drops_and_syn_ack_retransmits() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/recording/layout5.rec");
    let out = report(&seed, &["--mode", "all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let flows: Vec<&Value> = lines.iter().filter(|l| l["type"] == "flow").collect();
    let data = flows
        .iter()
        .find(|f| f["rport"] == 7000 && f["bytes_acked"].as_u64() > Some(300_000))
        .unwrap_or_else(|| panic!("the 300 kB flow: {flows:#?}"));
    assert!(data["srtt_ns"].as_u64() > Some(10_000_000), "{data}");
    assert!(data["drops"]["QDISC_DROP"].as_u64() > Some(0), "{data}");
    let timeout = flows
        .iter()
        .find(|f| f["cause"] == "syn_timeout")
        .unwrap_or_else(|| panic!("the SYN timeout: {flows:#?}"));
    assert!(
        timeout["drops"]["NETFILTER_DROP"].as_u64() >= Some(2),
        "{timeout}"
    );
    let child = flows
        .iter()
        .find(|f| f["lport"] == 7002 && f["path"][0]["state"] == "SYN_RECV")
        .unwrap_or_else(|| panic!("the accepted flow: {flows:#?}"));
    assert_eq!(child["path"][0]["rtx"], 1, "{child}");
    assert!(lines
        .iter()
        .any(|l| l["type"] == "drop" && l["reason"] == "NETFILTER_DROP"));
    let summary = lines.last().expect("a summary");
    assert_eq!(summary["synack_retransmits"], 1, "{summary}");
}
