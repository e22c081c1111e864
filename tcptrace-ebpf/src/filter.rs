//! In-kernel filters. A flow is judged when it is first seen (a fresh entry in `FLOWS`);
//! flows already in `FLOWS` matched, so the filters cost nothing on their later events.
//! Every filter is off unless the loader set its bit in the frozen `.rodata` configuration,
//! and the verifier prunes the code of the filters that are off.
use tcptrace_common::{
    filter_kind, mapped_v4, port_bits, slot, TimeWaitKey, Tuple, CGROUP_MAX_DEPTH, FILTER_SLOTS,
};

use crate::{
    config,
    maps::{FILTER_KEY, LOCAL_ADDRS, PORT_FILTER, REMOTE_ADDRS, WORKLOAD_CGROUPS},
    sock::{self, Reader, AF_INET6},
};

/// What the filters say of a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// Everything else matched but the local port is not bound yet (CLOSE → SYN_SENT under a
    /// local-port filter): decided at the flow's next event.
    Pending,
}

/// The filters in force (bits of `filter_kind`; 0: none).
#[inline(always)]
pub fn active() -> u32 {
    config!(filter.active)
}

#[inline(always)]
fn port_allowed(port: u16, bit: u8) -> bool {
    PORT_FILTER
        .get(u32::from(port))
        .is_some_and(|bits| *bits & bit != 0)
}

#[inline(always)]
fn addr_allowed(slot: u32, local: bool, family: u16, addr: &[u8; 16]) -> bool {
    // The key is built in a per-CPU slot of this program: the stack is shared with the
    // callers' frames.
    let Some(key) = FILTER_KEY.get_ptr_mut(slot & (slot::COUNT - 1)) else {
        return false;
    };
    // SAFETY: this CPU's slot, ours for this run.
    let key = unsafe { &mut *key };
    key.prefix_len = 128;
    key.data.addr = if family == AF_INET6 {
        *addr
    } else {
        mapped_v4([addr[0], addr[1], addr[2], addr[3]])
    };
    if local {
        LOCAL_ADDRS.get(&*key).is_some()
    } else {
        REMOTE_ADDRS.get(&*key).is_some()
    }
}

/// One slot of a configuration list, read in place (no copy of the list on the stack).
macro_rules! config_slot {
    ($list:ident, $i:expr) => {
        // SAFETY: a plain read of an initialised static of integers; `$i` is below
        // FILTER_SLOTS, the length of every list.
        unsafe {
            core::ptr::read_volatile(
                (&raw const $crate::maps::CONFIG.filter.$list)
                    .cast::<u8>()
                    .add(
                        ($i & (FILTER_SLOTS - 1))
                            * core::mem::size_of_val(&$crate::maps::CONFIG.filter.$list[0]),
                    )
                    .cast(),
            )
        }
    };
}

#[inline(always)]
fn netns_allowed(inum: u32) -> bool {
    let count = config!(filter.netns_count) as usize;
    let mut i = 0;
    while i < FILTER_SLOTS && i < count {
        let wanted: u32 = config_slot!(netns, i);
        if wanted == inum {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn pid_allowed(pid: u32) -> bool {
    let count = config!(filter.pid_count) as usize;
    let mut i = 0;
    while i < FILTER_SLOTS && i < count {
        let wanted: u32 = config_slot!(pids, i);
        if wanted == pid {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn cgroup_listed(id: u64, count: usize) -> bool {
    let mut i = 0;
    while i < FILTER_SLOTS && i < count {
        let wanted: u64 = config_slot!(cgroups, i);
        if wanted == id {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the socket's cgroup (v2), or one of its ancestors, is a filtered one (`--cgroup`).
#[inline(always)]
fn cgroup_allowed<R: Reader>(sk: *const u8) -> bool {
    let count = config!(filter.cgroup_count) as usize;
    in_listed_cgroup::<R, _>(sk, |id| cgroup_listed(id, count))
}

/// Whether the socket's cgroup, or one of its ancestors, is a filtered workload's (`--pod`,
/// `--namespace`, `--container`: the pod's or container's cgroups in `WORKLOAD_CGROUPS`).
#[inline(always)]
fn workload_allowed<R: Reader>(sk: *const u8) -> bool {
    // SAFETY: only whether the key is there is read.
    in_listed_cgroup::<R, _>(sk, |id| unsafe { WORKLOAD_CGROUPS.get(&id) }.is_some())
}

/// Walks from the socket's cgroup up to the root (at most `CGROUP_MAX_DEPTH` levels) until
/// `listed` says yes.
#[inline(always)]
fn in_listed_cgroup<R: Reader, F: Fn(u64) -> bool>(sk: *const u8, listed: F) -> bool {
    let Ok(mut cgroup) = R::read::<u64>(sk, config!(offsets.sk_cgroup)) else {
        return false;
    };
    let mut depth = 0;
    while depth < CGROUP_MAX_DEPTH {
        if cgroup == 0 {
            return false;
        }
        let cg = cgroup as usize as *const u8;
        let Ok(kn) = sock::probe_read::<u64>(cg, config!(offsets.cgroup_kn)) else {
            return false;
        };
        let Ok(id) = sock::probe_read::<u64>(kn as usize as *const u8, config!(offsets.kernfs_id))
        else {
            return false;
        };
        if listed(id) {
            return true;
        }
        let Ok(css) = sock::probe_read::<u64>(cg, config!(offsets.cgroup_parent)) else {
            return false;
        };
        if css == 0 {
            return false;
        }
        cgroup =
            match sock::probe_read::<u64>(css as usize as *const u8, config!(offsets.css_cgroup)) {
                Ok(parent) => parent,
                Err(_) => return false,
            };
        depth += 1;
    }
    false
}

/// Judges a socket (`sk`, read with `R`) whose addresses are `tuple`, in namespace `netns`,
/// owned by `owner` (a pid) when known. `sk` is `None` for a timewait socket (no cgroup).
/// `slot` is the calling program's (`tcptrace_common::slot`).
#[inline(always)]
pub fn judge<R: Reader>(
    slot: u32,
    sk: Option<*const u8>,
    tuple: &Tuple,
    netns: u32,
    owner: Option<u32>,
) -> Verdict {
    let sk = sk.unwrap_or(core::ptr::null());
    let owner = owner.map_or(NO_OWNER, u64::from);
    match judge_out_of_line::<R>(slot, sk, tuple, netns, owner) {
        MATCH => Verdict::Match,
        PENDING => Verdict::Pending,
        _ => Verdict::NoMatch,
    }
}

const NO_OWNER: u64 = u64::MAX;
const MATCH: u32 = 0;
const NO_MATCH: u32 = 1;
const PENDING: u32 = 2;

// Out of line: its own stack frame (the address-trie keys), away from the callers' records.
#[inline(never)]
fn judge_out_of_line<R: Reader>(
    slot: u32,
    sk: *const u8,
    tuple: &Tuple,
    netns: u32,
    owner: u64,
) -> u32 {
    match judge_inline::<R>(slot, sk, tuple, netns, owner) {
        Verdict::Match => MATCH,
        Verdict::NoMatch => NO_MATCH,
        Verdict::Pending => PENDING,
    }
}

#[inline(always)]
fn judge_inline<R: Reader>(
    slot: u32,
    sk: *const u8,
    tuple: &Tuple,
    netns: u32,
    owner: u64,
) -> Verdict {
    let active = active();
    if active & filter_kind::FAMILY != 0 && tuple.family != config!(filter.family) {
        return Verdict::NoMatch;
    }
    if active & filter_kind::NETNS != 0 && !netns_allowed(netns) {
        return Verdict::NoMatch;
    }
    if active & filter_kind::REMOTE_PORT != 0 && !port_allowed(tuple.dport, port_bits::REMOTE) {
        return Verdict::NoMatch;
    }
    if active & filter_kind::REMOTE_ADDR != 0
        && !addr_allowed(slot, false, tuple.family, &tuple.daddr)
    {
        return Verdict::NoMatch;
    }
    if active & filter_kind::LOCAL_ADDR != 0
        && !addr_allowed(slot, true, tuple.family, &tuple.saddr)
    {
        return Verdict::NoMatch;
    }
    if active & filter_kind::PID != 0 && (owner == NO_OWNER || !pid_allowed(owner as u32)) {
        return Verdict::NoMatch;
    }
    if active & filter_kind::CGROUP != 0 && (sk.is_null() || !cgroup_allowed::<R>(sk)) {
        return Verdict::NoMatch;
    }
    if active & filter_kind::WORKLOAD != 0 && (sk.is_null() || !workload_allowed::<R>(sk)) {
        return Verdict::NoMatch;
    }
    // Either side: the remote port decides at once; the local one once it is bound.
    if active & filter_kind::EITHER_PORT != 0 && !port_allowed(tuple.dport, port_bits::EITHER) {
        if tuple.sport == 0 {
            return Verdict::Pending;
        }
        if !port_allowed(tuple.sport, port_bits::EITHER) {
            return Verdict::NoMatch;
        }
    }
    if active & filter_kind::LOCAL_PORT != 0 {
        if tuple.sport == 0 {
            return Verdict::Pending;
        }
        if !port_allowed(tuple.sport, port_bits::LOCAL) {
            return Verdict::NoMatch;
        }
    }
    Verdict::Match
}

/// The key under which a traced flow's TIME_WAIT is expected.
#[inline(always)]
pub fn time_wait_key(tuple: &Tuple, netns: u32) -> TimeWaitKey {
    TimeWaitKey {
        tuple: *tuple,
        netns,
        _pad: 0,
    }
}
