use super::*;
use crate::host::sockdiag::DiagSocket;

const S: u64 = 1_000_000_000;

fn listener(port: u16, queue: u32, drops: u32) -> DiagSocket {
    DiagSocket {
        addrs: FlowAddrs {
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), port),
            remote: unspecified(),
        },
        state: 10,
        keepalive_armed: false,
        expires: std::time::Duration::ZERO,
        idle: None,
        rtt_us: None,
        inode: 77,
        recv_queue: queue,
        send_queue: 1,
        drops: Some(drops),
        cgroup: 0,
    }
}

fn sample(listeners: Vec<DiagSocket>, overflows: u64, cookies: u64) -> ListenSample {
    ListenSample {
        netns: 9,
        counters: TcpExtCounters {
            tw_overflow: Some(0),
            listen_overflows: Some(overflows),
            listen_drops: Some(overflows),
            syncookies_sent: Some(cookies),
        },
        listeners,
    }
}

fn owner(_: u32, _: u16) -> Option<(Process, crate::model::workload::Workload)> {
    Some((
        Process {
            pid: 5,
            comm: "server".into(),
        },
        crate::model::workload::Workload::unresolved(77),
    ))
}

#[test]
fn drops_are_alerted_once_per_episode_window_with_the_queue_and_owner() {
    let mut watch = ListenerWatch::default();
    // The first sample is the baseline: drops before tracing are not counted.
    assert!(watch
        .sample(&sample(vec![listener(8080, 0, 40)], 100, 0), S, owner, "9")
        .is_empty());
    let alerts = watch.sample(
        &sample(vec![listener(8080, 2, 45)], 105, 0),
        2 * S,
        owner,
        "9",
    );
    let [ListenAlert::Drops {
        dropped,
        owner: Some(p),
        listener: l,
        ..
    }] = alerts.as_slice()
    else {
        panic!("one drop alert: {alerts:?}");
    };
    assert_eq!((*dropped, p.pid, l.queue, l.backlog), (5, 5, 2, 1));
    assert!(alerts[0]
        .detail()
        .contains("dropped 5 handshakes; accept queue 2/1 now"));
    assert!(alerts[0].detail().contains("(5 with the accept queue full"));
    // Within 10 s: counted, not alerted; then alerted with everything since.
    assert!(watch
        .sample(
            &sample(vec![listener(8080, 2, 50)], 110, 0),
            3 * S,
            owner,
            "9"
        )
        .is_empty());
    let again = watch.sample(
        &sample(vec![listener(8080, 2, 51)], 111, 0),
        13 * S,
        owner,
        "9",
    );
    assert!(
        matches!(again.as_slice(), [ListenAlert::Drops { dropped: 6, .. }]),
        "{again:?}"
    );
    assert!(
        again[0].detail().contains("dropping for 11.0s"),
        "{}",
        again[0].detail()
    );
    assert_eq!(watch.totals.accept_queue_full, 11);
    let l = watch.listeners().next().expect("the listener");
    assert_eq!((l.dropped, l.max_queue), (11, 2));
    // A listener gone is forgotten.
    watch.sample(&sample(vec![], 111, 0), 14 * S, owner, "9");
    assert_eq!(watch.listeners().count(), 0);
}

#[test]
fn syn_cookies_are_alerted_per_namespace() {
    let mut watch = ListenerWatch::default();
    watch.sample(&sample(vec![], 0, 10), S, owner, "9 \"kb\"");
    let alerts = watch.sample(&sample(vec![], 0, 13), 2 * S, owner, "9 \"kb\"");
    assert!(
        matches!(alerts.as_slice(), [ListenAlert::SynCookies { sent: 3, .. }]),
        "{alerts:?}"
    );
    assert!(alerts[0]
        .detail()
        .starts_with("netns 9 \"kb\" sent 3 SYN cookies"));
    assert_eq!(watch.totals.syncookies_sent, 3);
}
