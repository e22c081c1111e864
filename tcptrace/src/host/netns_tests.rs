use super::*;

#[test]
fn ranges_and_reserved_ports() {
    assert_eq!(
        parse_port_range("32768\t60999\n").expect("valid"),
        (32768, 60999)
    );
    assert!(parse_port_range("60999 32768").is_err());
    assert!(parse_port_range("1024").is_err());
    assert_eq!(parse_reserved("").expect("empty"), vec![]);
    assert_eq!(
        parse_reserved("8080,9000-9010\n").expect("valid"),
        vec![(8080, 8080), (9000, 9010)]
    );
    assert!(parse_reserved("9010-9000").is_err());
    assert!(parse_reserved("x").is_err());
    assert_eq!(usable_ports((32768, 60999), &[]), 28232);
    assert_eq!(
        usable_ports((32768, 60999), &[(40000, 40009), (1, 100)]),
        28222
    );
    assert_eq!(usable_ports((5000, 5000), &[(5000, 5000)]), 0);
}

#[test]
fn reuse_needs_timestamps_and_loopback_for_mode_2() {
    let mut s = PortSettings::kernel_defaults();
    assert!(s.reuses(true) && !s.reuses(false));
    assert_eq!(s.hold_s(false), TIME_WAIT_LEN_S);
    s.tw_reuse = 1;
    s.tw_reuse_delay_ms = 500;
    assert!(s.reuses(false));
    assert_eq!(s.hold_s(false), 0.5);
    s.timestamps = false;
    assert!(!s.reuses(true), "reuse checks timestamps");
}

#[test]
fn labels_name_the_namespace() {
    let mut ns = Namespace {
        conntrack: None,
        inode: 4026532770,
        name: Some("ka".into()),
        own: false,
        settings: None,
    };
    assert_eq!(ns.label(), "4026532770 \"ka\"");
    ns.name = None;
    assert_eq!(ns.label(), "4026532770");
    ns.own = true;
    assert_eq!(ns.label(), "4026532770 (tcptrace's own)");
    assert!(ns.settings_or_defaults().1, "defaults assumed");
}
