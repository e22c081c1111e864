//! Reads from `struct sock` at offsets resolved from the running kernel's BTF.
//!
//! The programs are BTF tracepoints: `sk` is a BTF-typed pointer, so a field is read with a
//! plain load (the verifier checks it against the kernel's `struct sock`, and the offsets are
//! constants to it: they live in the frozen, read-only `.rodata`). Only `inet_sport`, which
//! lies past `struct sock` in `struct inet_sock`, needs `bpf_probe_read_kernel`.
use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock};
use tcptrace_common::{Tuple, Vitals};

use crate::config;

pub const AF_INET6: u16 = tcptrace_common::family::INET6;
pub const IPPROTO_TCP: u16 = 6;

/// A direct load from a BTF-typed kernel pointer.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: `base` is a BTF-typed pointer handed to a tp_btf program; the verifier checks
    // the access against the type and turns it into a fault-tolerant load.
    Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) })
}

/// A read the verifier cannot type (outside the pointer's BTF type).
#[inline(always)]
pub fn probe_read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

#[inline(always)]
pub fn protocol(sk: *const u8) -> Result<u16, i32> {
    read::<u16>(sk, config!(offsets.protocol))
}

#[inline(always)]
pub fn state(sk: *const u8) -> Result<u8, i32> {
    read::<u8>(sk, config!(offsets.state))
}

/// The bound local port (host order).
#[inline(always)]
pub fn local_port(sk: *const u8) -> Result<u16, i32> {
    read::<u16>(sk, config!(offsets.num))
}

/// The inode number of the socket's network namespace.
#[inline(always)]
pub fn netns(sk: *const u8) -> Result<u32, i32> {
    let net = read::<u64>(sk, config!(offsets.net))? as usize as *const u8;
    read::<u32>(net, config!(offsets.net_inum))
}

/// The inode number of a socket's network namespace, read with `R` (`sock_common` starts
/// full and timewait sockets alike).
#[inline(always)]
pub fn netns_with<R: Reader>(sk: *const u8) -> Result<u32, i32> {
    let net = R::read::<u64>(sk, config!(offsets.net))? as usize as *const u8;
    probe_read::<u32>(net, config!(offsets.net_inum))
}

/// The socket's cgroup (v2) id: `sk_cgrp_data.cgroup->kn->id`, set when the socket was
/// created (an accepted child's is its listener's), so it is right in softirq too. Direct
/// loads through BTF-typed pointers, without branches: a null pointer on the way reads as 0
/// (the verifier turns these loads into fault-tolerant ones). 0: unknown (or no such fields
/// on this kernel).
#[inline(always)]
pub fn cgroup_id(sk: *const u8) -> u64 {
    let at = config!(offsets.sk_cgroup);
    if at == 0 {
        return 0;
    }
    let cgroup = read::<u64>(sk, at).unwrap_or(0) as usize as *const u8;
    let kn = read::<u64>(cgroup, config!(offsets.cgroup_kn)).unwrap_or(0) as usize as *const u8;
    read::<u64>(kn, config!(offsets.kernfs_id)).unwrap_or(0)
}

/// How a field is read: a direct load (BTF-typed pointer) or `bpf_probe_read_kernel`.
pub trait Reader {
    fn read<T>(base: *const u8, offset: u32) -> Result<T, i32>;
}

/// Direct loads through the tracepoint's BTF-typed `struct sock *`.
pub struct Typed;
/// `bpf_probe_read_kernel`, for a socket reached by pointer arithmetic (from a timer).
pub struct Untyped;

impl Reader for Typed {
    #[inline(always)]
    fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
        read(base, offset)
    }
}

impl Reader for Untyped {
    #[inline(always)]
    fn read<T>(base: *const u8, offset: u32) -> Result<T, i32> {
        probe_read(base, offset)
    }
}

/// The socket's addresses and ports. `sock_common` starts both `struct sock` and
/// `inet_timewait_sock`; the source port lies past it (`inet_sport` / `tw_sport`): always probed.
#[inline(always)]
pub fn tuple_with<R: Reader>(sk: *const u8, sport_offset: u32) -> Result<Tuple, i32> {
    let sport = u16::from_be(probe_read::<u16>(sk, sport_offset)?);
    common_tuple::<R>(sk, sport)
}

/// The addresses and destination port `sock_common` holds (it starts a `struct sock`, an
/// `inet_timewait_sock` and a `request_sock` alike), with the local port `sport`.
#[inline(always)]
pub fn common_tuple<R: Reader>(sk: *const u8, sport: u16) -> Result<Tuple, i32> {
    let family = R::read::<u16>(sk, config!(offsets.family))?;
    let mut tuple = Tuple {
        family,
        sport,
        dport: u16::from_be(R::read::<u16>(sk, config!(offsets.dport))?),
        ..Tuple::default()
    };
    if family == AF_INET6 {
        tuple.saddr = R::read::<[u8; 16]>(sk, config!(offsets.v6_saddr))?;
        tuple.daddr = R::read::<[u8; 16]>(sk, config!(offsets.v6_daddr))?;
    } else {
        tuple.saddr[..4].copy_from_slice(&R::read::<[u8; 4]>(sk, config!(offsets.saddr))?);
        tuple.daddr[..4].copy_from_slice(&R::read::<[u8; 4]>(sk, config!(offsets.daddr))?);
    }
    Ok(tuple)
}

/// The tuple of a tracepoint's socket.
#[inline(always)]
pub fn tuple(sk: *const u8) -> Result<Tuple, i32> {
    tuple_with::<Typed>(sk, config!(offsets.sport))
}

/// Whether SO_KEEPALIVE is on.
#[inline(always)]
pub fn keepalive_on(sk: *const u8) -> Result<bool, i32> {
    let flags = read::<u64>(sk, config!(offsets.sk_flags))?;
    Ok((flags >> (config!(offsets.keepopen_bit) & 63)) & 1 == 1)
}

/// What the socket carries when it reaches CLOSE: `(err, probes, keepalive on, user timeout)`.
#[inline(always)]
pub fn close_info(sk: *const u8) -> Result<(u8, u8, bool, bool), i32> {
    let err = read::<i32>(sk, config!(offsets.err))?;
    let keepalive = keepalive_on(sk)?;
    // inet_connection_sock lies past struct sock: not typed through `sk`.
    let probes = probe_read::<u8>(sk, config!(offsets.probes_out))?;
    let user_timeout = probe_read::<u32>(sk, config!(offsets.user_timeout))? != 0;
    Ok((err.clamp(0, 255) as u8, probes, keepalive, user_timeout))
}

/// The socket's keepalive settings and how long the peer has been silent.
#[inline(always)]
pub fn keepalive(sk: *const u8) -> Result<tcptrace_common::Keepalive, i32> {
    // tcp_sock lies past struct sock: not typed through `sk`.
    let rcv_tstamp = probe_read::<u32>(sk, config!(offsets.rcv_tstamp))?;
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_jiffies64() } as u32;
    Ok(tcptrace_common::Keepalive {
        idle_j: probe_read::<u32>(sk, config!(offsets.keepalive_time))?,
        intvl_j: probe_read::<u32>(sk, config!(offsets.keepalive_intvl))?,
        probes: probe_read::<u8>(sk, config!(offsets.keepalive_probes))?,
        _pad: [0; 3],
        silent_j: now.wrapping_sub(rcv_tstamp),
    })
}

/// The tuple of a socket reached without BTF typing (from a timer).
#[inline(always)]
pub fn probe_tuple(sk: *const u8) -> Result<Tuple, i32> {
    tuple_with::<Untyped>(sk, config!(offsets.sport))
}

/// The socket's bytes, segments and RTT from `tcp_sock`, through the typed pointer
/// `bpf_skc_to_tcp_sock` hands back (direct loads, no helper call per field); `None` for a
/// socket that is not a TCP one.
#[inline(always)]
pub fn vitals(sk: *const u8) -> Option<Vitals> {
    // SAFETY: the helper checks the socket's type and returns null unless it is a tcp_sock.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) } as *const u8;
    if tp.is_null() {
        return None;
    }
    Some(Vitals {
        bytes_acked: read::<u64>(tp, config!(tcp.bytes_acked)).unwrap_or(0),
        bytes_received: read::<u64>(tp, config!(tcp.bytes_received)).unwrap_or(0),
        segs_in: read::<u32>(tp, config!(tcp.segs_in)).unwrap_or(0),
        segs_out: read::<u32>(tp, config!(tcp.segs_out)).unwrap_or(0),
        srtt_us: read::<u32>(tp, config!(tcp.srtt_us)).unwrap_or(0),
        mdev_us: read::<u32>(tp, config!(tcp.mdev_us)).unwrap_or(0),
        min_rtt_us: read::<u32>(tp, config!(tcp.rtt_min)).unwrap_or(u32::MAX),
        total_retrans: read::<u32>(tp, config!(tcp.total_retrans)).unwrap_or(0),
    })
}
