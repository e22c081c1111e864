//! `cargo xtask image`: an OCI image of tcptrace built with podman, offline — a root
//! filesystem of the binary and the shared libraries it loads (nothing else: no shell, no
//! package manager), imported as `tcptrace:<version>` with tcptrace as its entrypoint.
//! `--push REGISTRY/NAME` tags and pushes it where a registry is reachable.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Push the image as REGISTRY/NAME:<version> (e.g. registry.example.com/tcptrace).
    #[arg(long, value_name = "REGISTRY/NAME")]
    pub push: Option<String>,
    /// Build the image around this binary instead of an optimised build (the tests' own).
    #[arg(long, hide = true)]
    pub binary: Option<PathBuf>,
    /// The local tag (default tcptrace:<version>).
    #[arg(long)]
    pub tag: Option<String>,
    /// Then run it as deploy/daemonset.yaml says and check it traces (as `cargo xtask test`).
    #[arg(long)]
    pub check: bool,
}

/// The version the workspace builds (the workspace's Cargo.toml, which tcptrace inherits).
pub fn version() -> Result<String> {
    let manifest = crate::workspace_root().join("Cargo.toml");
    let text = fs::read_to_string(&manifest).context("reading Cargo.toml")?;
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .context("no version in the workspace's Cargo.toml")
}

/// Runs podman with `args`; its stdout, trimmed, or an error with what it said.
pub(crate) fn podman<S: AsRef<str>>(args: &[S]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("podman")
        .args(&args)
        .output()
        .context("cannot run podman (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The shared libraries `binary` loads, with the dynamic loader (absolute paths, from ldd).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Builds the image from `binary`; returns its tag.
pub fn build_image(binary: &Path, tag: &str) -> Result<String> {
    let dir = crate::workspace_root().join("target/image");
    let _ = fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("usr/local/bin"))?;
    fs::create_dir_all(rootfs.join("tmp"))?;
    fs::copy(binary, rootfs.join("usr/local/bin/tcptrace"))
        .with_context(|| format!("copying {}", binary.display()))?;
    for lib in shared_libraries(binary)? {
        let to = rootfs.join(lib.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(to.parent().expect("a parent"))?;
        // The file itself, not a link to it (the loader's path is often a link).
        fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar of the image's root filesystem failed");
    }
    let version = version()?;
    podman(&[
        "import",
        "--change",
        r#"ENTRYPOINT ["/usr/local/bin/tcptrace"]"#,
        "--change",
        r#"CMD ["--help"]"#,
        "--change",
        "LABEL org.opencontainers.image.title=tcptrace",
        "--change",
        &format!("LABEL org.opencontainers.image.version={version}"),
        "--message",
        "tcptrace and the shared libraries it loads",
        &tar.to_string_lossy(),
        tag,
    ])?;
    Ok(tag.to_string())
}

pub fn run(args: &ImageArgs) -> Result<()> {
    let version = version()?;
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => crate::build(true)?,
    };
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("tcptrace:{version}"));
    build_image(&binary, &tag)?;
    let size = podman(&["image", "inspect", "--format", "{{.Size}}", &tag])?;
    let mib = size.parse::<f64>().unwrap_or(0.0) / (1 << 20) as f64;
    println!("xtask: image {tag} ({mib:.1} MiB): tcptrace and the libraries it loads");
    if args.check {
        crate::image_check::run_as_manifest_says(&tag)?;
        println!("xtask: {tag} run as deploy/daemonset.yaml says: traced and served /metrics");
    }
    if let Some(name) = &args.push {
        let remote = format!("{name}:{version}");
        podman(&["tag", &tag, &remote])?;
        podman(&["push", &remote])?;
        println!("xtask: pushed {remote}");
    }
    Ok(())
}
