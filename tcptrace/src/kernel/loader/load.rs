//! `Tracer::load`, step by step: what the running kernel has (its BTF: tracepoints, enums,
//! offsets; kallsyms), the programs' configuration from it, the object loaded with its maps
//! sized and filled, then every program attached.
use std::{io, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::{tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId, BtfTracePoint},
    Ebpf, EbpfLoader,
};
use tcptrace_common::{
    names::{map, program, CONFIG_GLOBAL},
    ListenerKey, Owner, ProgramConfig, COMM_LEN,
};

use super::{Tracer, EBPF_OBJECT, EBPF_OBJECT_ONE_RING};
use crate::kernel::{
    btf::KernelBtf,
    load_error::{check_release, explain, running_release},
    plan::{KernelPlan, KernelVariants},
    reasons::{drop_ignore, keepalive_reset_reason},
    rings::EventRings,
};

/// What the running kernel offers, read from its BTF before anything is loaded.
struct KernelFacts {
    btf: KernelBtf,
    variants: KernelVariants,
    reset_reasons: Vec<(u32, String)>,
    drop_reasons: Vec<(u32, String)>,
}

/// The programs attached, and the hooks they are on (for the start-up line).
struct Attached {
    links: Vec<(&'static str, BtfTracePointLinkId)>,
    syscall_links: Vec<(&'static str, TracePointLinkId)>,
    programs: Vec<&'static str>,
    hooks: Vec<String>,
}

impl Tracer {
    pub fn load(plan: &KernelPlan) -> Result<Tracer> {
        let release = running_release();
        check_release(&release)?;
        check_privileges()?;
        raise_memlock();
        let facts = KernelFacts::read(plan)?;
        let mut config = program_config(plan, &facts)?;
        let rings = event_rings(writing_cpus()?, &release);
        config.event_ring_mask = rings.next_power_of_two() as u64 - 1;
        let loaded = match load_and_attach(plan, &facts, &config, rings) {
            Err(e) if rings > 1 && e.is::<OverBudget>() => {
                eprintln!(
                    "tcptrace: note: this kernel's verifier cannot check the programs that \
                     write into a ring per CPU within its budget: every CPU writes into one ring"
                );
                config.event_ring_mask = 0;
                load_and_attach(plan, &facts, &config, 1)?
            }
            loaded => loaded?,
        };
        let Loaded {
            mut ebpf,
            logger,
            attached,
        } = loaded;
        let rings = map::EVENT_RINGS
            .into_iter()
            .map(|name| {
                let taken = ebpf
                    .take_map(name)
                    .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
                RingBuf::try_from(taken).with_context(|| format!("map {name} is not a ring buffer"))
            })
            .collect::<Result<Vec<_>>>()?;
        let events = EventRings::new(rings)?;
        Ok(Tracer {
            ebpf,
            links: attached.links,
            syscall_links: attached.syscall_links,
            programs: attached.programs,
            events: Some(events),
            logger,
            hooks: attached.hooks,
            flow_table: plan.flow_memory.table(),
            reset_reasons: facts.reset_reasons,
            drop_reasons: facts.drop_reasons,
            learning: config.learn_symbols,
        })
    }
}

impl KernelFacts {
    /// The tracepoints the programs need, with the arguments they have on this kernel, and
    /// the kernel's reason enums.
    fn read(plan: &KernelPlan) -> Result<KernelFacts> {
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
        if !plan.filter.cgroups.is_empty() {
            btf.check_cgroups()?;
        }
        Ok(KernelFacts {
            reset_reasons: btf.enum_members("sk_rst_reason")?,
            drop_reasons: btf.enum_members("skb_drop_reason")?,
            btf,
            variants: KernelVariants {
                retransmit_err,
                send_reset_reason,
                drop_reason,
            },
        })
    }
}

/// The programs' configuration: this kernel's offsets, symbols and reason numbers, and what
/// the plan asks them to send.
fn program_config(plan: &KernelPlan, facts: &KernelFacts) -> Result<ProgramConfig> {
    let btf = &facts.btf;
    // Keepalive probes need the real address (not learnt: see `learn::TIME_WAIT`).
    let keepalive_timer_fn = match plan.keepalive_probes {
        true => kernel_symbol("tcp_keepalive_timer")?.unwrap_or_else(|| {
            eprintln!(
                "tcptrace: warning: keepalive probes are not traced: /proc/kallsyms hides \
                 tcp_keepalive_timer's address (run as root or with CAP_SYSLOG; keepalive \
                 timeouts are still caught)"
            );
            0
        }),
        false => 0,
    };
    // TIME_WAIT's handler where /proc/kallsyms hides it (no CAP_SYSLOG) is learnt by the
    // programs instead (0 and the learn bit; always so in the tests that ask).
    let forced = std::env::var_os(super::learn::TEST_ENV).is_some();
    let tw_timer_fn = match plan.time_wait {
        true => kernel_symbol("tw_timer_handler")?.filter(|_| !forced),
        false => Some(0),
    };
    let learn_symbols = match tw_timer_fn {
        Some(_) => 0,
        None => tcptrace_common::learn::TIME_WAIT,
    };
    let tw_timer_fn = tw_timer_fn.unwrap_or(0);
    let (task_nsproxy, nsproxy_net_ns) = match plan.port_failures {
        true => btf
            .task_netns_offsets()
            .context("resolving the task's network namespace from BTF")?,
        false => (0, 0),
    };
    Ok(ProgramConfig {
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
        keepalive_reset_reason: keepalive_reset_reason(&facts.reset_reasons),
        learn_symbols,
        emit_connect_failures: u8::from(plan.port_failures),
        emit_time_wait: u8::from(plan.time_wait),
        _pad0: [0; 3],
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
        drop_ignore: drop_ignore(&facts.drop_reasons, plan.all_drop_reasons),
        drop_records_per_s: plan.drop_records_per_s,
        // Set by the loader once it knows the rings in use.
        event_ring_mask: 0,
    })
}

/// The eBPF object loaded with its configuration and its maps sized, the filters and the
/// listeners' owners written.
fn load_object(plan: &KernelPlan, config: &ProgramConfig, rings: usize) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.override_global(CONFIG_GLOBAL, config, true);
    for (name, entries) in plan.map_sizes(time_wait_capacity(), rings) {
        loader.map_max_entries(name, entries);
    }
    let mut ebpf = loader
        .load(if rings > 1 {
            EBPF_OBJECT
        } else {
            EBPF_OBJECT_ONE_RING
        })
        .map_err(|e| explain(e.into(), "loading the eBPF object"))?;
    crate::kernel::filter::install(&plan.filter, &mut ebpf)?;
    seed_listeners(&mut ebpf);
    Ok(ebpf)
}

/// Every program of the plan loaded against this kernel's BTF and attached; the syscall
/// hooks where the plan wants them and tracefs allows.
fn attach(
    ebpf: &mut Ebpf,
    plan: &KernelPlan,
    variants: KernelVariants,
    learn: bool,
) -> Result<Attached> {
    let kernel_btf = aya::Btf::parse_file(&plan.btf, aya::Endianness::default())
        .with_context(|| format!("cannot parse BTF from {}", plan.btf.display()))?;
    let mut attached = Attached {
        links: Vec::new(),
        syscall_links: Vec::new(),
        programs: Vec::new(),
        hooks: Vec::new(),
    };
    // The learner first: the timer hooks recognise timewait sockets by what it learns.
    let learner = learn.then_some((program::LEARN_TIMERS, "inet_sock_set_state"));
    for (program, tracepoint) in learner.into_iter().chain(plan.programs(variants)) {
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {program} is not a BTF tracepoint"))?;
        prog.load(tracepoint, &kernel_btf).map_err(|e| {
            let e: anyhow::Error = e.into();
            let over_budget = format!("{e:#}").contains("BPF program is too large");
            let explained = explain(e, &format!("loading program {program}"));
            match over_budget {
                true => anyhow::Error::new(OverBudget(format!("{explained:#}"))),
                false => explained,
            }
        })?;
        let link = prog
            .attach()
            .map_err(|e| explain(e.into(), &format!("attaching BTF tracepoint {tracepoint}")))?;
        attached.links.push((program, link));
        attached.programs.push(program);
        let hook = format!("tp_btf/{tracepoint}");
        if !attached.hooks.contains(&hook) {
            attached.hooks.push(hook);
        }
    }
    // bind() failing for want of a port: classic tracepoints (tracefs); connect()'s failures
    // come from the state tracepoint. Without them the rest traces on; the start-up line
    // says what is missing.
    if plan.port_failures {
        match crate::kernel::syscalls::attach(ebpf) {
            Ok(links) => {
                attached
                    .programs
                    .extend(links.iter().map(|(name, _)| *name));
                attached
                    .hooks
                    .push("syscalls:sys_{enter,exit}_bind".to_string());
                attached.syscall_links = links;
            }
            Err(e) => eprintln!(
                "tcptrace: warning: bind() failures (EADDRINUSE) are not traced (connect()'s \
                 are): {e:#}"
            ),
        }
    }
    Ok(attached)
}

/// Records a CPU submits between two wakeups of the reader.
fn wakeup_every(ring_size: u32) -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    (u64::from(ring_size) / 4 / 200 / cpus).max(1)
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

/// The object loaded with `config` and `rings` event rings in use, its log reader, and every
/// program of the plan attached.
fn load_and_attach(
    plan: &KernelPlan,
    facts: &KernelFacts,
    config: &ProgramConfig,
    rings: usize,
) -> Result<Loaded> {
    let mut ebpf = load_object(plan, config, rings)?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::warn!("kernel-side log unavailable: {e}");
            None
        }
    };
    let attached = attach(&mut ebpf, plan, facts.variants, config.learn_symbols != 0)?;
    Ok(Loaded {
        ebpf,
        logger,
        attached,
    })
}

/// The object loaded, its log reader, and its programs attached.
struct Loaded {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: Attached,
}

/// The event rings to use: one per CPU up to four (CPUs contend for a shared ring); one on
/// Linux 6.1, whose verifier runs out of its million-instruction budget on the state program
/// choosing a ring per record (measured: `cargo xtask old-kernels`; 6.12 and 7.3 check it).
/// With one ring the object without the choice is loaded; a kernel whose verifier runs out
/// on the other gets it on a second try.
fn event_rings(cpus: usize, release: &str) -> usize {
    match crate::kernel::load_error::release_version(release) {
        Some(version) if version < (6, 2) => 1,
        _ => cpus.clamp(1, map::EVENT_RINGS.len()),
    }
}

/// A program the verifier gave up on: its million-instruction budget ran out ("BPF program
/// is too large"); the explained message inside.
#[derive(Debug)]
struct OverBudget(String);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverBudget {}

/// The CPUs the programs can run on (the kernel's possible CPUs): each writes into ring
/// `cpu & event_ring_mask`.
fn writing_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))
}

/// Timewait sockets the filters may have to remember at once: the host's TIME_WAIT ceiling
/// (`tcp_max_tw_buckets`), bounded.
fn time_wait_capacity() -> u32 {
    crate::host::facts::ipv4_sysctl("tcp_max_tw_buckets")
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(262_144)
        .clamp(1_024, 1 << 22)
}

/// The address of a kernel function, from /proc/kallsyms; `None` where it hides addresses
/// from this process (`kernel.kptr_restrict`, no `CAP_SYSLOG`).
fn kernel_symbol(name: &str) -> Result<Option<u64>> {
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
    Ok((addr != 0).then_some(addr))
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
         (and CAP_DAC_READ_SEARCH, CAP_SYSLOG in some modes: run it as root, or setcap \
         cap_bpf,cap_perfmon,cap_dac_read_search,cap_syslog+ep $(which tcptrace))"
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_ring_per_cpu_up_to_four_and_one_on_linux_6_1() {
        use super::event_rings;
        assert_eq!(event_rings(2, "6.18.44"), 2);
        assert_eq!(event_rings(1, "6.18.44"), 1);
        assert_eq!(event_rings(64, "7.3.4+deb13-amd64"), 4);
        assert_eq!(event_rings(64, "6.1.0-57-amd64"), 1);
        assert_eq!(
            event_rings(3, "unparsable"),
            3,
            "tried, with one ring as the fallback"
        );
    }
}
