//! The bind() syscall hooks (`syscalls:sys_enter_bind`, `sys_exit_bind`): classic tracepoints,
//! found through tracefs — mounted here when it is not — and attached only once their record
//! layouts match what the programs read (the arguments at 16 + 8 × i, the return value at 16).
use std::{ffi::CString, fs, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{trace_point::TracePointLinkId, TracePoint},
    Ebpf,
};
use tcptrace_common::names::program;

/// Where tracefs is mounted (or mounted by tcptrace).
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older systems have it, under debugfs.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracing directory, mounting tracefs at /sys/kernel/tracing when neither it nor
/// debugfs's is there.
fn tracing_dir() -> Result<&'static str> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(dir);
        }
    }
    // Mounted, but this user cannot look inside (tracefs is root's, mode 0700).
    if let Some(dir) = mounted_tracefs() {
        if let Err(e) = fs::read_dir(&dir) {
            bail!(
                "tracefs is mounted at {dir} but cannot be read ({e}): run as root or with \
                 CAP_DAC_READ_SEARCH"
            );
        }
    }
    let (source, target) = (CString::new("tracefs")?, CString::new(TRACEFS)?);
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({e}): run as root or \
             with CAP_SYS_ADMIN, or mount it first (mount -t tracefs tracefs {TRACEFS})"
        );
    }
    Ok(TRACEFS)
}

/// Where tracefs is mounted, from /proc/self/mounts.
fn mounted_tracefs() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "tracefs").then(|| target.to_string())
    })
}

/// A field of a tracepoint's format file: (name, offset, size).
fn parse_format(text: &str) -> Vec<(String, usize, usize)> {
    text.lines()
        .filter_map(|line| {
            let mut name = None;
            let (mut offset, mut size) = (None, None);
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(decl) = part.strip_prefix("field:") {
                    name = decl.split_whitespace().last().map(|n| {
                        n.trim_start_matches('*')
                            .split('[')
                            .next()
                            .unwrap_or(n)
                            .to_string()
                    });
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            Some((name?, offset?, size?))
        })
        .collect()
}

/// A field a program reads: (name, offset, size).
type Field = (&'static str, usize, usize);

/// The fields each program reads, per tracepoint.
const LAYOUTS: &[(&str, &[Field])] = &[
    (
        program::ENTER_BIND,
        &[("umyaddr", 24, 8), ("addrlen", 32, 8)],
    ),
    (program::EXIT_BIND, &[("ret", 16, 8)]),
];

/// Checks one tracepoint's format against the fields its program reads.
fn check_layout(format: &str, tracepoint: &str, wanted: &[Field]) -> Result<()> {
    let fields = parse_format(format);
    for &(name, offset, size) in wanted {
        let found = fields.iter().find(|(n, _, _)| n == name);
        match found {
            Some((_, o, s)) if (*o, *s) == (offset, size) => {}
            Some((_, o, s)) => bail!(
                "syscalls:{tracepoint} has {name} at offset {o} ({s} bytes); tcptrace reads it \
                 at {offset} ({size} bytes)"
            ),
            None => bail!("syscalls:{tracepoint} has no field {name}"),
        }
    }
    Ok(())
}

/// Loads and attaches the bind() syscall hooks (the exit first); returns their links.
pub fn attach(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, TracePointLinkId)>> {
    let dir = tracing_dir()?;
    for (tracepoint, wanted) in LAYOUTS {
        let path = Path::new(dir).join(format!("events/syscalls/{tracepoint}/format"));
        let format = fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a kernel without CONFIG_FTRACE_SYSCALLS has no syscall tracepoints)",
                path.display()
            )
        })?;
        check_layout(&format, tracepoint, wanted)?;
    }
    let mut links = Vec::new();
    for &name in program::SYSCALLS {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a tracepoint"))?;
        prog.load()
            .with_context(|| format!("loading program {name}"))?;
        let link = prog
            .attach("syscalls", name)
            .with_context(|| format!("attaching tracepoint syscalls:{name}"))?;
        links.push((name, link));
    }
    Ok(links)
}

/// Detaches the syscall hooks.
pub fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, TracePointLinkId)>) -> Result<()> {
    for (name, link) in links {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        prog.detach(link)
            .with_context(|| format!("detaching program {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sys_exit_connect\nID: 2229\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
    const ENTER: &str = "format:\n\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;\n";

    #[test]
    fn formats_are_parsed_and_checked_field_by_field() {
        assert!(parse_format(EXIT).contains(&("ret".into(), 16, 8)));
        assert!(parse_format(ENTER).contains(&("uservaddr".into(), 24, 8)));
        check_layout(EXIT, "sys_exit_connect", &[("ret", 16, 8)]).expect("this layout");
        check_layout(ENTER, "sys_enter_connect", &[("uservaddr", 24, 8)]).expect("this layout");
        let moved = ENTER.replace("offset:24", "offset:40");
        let err =
            check_layout(&moved, "sys_enter_connect", &[("uservaddr", 24, 8)]).expect_err("moved");
        assert!(err.to_string().contains("at offset 40"), "{err}");
        let err = check_layout(EXIT, "sys_exit_connect", &[("res", 16, 8)]).expect_err("none");
        assert!(err.to_string().contains("no field res"), "{err}");
    }

    #[test]
    fn this_kernels_syscall_tracepoints_match() {
        let dir = tracing_dir().expect("tracefs (mounted if it was not)");
        for (tracepoint, wanted) in LAYOUTS {
            let path = Path::new(dir).join(format!("events/syscalls/{tracepoint}/format"));
            let format = fs::read_to_string(&path).expect("the format file");
            check_layout(&format, tracepoint, wanted).expect("the layout the programs read");
        }
    }
}
