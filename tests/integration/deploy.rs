//! The deployment manifests: the DaemonSet is a well-formed Kubernetes object with the
//! privileges and mounts tcptrace needs; the systemd unit grants the same.
use yaml_rust2::{Yaml, YamlLoader};

const DAEMONSET: &str = include_str!("../../deploy/daemonset.yaml");
const UNIT: &str = include_str!("../../deploy/tcptrace.service");

fn strs(y: &Yaml) -> Vec<&str> {
    y.as_vec()
        .unwrap_or_else(|| panic!("a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("a string: {v:?}")))
        .collect()
}

#[test]
fn daemonset_is_valid_kubernetes_yaml() {
    let docs = YamlLoader::load_from_str(DAEMONSET).expect("valid YAML");
    assert_eq!(docs.len(), 1, "one object");
    let ds = &docs[0];
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    assert!(ds["metadata"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = selector.as_hash().expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            &labels[k.as_str().expect("label key")],
            v,
            "the selector matches the pod labels"
        );
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "host-wide tracing"
    );
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(c["image"].as_str().is_some_and(|i| !i.is_empty()));
    let args = strs(&c["args"]);
    assert_eq!(args[..2], ["metrics", "--metrics"], "headless with metrics");
    let port = c["ports"][0]["containerPort"].as_i64().expect("a port");
    assert!(
        args[2].ends_with(&format!(":{port}")),
        "serves where the port says"
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    let caps = strs(&c["securityContext"]["capabilities"]["add"]);
    for needed in ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(caps.contains(&needed), "{needed} in {caps:?}");
    }
    // The timer handlers are learnt where /proc/kallsyms hides them.
    assert!(!caps.contains(&"SYSLOG"), "no SYSLOG: {caps:?}");
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    let volumes: Vec<&str> = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().expect("volume name"))
        .collect();
    for mount in c["volumeMounts"].as_vec().expect("volumeMounts") {
        let name = mount["name"].as_str().expect("mount name");
        assert!(volumes.contains(&name), "mount {name} has a volume");
    }
    let mounted =
        |path: &str| {
            c["volumeMounts"].as_vec().expect("mounts").iter().any(|m| {
                m["mountPath"].as_str() == Some(path) && m["readOnly"].as_bool() == Some(true)
            })
        };
    assert!(mounted("/sys/kernel/btf"), "kernel BTF is mounted");
    // Pods named: the host's cgroups where --cgroup-root says, the kubelet's log directories
    // where tcptrace looks by default, and metrics by workload.
    let root = args
        .iter()
        .position(|a| *a == "--cgroup-root")
        .and_then(|i| args.get(i + 1))
        .expect("--cgroup-root DIR");
    assert!(mounted(root), "{root} is mounted");
    assert!(mounted("/var/log/pods") && mounted("/var/log/containers"));
    assert!(args.contains(&"--metrics-pod-labels"), "{args:?}");
}

#[test]
fn systemd_unit_runs_headless_with_the_capabilities() {
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(UNIT.contains(section), "{section}");
    }
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(exec.contains(" metrics --metrics "), "{exec}");
    let caps = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities");
    for needed in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_DAC_READ_SEARCH",
        "CAP_NET_ADMIN",
    ] {
        assert!(
            caps.split_whitespace().any(|c| c == needed),
            "{needed} in {caps}"
        );
    }
    assert!(!caps.contains("CAP_SYSLOG"), "{caps}");
}
