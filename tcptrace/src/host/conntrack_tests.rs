use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn addrs(a: [u8; 4], sport: u16, b: [u8; 4], dport: u16) -> FlowAddrs {
    FlowAddrs {
        local: Endpoint::new(IpAddr::V4(Ipv4Addr::from(a)), sport),
        remote: Endpoint::new(IpAddr::V4(Ipv4Addr::from(b)), dport),
    }
}

#[test]
fn the_stat_file_is_summed_over_cpus_from_hex() {
    let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                0000000a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000010 00000001 00000000  00000000 00000000 00000000 00000000\n\
                0000000a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 0000000f 00000000 00000000  00000000 00000000 00000000 00000000\n";
    let t = ConntrackTable::parse_stat(text);
    assert_eq!((t.insert_failed, t.drop, t.early_drop), (4, 31, 1));
    assert_eq!(ConntrackTable::parse_stat(""), ConntrackTable::default());
    let full = ConntrackTable {
        entries: 90,
        max: 100,
        ..t
    };
    assert!((full.fill() - 0.9).abs() < 1e-9);
}

/// A response as the kernel writes it: the request's layout, as a NEW message, both tuples.
fn response(original: &FlowAddrs, reply: &FlowAddrs, status: u32) -> Vec<u8> {
    let orig = get_request(original, Direction::Original, 1);
    let rep = get_request(reply, Direction::Reply, 1);
    let mut msg = orig[..20].to_vec();
    msg.extend_from_slice(&orig[20..]);
    msg.extend_from_slice(&rep[20..]);
    attr(&mut msg, CTA_STATUS, &status.to_be_bytes());
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

#[test]
fn a_get_response_gives_both_tuples_and_the_status() {
    let original = addrs([10, 77, 2, 2], 34762, [10, 96, 0, 10], 80);
    let reply = addrs([10, 244, 1, 7], 8080, [10, 77, 2, 2], 34762);
    let entry = parse_response(&response(&original, &reply, 0x1a8))
        .expect("parses")
        .expect("an entry");
    assert_eq!(entry.original, original);
    assert_eq!(entry.reply, reply);
    assert_eq!(entry.status, 0x1a8);
    assert!(entry.destination_translated());
    assert_eq!(entry.translated().remote.to_string(), "10.244.1.7:8080");
}

#[test]
fn no_such_entry_is_none_and_other_errors_are_errors() {
    let mut error = vec![0u8; 36];
    error[..4].copy_from_slice(&36u32.to_ne_bytes());
    error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
    error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
    assert_eq!(parse_response(&error).expect("ENOENT is no entry"), None);
    error[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
    assert!(parse_response(&error).is_err());
    assert!(parse_response(&[0u8; 8]).is_err(), "too short");
}

#[test]
fn a_request_names_the_tuple_in_network_order() {
    let tuple = addrs([10, 0, 0, 1], 0x1234, [10, 0, 0, 2], 80);
    let msg = get_request(&tuple, Direction::Original, 7);
    assert_eq!(
        u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize,
        msg.len()
    );
    assert_eq!(
        u16::from_ne_bytes([msg[4], msg[5]]),
        0x0101,
        "CTNETLINK GET"
    );
    assert_eq!(msg[16], libc::AF_INET as u8);
    assert!(
        msg.windows(2).any(|w| w == [0x12, 0x34]),
        "the port big-endian"
    );
}

#[test]
fn a_refused_lookup_is_told_from_a_missing_entry() {
    let mut error = vec![0u8; 36];
    error[..4].copy_from_slice(&36u32.to_ne_bytes());
    error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
    error[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
    let e = parse_response(&error).expect_err("EPERM");
    assert!(is_denied(&e), "{e:#}");
    error[16..20].copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
    assert!(!is_denied(&parse_response(&error).expect_err("EINVAL")));
}
