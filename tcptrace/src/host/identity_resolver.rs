//! Turns cgroup ids into identities: a cache filled by walking the cgroup2 tree (a cgroup's id
//! is its directory's inode), walked again at most once a second when an id is not in it. A new
//! id is first looked up directly (its kernfs file handle), so that a container living a few
//! milliseconds between two walks is still named.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};

use crate::{
    host::identity::PodDirectory,
    model::workload::{Identity, Workload},
};

/// The least time between two walks of the cgroup tree.
const MIN_RESCAN: Duration = Duration::from_secs(1);
/// How deep the walk goes (the kubelet's deepest is 4 or 5 below the root).
const MAX_DEPTH: usize = 12;
/// At most this many cgroups are kept (a node has hundreds to a few thousands).
const MAX_CGROUPS: usize = 200_000;

/// Where identities come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySources {
    /// The cgroup2 mount (the host's: a DaemonSet mounts the host's /sys/fs/cgroup).
    pub cgroup_root: PathBuf,
    /// The kubelet's `/var/log/pods`.
    pub pod_logs: PathBuf,
    /// The kubelet's `/var/log/containers`.
    pub container_logs: PathBuf,
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .ok_or_else(|| anyhow!("no cgroup v2 hierarchy is mounted"))
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` lies on a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed statfs buffer the call fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// The cache of identities by cgroup id.
pub struct IdentityResolver {
    sources: Option<IdentitySources>,
    known: HashMap<u64, Arc<Identity>>,
    /// Ids not found by the last walk: not looked for again before the next.
    missing: HashSet<u64>,
    last_walk: Option<Instant>,
}

impl IdentityResolver {
    /// A resolver reading this host (nothing, without a cgroup2 mount).
    pub fn new(sources: IdentitySources) -> IdentityResolver {
        IdentityResolver {
            sources: Some(sources).filter(|s| !s.cgroup_root.as_os_str().is_empty()),
            known: HashMap::new(),
            missing: HashSet::new(),
            last_walk: None,
        }
    }

    /// A resolver that knows only what it is told (`report` of a recording).
    pub fn recorded() -> IdentityResolver {
        IdentityResolver {
            sources: None,
            known: HashMap::new(),
            missing: HashSet::new(),
            last_walk: None,
        }
    }

    /// Takes an identity as it was recorded.
    pub fn learn(&mut self, identity: Identity) {
        self.known.insert(identity.cgroup_id, Arc::new(identity));
    }

    /// The workload of a cgroup id: from the cache, found by its id, or from a new walk of the
    /// tree when the last was more than a second ago. Returns whether the identity is new to the cache too.
    pub fn resolve(&mut self, cgroup: u64) -> (Workload, bool) {
        if cgroup == 0 {
            return (Workload::default(), false);
        }
        if let Some(identity) = self.known.get(&cgroup) {
            if !identity.incomplete() || !self.may_walk() {
                return (Workload::resolved(cgroup, identity.clone()), false);
            }
        } else if !self.missing.contains(&cgroup) {
            if let Some(identity) = self.look_up(cgroup) {
                return (Workload::resolved(cgroup, identity), true);
            }
            // Not looked up again before the next walk.
            self.missing.insert(cgroup);
        }
        if self.sources.is_none() || !self.may_walk() {
            return (Workload::unresolved(cgroup), false);
        }
        let before = self.known.get(&cgroup).cloned();
        self.walk();
        match self.known.get(&cgroup) {
            Some(identity) => {
                let new = before.as_deref() != Some(identity);
                (Workload::resolved(cgroup, identity.clone()), new)
            }
            None => {
                self.missing.insert(cgroup);
                (Workload::unresolved(cgroup), false)
            }
        }
    }

    /// The workload of a cgroup id as the cache knows it now (no walk).
    pub fn cached(&self, cgroup: u64) -> Workload {
        match self.known.get(&cgroup) {
            Some(identity) => Workload::resolved(cgroup, identity.clone()),
            None => Workload::unresolved(cgroup),
        }
    }

    /// One cgroup found by its id alone, without a walk (the cache's bounds apply).
    fn look_up(&mut self, cgroup: u64) -> Option<Arc<Identity>> {
        let sources = self.sources.as_ref()?;
        if self.known.len() >= MAX_CGROUPS {
            return None;
        }
        let path = path_of_id(&sources.cgroup_root, cgroup)?;
        let directory = PodDirectory::read(&sources.pod_logs, &sources.container_logs);
        let identity = Arc::new(directory.identify(cgroup, &path));
        self.known.insert(cgroup, identity.clone());
        Some(identity)
    }

    fn may_walk(&self) -> bool {
        self.sources.is_some() && self.last_walk.is_none_or(|at| at.elapsed() >= MIN_RESCAN)
    }

    /// Every cgroup of the tree now, walked afresh (the filters resolve names with it).
    pub fn walk(&mut self) -> Vec<Arc<Identity>> {
        let Some(sources) = &self.sources else {
            return self.known.values().cloned().collect();
        };
        self.last_walk = Some(Instant::now());
        self.missing.clear();
        let directory = PodDirectory::read(&sources.pod_logs, &sources.container_logs);
        let mut found = Vec::new();
        walk_tree(&sources.cgroup_root, &mut found);
        let mut now = Vec::with_capacity(found.len());
        for (id, path) in found {
            let identity = match self.known.get(&id) {
                Some(known) if known.path == path && !known.incomplete() => known.clone(),
                _ => {
                    let identity = Arc::new(directory.identify(id, &path));
                    if self.known.len() < MAX_CGROUPS || self.known.contains_key(&id) {
                        self.known.insert(id, identity.clone());
                    }
                    identity
                }
            };
            now.push(identity);
        }
        now
    }
}

/// The path below `root` of the cgroup whose id is `id`, found directly: a cgroup v2 id is its
/// kernfs node id, which `open_by_handle_at` takes as a file handle (`FILEID_KERNFS`; it needs
/// CAP_DAC_READ_SEARCH). `None` when the cgroup is gone or the call is refused.
fn path_of_id(root: &Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    /// `struct file_handle` with its 8 bytes of handle.
    #[repr(C)]
    struct KernfsHandle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = fs::File::open(root).ok()?;
    let mut handle = KernfsHandle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a file_handle header followed by the `bytes` (8) bytes of handle it announces;
    // the mount's descriptor is open.
    let fd = unsafe { libc::open_by_handle_at(mount.as_raw_fd(), (&raw mut handle).cast(), flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor the call just opened, ours to close.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let full = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let below = full.strip_prefix(root).ok()?;
    Some(format!("/{}", below.display()))
}

/// (id, path below the root) of every cgroup under `root`, the root included.
fn walk_tree(root: &Path, found: &mut Vec<(u64, String)>) {
    let mut pending = vec![(root.to_path_buf(), String::from("/"), 0usize)];
    while let Some((dir, path, depth)) = pending.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        found.push((meta.ino(), path.clone()));
        if depth >= MAX_DEPTH || found.len() >= MAX_CGROUPS {
            continue;
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                pending.push((entry.path(), child, depth + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own cgroup, found by its id alone, is the path /proc/self/cgroup names.
    #[test]
    fn a_cgroup_is_found_by_its_id() {
        let root = cgroup2_mount().expect("cgroup v2 is mounted here");
        let own = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line")
            .to_string();
        let id = fs::metadata(root.join(path.trim_start_matches('/')))
            .expect("our cgroup's directory")
            .ino();
        assert_eq!(path_of_id(&root, id).as_deref(), Some(path.as_str()));
        assert_eq!(path_of_id(&root, u64::MAX - 1), None, "no such cgroup");
    }
}
