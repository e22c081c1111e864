//! The kernel programs' stack, checked as kernels before 6.13 check it: every call chain from
//! a program through its subprograms must fit in 512 bytes, each frame rounded up to 32.
//! (6.13+ gives tracing programs a private stack and accepts more; Debian 12's 6.1 refused
//! `inet_sock_set_state` at 544 bytes.) Part of `cargo xtask test`: fast, and it fails the
//! moment a change grows a frame past what older kernels load.
use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

const LIMIT: u64 = 512;
const LLVM_OBJDUMP: &str = "/usr/lib/llvm-22/bin/llvm-objdump";

#[derive(Default, Debug)]
struct Function {
    /// Deepest stack offset used (bytes below r10).
    frame: u64,
    /// Subprograms it calls.
    calls: Vec<String>,
    /// A program (its own ELF section), not a subprogram.
    program: bool,
}

fn parse(disassembly: &str) -> BTreeMap<String, Function> {
    let mut functions: BTreeMap<String, Function> = BTreeMap::new();
    let mut section = String::new();
    let mut current: Option<String> = None;
    let mut pending_call = false;
    for line in disassembly.lines() {
        if let Some(name) = line.strip_prefix("Disassembly of section ") {
            section = name.trim_end_matches(':').to_string();
            continue;
        }
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, n)| n.to_string())
        {
            let f = functions.entry(name.clone()).or_default();
            f.program = section != ".text";
            current = Some(name);
            continue;
        }
        let Some(name) = &current else { continue };
        if pending_call {
            pending_call = false;
            if let Some(target) = trimmed.split("R_BPF_64_32").nth(1) {
                let target = target.trim().to_string();
                if let Some(f) = functions.get_mut(name) {
                    f.calls.push(target);
                }
                continue;
            }
        }
        if trimmed.ends_with("call -0x1") {
            pending_call = true;
        }
        let mut rest = trimmed;
        while let Some(at) = rest.find("r10 - 0x") {
            rest = &rest[at + 8..];
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            if let (Ok(off), Some(f)) = (u64::from_str_radix(&hex, 16), functions.get_mut(name)) {
                f.frame = f.frame.max(off);
            }
        }
    }
    functions
}

/// The deepest chain from `name`, in bytes, as the pre-6.13 verifier counts it.
fn depth(functions: &BTreeMap<String, Function>, name: &str, seen: &mut Vec<String>) -> u64 {
    let Some(f) = functions.get(name) else {
        return 0;
    };
    if seen.iter().any(|s| s == name) {
        return 0; // recursion is refused by the verifier anyway
    }
    seen.push(name.to_string());
    let own = f.frame.max(1).div_ceil(32) * 32;
    let deepest = f
        .calls
        .iter()
        .map(|c| depth(functions, c, seen))
        .max()
        .unwrap_or(0);
    seen.pop();
    own + deepest
}

/// Checks the eBPF object at `object`.
pub fn check(object: &Path) -> Result<()> {
    let out = Command::new(LLVM_OBJDUMP)
        .args(["-dr", "--no-show-raw-insn"])
        .arg(object)
        .output()
        .with_context(|| format!("running {LLVM_OBJDUMP}"))?;
    if !out.status.success() {
        bail!("{LLVM_OBJDUMP} failed on {}", object.display());
    }
    let functions = parse(&String::from_utf8_lossy(&out.stdout));
    let programs: Vec<&String> = functions
        .iter()
        .filter(|(_, f)| f.program)
        .map(|(n, _)| n)
        .collect();
    if programs.is_empty() {
        bail!("no program found in {}", object.display());
    }
    let mut over = Vec::new();
    for program in programs {
        let bytes = depth(&functions, program, &mut Vec::new());
        if bytes > LIMIT {
            over.push(format!("{program}: {bytes} bytes"));
        }
    }
    if !over.is_empty() {
        bail!(
            "stack over {LIMIT} bytes along a call chain (kernels before 6.13 refuse it): {}",
            over.join(", ")
        );
    }
    Ok(())
}

/// The eBPF object the last build of `profile` embedded.
pub fn built_object(profile: &str) -> Result<std::path::PathBuf> {
    let build = crate::workspace_root()
        .join("target")
        .join(profile)
        .join("build");
    std::fs::read_dir(&build)
        .with_context(|| format!("reading {}", build.display()))?
        .flatten()
        .map(|e| e.path().join("out/tcptrace"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no built eBPF object (target/<profile>/build/tcptrace-*/out/tcptrace)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Disassembly of section tp_btf/x:\n\
        0000000000000000 <prog>:\n       0:\t*(u64 *)(r10 - 0x10) = r1\n       1:\tcall -0x1\n\
        \t\t0000000000000008:  R_BPF_64_32\tsub\n       2:\tcall 0x5\n\
        Disassembly of section .text:\n\
        0000000000000000 <sub>:\n       0:\tr1 = *(u64 *)(r10 - 0x1c8)\n";

    #[test]
    fn chains_add_rounded_frames() {
        let f = parse(SAMPLE);
        assert!(f["prog"].program && !f["sub"].program);
        assert_eq!((f["prog"].frame, f["sub"].frame), (0x10, 0x1c8));
        assert_eq!(f["prog"].calls, ["sub"], "helper calls are not subprograms");
        assert_eq!(depth(&f, "prog", &mut Vec::new()), 32 + 480);
    }
}
