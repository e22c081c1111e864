//! Turns cgroup ids into identities: a cache filled by walking the cgroup2 tree (a cgroup's id
//! is its directory's inode), walked again at most once a second when an id is not in it. A new
//! id is first looked up directly (its kernfs file handle), so that a container living a few
//! milliseconds between two walks is still named.
use std::{
    collections::{HashMap, HashSet, VecDeque},
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
/// The least time between two second looks at an incomplete identity (a pod's cgroup made
/// before its log directories or its container's log link: named once they are there).
const MIN_RETRY: Duration = Duration::from_millis(100);
/// How deep the walk goes (the kubelet's deepest is 4 or 5 below the root).
const MAX_DEPTH: usize = 12;
/// At most this many cgroups are kept (a node has hundreds to a few thousands live). When
/// full, the cgroups gone longest are forgotten first (their late flows, if any, are then
/// named by their cgroup id); `TCPTRACE_TEST_MAX_IDENTITIES` lowers it for the tests.
const MAX_CGROUPS: usize = 200_000;

fn max_cgroups() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("TCPTRACE_TEST_MAX_IDENTITIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_CGROUPS)
    })
}

/// What the cache holds and forgot, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IdentityCache {
    /// Identities held now, of them of cgroups gone (kept for their late flows), and the
    /// most held.
    pub cached: u64,
    pub gone: u64,
    pub limit: u64,
    /// Gone cgroups' identities forgotten to make room, and cgroups not cached for want of
    /// room (every one held still live).
    pub forgotten: u64,
    pub not_cached: u64,
}

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
    /// Cached ids whose cgroup a walk found gone, oldest first: forgotten first when full.
    gone: VecDeque<u64>,
    gone_set: HashSet<u64>,
    forgotten: u64,
    not_cached: u64,
    /// The most identities held.
    limit: usize,
    /// When an incomplete identity was last looked at again.
    last_retry: Option<Instant>,
    /// How long the last walk of the housekeeping took.
    last_walk_took: Duration,
    /// Looking a cgroup up by its id was refused (no CAP_DAC_READ_SEARCH): not tried again;
    /// the error, and the ids met since (a few), until one proves a container's or pod's.
    by_id_refused: Option<String>,
    refused_ids: Vec<u64>,
    /// That refusal, once it mattered (a container's or pod's cgroup), not said yet; and
    /// whether it was (said once).
    unsaid: Option<String>,
    refusal_said: bool,
}

impl IdentityResolver {
    /// A resolver reading this host (nothing, without a cgroup2 mount).
    pub fn new(sources: IdentitySources) -> IdentityResolver {
        IdentityResolver {
            sources: Some(sources).filter(|s| !s.cgroup_root.as_os_str().is_empty()),
            known: HashMap::new(),
            missing: HashSet::new(),
            last_walk: None,
            gone: VecDeque::new(),
            gone_set: HashSet::new(),
            forgotten: 0,
            not_cached: 0,
            limit: max_cgroups(),
            last_retry: None,
            last_walk_took: Duration::ZERO,
            by_id_refused: None,
            refused_ids: Vec::new(),
            unsaid: None,
            refusal_said: false,
        }
    }

    /// A cgroup that could not be looked up by its id: remembered (a few) until a walk says
    /// whether it is a container's or a pod's.
    fn refused(&mut self, cgroup: u64) {
        if !self.refusal_said && self.refused_ids.len() < 64 && !self.refused_ids.contains(&cgroup)
        {
            self.refused_ids.push(cgroup);
        }
    }

    /// After a walk: the refusal is said once it mattered — a container's or a pod's cgroup
    /// (its flows before the walk showed `cgroup:ID`), or a cgroup gone before any walk
    /// found it (never named).
    fn judge_refusal(&mut self) {
        let Some(error) = &self.by_id_refused else {
            return;
        };
        let mattered = self
            .refused_ids
            .iter()
            .find_map(|id| match self.known.get(id) {
                Some(i) if i.container_id.is_some() || i.pod_uid.is_some() => Some(i.label()),
                Some(_) => None,
                None => Some(format!("cgroup:{id}, gone before the walk")),
            });
        if let Some(first) = mattered {
            self.unsaid = Some(format!(
                "cgroups cannot be named by their id ({error}: open_by_handle_at needs \
                 CAP_DAC_READ_SEARCH): a new container's or pod's flows are named from the \
                 next walk of the cgroup tree (once a second), show cgroup:ID before it, and \
                 one gone before it is never named (first: {first})"
            ));
            self.refused_ids.clear();
            self.refusal_said = true;
        } else {
            self.refused_ids.clear();
        }
    }

    /// A refusal not said yet (said once, on stderr).
    pub fn take_unsaid(&mut self) -> Option<String> {
        self.unsaid.take()
    }

    /// What the cache holds and forgot.
    pub fn cache(&self) -> IdentityCache {
        IdentityCache {
            cached: self.known.len() as u64,
            gone: self.gone.len() as u64,
            limit: self.limit as u64,
            forgotten: self.forgotten,
            not_cached: self.not_cached,
        }
    }

    /// Room for one more identity: the cgroup gone longest is forgotten when full. Returns
    /// whether there is room.
    fn make_room(&mut self) -> bool {
        if self.known.len() >= self.limit && self.gone.is_empty() && self.may_walk() {
            // Full, with no cgroup known to be gone: a walk finds which are.
            self.last_walk = Some(Instant::now());
            if let Some(sources) = &self.sources {
                let mut found = Vec::new();
                walk_tree(&sources.cgroup_root, &mut found);
                self.mark_gone(found.iter().map(|(id, _)| *id).collect());
            }
        }
        while self.known.len() >= self.limit {
            let Some(oldest) = self.gone.pop_front() else {
                self.not_cached += 1;
                return false;
            };
            self.gone_set.remove(&oldest);
            if self.known.remove(&oldest).is_some() {
                self.forgotten += 1;
            }
        }
        true
    }

    /// Cached cgroups a walk did not find (`live`: those it found) are gone: kept for their
    /// late flows, and forgotten first when the cache is full.
    fn mark_gone(&mut self, live: HashSet<u64>) {
        for id in self.known.keys() {
            if !live.contains(id) && self.gone_set.insert(*id) {
                self.gone.push_back(*id);
            }
        }
    }

    /// A resolver that knows only what it is told (`report` of a recording).
    pub fn recorded() -> IdentityResolver {
        IdentityResolver {
            sources: None,
            ..IdentityResolver::new(IdentitySources {
                cgroup_root: PathBuf::new(),
                pod_logs: PathBuf::new(),
                container_logs: PathBuf::new(),
            })
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
            if !identity.incomplete() {
                return (Workload::resolved(cgroup, identity.clone()), false);
            }
            if !self.may_walk() {
                return self.retry(cgroup);
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

    /// An incomplete identity looked at again (its path, the log directories as they are
    /// now), at most every [`MIN_RETRY`]: the cached one otherwise.
    fn retry(&mut self, cgroup: u64) -> (Workload, bool) {
        let Some(known) = self.known.get(&cgroup).cloned() else {
            return (Workload::unresolved(cgroup), false);
        };
        let due = self.last_retry.is_none_or(|at| at.elapsed() >= MIN_RETRY);
        let Some(sources) = self.sources.as_ref().filter(|_| due) else {
            return (Workload::resolved(cgroup, known), false);
        };
        self.last_retry = Some(Instant::now());
        let directory = PodDirectory::read(&sources.pod_logs, &sources.container_logs);
        let again = Arc::new(directory.identify(cgroup, &known.path));
        let new = again != known;
        self.known.insert(cgroup, again.clone());
        (Workload::resolved(cgroup, again), new)
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
        self.sources.as_ref()?;
        // Refused lookups make no room (they would forget a gone cgroup for nothing).
        if self.by_id_refused.is_some() {
            self.refused(cgroup);
            return None;
        }
        if !self.make_room() {
            return None;
        }
        let sources = self.sources.as_ref()?;
        let path = match path_of_id(&sources.cgroup_root, cgroup) {
            Ok(path) => path?,
            Err(e) => {
                self.by_id_refused = Some(e.to_string());
                self.refused(cgroup);
                return None;
            }
        };
        let directory = PodDirectory::read(&sources.pod_logs, &sources.container_logs);
        let identity = Arc::new(directory.identify(cgroup, &path));
        self.known.insert(cgroup, identity.clone());
        Some(identity)
    }

    fn may_walk(&self) -> bool {
        self.sources.is_some() && self.last_walk.is_none_or(|at| at.elapsed() >= MIN_RESCAN)
    }

    /// Once a second (the housekeeping's tick): the tree walked unless a walk was just made
    /// (half a second: a tick a little early must not skip a second), spaced so that these
    /// walks take at most 1% of a core (a node with 1,000 pods: about 45 ms a walk, one every
    /// 4.5 s).
    pub fn walk_if_due(&mut self) {
        let spacing = (MIN_RESCAN / 2).max(self.last_walk_took * 100);
        let due = (self.last_walk).is_none_or(|at| at.elapsed() >= spacing);
        if self.sources.is_some() && due {
            let started = Instant::now();
            self.walk();
            self.last_walk_took = started.elapsed();
        }
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
        self.mark_gone(found.iter().map(|(id, _)| *id).collect());
        let mut now = Vec::with_capacity(found.len());
        for (id, path) in found {
            let identity = match self.known.get(&id) {
                Some(known) if known.path == path && !known.incomplete() => known.clone(),
                _ => {
                    let identity = Arc::new(directory.identify(id, &path));
                    if self.known.contains_key(&id) || self.make_room() {
                        self.known.insert(id, identity.clone());
                    }
                    identity
                }
            };
            now.push(identity);
        }
        if !self.refusal_said && !self.refused_ids.is_empty() {
            self.judge_refusal();
        }
        now
    }
}

/// The path below `root` of the cgroup whose id is `id`, found directly: a cgroup v2 id is its
/// kernfs node id, which `open_by_handle_at` takes as a file handle (`FILEID_KERNFS`; it needs
/// CAP_DAC_READ_SEARCH). `Ok(None)` when the cgroup is gone; an error when the call is
/// refused.
fn path_of_id(root: &Path, id: u64) -> std::io::Result<Option<String>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    /// `struct file_handle` with its 8 bytes of handle.
    #[repr(C)]
    struct KernfsHandle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let Ok(mount) = fs::File::open(root) else {
        return Ok(None);
    };
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
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EPERM) => Err(e),
            _ => Ok(None),
        };
    }
    // SAFETY: a descriptor the call just opened, ours to close.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let Ok(full) = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return Ok(None);
    };
    Ok(full
        .strip_prefix(root)
        .ok()
        .map(|below| format!("/{}", below.display())))
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
#[path = "identity_resolver_tests.rs"]
mod tests;
