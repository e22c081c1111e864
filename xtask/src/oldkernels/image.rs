//! What a guest of `old-kernels` boots: a Debian kernel package (from apt, or the newest one in
//! Debian's unstable and stable-backports indexes), and an initramfs with busybox, tcptrace,
//! the guest scenario runner (this xtask), iptables and the kernel's netfilter modules.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// Where a kernel package comes from.
pub enum Source {
    /// The newest package in apt's lists whose name matches this pattern.
    Apt(&'static str),
    /// The newest `linux-image-<version>-amd64` in these suites of deb.debian.org whose
    /// `<version>` passes the filter.
    Index(&'static [&'static str], fn(&str) -> bool),
}

/// An unpacked kernel package.
pub struct Kernel {
    /// The package name, e.g. `linux-image-7.3.4+deb13-amd64`.
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` inside the package.
    pub modules: PathBuf,
}

impl Kernel {
    /// "major.minor" of the package, which the booted release must start with.
    pub fn series(&self) -> String {
        let version = self.package.trim_start_matches("linux-image-");
        version.split('.').take(2).collect::<Vec<_>>().join(".")
    }
}

fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The newest amd64 image whose version passes `wanted` in the suites' indexes:
/// (package, URLs of its packages). Since 7.x the image package holds no files: the kernel is
/// in the `linux-binary-*` and the modules in the `linux-modules-*` it depends on.
fn newest_in(suites: &[&str], wanted: fn(&str) -> bool) -> Result<(String, Vec<String>)> {
    let mirror = "http://deb.debian.org/debian";
    let mut best: Option<(String, Vec<String>)> = None;
    for suite in suites {
        let url = format!("{mirror}/dists/{suite}/main/binary-amd64/Packages.xz");
        let index = Command::new("sh")
            .arg("-c")
            .arg(format!("curl -fsS --retry 3 '{url}' | xz -dc"))
            .output()
            .context("curl")?;
        if !index.status.success() || index.stdout.is_empty() {
            bail!(
                "could not read {url} (network?): {}",
                String::from_utf8_lossy(&index.stderr).trim()
            );
        }
        let index = String::from_utf8_lossy(&index.stdout);
        let mut files = HashMap::new();
        let mut depends = HashMap::new();
        for stanza in index.split("\n\n") {
            let field = |key: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(str::trim))
            };
            if let (Some(package), Some(filename)) = (field("Package:"), field("Filename:")) {
                files.insert(package, filename);
                depends.insert(package, field("Depends:").unwrap_or(""));
            }
        }
        let newest = files
            .keys()
            .copied()
            .filter(|package| {
                package
                    .strip_prefix("linux-image-")
                    .and_then(|v| v.strip_suffix("-amd64"))
                    .is_some_and(wanted)
            })
            .max_by_key(|p| version_key(p));
        let Some(package) = newest else { continue };
        if best
            .as_ref()
            .is_some_and(|(b, _)| version_key(b) >= version_key(package))
        {
            continue;
        }
        let parts = depends[package]
            .split(',')
            .filter_map(|d| d.split_whitespace().next())
            .filter(|d| d.starts_with("linux-binary-") || d.starts_with("linux-modules-"));
        let urls = std::iter::once(package)
            .chain(parts)
            .map(|p| {
                files
                    .get(p)
                    .map(|f| format!("{mirror}/{f}"))
                    .with_context(|| format!("{p} (for {package}) is not in {suite}"))
            })
            .collect::<Result<Vec<_>>>()?;
        best = Some((package.to_string(), urls));
    }
    best.with_context(|| format!("no linux-image-*-amd64 in Debian's {}", suites.join(", ")))
}

/// Finds the package (downloading and unpacking it once under `dir`).
pub fn kernel(dir: &Path, source: &Source) -> Result<Kernel> {
    let (package, urls) = match source {
        Source::Apt(pattern) => {
            let list = Command::new("apt-cache")
                .args(["search", "--names-only", pattern])
                .output()
                .context("apt-cache search")?;
            let mut names: Vec<String> = String::from_utf8_lossy(&list.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect();
            names.sort_by_key(|n| version_key(n));
            let Some(name) = names.pop() else {
                bail!("no Debian kernel package matches {pattern} (apt-get update?)");
            };
            (name, Vec::new())
        }
        Source::Index(suites, wanted) => newest_in(suites, *wanted)?,
    };
    let unpacked = dir.join(&package);
    let complete = unpacked.join(".unpacked");
    if !complete.exists() {
        let _ = fs::remove_dir_all(&unpacked);
        eprintln!("xtask: downloading {package} (to boot it under qemu)");
        fs::create_dir_all(dir)?;
        let deb = dir.join(format!("{package}.deb"));
        for url in &urls {
            run(Command::new("curl")
                .args(["-fsS", "--retry", "3", "-o"])
                .arg(&deb)
                .arg(url))
            .with_context(|| format!("downloading {url}"))?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        if urls.is_empty() {
            run(Command::new("apt-get")
                .args(["download", "-qq", &package])
                .current_dir(dir))?;
            let fetched = fs::read_dir(dir)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                })
                .with_context(|| format!("{package}: the downloaded package"))?;
            fs::rename(fetched, &deb)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        fs::remove_file(&deb)?;
        fs::write(&complete, "")?;
    }
    let modules = fs::read_dir(unpacked.join("lib/modules"))
        .or_else(|_| fs::read_dir(unpacked.join("usr/lib/modules")))
        .with_context(|| format!("{package}: no lib/modules"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| format!("{package}: no modules"))?;
    // /boot/vmlinuz-<release>, or (7.x) lib/modules/<release>/vmlinuz.
    let vmlinuz = fs::read_dir(unpacked.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .or_else(|| Some(modules.join("vmlinuz")).filter(|p| p.is_file()))
        .with_context(|| format!("{package}: no vmlinuz"))?;
    Ok(Kernel {
        package,
        vmlinuz,
        modules,
    })
}

/// A module's contents, decompressed.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("{tool} -dc {}", path.display()))?;
    if !out.status.success() {
        bail!("{tool} -dc {}: {}", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// One `key=` value of a module's .modinfo.
fn modinfo(bytes: &[u8], key: &str) -> String {
    let key = format!("{key}=");
    let Some(at) = bytes.windows(key.len()).position(|w| w == key.as_bytes()) else {
        return String::new();
    };
    let rest = &bytes[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// What a module needs loaded first: its `depends=` and its `softdep=pre:` (libcrc32c needs
/// a crc32c implementation, which it finds by name, not by symbol).
fn depends(bytes: &[u8]) -> Vec<String> {
    let hard = modinfo(bytes, "depends");
    let soft = modinfo(bytes, "softdep");
    let pre = soft
        .strip_prefix("pre:")
        .map(|p| p.split(" post:").next().unwrap_or(""))
        .unwrap_or("");
    hard.split(',')
        .chain(pre.split_whitespace())
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// Copies `wanted` and what they depend on, decompressed, into `into` (`<name>.ko`), and
/// returns the load order (dependencies first). Built-in modules are skipped.
fn modules(kernel: &Kernel, wanted: &[&str], into: &Path) -> Result<Vec<String>> {
    let norm = |n: &str| n.replace('-', "_");
    let mut files = HashMap::new();
    let mut stack = vec![kernel.modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split(".ko").next())
            {
                files.insert(norm(name), path);
            }
        }
    }
    let builtin = fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let builtin: HashSet<String> = builtin
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| norm(f.trim_end_matches(".ko")))
        .collect();
    fs::create_dir_all(into)?;
    let (mut order, mut seen) = (Vec::new(), HashSet::new());
    fn visit(
        name: String,
        files: &HashMap<String, PathBuf>,
        builtin: &HashSet<String>,
        into: &Path,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.clone()) || builtin.contains(&name) {
            return Ok(());
        }
        // Not in the package: built in (7.x packages ship no modules.builtin); if it is not,
        // iptables in the guest says so.
        // A soft dependency names an algorithm: crc32c is crc32c_generic.
        let generic = format!("{name}_generic");
        let Some(path) = files.get(&name).or_else(|| files.get(&generic)) else {
            return Ok(());
        };
        let bytes = module_bytes(path)?;
        for dep in depends(&bytes) {
            visit(dep.replace('-', "_"), files, builtin, into, seen, order)?;
        }
        fs::write(into.join(format!("{name}.ko")), bytes)?;
        order.push(name);
        Ok(())
    }
    for name in wanted {
        visit(norm(name), &files, &builtin, into, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Copies `bin` to `root/<dest>` (debug info stripped) and the shared libraries it needs.
fn install(bin: &Path, root: &Path, dest: &str) -> Result<()> {
    let target = root.join(dest);
    fs::create_dir_all(target.parent().context("destination directory")?)?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&target)
        .arg(bin))?;
    libraries(bin, root)
}

fn libraries(bin: &Path, root: &Path) -> Result<()> {
    let ldd = Command::new("ldd").arg(bin).output().context("ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(lib) = lib {
            let target = root.join(lib.strip_prefix("/")?);
            if target.exists() {
                continue;
            }
            fs::create_dir_all(target.parent().context("library directory")?)?;
            fs::copy(&lib, &target).with_context(|| format!("copy {}", lib.display()))?;
        }
    }
    Ok(())
}

/// The modules the guest loads: what iptables (nf_tables flavour) needs for
/// `-p tcp --dport N -j DROP` (nft_compat and xt_tcpudp in case it falls back to the xtables
/// match), and tcp_diag, which tcptrace's sock_diag seeding uses.
const MODULES: [&str; 6] = [
    "nfnetlink",
    "nf_tables",
    "x_tables",
    "nft_compat",
    "xt_tcpudp",
    "tcp_diag",
];

/// The initramfs for `kernel` under `dir`: busybox, tcptrace, this xtask (the guest scenario
/// runner), iptables with its extensions, the kernel's netfilter and sock_diag modules and `init`.
pub fn initramfs(tcptrace: &Path, kernel: &Kernel, init: &str, dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for sub in ["bin", "proc", "sys", "dev", "tmp", "run", "etc"] {
        fs::create_dir_all(root.join(sub))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    for applet in [
        "sh", "mount", "mkdir", "sleep", "cat", "grep", "sed", "nc", "ip", "kill", "poweroff",
        "date", "insmod", "tail",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    install(tcptrace, &root, "bin/tcptrace")?;
    let xtask = std::env::current_exe().context("this xtask's path")?;
    install(&xtask, &root, "bin/xtask")?;
    let iptables =
        fs::canonicalize("/usr/sbin/iptables").context("iptables (cargo xtask setup)")?;
    let multi = iptables.file_name().context("iptables binary")?;
    install(
        &iptables,
        &root,
        &format!("bin/{}", multi.to_string_lossy()),
    )?;
    std::os::unix::fs::symlink(multi, root.join("bin/iptables"))?;
    let xtables = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    let into = root.join(xtables.strip_prefix("/")?);
    fs::create_dir_all(&into)?;
    for entry in fs::read_dir(xtables)
        .context("iptables extensions")?
        .flatten()
    {
        fs::copy(entry.path(), into.join(entry.file_name()))?;
        libraries(&entry.path(), &root)?;
    }
    if Path::new("/etc/protocols").exists() {
        fs::copy("/etc/protocols", root.join("etc/protocols"))?;
    }
    let order = modules(kernel, &MODULES, &root.join("modules"))?;
    fs::write(root.join("modules/order"), order.join("\n") + "\n")?;
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    run(Command::new("chmod").arg("+x").arg(&init_path))?;
    let image = dir.join("initrd.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
        .current_dir(&root))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_include_soft_ones() {
        let modinfo = b"\0license=GPL\0softdep=pre: crc32c\0depends=\0name=libcrc32c\0";
        assert_eq!(depends(modinfo), ["crc32c"]);
        let modinfo = b"\0depends=nfnetlink,libcrc32c\0name=nf_tables\0";
        assert_eq!(depends(modinfo), ["nfnetlink", "libcrc32c"]);
        let modinfo = b"\0softdep=pre: a b post: c\0depends=x\0";
        assert_eq!(depends(modinfo), ["x", "a", "b"]);
        assert!(depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn kernel_versions_order_numerically() {
        let mut names = [
            "linux-image-7.2.13+deb14-amd64",
            "linux-image-7.10.1+deb14-amd64",
            "linux-image-7.2.9+deb14-amd64",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names[2], "linux-image-7.10.1+deb14-amd64");
        assert_eq!(names[0], "linux-image-7.2.9+deb14-amd64");
    }

    #[test]
    fn a_package_names_its_series() {
        let kernel = |package: &str| Kernel {
            package: package.into(),
            vmlinuz: PathBuf::new(),
            modules: PathBuf::new(),
        };
        assert_eq!(kernel("linux-image-6.1.0-57-amd64").series(), "6.1");
        assert_eq!(kernel("linux-image-7.2.13+deb14-amd64").series(), "7.2");
    }
}
