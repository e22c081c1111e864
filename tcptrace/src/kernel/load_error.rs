//! What a failure to load or attach means, said in one line: a missing privilege (with the
//! fix), or a program the kernel's verifier refused — on a kernel older than the oldest
//! tcptrace is checked on, that is said as the cause. The verifier's log (hundreds of lines)
//! goes to a file the line names.
use std::{io, path::PathBuf};

/// The oldest kernel `cargo xtask old-kernels` checks tcptrace on (Debian 12's 6.1). Older
/// ones are refused before anything is loaded: Debian 11's 5.10 once failed in the verifier
/// ("arg#0 type is not a struct"), later loaded the programs with `--cgroup` unusable — what
/// holds there is not checked, so it is not offered.
pub const OLDEST_CHECKED: (u32, u32) = (6, 1);

/// Refuses a kernel older than [`OLDEST_CHECKED`], in one line naming it.
pub fn check_release(release: &str) -> anyhow::Result<()> {
    match release_version(release) {
        Some(version) if version < OLDEST_CHECKED => anyhow::bail!(
            "Linux {release} is older than the oldest kernel tcptrace runs on ({}.{}): \
             tcptrace is checked on {}.{} and newer only; run it on Linux {}.{} or newer",
            OLDEST_CHECKED.0,
            OLDEST_CHECKED.1,
            OLDEST_CHECKED.0,
            OLDEST_CHECKED.1,
            OLDEST_CHECKED.0,
            OLDEST_CHECKED.1
        ),
        _ => Ok(()),
    }
}

/// The running kernel's release (`uname -r`).
pub fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of a release string such as `6.1.0-57-amd64`.
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The first line of the verifier's log that says something (not a source line or an
/// instruction dump), e.g. "arg#0 type is not a struct" or "R1 invalid mem access 'scalar'".
fn verifier_reason(log: &str) -> &str {
    let is_noise = |l: &str| {
        l.is_empty()
            || l.starts_with(';')
            || l.starts_with("processed ")
            || l.starts_with("last_idx")
            || l.starts_with("regs=")
            || l.split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u32>().is_ok())
    };
    log.lines()
        .map(str::trim)
        .find(|l| !is_noise(l))
        .unwrap_or("no reason given")
}

/// Writes the whole verifier log where the one-line error can point.
fn keep_log(log: &str) -> Option<PathBuf> {
    let path = std::env::temp_dir().join("tcptrace-verifier.log");
    std::fs::write(&path, log).ok().map(|()| path)
}

/// The one-line error for a program the verifier refused while `what`, on `release`.
pub fn rejected(what: &str, log: &str, release: &str, kept: Option<PathBuf>) -> String {
    let reason = verifier_reason(log);
    let where_log = kept.map_or_else(String::new, |p| format!("; its log is in {}", p.display()));
    match release_version(release) {
        Some(version) if version < OLDEST_CHECKED => format!(
            "Linux {release} is older than the oldest kernel tcptrace runs on ({}.{}): its \
             verifier refused the programs while {what} ({reason}){where_log}; run tcptrace on \
             Linux {}.{} or newer",
            OLDEST_CHECKED.0, OLDEST_CHECKED.1, OLDEST_CHECKED.0, OLDEST_CHECKED.1
        ),
        _ => format!(
            "the kernel's verifier rejected the program while {what} on Linux {release} \
             ({reason}){where_log}; please report it with that log"
        ),
    }
}

/// Adds the fix to errors whose cause is a missing privilege. The kernel also answers EACCES
/// when its verifier rejects a program: that is said as such, in one line.
pub fn explain(err: anyhow::Error, what: &str) -> anyhow::Error {
    let text = format!("{err:#}");
    if let Some((_, log)) = text.split_once("Verifier output:") {
        let kept = keep_log(log.trim_start());
        return anyhow::anyhow!(rejected(what, log, &running_release(), kept));
    }
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)))
    });
    if denied {
        err.context(format!(
            "permission denied while {what}: run as root, or with CAP_BPF and CAP_PERFMON; \
             kernel lockdown (confidentiality) also forbids tracing"
        ))
    } else {
        err.context(format!("failed while {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian 11's 5.10 answered (captured by `cargo xtask old-kernels`).
    const LOG_5_10: &str = " arg#0 type is not a struct\nUnrecognized arg#0 type PTR\n; \
        #[btf_tracepoint(function = \"inet_sock_set_state\")]\n0: (7b) *(u64 *)(r10 -24) = r1\n";

    #[test]
    fn releases_parse_to_major_minor() {
        assert_eq!(release_version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(release_version("7.2.13+deb14-amd64"), Some((7, 2)));
        assert_eq!(release_version("5.10.0-32-amd64\n"), Some((5, 10)));
        assert_eq!(release_version("garbage"), None);
    }

    #[test]
    fn an_older_kernel_is_named_as_the_cause_in_one_line() {
        let line = rejected(
            "loading program inet_sock_set_state",
            LOG_5_10,
            "5.10.0-32-amd64",
            Some(PathBuf::from("/tmp/tcptrace-verifier.log")),
        );
        assert_eq!(
            line,
            "Linux 5.10.0-32-amd64 is older than the oldest kernel tcptrace runs on (6.1): its \
             verifier refused the programs while loading program inet_sock_set_state (arg#0 \
             type is not a struct); its log is in /tmp/tcptrace-verifier.log; run tcptrace on \
             Linux 6.1 or newer"
        );
    }

    #[test]
    fn kernels_older_than_the_oldest_checked_are_refused_before_loading() {
        let err = check_release("5.10.0-32-amd64").expect_err("5.10 is refused");
        assert_eq!(
            err.to_string(),
            "Linux 5.10.0-32-amd64 is older than the oldest kernel tcptrace runs on (6.1): \
             tcptrace is checked on 6.1 and newer only; run it on Linux 6.1 or newer"
        );
        for release in [
            "6.1.0-57-amd64",
            "6.12.117+deb12-amd64",
            "7.2.13+deb14-amd64",
            "?",
        ] {
            assert!(check_release(release).is_ok(), "{release}");
        }
    }

    #[test]
    fn a_supported_kernel_asks_for_a_report_with_the_reason() {
        let log =
            "0: (bf) r6 = r1\n; let x = 1;\nR1 invalid mem access 'scalar'\nprocessed 12 insns";
        let line = rejected("loading program x", log, "6.12.117+deb12-amd64", None);
        assert!(line.contains("(R1 invalid mem access 'scalar')"), "{line}");
        assert!(line.contains("on Linux 6.12.117+deb12-amd64"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
