//! Listen queues: a listener with backlog 1 that never accepts, and many clients — the
//! accept queue as `ss -lt` shows it, the handshakes it drops as an alert naming its port and
//! process and in the metrics; SYN cookies in a namespace with `tcp_syncookies=2`.
use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    process::Command,
    time::Duration,
};

use crate::{netns::NetnsPair, support::Tracer};

/// A listener on 127.0.0.1 with backlog 1 (std's TcpListener asks for 128).
fn listener_with_backlog_1() -> (OwnedFd, u16) {
    // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr is a
    // properly initialised sockaddr_in on the stack.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, 1), 0, "listen");
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut blen = len;
        libc::getsockname(fd, (&raw mut bound).cast(), &mut blen);
        (owned, u16::from_be(bound.sin_port))
    }
}

/// Connects without waiting (the handshakes the listener cannot take are retried by the
/// kernel); the sockets stay open.
pub(crate) fn connect_many(port: u16, n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| {
            // SAFETY: as above; a non-blocking connect that is left in progress.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                assert!(fd >= 0);
                let owned = OwnedFd::from_raw_fd(fd);
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                addr.sin_family = libc::AF_INET as libc::sa_family_t;
                addr.sin_port = port.to_be();
                addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                libc::connect(fd, (&raw const addr).cast(), len);
                owned
            }
        })
        .collect()
}

/// `ss -ltn`'s Recv-Q and Send-Q of the listener on `port`.
fn ss_queue(port: u16) -> (u64, u64) {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let cells: Vec<&str> = text.split_whitespace().collect();
    assert!(cells.len() >= 3, "ss -lt: {text}");
    (
        cells[1].parse().expect("Recv-Q"),
        cells[2].parse().expect("Send-Q"),
    )
}

#[test]
fn a_full_accept_queue_drops_handshakes_and_says_which_listener() {
    let metrics_port = crate::metrics::free_port();
    let alerts = Tracer::start(&["alerts"]);
    let metrics = Tracer::start_beside(
        &alerts,
        &["metrics", "--metrics", &format!("127.0.0.1:{metrics_port}")],
    );
    let (listener, port) = listener_with_backlog_1();
    let clients = connect_many(port, 40);
    let listener_label = format!("127.0.0.1:{port}");
    // The listeners are sampled every second: wait for the full queue and its drops.
    let (text, scraped) =
        crate::metrics::scrape_until(metrics_port, "the full accept queue and its drops", |s| {
            let depth = crate::metrics::value(
                s,
                "tcptrace_listen_queue_depth",
                &[("listener", &listener_label)],
            );
            let dropped = crate::metrics::value(
                s,
                "tcptrace_listen_drops_total",
                &[("reason", "accept_queue_full")],
            );
            depth >= 1.0 && dropped >= 1.0
        });
    let (recv_q, send_q) = ss_queue(port);
    let depth = crate::metrics::value(
        &scraped,
        "tcptrace_listen_queue_depth",
        &[("listener", &listener_label)],
    );
    let backlog = crate::metrics::value(
        &scraped,
        "tcptrace_listen_backlog",
        &[("listener", &listener_label)],
    );
    assert_eq!(
        (depth, backlog),
        (recv_q as f64, send_q as f64),
        "the queue as ss -lt shows it ({recv_q}/{send_q}):\n{text}"
    );
    assert!(recv_q >= 1, "the accept queue filled: {recv_q}");
    let dropped = crate::metrics::value(
        &scraped,
        "tcptrace_listen_drops_total",
        &[("reason", "accept_queue_full")],
    );
    assert!(dropped >= 1.0, "drops counted: {dropped}\n{text}");
    alerts.wait_for_record("alert", Duration::from_secs(10), |a| {
        a["kind"] == "listen_drops" && a["lport"] == port
    });
    drop(clients);
    drop(listener);
    let _ = metrics.stop();
    let out = alerts.stop();
    let alert = out
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "listen_drops" && a["lport"] == port)
        .unwrap_or_else(|| panic!("a listen_drops alert: {:#?}", out.records));
    assert_eq!(alert["pid"], std::process::id(), "{alert}");
    assert!(alert["dropped"].as_u64() >= Some(1), "{alert}");
    assert_eq!(alert["backlog"], send_q, "{alert}");
    let detail = alert["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("listener :{port}")) && detail.contains("accept queue"),
        "{detail}"
    );
    let listen = &out.summary()["listen"];
    assert!(listen["accept_queue_full"].as_u64() >= Some(1), "{listen}");
}

#[test]
fn syn_cookies_sent_in_a_namespace_are_said() {
    let pair = NetnsPair::new();
    pair.sysctl(&pair.a, "net.ipv4.tcp_syncookies", "2");
    let ns_a = std::fs::metadata(format!("/run/netns/{}", pair.a))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("the namespace");
    // Every namespace is read at start and every 10 s.
    let tracer = Tracer::start(&["alerts"]);
    let addr_a = pair.addr_a;
    let listener = pair.run_in(&pair.a, move || {
        TcpListener::bind((addr_a, 0)).expect("bind")
    });
    let port = listener.local_addr().expect("addr").port();
    let target = SocketAddrV4::new(addr_a, port);
    pair.run_in(&pair.b, move || {
        for _ in 0..3 {
            let c = TcpStream::connect(target).expect("a cookie-validated connection");
            drop(c);
        }
    });
    // Every namespace's counters are read at start and every 10 s.
    tracer.wait_for_record("alert", Duration::from_secs(30), |a| {
        a["kind"] == "syn_cookies"
    });
    drop(listener);
    let out = tracer.stop();
    let alert = out
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "syn_cookies")
        .unwrap_or_else(|| panic!("a syn_cookies alert: {:#?}", out.records));
    assert_eq!(alert["netns"], ns_a, "{alert}");
    assert!(alert["syncookies_sent"].as_u64() >= Some(3), "{alert}");
    assert!(
        alert["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&pair.a)),
        "{alert}"
    );
    assert!(
        out.summary()["listen"]["syncookies_sent"].as_u64() >= Some(3),
        "{}",
        out.summary()
    );
}
