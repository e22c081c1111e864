//! The kernel programs' stack, checked as kernels before 6.13 check it: every call chain from
//! a program through its subprograms must fit in 512 bytes, each frame rounded up to 32.
//! (6.13+ gives tracing programs a private stack and accepts more; Debian 12's 6.1 refused
//! `inet_sock_set_state` at 544 bytes, twice: the second time this check had missed it, as it
//! only saw calls made through a relocation naming the callee, not those by `.text` offset.) Part of `cargo xtask test`: fast, and it fails the
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

/// A call as the disassembly shows it, resolved once every function's address is known.
enum Callee {
    Named(String),
    /// An instruction index in `.text`.
    TextAt(i64),
}

/// Reads `llvm-objdump -dr` output (raw bytes shown): each function's frame and the
/// subprograms it calls. A BPF-to-BPF call (`85 10 …`, src_reg 1) names its target by a
/// relocation against a function, by one against `.text` (target: instruction `imm + 1` of
/// `.text`), or, within `.text`, pc-relatively (`index + imm + 1`); helper calls (`85 00 …`)
/// are not subprograms.
fn parse(disassembly: &str) -> BTreeMap<String, Function> {
    let mut functions: BTreeMap<String, Function> = BTreeMap::new();
    let mut text_starts: BTreeMap<i64, String> = BTreeMap::new();
    let mut pending: Vec<(String, Callee)> = Vec::new();
    let mut section = String::new();
    let mut current: Option<String> = None;
    // The last BPF-to-BPF call seen, (index, imm): the next line says whether a relocation
    // names its target; without one it is pc-relative (within `.text`).
    let mut call: Option<(i64, i64)> = None;
    let pc_relative = |caller: &Option<String>, section: &str, call: Option<(i64, i64)>| {
        let (at, imm) = call?;
        let caller = caller.clone()?;
        (section == ".text").then_some((caller, Callee::TextAt(at + imm + 1)))
    };
    for line in disassembly.lines() {
        let trimmed = line.trim();
        if let Some(name) = line.strip_prefix("Disassembly of section ") {
            pending.extend(pc_relative(&current, &section, call.take()));
            section = name.trim_end_matches(':').to_string();
            continue;
        }
        if let Some((addr, name)) = trimmed.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            pending.extend(pc_relative(&current, &section, call.take()));
            let f = functions.entry(name.to_string()).or_default();
            f.program = section != ".text";
            if section == ".text" {
                if let Ok(addr) = i64::from_str_radix(addr, 16) {
                    text_starts.insert(addr / 8, name.to_string());
                }
            }
            current = Some(name.to_string());
            continue;
        }
        let Some(name) = current.clone() else {
            continue;
        };
        if let Some(target) = trimmed.split("R_BPF_64_32").nth(1) {
            if let Some((_, imm)) = call.take() {
                let target = target.trim();
                pending.push((
                    name,
                    if target == ".text" {
                        Callee::TextAt(imm + 1)
                    } else {
                        Callee::Named(target.to_string())
                    },
                ));
            }
            continue;
        }
        pending.extend(pc_relative(&current, &section, call.take()));
        call = parse_call(trimmed);
        let mut rest = trimmed;
        while let Some(at) = rest.find("r10 - 0x") {
            rest = &rest[at + 8..];
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            if let (Ok(off), Some(f)) = (u64::from_str_radix(&hex, 16), functions.get_mut(&name)) {
                f.frame = f.frame.max(off);
            }
        }
    }
    pending.extend(pc_relative(&current, &section, call.take()));
    for (caller, callee) in pending {
        let target = match callee {
            Callee::Named(n) => Some(n),
            Callee::TextAt(at) => text_starts.get(&at).cloned(),
        };
        if let (Some(target), Some(f)) = (target, functions.get_mut(&caller)) {
            if !f.calls.contains(&target) {
                f.calls.push(target);
            }
        }
    }
    functions
}

/// `(index, imm)` of a BPF-to-BPF call instruction line (`85 10 …  call IMM`).
fn parse_call(line: &str) -> Option<(i64, i64)> {
    let (index, rest) = line.split_once(':')?;
    let index: i64 = index.trim().parse().ok()?;
    let rest = rest.trim_start();
    if !rest.starts_with("85 10 ") {
        return None;
    }
    let imm = rest.rsplit("call ").next()?.trim();
    let value = match imm.strip_prefix("-0x") {
        Some(hex) => -i64::from_str_radix(hex, 16).ok()?,
        None => i64::from_str_radix(imm.strip_prefix("0x")?, 16).ok()?,
    };
    Some((index, value))
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
        .args(["-dr"])
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

/// Checks both objects the last build of `profile` embedded: a ring per CPU, and one ring.
pub fn check_built(profile: &str) -> Result<()> {
    let object = built_object(profile)?;
    check(&object)?;
    check(&object.with_file_name("tcptrace-one-ring"))
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
        0000000000000000 <prog>:\n\
        \x20      0:\t7b 1a f0 ff 00 00 00 00\t*(u64 *)(r10 - 0x10) = r1\n\
        \x20      1:\t85 10 00 00 ff ff ff ff\tcall -0x1\n\
        \t\t0000000000000008:  R_BPF_64_32\tsub\n\
        \x20      2:\t85 10 00 00 01 00 00 00\tcall 0x1\n\
        \t\t0000000000000010:  R_BPF_64_32\t.text\n\
        \x20      3:\t85 00 00 00 05 00 00 00\tcall 0x5\n\
        Disassembly of section .text:\n\
        0000000000000000 <sub>:\n\
        \x20      0:\t79 a1 38 fe 00 00 00 00\tr1 = *(u64 *)(r10 - 0x1c8)\n\
        \x20      1:\t95 00 00 00 00 00 00 00\texit\n\
        0000000000000010 <other>:\n\
        \x20      2:\t85 10 00 00 01 00 00 00\tcall 0x1\n\
        \x20      3:\t95 00 00 00 00 00 00 00\texit\n\
        0000000000000020 <leaf>:\n\
        \x20      4:\t7b 1a e0 ff 00 00 00 00\t*(u64 *)(r10 - 0x40) = r1\n";

    #[test]
    fn chains_add_rounded_frames() {
        let f = parse(SAMPLE);
        assert!(f["prog"].program && !f["sub"].program);
        assert_eq!((f["prog"].frame, f["sub"].frame), (0x10, 0x1c8));
        // By name, by `.text` offset; the helper call (src_reg 0) is not a subprogram.
        assert_eq!(f["prog"].calls, ["sub", "other"]);
        assert_eq!(f["other"].calls, ["leaf"], "pc-relative within .text");
        assert_eq!(depth(&f, "prog", &mut Vec::new()), 32 + 480);
        assert_eq!(depth(&f, "other", &mut Vec::new()), 32 + 64);
    }
}
