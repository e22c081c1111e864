//! The privileges of each mode, as docs/operations.md states them: its table is read here,
//! and every mode of a row runs as user `nobody` with exactly the row's capabilities (exit 0,
//! no warning), then the row's first mode once without each of them (an error or a warning
//! that names the capability taken away). The table cannot drift from what was run.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::{heavy_load, BIN};

/// A row of the privileges table: the modes (with their arguments) and the capabilities.
struct Row {
    modes: Vec<String>,
    caps: Vec<String>,
}

fn table() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = doc
        .find("**Privileges.**")
        .expect("operations.md has a Privileges paragraph");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let rows: Vec<Row> = doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Row {
                modes: ticked(cells[1]),
                caps: ticked(cells[2]),
            }
        })
        .collect();
    assert!(
        rows.len() >= 3,
        "the privileges table, parsed: {} rows",
        rows.len()
    );
    rows
}

/// The binary where user `nobody` can run it, and a directory it may write in.
fn scratch() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tcptrace-privileges-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.join("tcptrace");
    fs::copy(BIN, &bin).expect("copy the binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    (bin, dir)
}

/// `tcptrace ARGS` as `nobody` with exactly `caps` (`CAP_BPF` …); `top` under a terminal.
/// Returns the exit code and what it said (stderr, or the terminal's output).
fn run_as_nobody(bin: &Path, caps: &[&str], args: &[String]) -> (Option<i32>, String) {
    let set: String = std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let mut setpriv = vec![
        "setpriv".to_string(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        bin.display().to_string(),
    ];
    setpriv.extend(args.iter().cloned());
    let out = if args.first().map(String::as_str) == Some("top") {
        Command::new("script")
            .args(["-qec", &setpriv.join(" "), "/dev/null"])
            .output()
    } else {
        Command::new(&setpriv[0]).args(&setpriv[1..]).output()
    }
    .expect("setpriv (util-linux) runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        if args[0] == "top" {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::new()
        }
    );
    (out.status.code(), said)
}

/// Whether the run warned of something its privileges explain: every warning but the
/// start-up's count of connections other tests opened meanwhile.
fn warns(said: &str) -> bool {
    said.lines()
        .any(|l| l.contains("tcptrace: warning") && !l.contains("during the"))
}

/// A mode cell's arguments: `FILE` becomes a file in `dir`, and a tracing mode stops by itself.
fn arguments(mode: &str, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = mode
        .split_whitespace()
        .map(|w| match w {
            "FILE" => dir.join("privileges.rec").display().to_string(),
            other => other.to_string(),
        })
        .collect();
    if args[0] != "idle" {
        args.extend(["--duration".into(), "1s".into()]);
    }
    args
}

#[test]
fn each_mode_runs_with_the_capabilities_the_operations_table_states() {
    // Alone: a run traces every connection on the host, and another test's pods and
    // containers met without CAP_DAC_READ_SEARCH are warned about (named a second late).
    let _load = heavy_load();
    let (bin, dir) = scratch();
    let mut checked = Vec::new();
    for row in table() {
        let caps: Vec<&str> = row
            .caps
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with("CAP_"))
            .collect();
        for mode in &row.modes {
            let args = arguments(mode, &dir);
            let (code, said) = run_as_nobody(&bin, &caps, &args);
            assert_eq!(code, Some(0), "`{mode}` with {caps:?}: {said}");
            assert!(
                !warns(&said) && !said.contains("tcptrace: error"),
                "`{mode}` with {caps:?} warned: {said}"
            );
            if args[0] != "idle" {
                assert!(said.contains("tracing TCP"), "`{mode}`: {said}");
            }
            checked.push(format!("{mode}: {caps:?}"));
        }
        // Each capability is needed: without it, the run fails or warns, naming it.
        let first = arguments(&row.modes[0], &dir);
        for missing in &caps {
            let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != missing).collect();
            let (code, said) = run_as_nobody(&bin, &fewer, &first);
            let complained = code != Some(0) || warns(&said);
            assert!(
                complained && said.contains(missing),
                "`{}` without {missing}: exit {code:?}, {said}",
                row.modes[0]
            );
        }
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(checked.len() >= 8, "{checked:#?}");
}
