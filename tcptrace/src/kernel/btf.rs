//! Offsets of kernel struct fields and tracepoint prototypes, read from the running kernel's
//! BTF at start-up: nothing is hard-coded for one kernel.
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};
use tcptrace_common::{SkbOffsets, SockOffsets, TcpSockOffsets};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

/// Where a field lives, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: usize,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            if path != Path::new(VMLINUX_BTF) {
                bail!("--btf {}: no such file", path.display());
            }
            bail!(
                "{} not found: this kernel has no BTF (it needs CONFIG_DEBUG_INFO_BTF=y)",
                path.display()
            );
        }
        let btf = Btf::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot parse BTF from {}", path.display()))?;
        Ok(KernelBtf { btf })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("struct {name} not found in the kernel's BTF"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("struct {name} not found in the kernel's BTF"))
    }

    /// Follows typedefs and qualifiers down to the type that has a size.
    fn concrete(&self, mut ty: Type) -> Result<Type> {
        for _ in 0..16 {
            ty = match ty {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let inner = ty.as_btf_type().ok_or_else(|| anyhow!("bad BTF chain"))?;
                    self.btf
                        .resolve_chained_type(inner)
                        .map_err(|e| anyhow!("{e}"))?
                }
                other => return Ok(other),
            };
        }
        bail!("BTF type chain too long")
    }

    fn size_of(&self, ty: Type) -> Result<usize> {
        Ok(match self.concrete(ty)? {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => 8,
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Enum(e) => e.size(),
            Type::Enum64(e) => e.size(),
            Type::Array(a) => {
                let elem = self
                    .btf
                    .resolve_chained_type(&a)
                    .map_err(|e| anyhow!("{e}"))?;
                a.len() * self.size_of(elem)?
            }
            other => bail!("cannot size a BTF {}", other.name()),
        })
    }

    /// Finds `member` in `st`, looking through anonymous structs and unions.
    fn find_member(&self, st: &btf_rs::Struct, member: &str) -> Result<Option<(u32, Type)>> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if m.bitfield_size().unwrap_or(0) != 0 && name == member {
                bail!("field {member} is a bitfield on this kernel; tcptrace cannot read it");
            }
            let ty = self
                .btf
                .resolve_chained_type(m)
                .map_err(|e| anyhow!("{e}"))?;
            if name == member {
                return Ok(Some((m.bit_offset() / 8, ty)));
            }
            if name.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.concrete(ty)? {
                    if let Some((off, ty)) = self.find_member(&inner, member)? {
                        return Ok(Some((m.bit_offset() / 8 + off, ty)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The offset and size of `path` (dot-separated members) inside `struct root`.
    pub fn field(&self, root: &str, path: &str) -> Result<Field> {
        let mut st = self.named_struct(root)?;
        let mut offset = 0u32;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, ty) = self
                .find_member(&st, part)?
                .ok_or_else(|| anyhow!("field {root}.{path} not found in the kernel's BTF"))?;
            offset += off;
            if i + 1 == parts.len() {
                return Ok(Field {
                    offset,
                    size: self.size_of(ty)?,
                });
            }
            st = match self.concrete(ty)? {
                Type::Struct(s) | Type::Union(s) => s,
                _ => bail!("{root}.{path}: {part} is not a struct"),
            };
        }
        bail!("empty field path")
    }

    fn sized_field(&self, root: &str, path: &str, size: usize) -> Result<u32> {
        let field = self.field(root, path)?;
        if field.size != size {
            bail!(
                "{root}.{path} is {} bytes on this kernel, tcptrace expects {size}",
                field.size
            );
        }
        Ok(field.offset)
    }

    /// The `struct sock` offsets the kernel programs need.
    pub fn sock_offsets(&self) -> Result<SockOffsets> {
        let common = |f: &str, size| self.sized_field("sock", &format!("__sk_common.{f}"), size);
        let inet_sk = self.field("inet_sock", "sk")?;
        if inet_sk.offset != 0 {
            bail!("inet_sock.sk is not at offset 0 on this kernel");
        }
        // The timewait socket's address fields are read at sock_common's offsets.
        if self.field("inet_timewait_sock", "__tw_common")?.offset != 0
            || self.field("sock", "__sk_common")?.offset != 0
        {
            bail!("sock_common does not start sock and inet_timewait_sock on this kernel");
        }
        Ok(SockOffsets {
            family: common("skc_family", 2)?,
            protocol: self.sized_field("sock", "sk_protocol", 2)?,
            state: common("skc_state", 1)?,
            dport: common("skc_dport", 2)?,
            sport: self.sized_field("inet_sock", "inet_sport", 2)?,
            num: common("skc_num", 2)?,
            daddr: common("skc_daddr", 4)?,
            saddr: common("skc_rcv_saddr", 4)?,
            v6_daddr: common("skc_v6_daddr", 16)?,
            v6_saddr: common("skc_v6_rcv_saddr", 16)?,
            net: self.sized_field("sock", "__sk_common.skc_net.net", 8)?,
            net_inum: self.sized_field("net", "ns.inum", 4)?,
            err: self.sized_field("sock", "sk_err", 4)?,
            sk_flags: common("skc_flags", 8)?,
            keepopen_bit: self
                .enum_value("sock_flags", "SOCK_KEEPOPEN")?
                .ok_or_else(|| anyhow!("SOCK_KEEPOPEN not found in the kernel's BTF"))?,
            probes_out: self.sized_field("inet_connection_sock", "icsk_probes_out", 1)?,
            user_timeout: self.sized_field("inet_connection_sock", "icsk_user_timeout", 4)?,
            keepalive_time: self.sized_field("tcp_sock", "keepalive_time", 4)?,
            keepalive_intvl: self.sized_field("tcp_sock", "keepalive_intvl", 4)?,
            keepalive_probes: self.sized_field("tcp_sock", "keepalive_probes", 1)?,
            rcv_tstamp: self.sized_field("tcp_sock", "rcv_tstamp", 4)?,
            sk_timer: self.field("sock", "sk_timer")?.offset,
            timer_function: self.sized_field("timer_list", "function", 8)?,
            tw_timer: self.field("inet_timewait_sock", "tw_timer")?.offset,
            tw_sport: self.sized_field("inet_timewait_sock", "tw_sport", 2)?,
            prot: common("skc_prot", 8)?,
            ..self.cgroup_offsets().unwrap_or_default()
        })
    }

    /// The `tcp_sock` fields of a flow's vitals at CLOSE.
    pub fn tcp_sock_offsets(&self) -> Result<TcpSockOffsets> {
        let tcp = |f: &str, size| self.sized_field("tcp_sock", f, size);
        // `struct minmax { struct minmax_sample { u32 t; u32 v; } s[3]; }`: the current
        // minimum is s[0].v.
        let rtt_min = self.sized_field("tcp_sock", "rtt_min", 24)?
            + self.sized_field("minmax_sample", "v", 4)?;
        Ok(TcpSockOffsets {
            bytes_acked: tcp("bytes_acked", 8)?,
            bytes_received: tcp("bytes_received", 8)?,
            segs_in: tcp("segs_in", 4)?,
            segs_out: tcp("segs_out", 4)?,
            srtt_us: tcp("srtt_us", 4)?,
            mdev_us: tcp("mdev_us", 4)?,
            rtt_min,
            total_retrans: tcp("total_retrans", 4)?,
        })
    }

    /// The `sk_buff` fields the drop hook reads.
    pub fn skb_offsets(&self) -> Result<SkbOffsets> {
        Ok(SkbOffsets {
            sk: self.sized_field("sk_buff", "sk", 8)?,
            head: self.sized_field("sk_buff", "head", 8)?,
            network_header: self.sized_field("sk_buff", "network_header", 2)?,
            protocol: self.sized_field("sk_buff", "protocol", 2)?,
            dev: self.sized_field("sk_buff", "dev", 8)?,
            dev_net: self.sized_field("net_device", "nd_net.net", 8)?,
            ..self.conntrack_offsets()?
        })
    }

    /// Where a dropped packet's conntrack entry and its tuples lie; all 0 (not read) on a
    /// kernel without conntrack (no `struct nf_conn` in its BTF).
    fn conntrack_offsets(&self) -> Result<SkbOffsets> {
        if self.named_struct("nf_conn").is_err() {
            return Ok(SkbOffsets::default());
        }
        let hash_size = self.named_struct("nf_conntrack_tuple_hash")?.size();
        let tuple = |path: &str, size| self.sized_field("nf_conntrack_tuple", path, size);
        Ok(SkbOffsets {
            nfct: self.sized_field("sk_buff", "_nfct", 8)?,
            ct_tuplehash: self.sized_field("nf_conn", "tuplehash", 2 * hash_size)?,
            ct_hash_size: u32::try_from(hash_size).context("nf_conntrack_tuple_hash size")?,
            ct_hash_tuple: self.sized_field("nf_conntrack_tuple_hash", "tuple", 40)?,
            ct_status: self.sized_field("nf_conn", "status", 8)?,
            ct_src_addr: tuple("src.u3", 16)?,
            ct_src_port: tuple("src.u.all", 2)?,
            ct_dst_addr: tuple("dst.u3", 16)?,
            ct_dst_port: tuple("dst.u.all", 2)?,
            ..SkbOffsets::default()
        })
    }

    /// `task_struct.nsproxy` and `nsproxy.net_ns`: a task's network namespace.
    pub fn task_netns_offsets(&self) -> Result<(u32, u32)> {
        Ok((
            self.sized_field("task_struct", "nsproxy", 8)?,
            self.sized_field("nsproxy", "net_ns", 8)?,
        ))
    }

    /// The way from a socket to its cgroup (v2) id and up to the root; zero when the kernel
    /// has no socket cgroup data (then `--cgroup` is refused, see [`Self::check_cgroups`]).
    fn cgroup_offsets(&self) -> Result<SockOffsets> {
        Ok(SockOffsets {
            sk_cgroup: self.sized_field("sock", "sk_cgrp_data.cgroup", 8)?,
            cgroup_kn: self.sized_field("cgroup", "kn", 8)?,
            kernfs_id: self.sized_field("kernfs_node", "id", 8)?,
            cgroup_parent: self.sized_field("cgroup", "self.parent", 8)?,
            css_cgroup: self.sized_field("cgroup_subsys_state", "cgroup", 8)?,
            ..SockOffsets::default()
        })
    }

    /// Fails when sockets cannot be filtered by cgroup on this kernel.
    pub fn check_cgroups(&self) -> Result<()> {
        self.cgroup_offsets()
            .map(|_| ())
            .context("--cgroup needs socket cgroup data (CONFIG_SOCK_CGROUP_DATA) in the kernel")
    }

    /// The members of `enum name` as (value, name); empty when the kernel has no such enum.
    pub fn enum_members(&self, name: &str) -> Result<Vec<(u32, String)>> {
        let Ok(types) = self.btf.resolve_types_by_name(name) else {
            return Ok(Vec::new());
        };
        let Some(Type::Enum(e)) = types.into_iter().find(|t| matches!(t, Type::Enum(_))) else {
            return Ok(Vec::new());
        };
        e.members
            .iter()
            .map(|m| {
                let name = self.btf.resolve_name(m).map_err(|e| anyhow!("{e}"))?;
                Ok((m.val(), name))
            })
            .collect()
    }

    /// The value of `member` in `enum name`.
    pub fn enum_value(&self, name: &str, member: &str) -> Result<Option<u32>> {
        Ok(self
            .enum_members(name)?
            .into_iter()
            .find(|(_, n)| n == member)
            .map(|(v, _)| v))
    }

    /// The number of arguments of a tracepoint (without the leading `void *`), from its
    /// `btf_trace_<name>` typedef; `None` when the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Result<Option<usize>> {
        let Ok(types) = self.btf.resolve_types_by_name(&format!("btf_trace_{name}")) else {
            return Ok(None);
        };
        let Some(typedef) = types.into_iter().find(|t| matches!(t, Type::Typedef(_))) else {
            return Ok(None);
        };
        let inner = typedef
            .as_btf_type()
            .ok_or_else(|| anyhow!("bad BTF typedef"))?;
        let ptr = self
            .btf
            .resolve_chained_type(inner)
            .map_err(|e| anyhow!("{e}"))?;
        let Type::Ptr(ptr) = ptr else {
            bail!("btf_trace_{name} is not a function pointer");
        };
        match self
            .btf
            .resolve_chained_type(&ptr)
            .map_err(|e| anyhow!("{e}"))?
        {
            Type::FuncProto(proto) => Ok(Some(proto.parameters.len().saturating_sub(1))),
            _ => bail!("btf_trace_{name} is not a function pointer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelBtf {
        KernelBtf::open(Path::new(VMLINUX_BTF)).expect("this machine has kernel BTF")
    }

    #[test]
    fn sock_offsets_resolve_and_are_distinct() {
        let off = kernel().sock_offsets().expect("offsets resolve");
        // sock_common starts the struct: daddr and rcv_saddr are its first fields.
        assert_eq!(off.daddr, 0);
        assert_eq!(off.saddr, 4);
        assert_eq!(
            off.dport + 2,
            off.num,
            "skc_dport and skc_num share skc_portpair"
        );
        assert!(
            off.protocol > off.v6_saddr,
            "sk_protocol lies past sock_common"
        );
        assert!(off.sport > off.protocol, "inet_sport lies past struct sock");
        assert!(
            off.sk_cgroup > off.protocol,
            "sk_cgrp_data lies past sock_common"
        );
        assert_ne!(off.kernfs_id, 0, "kernfs_node.id is not its first field");
        btf_check_cgroups_ok(&kernel());
    }

    fn btf_check_cgroups_ok(btf: &KernelBtf) {
        btf.check_cgroups()
            .expect("this kernel has socket cgroup data");
    }

    #[test]
    fn missing_things_are_named() {
        let btf = kernel();
        let err = btf
            .field("sock", "no_such_field")
            .expect_err("missing field");
        assert!(err.to_string().contains("sock.no_such_field"), "{err}");
        let err = btf
            .field("no_such_struct_xyz", "a")
            .expect_err("missing struct");
        assert!(err.to_string().contains("no_such_struct_xyz"), "{err}");
        let err = btf
            .sized_field("sock", "__sk_common.skc_family", 4)
            .expect_err("size");
        assert!(err.to_string().contains("2 bytes"), "{err}");
        assert!(KernelBtf::open(Path::new("/nonexistent/vmlinux")).is_err());
    }

    #[test]
    fn enums_are_read_by_name() {
        let btf = kernel();
        assert_eq!(
            btf.enum_value("sock_flags", "SOCK_KEEPOPEN")
                .expect("reads"),
            Some(3)
        );
        let reasons = btf.enum_members("sk_rst_reason").expect("reads");
        assert!(reasons
            .iter()
            .any(|(_, n)| n == "SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT"));
        assert!(btf
            .enum_members("no_such_enum_xyz")
            .expect("reads")
            .is_empty());
    }

    #[test]
    fn tracepoint_prototypes_are_read() {
        let btf = kernel();
        assert_eq!(
            btf.tracepoint_args("inet_sock_set_state").expect("reads"),
            Some(3)
        );
        let rtx = btf.tracepoint_args("tcp_retransmit_skb").expect("reads");
        assert!(matches!(rtx, Some(2 | 3)), "{rtx:?}");
        assert_eq!(
            btf.tracepoint_args("no_such_tracepoint").expect("reads"),
            None
        );
    }
}
