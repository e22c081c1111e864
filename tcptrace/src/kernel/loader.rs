//! load → attach: preflight checks, BTF offsets, the eBPF object, raw tracepoints; and the
//! kernel-side state userspace reads back (counters, open flows).
use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap, MapData},
    programs::{tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId, BtfTracePoint},
    Ebpf,
};
use tcptrace_common::{names::map, FlowState, ListenerKey, Owner};

pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));
/// The same programs writing into one ring for every CPU, with no code to choose one: for
/// one CPU, and for kernels whose verifier cannot take the choice (Linux 6.1).
pub(crate) static EBPF_OBJECT_ONE_RING: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace-one-ring"));

mod counters;
mod learn;
mod load;

/// A loaded and attached tracer.
pub struct Tracer {
    ebpf: Ebpf,
    links: Vec<(&'static str, BtfTracePointLinkId)>,
    /// The syscall hooks' links (classic tracepoints), where they were attached.
    syscall_links: Vec<(&'static str, TracePointLinkId)>,
    /// Every program loaded (kept after detaching, to read their counters).
    programs: Vec<&'static str>,
    /// The event rings, taken out of `ebpf` so the pipeline can own them.
    pub events: Option<crate::kernel::rings::EventRings>,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Human description of the hooks, for the start-up line.
    pub hooks: Vec<String>,
    /// The flow table in use (`FLOWS` or `FLOWS_PREALLOC`); `None`: flows live in
    /// socket-local storage (`FLOWS_SOCKET`).
    flow_table: Option<&'static str>,
    /// The kernel's reset reasons (enum sk_rst_reason), by value.
    pub reset_reasons: Vec<(u32, String)>,
    /// The kernel's drop reasons (enum skb_drop_reason), by value.
    pub drop_reasons: Vec<(u32, String)>,
    /// Bits of `tcptrace_common::learn`: handlers still being learnt (the learner attached).
    learning: u8,
}

/// Calls `f` with every entry of the flow table `table`; an entry removed while the table is
/// read (its flow ended and was reported) is skipped.
fn each_flow<T: std::borrow::Borrow<MapData>>(
    flows: &HashMap<T, u64, FlowState>,
    table: &str,
    mut f: impl FnMut(u64, &FlowState) -> Result<()>,
) -> Result<()> {
    for entry in flows.iter() {
        match entry {
            Ok((key, state)) => f(key, &state)?,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading map {table}")),
        }
    }
    Ok(())
}

impl Tracer {
    /// Detaches one BTF tracepoint program's link.
    fn detach_link(&mut self, program: &str, link: BtfTracePointLinkId) -> Result<()> {
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing"))?
            .try_into()?;
        prog.detach(link)
            .with_context(|| format!("detaching program {program}"))
    }

    /// Detaches every program: nothing new reaches the maps after this.
    pub fn detach(&mut self) -> Result<()> {
        self.learn_report();
        for (program, link) in std::mem::take(&mut self.links) {
            self.detach_link(program, link)?;
        }
        let syscall_links = std::mem::take(&mut self.syscall_links);
        crate::kernel::syscalls::detach(&mut self.ebpf, syscall_links)
    }

    /// Who listens on `port` in namespace `netns`, from the kernel's index of listeners
    /// Makes the kernel's filtered workload cgroups `now` (they were `before`).
    pub fn set_workload_cgroups(&mut self, before: &[u64], now: &[u64]) -> Result<()> {
        crate::kernel::filter::sync_workload_cgroups(&mut self.ebpf, before, now)
    }

    /// (filled at each listen(), and at start from sock_diag).
    pub fn listener_owner(
        &self,
        netns: u32,
        port: u16,
    ) -> Option<(crate::model::tcp::Process, u64)> {
        let map = self.ebpf.map(map::LISTENERS)?;
        let listeners = HashMap::<&MapData, ListenerKey, Owner>::try_from(map).ok()?;
        let key = ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        let owner = listeners.get(&key, 0).ok()?;
        Some((
            crate::model::tcp::Process {
                pid: owner.pid,
                comm: crate::model::tcp::comm_to_string(&owner.comm),
            },
            owner.cgroup,
        ))
    }

    /// Evicts the `n` least recently active flows from the kernel's table; returns the flows
    /// this call removed, as the kernel kept them (a flow the kernel closed meanwhile is not
    /// counted).
    /// Flows in socket-local storage are never evicted (nothing to fill; freed with the socket).
    pub fn evict(&mut self, n: usize) -> Result<Vec<FlowState>> {
        let Some(table) = self.flow_table else {
            return Ok(Vec::new());
        };
        let map = self
            .ebpf
            .map_mut(table)
            .ok_or_else(|| anyhow!("map {table} missing from the eBPF object"))?;
        let mut flows: HashMap<&mut MapData, u64, FlowState> =
            HashMap::try_from(map).with_context(|| format!("map {table} is not a hash map"))?;
        let mut activity = Vec::new();
        each_flow(&flows, table, |key, state| {
            activity.push((key, crate::kernel::evict::last_active(state)));
            Ok(())
        })?;
        let mut evicted = Vec::new();
        for key in crate::kernel::evict::victims(activity, n) {
            let Ok(state) = flows.get(&key, 0) else {
                continue;
            };
            if flows.remove(&key).is_ok() {
                evicted.push(state);
            }
        }
        Ok(evicted)
    }

    /// Flows the kernel still tracks (open when tracing stopped): the entries of its table, or,
    /// for flows in socket-local storage (which userspace cannot list without a BPF iterator,
    /// a program type some kernels refuse), the storage the kernel created and did not delete.
    pub fn open_flow_count(&self, kernel: &crate::model::counters::KernelCounters) -> Result<u64> {
        use tcptrace_common::stat;
        let Some(table) = self.flow_table else {
            return Ok(kernel
                .stat(stat::FLOWS_INSERTED)
                .saturating_sub(kernel.stat(stat::FLOWS_REMOVED)));
        };
        let map = self
            .ebpf
            .map(table)
            .ok_or_else(|| anyhow!("map {table} missing from the eBPF object"))?;
        let flows: HashMap<&MapData, u64, FlowState> =
            HashMap::try_from(map).with_context(|| format!("map {table} is not a hash map"))?;
        let mut open = 0;
        each_flow(&flows, table, |_, _| {
            open += 1;
            Ok(())
        })?;
        Ok(open)
    }
}
