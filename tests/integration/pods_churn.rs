//! Pods that come and go: 200 pods under both kubelet drivers, made and deleted in waves of 20
//! while their processes connect (thousands of connections a second in all). No flow is ever
//! named with another pod's name; the identity cache stays within its limit (lowered to 120
//! for the test: the cgroups gone longest are forgotten first, and the summary says how many);
//! a deleted pod's late flows — connections its process still held when the pod's cgroups and
//! log directories went — keep the name they had.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    kubelet::{cgroup2_root, Driver, FakeNode, FakePod},
    support::{heavy_load, Tracer},
};

const WAVES: usize = 10;
const PODS_PER_WAVE: usize = 20;
/// Connections each pod's process makes to itself before its late one.
const CONNECTIONS: usize = 300;

/// A process in the pod's container cgroup: a listener, `CONNECTIONS` connections to it, one
/// more held open; then it leaves the pod's cgroup for `home` (so the pod can be deleted),
/// prints its port, and closes the late connection when told (a line on stdin).
fn pod_process(pod: &FakePod, home: &str) -> Child {
    let script = format!(
        "import os, socket, sys\n\
         l = socket.socket()\n\
         l.bind(('127.0.0.1', 0))\n\
         l.listen(512)\n\
         port = l.getsockname()[1]\n\
         for _ in range({CONNECTIONS}):\n    \
             c = socket.create_connection(('127.0.0.1', port))\n    \
             s, _ = l.accept()\n    \
             c.close()\n    \
             s.close()\n\
         late = socket.create_connection(('127.0.0.1', port))\n\
         late_s, _ = l.accept()\n\
         open('{home}/cgroup.procs', 'w').write(str(os.getpid()))\n\
         print(port, flush=True)\n\
         sys.stdin.readline()\n\
         late.close()\n\
         late_s.close()\n\
         l.close()\n"
    );
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c \"$0\"",
            pod.cgroup.display()
        ))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash")
}

/// This test process's own cgroup (where the pods' processes go before their pod is deleted).
fn own_cgroup() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    cgroup2_root()
        .join(path.trim_start_matches('/'))
        .display()
        .to_string()
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Made {
    pod: FakePod,
    port: u16,
    deleted_ns: u64,
}

#[test]
fn two_hundred_pods_coming_and_going_never_lend_their_names() {
    let load = heavy_load();
    let mut node = FakeNode::new();
    let mut args = vec![
        "flows".to_string(),
        "--flows-at".into(),
        "close".into(),
        "--no-time-wait".into(),
        "--ring-size".into(),
        "64MiB".into(),
    ];
    args.extend(node.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer =
        Tracer::start_alone_with_env(&load, &[("TCPTRACE_TEST_MAX_IDENTITIES", "120")], &args);
    let home = own_cgroup();
    let started = Instant::now();
    let mut connecting = std::time::Duration::ZERO;
    let mut made: Vec<Made> = Vec::new();
    for wave in 0..WAVES {
        let pods: Vec<FakePod> = (0..PODS_PER_WAVE)
            .map(|i| {
                let driver = [Driver::Systemd, Driver::Cgroupfs][i % 2];
                node.pod(driver, "churn", &format!("w{wave}-p{i}"), "app")
            })
            .collect();
        let wave_started = Instant::now();
        let mut children: Vec<Child> = pods.iter().map(|p| pod_process(p, &home)).collect();
        let ports: Vec<u16> = (children.iter_mut())
            .map(|c| {
                let mut line = String::new();
                BufReader::new(c.stdout.as_mut().expect("piped stdout"))
                    .read_line(&mut line)
                    .expect("the pod's port");
                line.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("a port, not {line:?}: {e}"))
            })
            .collect();
        connecting += wave_started.elapsed();
        // Pods live a few seconds at least (the tracer names cgroups while they live: its
        // walk each second, its records read up to a second late under this load).
        std::thread::sleep(std::time::Duration::from_secs(2));
        // Every process has left its pod: the pods go (cgroups, log directories), then their
        // late connections close.
        for pod in &pods {
            node.remove(pod);
        }
        let deleted_ns = unix_ns();
        std::thread::sleep(std::time::Duration::from_millis(200));
        for child in &mut children {
            let _ = child.stdin.as_mut().expect("piped stdin").write_all(b"\n");
        }
        for mut child in children {
            assert!(child.wait().expect("the pod's process").success());
        }
        for (pod, port) in pods.into_iter().zip(ports) {
            made.push(Made {
                pod,
                port,
                deleted_ns,
            });
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let connections = WAVES * PODS_PER_WAVE * (CONNECTIONS + 1);
    eprintln!(
        "{connections} connections from {} pods in {elapsed:.1} s; {:.0}/s while the waves \
         connected ({:.1} s)",
        made.len(),
        connections as f64 / connecting.as_secs_f64(),
        connecting.as_secs_f64()
    );
    // The tracer reads its ring to the end before it exits.
    let out = tracer.stop();
    let summary = out.summary();
    // The kernel may miss an event now and then (a program not run: counted as missed).
    let lost = summary["lost"]["total"].as_u64().expect("lost");
    assert!(lost <= 10, "next to nothing lost: {summary}");
    let cache = &summary["identities"];
    assert!(
        cache["forgotten"].as_u64() > Some(0) && cache["cached"].as_u64() <= Some(120),
        "the cache stayed within 120, forgetting gone pods: {cache}"
    );
    assert_eq!(
        cache["not_cached"], 0,
        "every live cgroup was held: {cache}"
    );

    let by_cgroup: HashMap<u64, &Made> = made.iter().map(|m| (m.pod.cgroup_id(), m)).collect();
    let by_name: HashMap<&str, &Made> = made.iter().map(|m| (m.pod.name.as_str(), m)).collect();
    let mut named: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut unnamed: Vec<(String, u64)> = Vec::new();
    for f in out.of_type("flow") {
        let cgroup = f["cgroup_id"].as_u64().unwrap_or(0);
        if let Some(m) = by_cgroup.get(&cgroup) {
            if f["pod"] != m.pod.name.as_str() {
                unnamed.push((
                    m.pod.name.clone(),
                    f["ts_unix_ns"].as_u64().unwrap_or(0) / 1_000_000 % 100_000,
                ));
            }
        }
        let Some(name) = f["pod"].as_str().filter(|n| by_name.contains_key(n)) else {
            continue;
        };
        let m = by_name[name];
        assert_eq!(
            f["cgroup_id"],
            m.pod.cgroup_id(),
            "named from its own cgroup: {f}"
        );
        assert_eq!(f["pod_uid"], m.pod.uid.as_str(), "{f}");
        assert!(
            f["lport"] == m.port || f["rport"] == m.port,
            "{name}'s flow is toward or from its own port {}: {f}",
            m.port
        );
        let counts = named.entry(name).or_default();
        if f["rport"] == m.port {
            counts.0 += 1;
        }
        if f["ts_unix_ns"].as_u64() > Some(m.deleted_ns) {
            counts.1 += 1;
        }
    }
    assert!(
        unnamed.is_empty(),
        "{} flows of the pods not named with their pod (pod, ms): {:?}; the cache: {cache}",
        unnamed.len(),
        &unnamed[..unnamed.len().min(30)]
    );
    let mut short = 0;
    for m in &made {
        let (clients, late) = named.get(m.pod.name.as_str()).copied().unwrap_or_default();
        short += (CONNECTIONS + 1).saturating_sub(clients) as u64;
        assert!(
            late >= 2,
            "{}'s late flows, ended after it was deleted, keep its name: {late}",
            m.pod.name
        );
    }
    assert!(
        short <= lost,
        "every connection of every pod named (its late one too) but those lost: {short} \
         missing, {lost} lost"
    );
}
