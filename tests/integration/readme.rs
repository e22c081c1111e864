//! Every command the README shows is run here as it is written, against this machine: the
//! lines of its `sh` blocks that start with `tcptrace`, and the `$ tcptrace …` (or `$ cargo
//! xtask run -- …`) lines of its captures. What a line needs is made first — the network
//! namespace, the cgroup, the pod, the recording, processes for `pidof` — and a tracing mode
//! is stopped after a couple of seconds (`--duration`). The only other change: a Kubernetes
//! name is looked up under the test's fake node (its log directories are passed). `top` draws
//! a screen: its line is run by `top::top_shows_real_connections_keys_work_and_q_restores_the_terminal`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    kubelet::{cgroup2_root, Driver, FakeNode, FakePod},
    support::{shared_load, BIN},
};

/// The README's tcptrace commands, in order.
fn readme_commands() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut commands = Vec::new();
    let mut block: Option<&str> = None;
    for line in readme.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            block = match block {
                None => Some(fence),
                Some(_) => None,
            };
            continue;
        }
        let command: Option<String> = match block {
            Some("sh") => line.starts_with("tcptrace").then(|| line.to_string()),
            Some(_) => line.strip_prefix("$ ").and_then(|l| {
                let l = match l.strip_prefix("cargo xtask run -- ") {
                    Some(rest) => format!("tcptrace {rest}"),
                    None => l.to_string(),
                };
                l.starts_with("tcptrace").then_some(l)
            }),
            None => None,
        };
        if let Some(command) = command {
            // A trailing `# comment` is the README's, not the command's.
            let command = command.split("  #").next().unwrap_or(&command).trim();
            commands.push(command.to_string());
        }
    }
    assert!(commands.len() >= 15, "README commands found: {commands:#?}");
    commands
}

/// Removes what a README line needed, at the end.
struct Staged {
    dir: PathBuf,
    cgroup: PathBuf,
    netns: bool,
    sleepers: Vec<Child>,
    _pod: FakePod,
    _node: FakeNode,
    node_args: Vec<String>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for child in &mut self.sleepers {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.netns {
            let _ = Command::new("ip").args(["netns", "del", "blue"]).status();
        }
        for dir in self.cgroup.ancestors().take(2) {
            let _ = fs::remove_dir(dir);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn stage() -> Staged {
    let dir = std::env::temp_dir().join(format!("tcptrace-readme-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    // `--cgroup /kubepods.slice/kubepods-pod1234.slice/cri-containerd-ab12.scope`
    let cgroup =
        cgroup2_root().join("kubepods.slice/kubepods-pod1234.slice/cri-containerd-ab12.scope");
    let cgroup_existed = cgroup.exists();
    fs::create_dir_all(&cgroup).expect("the README's cgroup");
    // `--netns blue`
    let netns = !Path::new("/run/netns/blue").exists()
        && Command::new("ip")
            .args(["netns", "add", "blue"])
            .status()
            .expect("ip runs")
            .success();
    // `$(pidof nginx)`: two processes stand for nginx's master and worker.
    let sleepers = (0..2)
        .map(|_| Command::new("sleep").arg("60").spawn().expect("sleep"))
        .collect();
    // `--namespace shop --pod cart-7d9f`
    let mut node = FakeNode::new();
    let pod = node.pod(Driver::Cgroupfs, "shop", "cart-7d9f", "client");
    let node_args = node.args();
    Staged {
        dir,
        cgroup: if cgroup_existed {
            PathBuf::new()
        } else {
            cgroup
        },
        netns,
        sleepers,
        _pod: pod,
        _node: node,
        node_args,
    }
}

/// A command as it runs here: through `sh` (for `$(pidof …)`), with `pidof` answering the
/// staged processes, paths in the scratch directory, a short duration.
fn shell_line(command: &str, staged: &Staged) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut skip_next = false;
    for word in command.split(' ').filter(|w| !w.is_empty()) {
        if skip_next {
            skip_next = false;
            continue;
        }
        match word {
            "tcptrace" if words.is_empty() => words.push(BIN.to_string()),
            "--duration" => skip_next = true,
            "incident.rec" => words.push(staged.dir.join("incident.rec").display().to_string()),
            other => words.push(other.to_string()),
        }
    }
    let mode = words.get(1).map(String::as_str).unwrap_or("");
    if !matches!(mode, "idle" | "report") {
        words.extend(["--duration".into(), "2s".into()]);
    }
    if command.contains("--namespace") || command.contains("--pod") {
        words.extend(staged.node_args.iter().cloned());
    }
    let pids: Vec<String> = staged.sleepers.iter().map(|c| c.id().to_string()).collect();
    format!(
        "pidof() {{ echo {}; }}; {}",
        pids.join(" "),
        words.join(" ")
    )
}

#[test]
fn every_command_in_the_readme_runs_as_written() {
    let _load = shared_load();
    let staged = stage();
    let mut ran = Vec::new();
    for command in readme_commands() {
        if command.starts_with("tcptrace top") {
            continue;
        }
        let line = shell_line(&command, &staged);
        let out = Command::new("sh")
            .args(["-c", &line])
            .stdin(Stdio::null())
            .output()
            .expect("sh runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "`{command}` failed ({}): {stderr}",
            out.status
        );
        assert!(!stderr.contains("tcptrace: error"), "`{command}`: {stderr}");
        let traces =
            !(command.starts_with("tcptrace idle") || command.starts_with("tcptrace report"));
        assert!(
            !traces || stderr.contains("tracing TCP"),
            "`{command}` did not trace: {stderr}"
        );
        ran.push(command);
    }
    assert!(ran.iter().any(|c| c.contains("--port")), "{ran:#?}");
    assert!(ran.iter().any(|c| c.contains("pidof")), "{ran:#?}");
}
