//! The kernel struct offsets the programs read with, resolved by userspace from BTF.

/// Offsets into kernel structs, resolved by userspace from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.__sk_common.skc_family` (u16).
    pub family: u32,
    /// `sock.sk_protocol` (u16).
    pub protocol: u32,
    /// `sock.__sk_common.skc_state` (u8).
    pub state: u32,
    /// `sock.__sk_common.skc_dport` (be16).
    pub dport: u32,
    /// `inet_sock.inet_sport` (be16).
    pub sport: u32,
    /// `sock.__sk_common.skc_num` (u16, host order; the bound local port).
    pub num: u32,
    /// `sock.__sk_common.skc_daddr` (be32).
    pub daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (be32).
    pub saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr` (16 bytes).
    pub v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub v6_saddr: u32,
    /// `sock.__sk_common.skc_net` (a `struct net *`).
    pub net: u32,
    /// `net.ns.inum` (u32).
    pub net_inum: u32,
    /// `sock.sk_err` (int).
    pub err: u32,
    /// `sock.__sk_common.skc_flags` (unsigned long).
    pub sk_flags: u32,
    /// The bit of `SOCK_KEEPOPEN` in `skc_flags` (`enum sock_flags`).
    pub keepopen_bit: u32,
    /// `inet_connection_sock.icsk_probes_out` (u8).
    pub probes_out: u32,
    /// `inet_connection_sock.icsk_user_timeout` (u32).
    pub user_timeout: u32,
    /// `tcp_sock.keepalive_time`, `keepalive_intvl` (u32), `keepalive_probes` (u8).
    pub keepalive_time: u32,
    pub keepalive_intvl: u32,
    pub keepalive_probes: u32,
    /// `tcp_sock.rcv_tstamp` (u32 jiffies).
    pub rcv_tstamp: u32,
    /// `sock.sk_timer` (the keepalive timer) and `timer_list.function`.
    pub sk_timer: u32,
    pub timer_function: u32,
    /// `inet_timewait_sock.tw_timer` and `tw_sport` (its `sock_common` starts it, like `sock`'s).
    pub tw_timer: u32,
    pub tw_sport: u32,
    /// `sock.sk_cgrp_data.cgroup` (a `struct cgroup *`); 0: not available on this kernel.
    pub sk_cgroup: u32,
    /// `cgroup.kn` (a `struct kernfs_node *`) and `kernfs_node.id` (u64, the cgroup id).
    pub cgroup_kn: u32,
    pub kernfs_id: u32,
    /// `cgroup.self.parent` (a `struct cgroup_subsys_state *`) and
    /// `cgroup_subsys_state.cgroup`: the way to the parent cgroup.
    pub cgroup_parent: u32,
    pub css_cgroup: u32,
    /// `sock_common.skc_prot` (a `struct proto *`; a timewait socket's is its socket's
    /// `sk_prot_creator`).
    pub prot: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 124);

/// `tcp_sock` fields read at CLOSE for a flow's vitals ([`crate::Vitals`]), resolved by
/// userspace from BTF and read through `bpf_skc_to_tcp_sock`'s typed pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSockOffsets {
    /// `tcp_sock.bytes_acked` and `bytes_received` (u64).
    pub bytes_acked: u32,
    pub bytes_received: u32,
    /// `tcp_sock.segs_in` and `segs_out` (u32).
    pub segs_in: u32,
    pub segs_out: u32,
    /// `tcp_sock.srtt_us` (u32, << 3) and `mdev_us` (u32, << 2).
    pub srtt_us: u32,
    pub mdev_us: u32,
    /// `tcp_sock.rtt_min.s[0].v` (u32 µs; ~0: no sample).
    pub rtt_min: u32,
    /// `tcp_sock.total_retrans` (u32).
    pub total_retrans: u32,
}
const _: () = assert!(core::mem::size_of::<TcpSockOffsets>() == 32);

/// `sk_buff` fields the drop hook reads, resolved by userspace from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbOffsets {
    /// `sk_buff.sk` (a `struct sock *`).
    pub sk: u32,
    /// `sk_buff.head` (a pointer).
    pub head: u32,
    /// `sk_buff.network_header` (u16, from `head`).
    pub network_header: u32,
    /// `sk_buff.protocol` (be16, the ethertype).
    pub protocol: u32,
    /// `sk_buff.dev` (a `struct net_device *`) and `net_device.nd_net.net`: the namespace
    /// of a packet with no socket.
    pub dev: u32,
    pub dev_net: u32,
    /// `sk_buff._nfct` (the conntrack entry, ctinfo in its low 3 bits); 0: the kernel has no
    /// conntrack, the entry is not read.
    pub nfct: u32,
    /// `nf_conn.tuplehash` (two `nf_conntrack_tuple_hash`, `hash_size` bytes apart) and
    /// `nf_conntrack_tuple_hash.tuple`.
    pub ct_tuplehash: u32,
    pub ct_hash_size: u32,
    pub ct_hash_tuple: u32,
    /// `nf_conn.status` (unsigned long; the low 32 bits are read).
    pub ct_status: u32,
    /// In `nf_conntrack_tuple`: `src.u3`, `src.u.all`, `dst.u3`, `dst.u.all`.
    pub ct_src_addr: u32,
    pub ct_src_port: u32,
    pub ct_dst_addr: u32,
    pub ct_dst_port: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SkbOffsets>() == 64);
