use super::*;
use crate::{
    host::nat_rules::{NatPorts, PortsBasis},
    state::packets::tests::snat,
};

fn four_ports(evicts: Option<bool>, hold_s: Option<f64>) -> Capacity {
    Capacity {
        netns_label: "42 \"r\"".into(),
        ports: NatPorts {
            range: (40000, 40003),
            basis: PortsBasis::Rule,
        },
        hold_s,
        evicts_closed: evicts,
    }
}

#[test]
fn entries_held_are_the_rate_times_open_time_plus_the_timeout_against_the_rules_ports() {
    let ct = snat();
    let mut tracker = SnatTracker::default();
    let key = tracker.ended(42, &ct, 100, 0.5, Some("pod acme/web".into()));
    assert_eq!(
        key,
        (42, ct.translated().local.addr, ct.translated().remote),
        "per NAT namespace, NAT address and destination"
    );
    tracker.ended(42, &ct, 101, 1.5, None);
    let f = tracker.forecast(&key, 105, four_ports(Some(true), Some(120.0)));
    assert!((f.rate_per_s - 0.2).abs() < 1e-9, "{f:?}");
    assert!((f.open_s - 1.0).abs() < 1e-9, "{f:?}");
    assert!((f.held - 0.2 * 121.0).abs() < 1e-9, "{f:?}");
    assert!((f.held_open - 0.2).abs() < 1e-9, "{f:?}");
    assert!((f.utilization - 0.2 * 121.0 / 4.0).abs() < 1e-9, "{f:?}");
    assert_eq!(
        f.sources,
        vec!["10.77.2.2 (pod acme/web)".to_string()],
        "the source keeps the name it was seen with"
    );
    let text = f.explain();
    for part in [
        "from 10.77.2.2 (pod acme/web)",
        "10.77.9.1 toward 10.77.9.2:8080 (netns 42 \"r\")",
        "4 ports (40000-40003, its source NAT rule)",
        "120 s after close",
        "about 24 entries held, 605% of the ports",
        "Linux 6.5",
        "PAWS",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    let old = tracker.forecast(&key, 105, four_ports(Some(false), None));
    assert!(
        old.explain().contains("120 s assumed") && old.explain().contains("SYNs are dropped"),
        "{}",
        old.explain()
    );
    // Ten seconds later the rate has gone.
    let quiet = tracker.forecast(&key, 112, four_ports(Some(true), Some(120.0)));
    assert_eq!(quiet.rate_per_s, 0.0);
}

#[test]
fn a_space_is_warned_about_once_per_crossing() {
    let ct = snat();
    let mut tracker = SnatTracker::default();
    let key = tracker.ended(42, &ct, 100, 0.1, None);
    let hot = tracker.forecast(&key, 100, four_ports(Some(true), Some(120.0)));
    assert!(tracker.crosses(&hot), "over 80%");
    assert!(!tracker.crosses(&hot), "said once");
    assert_eq!(tracker.warned(), vec![key]);
    let cold = tracker.forecast(&key, 200, four_ports(Some(true), Some(120.0)));
    assert!(!tracker.crosses(&cold));
    assert!(tracker.warned().is_empty(), "re-armed under 60%");
    assert!(tracker.crosses(&hot), "a new crossing is said again");
}

#[test]
fn spaces_are_bounded_and_the_forgotten_counted() {
    let mut tracker = SnatTracker::default();
    let mut ct = snat();
    for i in 0..(MAX_SPACES as u16 + 10) {
        ct.reply.local.port = 1000 + i;
        tracker.ended(42, &ct, u64::from(i), 0.0, None);
    }
    assert_eq!(tracker.spaces.len(), MAX_SPACES);
    assert_eq!(tracker.evicted, 10);
    assert_eq!(tracker.busiest(MAX_SPACES as u64 + 9, 3).len(), 3);
}
