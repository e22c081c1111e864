//! The ways into a network namespace: its name under /run/netns or a process that lives in
//! it; entering one from a thread of its own.
use std::{
    collections::HashMap,
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::host::netns::{inode_of, own_netns};

/// The name of a /run/netns/NAME path.
pub fn run_netns_name(path: &Path) -> Option<String> {
    (path.parent() == Some(Path::new("/run/netns")))
        .then(|| path.file_name()?.to_str().map(str::to_string))
        .flatten()
}

/// Every namespace on the host with a way in and its /run/netns name: those named under
/// /run/netns (`ip netns add`), and those of every process (readlink only).
pub(crate) fn discover_namespaces() -> HashMap<u32, (PathBuf, Option<String>)> {
    let mut found = HashMap::new();
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let path = e.path();
            if let Some(inode) = inode_of(&path) {
                let name = e.file_name().to_str().map(str::to_string);
                found.insert(inode, (path, name));
            }
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let pid = e.file_name();
            if !pid
                .to_str()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let path = e.path().join("ns/net");
            let Ok(link) = fs::read_link(&path) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok());
            if let Some(inode) = inode {
                found.entry(inode).or_insert((path, None));
            }
        }
    }
    found
}

/// A way into `inode`: the one known if it still leads there, else one found anew.
pub(crate) fn way_into(inode: u32, known: Option<PathBuf>) -> Result<(PathBuf, File)> {
    let candidates = known.into_iter().chain(
        std::iter::once_with(|| discover_namespaces().remove(&inode).map(|(p, _)| p)).flatten(),
    );
    for path in candidates {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file
            .metadata()
            .is_ok_and(|m| u32::try_from(m.ino()).ok() == Some(inode))
        {
            return Ok((path, file));
        }
    }
    bail!("no process lives in it and /run/netns does not name it")
}

/// Moves the calling thread into the namespace `file` (opened from `path`) refers to. Only
/// threads that end after their work inside call it.
pub(crate) fn enter(file: &File, path: &Path) -> Result<()> {
    // SAFETY: setns with an open namespace fd changes only this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // The OS error kept as the source: callers tell EPERM (no CAP_SYS_ADMIN) apart.
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering it through {}", path.display()));
    }
    Ok(())
}

/// Runs `f` inside namespace `inode` (on a thread of its own that enters it), or on this
/// thread when it is tracing's own.
pub fn in_namespace<T: Send>(inode: u32, f: impl FnOnce() -> T + Send) -> Result<T> {
    in_namespace_via(inode, None, f)
}

/// [`in_namespace`], through `known` (a way in found earlier) where it still leads there:
/// every process is looked through only when it does not.
pub fn in_namespace_via<T: Send>(
    inode: u32,
    known: Option<PathBuf>,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    if inode == 0 || own_netns() == Some(inode) {
        return Ok(f());
    }
    let (path, file) = way_into(inode, known)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&file, &path).with_context(|| format!("network namespace {inode}"))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| bail!("the thread inside network namespace {inode} panicked"))
    })
}
