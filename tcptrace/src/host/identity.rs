//! Who a socket belongs to, from its cgroup (v2): the container and its runtime, the
//! Kubernetes pod (both kubelet cgroup drivers) and, from what the node itself holds (the
//! kubelet's log directories), the pod's namespace and name and the container's name; a
//! systemd unit outside containers. No API server is asked.
use std::{collections::HashMap, fs, path::Path};

use crate::model::workload::Identity;

/// What a cgroup path alone says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathFacts {
    pub container_id: Option<String>,
    pub runtime: Option<&'static str>,
    pub pod_uid: Option<String>,
    pub unit: Option<String>,
}

/// Container scopes as the runtimes name them under the systemd driver.
const SCOPES: [(&str, &str); 4] = [
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
];

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID a kubelet cgroup names: `kubepods-burstable-pod<uid>.slice` (systemd driver,
/// dashes written as underscores) or `pod<uid>` under `kubepods` (cgroupfs driver).
fn pod_uid_of(component: &str, under_kubepods: bool) -> Option<String> {
    if let Some(slice) = component.strip_suffix(".slice") {
        let at = slice
            .find("-pod")
            .filter(|_| slice.starts_with("kubepods"))?;
        let uid = &slice[at + 4..];
        return is_uid(uid).then(|| uid.replace('_', "-"));
    }
    let uid = component.strip_prefix("pod").filter(|_| under_kubepods)?;
    is_uid(uid).then(|| uid.to_string())
}

fn is_uid(text: &str) -> bool {
    (32..=36).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
}

/// Reads a cgroup path (relative to the cgroup2 mount).
pub fn parse_path(path: &str) -> PathFacts {
    let mut facts = PathFacts::default();
    let mut under_kubepods = false;
    let mut under_runtime: Option<&'static str> = None;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == "kubepods" || component.starts_with("kubepods") {
            under_kubepods = true;
        }
        match component {
            "docker" => under_runtime = Some("docker"),
            "libpod_parent" | "machine.slice" => under_runtime = Some("podman"),
            _ => {}
        }
        if let Some(uid) = pod_uid_of(component, under_kubepods) {
            facts.pod_uid = Some(uid);
            continue;
        }
        let scoped = component.strip_suffix(".scope").and_then(|scope| {
            SCOPES.iter().find_map(|(prefix, runtime)| {
                let id = scope.strip_prefix(prefix)?;
                is_container_id(id).then(|| (id.to_string(), *runtime))
            })
        });
        if let Some((id, runtime)) = scoped {
            facts.container_id = Some(id);
            facts.runtime = Some(runtime);
            continue;
        }
        // Podman's cgroupfs manager: `libpod_parent/libpod-<id>`.
        if let Some(id) = component
            .strip_prefix("libpod-")
            .filter(|id| is_container_id(id))
        {
            facts.container_id = Some(id.to_string());
            facts.runtime = Some("podman");
            continue;
        }
        // The cgroupfs driver names a container by its id alone (under its pod, or docker's).
        if is_container_id(component) && (facts.pod_uid.is_some() || under_runtime.is_some()) {
            facts.container_id = Some(component.to_string());
            facts.runtime = under_runtime;
            continue;
        }
        if component.ends_with(".service") || component.ends_with(".scope") {
            facts.unit = Some(component.to_string());
        }
    }
    if facts.container_id.is_some() || facts.pod_uid.is_some() {
        facts.unit = None;
    }
    facts
}

/// A pod as the kubelet's log directories name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    /// Its containers' names (the log directory's subdirectories).
    pub containers: Vec<String>,
}

/// The node's pods by UID (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/`) and
/// containers by id (`/var/log/containers/<pod>_<namespace>_<container>-<id>.log`).
#[derive(Clone, Debug, Default)]
pub struct PodDirectory {
    pub pods: HashMap<String, PodEntry>,
    /// Container id → (pod UID when known, container name).
    pub containers: HashMap<String, String>,
}

impl PodDirectory {
    /// Reads both directories; a missing one is empty (no kubelet on this node).
    pub fn read(pods_dir: &Path, containers_dir: &Path) -> PodDirectory {
        let mut directory = PodDirectory::default();
        for entry in fs::read_dir(pods_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(3, '_');
            let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let mut containers: Vec<String> = fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|c| c.path().is_dir())
                .map(|c| c.file_name().to_string_lossy().into_owned())
                .collect();
            containers.sort();
            directory.pods.insert(
                uid.to_string(),
                PodEntry {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    containers,
                },
            );
        }
        for entry in fs::read_dir(containers_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            // <pod>_<namespace>_<container>-<64 hex id>
            let Some((front, id)) = stem.rsplit_once('-').filter(|(_, id)| is_container_id(id))
            else {
                continue;
            };
            if let Some(container) = front.splitn(3, '_').nth(2) {
                directory
                    .containers
                    .insert(id.to_string(), container.to_string());
            }
        }
        directory
    }

    /// Completes what a cgroup's path said with the names the node holds.
    pub fn identify(&self, cgroup_id: u64, path: &str) -> Identity {
        let facts = parse_path(path);
        let pod = facts.pod_uid.as_ref().and_then(|uid| self.pods.get(uid));
        let container = facts
            .container_id
            .as_ref()
            .and_then(|id| self.containers.get(id).cloned())
            .or_else(|| match pod {
                // One container (besides the sandbox, which has no log directory): its name.
                Some(p) if facts.container_id.is_some() && p.containers.len() == 1 => {
                    p.containers.first().cloned()
                }
                _ => None,
            });
        Identity {
            cgroup_id,
            path: path.to_string(),
            container_id: facts.container_id,
            runtime: facts.runtime.map(str::to_string),
            pod_uid: facts.pod_uid,
            namespace: pod.map(|p| p.namespace.clone()),
            pod: pod.map(|p| p.name.clone()),
            container,
            unit: facts.unit,
        }
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
