//! The filters written into the kernel: the port bitmap, the address tries and the workloads'
//! cgroups (after load, before attach; the cgroups again as pods come and go).
use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    Ebpf,
};
use ipnet::IpNet;
use tcptrace_common::{mapped_v4, names::map, AddrKey};

use crate::model::filter::FilterSpec;

/// Writes the port bitmap, the address tries and the workloads' cgroups (after load,
/// before attach).
pub fn install(spec: &FilterSpec, ebpf: &mut Ebpf) -> Result<()> {
    if !spec.workloads.is_empty() {
        sync_workload_cgroups(ebpf, &[], &spec.workloads.cgroups)?;
    }
    if spec.has_ports() {
        let mut ports: Array<&mut MapData, u8> = Array::try_from(
            ebpf.map_mut(map::PORT_FILTER)
                .ok_or_else(|| anyhow!("map PORT_FILTER missing from the eBPF object"))?,
        )
        .context("map PORT_FILTER is not an array")?;
        for (port, bits) in spec.port_bits() {
            ports
                .set(u32::from(port), bits, 0)
                .context("writing map PORT_FILTER")?;
        }
    }
    for (map, nets) in [
        (map::LOCAL_ADDRS, &spec.local_addrs),
        (map::REMOTE_ADDRS, &spec.remote_addrs),
    ] {
        if nets.is_empty() {
            continue;
        }
        let mut trie: LpmTrie<&mut MapData, AddrKey, u8> = LpmTrie::try_from(
            ebpf.map_mut(map)
                .ok_or_else(|| anyhow!("map {map} missing from the eBPF object"))?,
        )
        .with_context(|| format!("map {map} is not an LPM trie"))?;
        for net in nets {
            let (prefix, addr) = trie_key(net);
            trie.insert(&Key::new(prefix, AddrKey { addr }), 1, 0)
                .with_context(|| format!("writing map {map}"))?;
        }
    }
    Ok(())
}

/// Makes the kernel's `WORKLOAD_CGROUPS` hold `now` where it held `before`.
pub fn sync_workload_cgroups(ebpf: &mut Ebpf, before: &[u64], now: &[u64]) -> Result<()> {
    let mut cgroups: aya::maps::HashMap<&mut MapData, u64, u8> = aya::maps::HashMap::try_from(
        ebpf.map_mut(map::WORKLOAD_CGROUPS)
            .ok_or_else(|| anyhow!("map WORKLOAD_CGROUPS missing from the eBPF object"))?,
    )
    .context("map WORKLOAD_CGROUPS is not a hash")?;
    for gone in before.iter().filter(|id| !now.contains(id)) {
        // Already gone is as good.
        let _ = cgroups.remove(gone);
    }
    for id in now.iter().filter(|id| !before.contains(id)) {
        cgroups
            .insert(id, 1, 0)
            .context("writing map WORKLOAD_CGROUPS")?;
    }
    Ok(())
}

/// The trie key of a network: IPv4 as IPv4-mapped IPv6.
pub fn trie_key(net: &IpNet) -> (u32, [u8; 16]) {
    match net {
        IpNet::V4(v4) => (
            96 + u32::from(v4.prefix_len()),
            mapped_v4(v4.addr().octets()),
        ),
        IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.addr().octets()),
    }
}
