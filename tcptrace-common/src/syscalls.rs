//! The syscall hooks' records: connect() and bind() failing for want of a port.
use crate::COMM_LEN;

/// Which call a [`PortFailureEvent`] reports.
pub mod port_failure {
    pub const CONNECT: u8 = 1;
    pub const BIND: u8 = 2;
    /// Flag: the address could not be read (the call was not seen entering, or its
    /// sockaddr could not be read from the caller's memory).
    pub const NO_ADDRESS: u8 = 1 << 0;
    /// The errors reported: `EADDRINUSE` and `EADDRNOTAVAIL` (the same on every Linux arch
    /// tcptrace builds for).
    pub const EADDRINUSE: u32 = 98;
    pub const EADDRNOTAVAIL: u32 = 99;
}

/// A connect() or bind() that failed for want of a port (`syscalls:sys_exit_connect`,
/// `sys_exit_bind`, with the address remembered at `sys_enter_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortFailureEvent {
    pub kind: u32,
    /// [`port_failure::CONNECT`] or [`port_failure::BIND`].
    pub call: u8,
    /// Bits of `port_failure` flags.
    pub flags: u8,
    /// `AF_INET` or `AF_INET6` (0: unknown).
    pub family: u16,
    pub ts_ns: u64,
    /// The error (positive): `EADDRNOTAVAIL` or `EADDRINUSE`.
    pub errno: u32,
    /// The calling process (tgid) and its command.
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    /// The calling task's network namespace (inode; 0: not read).
    pub netns: u32,
    /// The port asked for (host order): connect's destination, bind's local port.
    pub port: u16,
    pub _pad0: u16,
    /// The address asked for, in network order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// The calling task's cgroup (v2) id; absent before layout 4.
    pub cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<PortFailureEvent>() == 72);

/// The last connect()/bind() entered on a CPU: which task, its sockaddr pointer and length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallArgs {
    pub pid_tgid: u64,
    pub sockaddr: u64,
    pub addrlen: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CallArgs>() == 24);
