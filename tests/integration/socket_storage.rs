//! `--flow-memory socket`: flows kept in each socket's own storage, staged for real — a
//! keepalive timeout between two namespaces (the listener's SO_KEEPALIVE inherited by the
//! accepted socket), read as the other flow stores read it.
use std::{io::Read, net::TcpListener, time::Duration};

use crate::{
    causes::set_int,
    netns::NetnsPair,
    support::{path_states, Tracer},
};

#[test]
fn flows_in_socket_storage_keep_their_path_owner_and_keepalive_probes() {
    let pair = NetnsPair::new();
    let tracer = Tracer::start(&["all", "--flow-memory", "socket"]);
    let addr_a = pair.addr_a;
    // SO_KEEPALIVE on the listener: the accepted socket has it when it becomes ESTABLISHED,
    // so its keepalive probes find the owner by the socket's address.
    let listener = pair.run_in(&pair.a, move || {
        TcpListener::bind((addr_a, 0)).expect("bind in A")
    });
    set_int(&listener, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set_int(&listener, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
    set_int(&listener, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
    set_int(&listener, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2);
    let port = listener.local_addr().expect("addr").port();
    let client = pair.run_in(&pair.b, move || {
        std::net::TcpStream::connect((addr_a, port)).expect("connect from B")
    });
    let client_port = client.local_addr().expect("addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    pair.exec(&pair.a, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let err = server.read(&mut [0u8; 1]).expect_err("killed by keepalive");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let out = tracer.stop();

    let (a, b) = (pair.addr_a.to_string(), pair.addr_b.to_string());
    let flow = out.flow((&a, port), (&b, client_port));
    assert_eq!(path_states(flow), ["SYN_RECV", "ESTABLISHED", "CLOSE"]);
    assert_eq!(flow["cause"], "keepalive_timeout", "{flow}");
    assert_eq!(flow["probes"], 2, "{flow}");
    assert_eq!(
        flow["pid"],
        std::process::id(),
        "the listener's owner: {flow}"
    );
    let probes: Vec<_> = out
        .for_tuple("alert", (&a, port), (&b, client_port))
        .into_iter()
        .filter(|x| x["kind"] == "keepalive_probe")
        .collect();
    assert_eq!(probes.len(), 2, "{probes:#?}");
    for probe in &probes {
        assert_eq!(
            probe["pid"],
            std::process::id(),
            "owner from the index: {probe}"
        );
    }
    // The listener is still open: counted from the kernel's storage counts.
    let open = out.summary()["flows"]["open"].as_u64().expect("flows.open");
    assert!(open >= 1, "the listener in A is open: {}", out.summary());
    assert_eq!(out.summary()["lost"]["total"], 0, "{}", out.summary());
    drop((client, listener));
}
