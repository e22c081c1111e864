//! Which pod: real cgroups named by the kubelet's two drivers, the kubelet's log
//! directories, processes moved into the containers' cgroups, real connections. Every output
//! names the right pod and container; the filters admit exactly those pods and follow a pod
//! deleted and created again with a new UID; a recording names them on report.
use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    kubelet::{clients_in, server_in, Driver, FakeNode, FakePod},
    support::{spawn_attached, Tracer, BIN},
    top::TopUnderPty,
};

fn flows_toward(records: &[Value], port: u16) -> (Vec<&Value>, Vec<&Value>) {
    // Connections only: not the listener's own LISTEN → CLOSE.
    let flows = records
        .iter()
        .filter(|r| r["type"] == "flow" && r["path"][0]["state"] != "LISTEN");
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    for f in flows {
        if f["rport"] == port {
            clients.push(f);
        } else if f["lport"] == port {
            servers.push(f);
        }
    }
    (clients, servers)
}

/// The JSON fields of a record match the pod's.
fn names(record: &Value, pod: &FakePod) -> bool {
    record["namespace"] == pod.namespace.as_str()
        && record["pod"] == pod.name.as_str()
        && record["container"] == pod.container.as_str()
        && record["pod_uid"] == pod.uid.as_str()
        && record["container_id"] == pod.container_id.as_str()
        && record["cgroup_id"] == pod.cgroup_id()
}

fn with_node(node: &FakeNode, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(node.args());
    all
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn flows_transitions_columns_and_top_name_the_pod_under_both_kubelet_drivers() {
    let mut node = FakeNode::new();
    let api = node.pod(Driver::Systemd, "web", "api-0", "server");
    let cart = node.pod(Driver::Cgroupfs, "shop", "cart-7d9f", "client");
    // The listener exists before tracing: its owner and cgroup are read with sock_diag.
    let (mut server, port) = server_in(&api.cgroup);
    let p = port.to_string();
    let json = Tracer::start(&refs(&with_node(&node, &["all", "--no-time-wait"])));
    let columns = with_node(
        &node,
        &["flows", "--no-time-wait", "--identity-column", "always"],
    );
    let (text, _stderr) = spawn_attached(
        Command::new(BIN)
            .args(&columns)
            .arg("-L")
            .arg(&p)
            .stdout(Stdio::piped()),
    );
    let mut top = TopUnderPty::start(&refs(&with_node(&node, &["--no-time-wait"])));
    top.wait_for("the first frame", |s| s.contains("tcptrace top"));
    clients_in(&cart.cgroup, port, 3);

    // top's third table: the workloads.
    let dest = format!("127.0.0.1:{port}");
    top.wait_for("the destination's row", |s| s.contains(&dest));
    top.keys("tt");
    let screen = top.wait_for("the workloads' table", |s| {
        s.contains("workloads") && s.contains("shop/cart-7d9f") && s.contains("web/api-0")
    });
    top.keys("q");
    top.finish();

    let out = json.stop();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(text.id() as i32, libc::SIGINT) };
    let text = text.wait_with_output().expect("the columns' tracer");
    let _ = server.kill();
    let _ = server.wait();

    let (clients, servers) = flows_toward(&out.records, port);
    assert_eq!(clients.len(), 3, "{clients:#?}");
    assert_eq!(servers.len(), 3, "{servers:#?}");
    for f in &clients {
        assert!(names(f, &cart), "the client's pod (cgroupfs driver): {f}");
        assert!(
            f.get("container_runtime").is_none() && f.get("unit").is_none(),
            "{f}"
        );
    }
    for f in &servers {
        assert!(names(f, &api), "accepted in the listener's pod: {f}");
        assert_eq!(f["container_runtime"], "containerd", "{f}");
    }
    let transitions: Vec<&Value> = out
        .of_type("transition")
        .into_iter()
        .filter(|t| t["rport"] == port && t["old"] == "SYN_SENT")
        .collect();
    assert_eq!(transitions.len(), 3);
    assert!(
        transitions.iter().all(|t| names(t, &cart)),
        "{transitions:#?}"
    );

    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!(":{port} ")))
        .collect();
    assert!(
        text.lines().next().is_some_and(|h| h.contains("WORKLOAD")),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l.contains(&api.label())), "{text}");
    eprintln!("pods: {}\n{}\n{screen}", clients[0], lines[0]);
}

#[test]
fn pod_namespace_and_container_filters_admit_exactly_those_and_follow_a_new_pod() {
    let mut node = FakeNode::new();
    let api = node.pod(Driver::Systemd, "web", "api-1", "server");
    let cart = node.pod(Driver::Cgroupfs, "shop", "cart-0", "client");
    let other = node.pod(Driver::Systemd, "shop", "stock-0", "worker");
    let (mut server, port) = server_in(&api.cgroup);

    let by_pod = Tracer::start(&refs(&with_node(
        &node,
        &["flows", "--no-time-wait", "--pod", "cart-0"],
    )));
    let by_namespace = Tracer::start_beside(
        &by_pod,
        &refs(&with_node(
            &node,
            &["flows", "--no-time-wait", "--namespace", "shop"],
        )),
    );
    let short_id = &other.container_id[..12];
    let by_container = Tracer::start_beside(
        &by_pod,
        &refs(&with_node(
            &node,
            &["flows", "--no-time-wait", "--container", short_id],
        )),
    );
    clients_in(&cart.cgroup, port, 2);
    clients_in(&other.cgroup, port, 2);

    // The pod is deleted and created again: same name, a new UID and cgroup.
    node.remove(&cart);
    let cart_again = node.pod(Driver::Cgroupfs, "shop", "cart-0", "client");
    assert_ne!(cart_again.uid, cart.uid);
    // The filters are resolved again every second.
    thread::sleep(Duration::from_millis(2500));
    clients_in(&cart_again.cgroup, port, 2);

    let (pod_out, ns_out, container_out) =
        (by_pod.stop(), by_namespace.stop(), by_container.stop());
    let _ = server.kill();
    let _ = server.wait();

    let pod_flows = pod_out.of_type("flow");
    assert_eq!(
        pod_flows.len(),
        4,
        "cart-0's 2 flows, then its new incarnation's 2: {pod_flows:#?}"
    );
    assert_eq!(pod_flows.iter().filter(|f| names(f, &cart)).count(), 2);
    assert_eq!(
        pod_flows.iter().filter(|f| names(f, &cart_again)).count(),
        2,
        "the pod created again is traced: {pod_flows:#?}"
    );
    let ns_flows = ns_out.of_type("flow");
    assert_eq!(
        ns_flows.len(),
        6,
        "every shop pod's client, not web's server: {ns_flows:#?}"
    );
    assert!(ns_flows
        .iter()
        .all(|f| f["namespace"] == "shop" && f["rport"] == port));
    let container_flows = container_out.of_type("flow");
    assert_eq!(container_flows.len(), 2, "{container_flows:#?}");
    assert!(container_flows.iter().all(|f| names(f, &other)));
    assert!(
        pod_out.stderr.contains("only pod cart-0"),
        "{}",
        pod_out.stderr
    );
}

/// A name that matches nothing yet waits for its pod (a DaemonSet's argument, a trace started
/// before the workload): said once, nothing traced, then the pod admitted within a second of
/// its cgroup appearing. A malformed name is still a one-line error.
#[test]
fn names_that_match_nothing_wait_and_malformed_ones_are_errors() {
    let mut node = FakeNode::new();
    for (flag, value) in [
        ("--pod", "Not_A_Pod"),
        ("--namespace", "no.dots-in-namespaces"),
        ("--container", "trailing-dash-"),
    ] {
        let out = Command::new(BIN)
            .args(["flows", flag, value])
            .args(node.args())
            .output()
            .expect("run tcptrace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("{flag} '{value}'")), "{stderr}");
    }
    let mut tracer = Tracer::start(&refs(&with_node(
        &node,
        &["flows", "--no-time-wait", "--namespace", "acme"],
    )));
    tracer.wait_for_stderr(
        "waiting for pods matching namespace acme on this node",
        Duration::from_secs(5),
    );
    // Deployed after the trace began.
    let web = node.pod(Driver::Systemd, "acme", "web-0", "app");
    let (mut server, port) = server_in(&web.cgroup);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    tracer.wait_for_records(
        "a flow of the new pod",
        Duration::from_secs(10),
        |records| {
            if std::time::Instant::now() < deadline {
                clients_in(&web.cgroup, port, 1);
            }
            records
                .iter()
                .any(|r| r["type"] == "flow" && r["namespace"] == "acme" && r["pod"] == "web-0")
        },
    );
    let _ = server.kill();
    let _ = server.wait();
    let out = tracer.stop();
    assert_eq!(
        out.stderr.matches("waiting for pods matching").count(),
        1,
        "said once: {}",
        out.stderr
    );
}

#[test]
fn a_recording_names_its_pods_on_report_and_alerts_name_the_pod() {
    let mut node = FakeNode::new();
    let api = node.pod(Driver::Systemd, "web", "api-2", "server");
    let cart = node.pod(Driver::Systemd, "shop", "cart-2", "client");
    let (mut server, port) = server_in(&api.cgroup);
    let dir = std::env::temp_dir().join(format!("tcptrace-pods-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pods.rec");
    let record = with_node(&node, &["record", "-o", &file.display().to_string()]);
    let (recorder, _stderr) = spawn_attached(Command::new(BIN).args(&record).stdout(Stdio::null()));
    let alerts = Tracer::start(&refs(&with_node(&node, &["alerts", "--no-time-wait"])));
    clients_in(&cart.cgroup, port, 2);
    // Refused: an alert naming the client's pod.
    let _ = server.kill();
    let _ = server.wait();
    clients_in_refused(&cart, port);
    alerts.wait_for_record("alert", Duration::from_secs(10), |a| {
        a["kind"] == "refused" && a["rport"] == port
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    assert!(recorder
        .wait_with_output()
        .expect("recorder")
        .status
        .success());
    let alert_out = alerts.stop();

    let refused: Vec<&Value> = alert_out
        .of_type("alert")
        .into_iter()
        .filter(|a| a["kind"] == "refused" && a["rport"] == port)
        .collect();
    assert!(!refused.is_empty(), "{:#?}", alert_out.records);
    assert!(refused.iter().all(|a| names(a, &cart)), "{refused:#?}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("pod shop/cart-2 container client")),
        "{}",
        refused[0]
    );

    // The pods are gone before the report: it names them from the recording alone.
    drop(node);
    let report = Command::new(BIN)
        .args([
            "report",
            &file.display().to_string(),
            "--mode",
            "flows",
            "--json",
        ])
        .output()
        .expect("report");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&report.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let (clients, servers) = flows_toward(&records, port);
    assert_eq!(clients.len(), 3, "2 served and 1 refused: {clients:#?}");
    assert!(clients
        .iter()
        .all(|f| f["pod"] == "cart-2" && f["container"] == "client"));
    assert_eq!(servers.len(), 2);
    assert!(servers
        .iter()
        .all(|f| f["pod"] == "api-2" && f["namespace"] == "web"));
}

/// One connection from the pod to a port nobody listens on any more.
fn clients_in_refused(pod: &FakePod, port: u16) {
    let mut child = crate::kubelet::spawn_in(
        &pod.cgroup,
        &format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null"),
    );
    let _ = child.wait();
}

#[test]
fn the_idle_report_names_each_groups_pod() {
    let mut node = FakeNode::new();
    let api = node.pod(Driver::Systemd, "web", "api-3", "server");
    let cart = node.pod(Driver::Cgroupfs, "shop", "cart-3", "client");
    let (mut server, port) = server_in(&api.cgroup);
    // A connection left open and silent, no keepalive.
    let mut idle = crate::kubelet::spawn_in(
        &cart.cgroup,
        &format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 10'"),
    );
    // Asked again until the connection (made by the shell in the pod, then idle for 1 s of
    // wall-clock time) is listed.
    let with_port = |g: &&Value| {
        g["sockets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["rport"] == port || s["lport"] == port))
    };
    let idle_report = || {
        let out = Command::new(BIN)
            .args(["idle", "--min-idle", "1s", "--json"])
            .args(node.args())
            .output()
            .expect("tcptrace idle");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
            .find(|r| r["type"] == "idle_report")
            .expect("an idle report")
    };
    let mut report = Value::Null;
    crate::support::wait_until(
        "both ends of the idle connection listed",
        Duration::from_secs(15),
        || {
            report = idle_report();
            report["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .filter(with_port)
                .count()
                == 2
        },
    );
    let _ = idle.kill();
    let _ = idle.wait();
    let _ = server.kill();
    let _ = server.wait();
    let groups = report["groups"].as_array().expect("groups");
    let named: Vec<&Value> = groups.iter().filter(with_port).collect();
    assert_eq!(named.len(), 2, "the client's and the server's: {report}");
    assert!(named.iter().any(|g| names(g, &cart)), "{report}");
    assert!(named.iter().any(|g| names(g, &api)), "{report}");
}

#[test]
fn a_pods_full_accept_queue_shows_under_its_pod_in_the_metrics() {
    let mut node = FakeNode::new();
    let db = node.pod(Driver::Systemd, "data", "db-0", "postgres");
    // A listener with backlog 1 that never accepts, in the pod.
    let script = "import socket, time\n\
                  s = socket.socket()\n\
                  s.bind(('127.0.0.1', 0))\n\
                  s.listen(1)\n\
                  print(s.getsockname()[1], flush=True)\n\
                  time.sleep(60)\n";
    let mut server = crate::kubelet::spawn_in(&db.cgroup, &format!("python3 -c \"{script}\""));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("port");
    let port: u16 = line.trim().parse().expect("a port");
    let metrics_port = crate::metrics::free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let tracer = Tracer::start(&refs(&with_node(
        &node,
        &["metrics", "--metrics", &addr, "--metrics-pod-labels"],
    )));
    let clients = crate::listen::connect_many(port, 30);
    let listener = format!("127.0.0.1:{port}");
    let labels = [
        ("listener", listener.as_str()),
        ("k8s_namespace", "data"),
        ("k8s_pod", "db-0"),
        ("k8s_container", "postgres"),
    ];
    // The listeners are sampled every second.
    let (text, scraped) =
        crate::metrics::scrape_until(metrics_port, "the pod's full queue and its drops", |s| {
            crate::metrics::value(s, "tcptrace_workload_listen_queue_depth", &labels) >= 1.0
                && crate::metrics::value(s, "tcptrace_workload_listen_drops_total", &labels) >= 1.0
        });
    drop(clients);
    let _ = server.kill();
    let _ = server.wait();
    let _ = tracer.stop();
    let depth = crate::metrics::value(&scraped, "tcptrace_workload_listen_queue_depth", &labels);
    let drops = crate::metrics::value(&scraped, "tcptrace_workload_listen_drops_total", &labels);
    assert!(
        depth >= 1.0 && drops >= 1.0,
        "queue {depth}, drops {drops}:\n{text}"
    );
}
