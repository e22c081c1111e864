//! What the session says on stderr as it goes: losses, and what the start-up missed.
use crate::state::summary::StartupGap;

/// Events lost since the last report, and why; the advice only where it helps (a bigger ring
/// does nothing for events the kernel skipped while the hook was busy).
pub(super) fn lost_warning(newly: u64, total: u64, ring_full: u64, skipped: u64) -> String {
    let mut why = Vec::new();
    if ring_full > 0 {
        why.push(format!(
            "{ring_full} for a full ring buffer: raise --ring-size or lower --poll-interval"
        ));
    }
    if skipped > 0 {
        why.push(format!(
            "{skipped} skipped by the kernel while the hook was busy on that CPU"
        ));
    }
    format!("{newly} events lost ({total} in all: {})", why.join("; "))
}

/// What the start-up missed, said once tracing has begun: connections opened in this network
/// namespace while the programs were loaded and attached.
pub(super) fn startup_warning(startup: &StartupGap) -> Option<String> {
    let opened = startup.connections_opened.filter(|&n| n > 0)?;
    Some(format!(
        "{opened} connections were opened in this network namespace during the {} start-up, \
         before the programs were attached: they are not traced (the kernel's count, \
         /proc/net/snmp)",
        crate::host::clock::human_duration(startup.ns)
    ))
}

#[cfg(test)]
mod tests {
    use super::{lost_warning, startup_warning};
    use crate::state::summary::StartupGap;

    #[test]
    fn lost_events_advise_a_bigger_ring_only_when_the_ring_was_full() {
        let skipped_only = lost_warning(3, 3, 0, 3);
        assert_eq!(
            skipped_only,
            "3 events lost (3 in all: 3 skipped by the kernel while the hook was busy on that CPU)"
        );
        let both = lost_warning(5, 9, 4, 5);
        assert!(
            both.contains("4 for a full ring buffer: raise --ring-size"),
            "{both}"
        );
        assert!(both.contains("; 5 skipped by the kernel"), "{both}");
    }

    #[test]
    fn the_start_up_says_what_it_missed_only_when_it_missed_something() {
        let gap = |n| StartupGap {
            ns: 1_400_000_000,
            connections_opened: n,
        };
        assert_eq!(startup_warning(&gap(Some(0))), None);
        assert_eq!(startup_warning(&gap(None)), None);
        let said = startup_warning(&gap(Some(12))).expect("said");
        assert!(
            said.starts_with("12 connections were opened") && said.contains("1.4s start-up"),
            "{said}"
        );
    }
}
