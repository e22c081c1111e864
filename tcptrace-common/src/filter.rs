//! In-kernel filters: what the loader writes into [`crate::ProgramConfig::filter`] and the
//! maps the programs consult. A flow is decided when it is first seen; flows that do not
//! match are neither tracked nor sent (they are only counted, in `stat::FILTERED`).

/// How many pids, network namespaces and cgroups one filter can name.
pub const FILTER_SLOTS: usize = 8;

/// Bits of [`FilterConfig::active`]: which filters are in force (they combine with AND).
pub mod filter_kind {
    pub const FAMILY: u32 = 1 << 0;
    pub const LOCAL_PORT: u32 = 1 << 1;
    pub const REMOTE_PORT: u32 = 1 << 2;
    pub const LOCAL_ADDR: u32 = 1 << 3;
    pub const REMOTE_ADDR: u32 = 1 << 4;
    pub const PID: u32 = 1 << 5;
    pub const CGROUP: u32 = 1 << 6;
    pub const NETNS: u32 = 1 << 7;
    /// Pods, Kubernetes namespaces, containers: the cgroups in `WORKLOAD_CGROUPS` (kept up to
    /// date by userspace as pods come and go) or their descendants.
    pub const WORKLOAD: u32 = 1 << 8;
    /// `--port`: the port on either side (local or remote) is one of them.
    pub const EITHER_PORT: u32 = 1 << 9;
}

/// Bits of each byte of the `PORT_FILTER` array (indexed by port, host order).
pub mod port_bits {
    pub const LOCAL: u8 = 1 << 0;
    pub const REMOTE: u8 = 1 << 1;
    /// `--port`: allowed on either side.
    pub const EITHER: u8 = 1 << 2;
}

/// Filters in force, written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Bits of [`filter_kind`]; 0: everything is traced.
    pub active: u32,
    /// `AF_INET` (2) or `AF_INET6` (10), with `filter_kind::FAMILY`.
    pub family: u16,
    pub pid_count: u8,
    pub netns_count: u8,
    pub cgroup_count: u8,
    pub _pad: [u8; 7],
    /// Process ids (tgid) of the socket's owner.
    pub pids: [u32; FILTER_SLOTS],
    /// Inode numbers of network namespaces.
    pub netns: [u32; FILTER_SLOTS],
    /// cgroup v2 ids; a socket matches when its cgroup or an ancestor is one of them.
    pub cgroups: [u64; FILTER_SLOTS],
}
const _: () = assert!(core::mem::size_of::<FilterConfig>() == 144);

/// Key of the address tries: IPv6, or IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so that
/// one trie serves both families and dual-stack sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrKey {
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 16);

/// Key of the `TW_TRACED` map: the 4-tuple and namespace of a traced flow's timewait socket
/// (under filters its expiry is sent only where its start was).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWaitKey {
    pub tuple: crate::Tuple,
    pub netns: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TimeWaitKey>() == 48);

/// The longest cgroup ancestry walked to find a filtered cgroup.
pub const CGROUP_MAX_DEPTH: usize = 16;

/// IPv4 in IPv4-mapped IPv6 form, as the address tries store it.
#[inline(always)]
pub fn mapped_v4(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}
