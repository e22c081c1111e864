//! The NAT boundary on the real kernel: two clients behind a MASQUERADE router with a narrow
//! port range, a server behind it; drops joined to the clients' own flows across the
//! translation, SNAT port exhaustion and TIME_WAIT PAWS alerts.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    nat_lab::{warm_up, NatLab},
    support::Tracer,
};

fn ip(addr: Ipv4Addr) -> String {
    addr.to_string()
}

/// The router's only NAT port is held by one client's open connection: the other client's
/// SYNs are dropped at the NAT, said as `snat_exhausted` alerts naming the client, the NAT
/// address and the port it tried, and joined to that client's own flow (with the addresses
/// past the NAT); the first client's flow carries none of them.
#[test]
fn a_source_nat_out_of_ports_is_alerted_and_its_drops_join_the_clients_own_flow() {
    let lab = NatLab::new("41000-41000");
    let tracer = Tracer::start(&["all", "--flows-at", "close"]);
    let listener = lab.listen(9090);
    let mut held = (lab.connect(0, 9090, Duration::from_secs(2)))
        .expect("the first client takes the NAT's only port");
    let held_port = held.local_addr().expect("addr").port();
    let (accepted, _) = listener.accept().expect("accept");
    // SYNs at 0, 1 and 3 s: the first drop has the router's namespace read at the next tick,
    // and its NAT rules with it.
    let refused = lab.connect(1, 9090, Duration::from_millis(3_500));
    assert!(
        refused.is_err(),
        "the second client's connect() cannot get through the NAT"
    );
    let (client, nat, server) = (ip(lab.clients[1]), ip(lab.nat), ip(lab.server));
    // The second client's one connection: its port is the flow's.
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| r["laddr"] == client);
    held.write_all(b"x")
        .expect("the first client's connection still works");
    drop(held);
    drop(accepted);
    let first = ip(lab.clients[0]);
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| {
        r["laddr"] == first && r["lport"] == held_port
    });
    let out = tracer.stop();
    let port = out
        .of_type("flow")
        .into_iter()
        .find(|f| f["laddr"] == client)
        .and_then(|f| f["lport"].as_u64())
        .expect("the second client's flow");
    let alerts: Vec<&Value> = out
        .of_type("alert")
        .into_iter()
        .filter(|a| a["kind"] == "snat_exhausted" && a["laddr"] == client)
        .collect();
    assert!(
        alerts.len() >= 2,
        "the SYN and its retransmits: {alerts:#?}"
    );
    for alert in &alerts {
        assert_eq!(alert["lport"], port, "{alert}");
        assert_eq!(
            (&alert["raddr"], &alert["rport"]),
            (&server.clone().into(), &9090.into())
        );
        assert_eq!(alert["nat"]["saddr"], nat, "{alert}");
        assert_eq!(alert["nat"]["sport"], 41000, "the port it tried: {alert}");
        let detail = alert["detail"].as_str().expect("detail");
        assert!(detail.contains("no free port on"), "{detail}");
        let snat = &alert["nat"]["snat"];
        assert!(
            snat["sources"].as_array().is_some_and(|s| s
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s.starts_with(&client)))),
            "the client behind the NAT: {alert}"
        );
    }
    // Once the router's namespace was read (hurried by the first drop), its rule's one port
    // is known.
    assert!(
        alerts
            .iter()
            .any(|a| a["nat"]["snat"]["ports_basis"] == "rule"
                && a["nat"]["snat"]["ports_min"] == 41000
                && a["nat"]["snat"]["ports_max"] == 41000),
        "the NAT rule's range: {alerts:#?}"
    );
    let flow = out.flow((&client, port as u16), (&server, 9090));
    assert_eq!(flow["close"], "connect_failed", "{flow}");
    let dropped = flow["drops"]["NETFILTER_DROP"].as_u64().unwrap_or(0);
    assert!(
        dropped >= 2,
        "the client's drops past the NAT are its own: {flow}"
    );
    assert_eq!(
        flow["nat"]["laddr"], nat,
        "the addresses past the NAT: {flow}"
    );
    assert_eq!(flow["nat"]["lport"], 41000, "{flow}");
    assert_eq!(flow["nat"]["raddr"], server, "{flow}");
    let first = out.flow((&ip(lab.clients[0]), held_port), (&server, 9090));
    assert_eq!(
        first["drops"],
        serde_json::json!({}),
        "no other flow's drops: {first}"
    );
    let drops: Vec<&Value> = out
        .of_type("drop")
        .into_iter()
        .filter(|d| d["conntrack"]["original"]["saddr"] == client)
        .collect();
    assert!(drops.len() >= 2, "drop records carry the entry: {drops:#?}");
    for d in drops {
        assert_eq!(
            (&d["saddr"], &d["sport"]),
            (&nat.clone().into(), &41000.into()),
            "{d}"
        );
        assert_eq!(d["conntrack"]["original"]["sport"], port, "{d}");
        assert_eq!(d["conntrack"]["src_nat"], true, "{d}");
        assert_eq!(d["conntrack"]["confirmed"], false, "{d}");
    }
}

/// A server that closes first holds TIME_WAIT per 4-tuple; two clients behind one NAT
/// address reuse its four ports with their own timestamp clocks, and the TIME_WAITs reject
/// the SYNs whose timestamps look old: `time_wait_paws` alerts naming the source and the
/// local port, with the explanation.
#[test]
fn time_waits_rejecting_syns_from_behind_a_nat_are_paws_alerts() {
    let lab = NatLab::new("42000-42003");
    let listener = lab.listen(8080);
    // The router's table holds an entry before the tracer starts: it is found at start.
    warm_up(&lab, &listener, 8080);
    let tracer = Tracer::start(&["all", "--flows-at", "close"]);
    let server_thread = thread::spawn(move || {
        // The server closes first: it holds the TIME_WAITs.
        for stream in listener.incoming().take(40) {
            let Ok(mut stream) = stream else { break };
            let _ = stream.read(&mut [0u8; 8]);
        }
    });
    let mut connected = 0;
    for round in 0..20 {
        for client in 0..2 {
            if let Ok(mut stream) = lab.connect(client, 8080, Duration::from_secs(3)) {
                connected += 1;
                let _ = stream.write_all(b"x");
                let _ = stream.read(&mut [0u8; 8]);
            }
        }
        if round >= 3 && tracer.has_record(|r| r["kind"] == "time_wait_paws") {
            break;
        }
    }
    assert!(connected > 0, "some connections got through");
    let nat = ip(lab.nat);
    tracer.wait_for_record("alert", Duration::from_secs(10), |r| {
        r["kind"] == "time_wait_paws"
    });
    let out = tracer.stop();
    let alerts: Vec<&Value> = out
        .of_type("alert")
        .into_iter()
        .filter(|a| a["kind"] == "time_wait_paws")
        .collect();
    assert!(!alerts.is_empty());
    // The rejected SYNs are on the clients' own flows, with the addresses past the NAT
    // (and on the server's flow of the same 4-tuple, when a later SYN got through).
    let clients_rejected: Vec<&Value> = out
        .of_type("flow")
        .into_iter()
        .filter(|f| f["drops"]["TCP_RFC7323_TW_PAWS"].as_u64() > Some(0))
        .filter(|f| lab.clients.iter().any(|c| f["laddr"] == ip(*c)))
        .collect();
    assert!(
        !clients_rejected.is_empty(),
        "a client's flow carries its rejected SYNs: {:#?}",
        out.of_type("flow")
    );
    for flow in clients_rejected {
        assert_eq!(flow["nat"]["laddr"], nat, "{flow}");
        assert_eq!(flow["nat"]["raddr"], ip(lab.server), "{flow}");
    }
    let mut named = 0;
    for alert in &alerts {
        assert_eq!(alert["laddr"], ip(lab.server), "ours first: {alert}");
        assert_eq!(alert["lport"], 8080, "{alert}");
        assert_eq!(alert["raddr"], nat, "the NAT's address: {alert}");
        let port = alert["rport"].as_u64().expect("rport");
        assert!(
            (42000..=42003).contains(&port),
            "one of the NAT's ports: {alert}"
        );
        let detail = alert["detail"].as_str().expect("detail");
        assert!(
            detail.contains("closed first") && detail.contains("PAWS"),
            "{detail}"
        );
        // The client behind the NAT, from the router's conntrack entry (looked up after
        // the drop: where the NAT already gave the tuple to the next connection, the entry
        // is gone and the alert cannot say).
        let behind = &alert["nat"]["saddr"];
        if !behind.is_null() {
            named += 1;
            assert!(
                lab.clients.iter().any(|c| *behind == ip(*c)),
                "the client behind the NAT: {alert}"
            );
            assert!(detail.contains("the client behind the NAT"), "{detail}");
        }
    }
    assert!(named > 0, "the client behind the NAT is named: {alerts:#?}");
    drop(server_thread);
}

/// A Service address: the router destination-NATs it to the server. The client's flow
/// carries the backend it really reached (and the source NAT on the way).
#[test]
fn a_destination_nat_shows_the_backend_on_the_clients_flow() {
    let lab = NatLab::new("43000-43100");
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    lab.dnat(vip, 80, 8080);
    let listener = lab.listen(8080);
    warm_up(&lab, &listener, 8080);
    let metrics_port = crate::metrics::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let tracer = Tracer::start(&["flows", "--flows-at", "close", "--metrics", &metrics]);
    let to = SocketAddr::from((vip, 80));
    let mut client = lab
        .run_in("c2", move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })
        .expect("connect to the VIP");
    let port = client.local_addr().expect("addr").port();
    let (mut server, peer) = listener.accept().expect("accept");
    client.write_all(b"hello").expect("write");
    let _ = server.read(&mut [0u8; 8]);
    drop(client);
    drop(server);
    let client_ip = ip(lab.clients[1]);
    tracer.wait_for_record("flow", Duration::from_secs(10), |r| {
        r["laddr"] == client_ip && r["lport"] == port
    });
    // Metrics group the Service address's connections by the backend they reached.
    let backend = format!("{}:8080", lab.server);
    crate::metrics::scrape_until(metrics_port, "the connection under its backend", |s| {
        crate::metrics::value(
            s,
            "tcptrace_nat_connections_total",
            &[("destination", &format!("{vip}:80")), ("backend", &backend)],
        ) >= 1.0
    });
    let out = tracer.stop();
    let flow = out.flow((&client_ip, port), (&vip.to_string(), 80));
    assert_eq!(flow["nat"]["raddr"], ip(lab.server), "the backend: {flow}");
    assert_eq!(flow["nat"]["rport"], 8080, "{flow}");
    assert_eq!(
        flow["nat"]["laddr"],
        ip(lab.nat),
        "the source NAT too: {flow}"
    );
    assert_eq!(
        flow["nat"]["lport"],
        peer.port(),
        "as the server saw it: {flow}"
    );
    assert_eq!(flow["drops"], serde_json::json!({}), "{flow}");
}

/// Connections through a source NAT with four ports, each closed: conntrack holds each
/// one's entry 120 s after close, so a few a second hold more entries than the NAT has ports
/// toward the destination: a `snat_forecast` alert (and the metric) says so before any SYN is
/// dropped, with the rule's range, the timeout read from the router's namespace and the
/// client behind the NAT.
#[test]
fn a_source_nats_ports_held_by_closed_connections_are_forecast_before_any_drop() {
    let lab = NatLab::new("45000-45003");
    let listener = lab.listen(6060);
    warm_up(&lab, &listener, 6060);
    let port = crate::metrics::free_port();
    let metrics = format!("127.0.0.1:{port}");
    // The router's table holds the warm-up's entry: its namespace is read (and its socket
    // opened) as the tracer starts.
    let tracer = Tracer::start(&["all", "--flows-at", "close", "--metrics", &metrics]);
    let (client, nat, server) = (ip(lab.clients[0]), ip(lab.nat), ip(lab.server));
    for _ in 0..3 {
        let mut stream = (lab.connect(0, 6060, Duration::from_secs(2))).expect("connect");
        let (mut accepted, _) = listener.accept().expect("accept");
        stream.write_all(b"x").expect("write");
        let _ = accepted.read(&mut [0u8; 1]);
        drop(stream);
        drop(accepted);
    }
    tracer.wait_for_record("alert", Duration::from_secs(10), |r| {
        r["kind"] == "snat_forecast"
    });
    let (_, scraped) = crate::metrics::scrape_until(port, "the SNAT forecast's gauge", |s| {
        crate::metrics::value(
            s,
            "tcptrace_snat_ports_held_ratio",
            &[("nat_address", &nat)],
        ) > 0.8
    });
    let held = crate::metrics::value(
        &scraped,
        "tcptrace_snat_entries_held",
        &[("nat_address", &nat)],
    );
    assert!(held >= 3.0, "entries held: {held}");
    let out = tracer.stop();
    let alert = out
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "snat_forecast")
        .expect("the forecast's alert");
    assert_eq!(
        (&alert["laddr"], &alert["raddr"]),
        (&nat.clone().into(), &server.clone().into())
    );
    assert_eq!(alert["rport"], 6060, "{alert}");
    let snat = &alert["nat"]["snat"];
    assert_eq!(
        (&snat["ports_min"], &snat["ports_max"], &snat["ports_basis"]),
        (&45000.into(), &45003.into(), &"rule".into()),
        "the MASQUERADE rule's range: {alert}"
    );
    assert_eq!(
        snat["hold_s"], 120.0,
        "read in the router's namespace: {alert}"
    );
    assert!(snat["utilization"].as_f64() > Some(0.8), "{alert}");
    assert!(
        snat["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| *s == client)),
        "the client behind it: {alert}"
    );
    let detail = alert["detail"].as_str().expect("detail");
    assert!(
        detail.contains("4 ports (45000-45003, its source NAT rule)")
            && detail.contains("120 s after close"),
        "{detail}"
    );
    let dropped = out
        .of_type("alert")
        .into_iter()
        .any(|a| a["kind"] == "snat_exhausted" && a["nat"]["saddr"] == nat);
    assert!(
        !dropped,
        "forecast before any drop: {:#?}",
        out.of_type("alert")
    );
}

/// A conntrack table full (a tiny nf_conntrack_max; the limit is the host's, each
/// namespace's table is held to it): an alert naming the namespace, its fill and the
/// packets dropped.
#[test]
fn a_full_conntrack_table_is_alerted_on_with_its_drops() {
    // Alone: the limit is the whole host's.
    let load = crate::support::heavy_load();
    const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
    let own: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .expect("nf_conntrack_count")
        .trim()
        .parse()
        .expect("a count");
    assert!(
        own < 16,
        "this host's own conntrack table holds {own} entries: lowering nf_conntrack_max to \
         24 for this test would drop its connections"
    );
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(MAX, &self.0);
        }
    }
    let _restore = Restore(std::fs::read_to_string(MAX).expect("read nf_conntrack_max"));
    let lab = NatLab::new("44000-44999");
    let listener = lab.listen(7070);
    warm_up(&lab, &listener, 7070);
    let tracer = Tracer::start_alone(&load, &["alerts"]);
    std::fs::write(MAX, "24").expect("set nf_conntrack_max");
    let mut held = Vec::new();
    for i in 0..30 {
        if let Ok(stream) = lab.connect(i % 2, 7070, Duration::from_millis(300)) {
            held.push(stream);
            held.push(listener.accept().expect("accept").0);
        }
    }
    assert!(held.len() < 60, "the table stopped new connections");
    tracer.wait_for_record("alert", Duration::from_secs(15), |r| {
        r["kind"] == "conntrack_full" && r["nat"]["dropped_total"].as_u64() > Some(0)
    });
    let out = tracer.stop();
    let router = lab.ns("r");
    let alert = out
        .of_type("alert")
        .into_iter()
        .find(|a| a["kind"] == "conntrack_full")
        .expect("the alert");
    let detail = alert["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&router),
        "names the router's namespace: {detail}"
    );
    assert!(detail.contains("of 24 entries"), "{detail}");
    assert!(detail.contains("packets dropped"), "{detail}");
}
