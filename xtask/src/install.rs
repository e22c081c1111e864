//! `cargo xtask install`: tcptrace where a tool belongs — the binary, its man page and its
//! shell completions under a prefix (`/usr/local` by default), as a package would put them.
//! `man`, `completions`: the generated files alone, into a directory.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Where each generated file goes, relative to the prefix.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "share/bash-completion/completions/tcptrace"),
    ("zsh", "share/zsh/site-functions/_tcptrace"),
    ("fish", "share/fish/vendor_completions.d/tcptrace.fish"),
];
const MAN_PAGE: &str = "share/man/man1/tcptrace.1";
const BINARY: &str = "bin/tcptrace";

/// What `bin` prints for `args` (its man page, a shell's completions).
fn generated(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "tcptrace {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Replaced, not overwritten in place: a running tcptrace keeps its old binary.
    let tmp = path.with_extension("xtask-new");
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot install {}", path.display()))
}

/// Installs `bin` under `destdir` + `prefix`; returns the files written.
pub fn install(bin: &Path, prefix: &Path, destdir: Option<&Path>) -> Result<Vec<PathBuf>> {
    if !prefix.is_absolute() {
        bail!("--prefix {}: must be an absolute path", prefix.display());
    }
    let root = match destdir {
        Some(d) => d.join(prefix.strip_prefix("/").unwrap_or(prefix)),
        None => prefix.to_path_buf(),
    };
    let mut written = Vec::new();
    let binary = fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
    let target = root.join(BINARY);
    write(&target, &binary, 0o755)?;
    written.push(target);
    let target = root.join(MAN_PAGE);
    write(&target, &generated(bin, &["man"])?, 0o644)?;
    written.push(target);
    for (shell, file) in COMPLETIONS {
        let target = root.join(file);
        write(&target, &generated(bin, &["completions", shell])?, 0o644)?;
        written.push(target);
    }
    Ok(written)
}

/// The man page alone, into `dir`.
pub fn man(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let target = dir.join("tcptrace.1");
    write(&target, &generated(bin, &["man"])?, 0o644)?;
    Ok(target)
}

/// The completions alone, into `dir` (named as each shell looks for them).
pub fn completions(bin: &Path, dir: &Path) -> Result<()> {
    for (shell, file) in [
        ("bash", "tcptrace.bash"),
        ("zsh", "_tcptrace"),
        ("fish", "tcptrace.fish"),
    ] {
        write(
            &dir.join(file),
            &generated(bin, &["completions", shell])?,
            0o644,
        )?;
    }
    Ok(())
}

/// Part of `cargo xtask test`: installs `bin` into a scratch root as `install` would, then
/// uses what was installed as a user would: the binary runs, `man` renders the page with
/// every mode and the `--port` filter, bash loads the completions.
pub fn check(bin: &Path) -> Result<()> {
    let root = std::env::temp_dir().join(format!("tcptrace-install-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let result = check_in(bin, &root);
    let _ = fs::remove_dir_all(&root);
    result
}

fn check_in(bin: &Path, root: &Path) -> Result<()> {
    if install(bin, Path::new("relative"), Some(root)).is_ok() {
        bail!("a relative --prefix was accepted");
    }
    let written = install(bin, Path::new("/usr/local"), Some(root))?;
    let prefix = root.join("usr/local");
    let installed = prefix.join(BINARY);
    if written.first() != Some(&installed) {
        bail!("the binary was not installed first: {written:?}");
    }
    let version = Command::new(&installed).arg("--version").output()?;
    if !version.status.success() || !String::from_utf8_lossy(&version.stdout).contains("tcptrace") {
        bail!("{} --version failed", installed.display());
    }
    let page = Command::new("man")
        .args(["-P", "cat", "-l"])
        .arg(prefix.join(MAN_PAGE))
        .env("MANWIDTH", "120")
        .output()
        .context("cannot run man")?;
    let text = String::from_utf8_lossy(&page.stdout);
    for needle in ["flows", "timewait", "--port", "--flows-at"] {
        if !page.status.success() || !text.contains(needle) {
            bail!("man -l tcptrace.1 does not show {needle}: {text}");
        }
    }
    let bash = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p tcptrace")
        .arg("bash")
        .arg(prefix.join(COMPLETIONS[0].1))
        .output()?;
    if !bash.status.success() {
        bail!(
            "bash cannot load the completions: {}",
            String::from_utf8_lossy(&bash.stderr)
        );
    }
    Ok(())
}
