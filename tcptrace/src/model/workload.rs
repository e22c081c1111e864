//! Who a socket belongs to: the workload of its cgroup (container, pod, unit) as resolved by
//! `host::identity`, carried by every decoded event.
use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// What a cgroup says of the workload in it. Every field but the id and path may be unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    /// The cgroup (v2) id: the directory's inode.
    pub cgroup_id: u64,
    /// The cgroup's path below the cgroup2 mount (`/kubepods.slice/…`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod's Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The systemd unit (a `.service` or `.scope`) outside containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl Identity {
    /// Whether the pod's or the container's name is still to be learnt (the kubelet writes
    /// its log directories after it makes the cgroup).
    pub fn incomplete(&self) -> bool {
        (self.pod_uid.is_some() && self.pod.is_none())
            || (self.container_id.is_some() && self.pod_uid.is_some() && self.container.is_none())
    }

    /// The compact form: `namespace/pod/container`, `namespace/pod`, a container's short
    /// id, the unit, or `cgroup:ID`.
    pub fn label(&self) -> String {
        match (&self.namespace, &self.pod, &self.container) {
            (Some(ns), Some(pod), Some(c)) => format!("{ns}/{pod}/{c}"),
            (Some(ns), Some(pod), None) => match &self.container_id {
                Some(id) => format!("{ns}/{pod}/{}", short_id(id)),
                None => format!("{ns}/{pod}"),
            },
            _ => match (&self.pod_uid, &self.container_id, &self.unit) {
                (Some(uid), Some(id), _) => format!("pod:{}/{}", short_id(uid), short_id(id)),
                (Some(uid), None, _) => format!("pod:{}", short_id(uid)),
                (None, Some(id), _) => {
                    let runtime = self.runtime.as_deref().unwrap_or("container");
                    format!("{runtime}:{}", short_id(id))
                }
                (None, None, Some(unit)) => unit.clone(),
                (None, None, None) => format!("cgroup:{}", self.cgroup_id),
            },
        }
    }
}

/// The first 12 characters of an id (as `docker ps` and `crictl ps` show them).
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A socket's cgroup and, where resolved, who that is. A cgroup that could not be resolved
/// (gone before it was looked at, or outside the cgroup2 tree) keeps only its id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// 0: unknown (the kernel could not say).
    pub cgroup: u64,
    pub identity: Option<Arc<Identity>>,
}

impl Workload {
    pub fn unresolved(cgroup: u64) -> Workload {
        Workload {
            cgroup,
            identity: None,
        }
    }

    pub fn resolved(cgroup: u64, identity: Arc<Identity>) -> Workload {
        Workload {
            cgroup,
            identity: Some(identity),
        }
    }

    /// Whether anything is known.
    pub fn known(&self) -> bool {
        self.cgroup != 0
    }

    /// The compact form (see [`Identity::label`]); `None` with no cgroup.
    pub fn label(&self) -> Option<String> {
        match &self.identity {
            Some(identity) => Some(identity.label()),
            None if self.cgroup != 0 => Some(format!("cgroup:{}", self.cgroup)),
            None => None,
        }
    }
}

impl Workload {
    /// Who it is in words (`pod shop/cart-0 container server`, `unit nginx.service`), when the
    /// cgroup names more than itself.
    pub fn describe(&self) -> Option<String> {
        let i = self.identity.as_deref()?;
        let container = match (&i.container, &i.container_id) {
            (Some(name), _) => Some(format!("container {name}")),
            (None, Some(id)) => Some(format!(
                "{} container {}",
                i.runtime.as_deref().unwrap_or("a"),
                short_id(id)
            )),
            (None, None) => None,
        };
        let pod = match (&i.namespace, &i.pod, &i.pod_uid) {
            (Some(ns), Some(pod), _) => Some(format!("pod {ns}/{pod}")),
            (_, _, Some(uid)) => Some(format!("pod uid {uid}")),
            _ => None,
        };
        match (pod, container, &i.unit) {
            (Some(p), Some(c), _) => Some(format!("{p} {c}")),
            (Some(p), None, _) => Some(p),
            (None, Some(c), _) => Some(c),
            (None, None, Some(unit)) => Some(format!("unit {unit}")),
            (None, None, None) => None,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label().as_deref().unwrap_or("-"))
    }
}
