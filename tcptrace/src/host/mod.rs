//! The host beside the eBPF programs: clocks, network namespaces and their port settings,
//! /proc/net counters, sock_diag dumps, and who a cgroup is (container, pod, unit).
pub mod clock;
pub mod conntrack;
pub mod facts;
pub mod identity;
pub mod identity_resolver;
pub mod nat_rules;
pub mod netlink;
pub mod netns;
pub mod netns_reader;
pub mod netns_sockets;
pub mod procnet;
pub mod sockdiag;
pub mod socket_owners;
