use super::*;
use std::path::Path;

#[test]
fn run_netns_paths_name_the_namespace() {
    assert_eq!(
        run_netns_name(Path::new("/run/netns/ka")).as_deref(),
        Some("ka")
    );
    assert_eq!(run_netns_name(Path::new("/proc/1/ns/net")), None);
}

#[test]
fn own_namespace_is_read_at_start_and_found_among_the_hosts() {
    let reader = NamespaceReader::new();
    let own = reader.own.expect("tcptrace's own namespace");
    let ns = reader.namespaces.get(own).expect("read at start");
    let settings = ns.settings.as_ref().expect("its sysctls are readable");
    assert!(ns.own);
    assert!(settings.usable_ports > 0, "{settings:?}");
    assert!(settings.port_range.0 <= settings.port_range.1);
    assert!(
        discover_namespaces().contains_key(&own),
        "this process's namespace is found"
    );
}
