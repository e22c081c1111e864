//! load → attach: preflight checks, BTF offsets, the eBPF object, raw tracepoints; and the
//! kernel-side state userspace reads back (counters, open flows).
use std::{io, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::{tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId, BtfTracePoint},
    Ebpf, EbpfLoader,
};
use tcptrace_common::{
    names::{map, CONFIG_GLOBAL},
    FlowState, ListenerKey, Owner, ProgramConfig, COMM_LEN,
};

use crate::{
    kernel::btf::KernelBtf,
    kernel::load_error::explain,
    kernel::plan::{KernelPlan, KernelVariants},
};

pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

mod counters;

use crate::kernel::reasons::{drop_ignore, keepalive_reset_reason};

/// A loaded and attached tracer.
pub struct Tracer {
    ebpf: Ebpf,
    links: Vec<(&'static str, BtfTracePointLinkId)>,
    /// The syscall hooks' links (classic tracepoints), where they were attached.
    syscall_links: Vec<(&'static str, TracePointLinkId)>,
    /// Every program loaded (kept after detaching, to read their counters).
    programs: Vec<&'static str>,
    /// The ring buffer, taken out of `ebpf` so the pipeline can own it.
    pub events: Option<RingBuf<MapData>>,
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
}

/// Records a CPU submits between two wakeups of the reader.
fn wakeup_every(ring_size: u32) -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    (u64::from(ring_size) / 4 / 200 / cpus).max(1)
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

/// Owners of the listening sockets that predate tracing (tcptrace's namespace), so that the
/// connections they accept get their process (and pass a `--pid` filter). Best effort.
fn seed_listeners(ebpf: &mut Ebpf) {
    let listening = match crate::host::sockdiag::dump(
        netlink_packet_sock_diag::inet::StateFlags::LISTEN,
        false,
    ) {
        Ok(sockets) => sockets,
        Err(e) => {
            log::warn!(
                "listening sockets not read (their connections' owner stays unknown): {e:#}"
            );
            return;
        }
    };
    let (Some(netns), Some(map)) = (
        crate::host::netns::own_netns(),
        ebpf.map_mut(map::LISTENERS),
    ) else {
        return;
    };
    let Ok(mut listeners) = HashMap::<&mut MapData, ListenerKey, Owner>::try_from(map) else {
        return;
    };
    let owners = crate::host::socket_owners::socket_owners();
    for socket in listening {
        let Some(process) = owners.get(&socket.inode) else {
            continue;
        };
        let mut comm = [0u8; COMM_LEN];
        let name = process.comm.as_bytes();
        let len = name.len().min(COMM_LEN - 1);
        comm[..len].copy_from_slice(&name[..len]);
        let key = ListenerKey {
            netns,
            port: socket.addrs.local.port,
            _pad: 0,
        };
        let owner = Owner {
            pid: process.pid,
            comm,
            _pad: [0; 4],
            cgroup: socket.cgroup,
        };
        if let Err(e) = listeners.insert(key, owner, 0) {
            log::warn!("LISTENERS: {e}");
            return;
        }
    }
}

/// Timewait sockets the filters may have to remember at once: the host's TIME_WAIT ceiling
/// (`tcp_max_tw_buckets`), bounded.
fn time_wait_capacity() -> u32 {
    crate::host::facts::ipv4_sysctl("tcp_max_tw_buckets")
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(262_144)
        .clamp(1_024, 1 << 22)
}

/// The address of a kernel function, from /proc/kallsyms.
fn kernel_symbol(name: &str) -> Result<u64> {
    let syms = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let addr = syms
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = parts.next()?;
            let _kind = parts.next()?;
            (parts.next()? == name).then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .ok_or_else(|| anyhow!("{name} not found in /proc/kallsyms"))?;
    if addr == 0 {
        let restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
            .unwrap_or_default()
            .trim()
            .to_string();
        if restrict == "2" {
            bail!(
                "/proc/kallsyms hides every address (kernel.kptr_restrict = 2, even from root): \
                 set it to 1 (sysctl -w kernel.kptr_restrict=1), or use --no-time-wait and a \
                 mode without alerts"
            );
        }
        bail!(
            "/proc/kallsyms hides addresses (kernel.kptr_restrict = {restrict}): run as root or \
             with CAP_SYSLOG"
        );
    }
    Ok(addr)
}

/// Capability bits from `include/uapi/linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| anyhow!("no CapEff in /proc/self/status"))?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff")
}

/// Fails early, with the fix, when the process cannot load BPF programs.
fn check_privileges() -> Result<()> {
    let caps = effective_caps()?;
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "permission denied: tcptrace needs root, or the CAP_BPF and CAP_PERFMON capabilities \
         (run it as root, or: setcap cap_bpf,cap_perfmon+ep $(which tcptrace))"
    )
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct passed by pointer; failure is harmless (newer kernels use
    // memcg accounting) and is logged.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed: {}",
            io::Error::last_os_error()
        );
    }
}

impl Tracer {
    pub fn load(plan: &KernelPlan) -> Result<Tracer> {
        crate::kernel::load_error::check_release(&crate::kernel::load_error::running_release())?;
        check_privileges()?;
        raise_memlock();
        let btf = KernelBtf::open(Path::new(&plan.btf))?;
        if btf.tracepoint_args("inet_sock_set_state")? != Some(3) {
            bail!(
                "tracepoint sock:inet_sock_set_state (sk, oldstate, newstate) not found in this \
                 kernel's BTF; tcptrace needs Linux 4.16 or newer"
            );
        }
        let retransmit_err = match btf.tracepoint_args("tcp_retransmit_skb")? {
            Some(2) => false,
            Some(3) => true,
            Some(n) => {
                bail!("tracepoint tcp:tcp_retransmit_skb has {n} arguments; expected 2 or 3")
            }
            None => bail!("tracepoint tcp:tcp_retransmit_skb not found in this kernel's BTF"),
        };
        let send_reset_reason = match btf.tracepoint_args("tcp_send_reset")? {
            Some(3) => true,
            Some(2) => false,
            Some(n) => bail!("tracepoint tcp:tcp_send_reset has {n} arguments; expected 2 or 3"),
            None => bail!("tracepoint tcp:tcp_send_reset not found in this kernel's BTF"),
        };
        // kfree_skb(skb, location, reason[, rx_sk]): a reason since Linux 5.17.
        let drop_reason = btf.tracepoint_args("kfree_skb")?.is_some_and(|n| n >= 3);
        if plan.drops && !drop_reason {
            eprintln!("tcptrace: warning: dropped packets are not traced: skb:kfree_skb has no reason on this kernel");
        }
        if btf.tracepoint_args("tcp_receive_reset")?.is_none() {
            bail!("tracepoint tcp:tcp_receive_reset not found in this kernel's BTF");
        }
        let reset_reasons = btf.enum_members("sk_rst_reason")?;
        let drop_reasons = btf.enum_members("skb_drop_reason")?;
        if !plan.filter.cgroups.is_empty() {
            btf.check_cgroups()?;
        }
        let keepalive_timer_fn = if plan.keepalive_probes {
            kernel_symbol("tcp_keepalive_timer")?
        } else {
            0
        };
        let tw_timer_fn = if plan.time_wait {
            kernel_symbol("tw_timer_handler")?
        } else {
            0
        };
        let (task_nsproxy, nsproxy_net_ns) = match plan.port_failures {
            true => btf
                .task_netns_offsets()
                .context("resolving the task's network namespace from BTF")?,
            false => (0, 0),
        };
        let program_config = ProgramConfig {
            offsets: btf
                .sock_offsets()
                .context("resolving struct sock offsets from BTF")?,
            // Wake the reader about once a quarter of the ring is pending (records are
            // 64-200 bytes; each CPU counts its own); otherwise it polls.
            wakeup_every: wakeup_every(plan.ring_size),
            emit_transitions: u8::from(plan.emit_transitions),
            emit_retransmits: u8::from(plan.emit_retransmits),
            emit_probes: u8::from(plan.keepalive_probes),
            flow_memory: plan.flow_memory.raw(),
            emit_flow_ends: plan.flow_ends,
            keepalive_reset_reason: keepalive_reset_reason(&reset_reasons),
            _pad: [0; 2],
            _pad0: 0,
            keepalive_timer_fn,
            tw_timer_fn,
            filter: plan.filter.program_config(),
            task_nsproxy,
            nsproxy_net_ns,
            tcp: btf
                .tcp_sock_offsets()
                .context("resolving struct tcp_sock offsets from BTF")?,
            skb: btf
                .skb_offsets()
                .context("resolving struct sk_buff offsets from BTF")?,
            drop_ignore: drop_ignore(&drop_reasons, plan.all_drop_reasons),
            drop_records_per_s: plan.drop_records_per_s,
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(CONFIG_GLOBAL, &program_config, true);
        for (name, entries) in plan.map_sizes(time_wait_capacity()) {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| explain(e.into(), "loading the eBPF object"))?;
        crate::kernel::filter::install(&plan.filter, &mut ebpf)?;
        seed_listeners(&mut ebpf);

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::warn!("kernel-side log unavailable: {e}");
                None
            }
        };

        let kernel_btf = aya::Btf::parse_file(&plan.btf, aya::Endianness::default())
            .with_context(|| format!("cannot parse BTF from {}", plan.btf.display()))?;
        let mut links = Vec::new();
        let mut programs = Vec::new();
        let mut hooks = Vec::new();
        let variants = KernelVariants {
            retransmit_err,
            send_reset_reason,
            drop_reason,
        };
        for (program, tracepoint) in plan.programs(variants) {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {program} is not a BTF tracepoint"))?;
            prog.load(tracepoint, &kernel_btf)
                .map_err(|e| explain(e.into(), &format!("loading program {program}")))?;
            let link = prog.attach().map_err(|e| {
                explain(e.into(), &format!("attaching BTF tracepoint {tracepoint}"))
            })?;
            links.push((program, link));
            programs.push(program);
            let hook = format!("tp_btf/{tracepoint}");
            if !hooks.contains(&hook) {
                hooks.push(hook);
            }
        }

        // connect()/bind() failing for want of a port: classic tracepoints (tracefs). Without
        // them the rest traces on; the start-up line says what is missing.
        let mut syscall_links = Vec::new();
        if plan.port_failures {
            match crate::kernel::syscalls::attach(&mut ebpf) {
                Ok(attached) => {
                    programs.extend(attached.iter().map(|(name, _)| *name));
                    hooks.push("syscalls:sys_{enter,exit}_{connect,bind}".to_string());
                    syscall_links = attached;
                }
                Err(e) => eprintln!(
                    "tcptrace: warning: connect()/bind() failures (EADDRNOTAVAIL, EADDRINUSE) \
                     are not traced: {e:#}"
                ),
            }
        }

        let events = RingBuf::try_from(
            ebpf.take_map(map::EVENTS)
                .ok_or_else(|| anyhow!("map {} missing from the eBPF object", map::EVENTS))?,
        )
        .with_context(|| format!("map {} is not a ring buffer", map::EVENTS))?;

        Ok(Tracer {
            ebpf,
            links,
            syscall_links,
            programs,
            events: Some(events),
            logger,
            hooks,
            flow_table: plan.flow_memory.table(),
            reset_reasons,
            drop_reasons,
        })
    }

    /// Detaches every program: nothing new reaches the maps after this.
    pub fn detach(&mut self) -> Result<()> {
        for (program, link) in self.links.drain(..) {
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("program {program} missing"))?
                .try_into()?;
            prog.detach(link)
                .with_context(|| format!("detaching program {program}"))?;
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
