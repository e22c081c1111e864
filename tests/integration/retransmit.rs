//! Retransmits staged between two namespaces with iptables DROP: counted per flow and
//! attributed to the state they happened in.
use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{
    netns::{Connected, NetnsPair},
    support::{path_states, Tracer},
};

/// The segments a socket has retransmitted (`tcpi_total_retrans`), read from the kernel.
pub fn total_retrans(stream: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain integers; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt(TCP_INFO) into a tcp_info of the length given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    info.tcpi_total_retrans
}

pub fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a valid linger struct.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(stream); // RST: ESTABLISHED -> CLOSE
}

#[test]
fn established_retransmits_are_counted_on_the_flow() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["all"]);
    let Connected {
        listener: _listener,
        mut client,
        server,
        server_port,
        client_port,
    } = pair.connect();

    pair.exec(&pair.a, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    client.write_all(b"into the void").expect("write");
    // RTO starts at 200 ms and doubles: 0.2, 0.6, 1.4 s.
    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    tracer.wait_for_records("3 retransmits", Duration::from_secs(15), |r| {
        r.iter()
            .filter(|x| x["type"] == "retransmit" && x["lport"] == client_port && x["raddr"] == a)
            .count()
            >= 3
    });
    abort(client);
    drop(server);
    let out = tracer.stop();

    let rtx = out.for_tuple("retransmit", (&b, client_port), (&a, server_port));
    assert!(rtx.len() >= 3, "at least 3 retransmits: {rtx:#?}");
    for r in &rtx {
        assert_eq!(r["state"], "ESTABLISHED", "{r}");
        assert_eq!(r["pid"], std::process::id(), "{r}");
        assert!(r["err"].is_null() || r["err"] == 0, "{r}");
    }
    let flow = out.flow((&b, client_port), (&a, server_port));
    assert_eq!(path_states(flow), ["SYN_SENT", "ESTABLISHED", "CLOSE"]);
    assert_eq!(flow["close"], "reset");
    assert_eq!(flow["cause"], "aborted", "SO_LINGER 0: {flow}");
    assert_eq!(flow["rtx"], rtx.len(), "{flow}");
    assert_eq!(
        flow["path"][1]["rtx"],
        rtx.len(),
        "attributed to ESTABLISHED: {flow}"
    );
    assert_eq!(flow["path"][0]["rtx"], 0, "{flow}");
    let summary = out.summary();
    assert!(
        summary["retransmits_by_state"]["ESTABLISHED"].as_u64() >= Some(rtx.len() as u64),
        "{summary}"
    );
}

#[test]
fn syn_retransmits_are_attributed_to_syn_sent() {
    let pair = NetnsPair::new();
    pair.exec(
        &pair.a,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "4444", "-j", "DROP",
        ],
    );
    let tracer = Tracer::start(&["all"]);
    let target: SocketAddr = (pair.addr_a, 4444).into();
    // SYNs are dropped; with tcp_syn_linear_timeouts the retries come 1 s apart.
    let err = pair.run_in(&pair.b, move || {
        TcpStream::connect_timeout(&target, Duration::from_millis(2_500)).expect_err("dropped")
    });
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let out = tracer.stop();
    let a = pair.addr_a.to_string();
    let flows: Vec<_> = out
        .of_type("flow")
        .into_iter()
        .filter(|f| f["raddr"] == a.as_str() && f["rport"] == 4444)
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let flow = flows[0];
    assert_eq!(path_states(flow), ["SYN_SENT", "CLOSE"]);
    assert_eq!(flow["close"], "connect_failed");
    assert_eq!(
        flow["cause"], "aborted",
        "connect abandoned by the caller: {flow}"
    );
    let syn_rtx = flow["path"][0]["rtx"].as_u64().expect("rtx count");
    assert!(syn_rtx >= 1, "SYN retransmitted while in SYN_SENT: {flow}");
    let rtx = out.for_tuple(
        "retransmit",
        (
            &pair.addr_b.to_string(),
            flow["lport"].as_u64().expect("lport") as u16,
        ),
        (&a, 4444),
    );
    assert_eq!(rtx.len() as u64, syn_rtx, "{rtx:#?}");
    assert!(rtx.iter().all(|r| r["state"] == "SYN_SENT"), "{rtx:#?}");
}
