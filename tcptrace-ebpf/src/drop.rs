//! `tp_btf/kfree_skb`: TCP packets the kernel dropped, with its reason.
//!
//! Arguments: `(struct sk_buff *skb, void *location, enum skb_drop_reason reason, …)` (the
//! reason since Linux 5.17, a receiving socket after it from 6.11). The hook runs on every
//! freed packet with a reason, about once per connection even when nothing is wrong (a closed
//! socket's queue purge): reasons userspace marked in `drop_ignore` leave at the first
//! compare, packets that are not IPv4/IPv6 at the second, and non-TCP at the third.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    drop_flags, drop_ignore_bit, flow_flags, slot, stat, tcp_state, ConntrackEntry, DropEvent,
    Tuple, DROP_BUDGET_WINDOW_NS, DROP_REASON_SLOTS,
};

use crate::{
    config,
    events::emit,
    filter::{self, Verdict},
    maps::{Stats, CONNTRACK_SCRATCH, DROP_BUDGET, DROP_REASONS, FLOW_TABLE},
    sock::{self, probe_read, read},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let reason: u32 = ctx.arg(2);
    if ignored(reason) {
        return 0;
    }
    if try_kfree_skb(&ctx, reason).is_err() {
        Stats::at(slot::DROP).bump(stat::READ_ERRORS);
    }
    0
}

/// Whether `reason` is one userspace asked the hook to leave alone (a bit of `drop_ignore`).
#[inline(always)]
fn ignored(reason: u32) -> bool {
    if reason >= DROP_REASON_SLOTS as u32 {
        return false;
    }
    let (word, bit) = drop_ignore_bit(reason);
    // SAFETY: a plain read of an initialised static of integers; the index is masked.
    let bits =
        unsafe { core::ptr::read_volatile(&raw const crate::maps::CONFIG.drop_ignore[word]) };
    bits & bit != 0
}

/// The packet's addresses (source first), TCP flags, and whether it was IPv6; `None` for a
/// packet that is not TCP over IPv4/IPv6.
#[inline(always)]
fn tcp_packet(skb: *const u8) -> Result<Option<(Tuple, u8, bool)>, i32> {
    let protocol = u16::from_be(read::<u16>(skb, config!(skb.protocol))?);
    let v6 = match protocol {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return Ok(None),
    };
    let head = read::<u64>(skb, config!(skb.head))? as usize as *const u8;
    let network = read::<u16>(skb, config!(skb.network_header))?;
    let ip = head.wrapping_add(network as usize);
    let mut tuple = Tuple::default();
    let transport = if v6 {
        let header = probe_read::<[u8; 40]>(ip, 0)?;
        if header[0] >> 4 != 6 || header[6] != IPPROTO_TCP {
            return Ok(None);
        }
        tuple.family = sock::AF_INET6;
        tuple.saddr.copy_from_slice(&header[8..24]);
        tuple.daddr.copy_from_slice(&header[24..40]);
        ip.wrapping_add(40)
    } else {
        let header = probe_read::<[u8; 20]>(ip, 0)?;
        if header[0] >> 4 != 4 || header[9] != IPPROTO_TCP {
            return Ok(None);
        }
        tuple.family = tcptrace_common::family::INET;
        tuple.saddr[..4].copy_from_slice(&header[12..16]);
        tuple.daddr[..4].copy_from_slice(&header[16..20]);
        ip.wrapping_add(usize::from(header[0] & 0x0f) * 4)
    };
    let tcp = probe_read::<[u8; 14]>(transport, 0)?;
    tuple.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    tuple.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    Ok(Some((tuple, tcp[13], v6)))
}

#[inline(always)]
fn try_kfree_skb(ctx: &BtfTracePointContext, reason: u32) -> Result<(), i32> {
    let skb: *const u8 = ctx.arg(0);
    let Some((tuple, tcp_flags, v6)) = tcp_packet(skb)? else {
        return Ok(());
    };
    let stats = Stats::at(slot::DROP);
    let mut sk = read::<u64>(skb, config!(skb.sk))? as usize as *const u8;
    // A request or timewait socket (early demux finds them too) is no flow's: the packet is
    // joined to its flow by its addresses instead.
    if !sk.is_null()
        && matches!(
            sock::state(sk)?,
            tcp_state::NEW_SYN_RECV | tcp_state::TIME_WAIT
        )
    {
        sk = core::ptr::null();
    }
    // The socket's namespace, or the device's for a packet that has no socket yet.
    let netns = if sk.is_null() {
        let dev = read::<u64>(skb, config!(skb.dev))? as usize as *const u8;
        let net = read::<u64>(dev, config!(skb.dev_net))? as usize as *const u8;
        read::<u32>(net, config!(offsets.net_inum))?
    } else {
        sock::netns(sk)?
    };
    if filter::active() != 0 && !admitted(sk, &tuple, netns) {
        stats.bump(stat::FILTERED);
        return Ok(());
    }
    stats.bump(stat::DROPS);
    count_reason(reason);
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !within_budget(now) {
        stats.bump(stat::DROPS_UNSENT);
        return Ok(());
    }
    let mut flags = if v6 { drop_flags::IPV6 } else { 0 };
    let Some(conntrack) = CONNTRACK_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    match conntrack_entry(skb, conntrack, tuple.family) {
        Ok(true) => flags |= drop_flags::CONNTRACK,
        Ok(false) => {}
        // The drop is still sent, without its entry.
        Err(_) => {
            stats.bump(stat::READ_ERRORS);
        }
    }
    if flags & drop_flags::CONNTRACK == 0 {
        // SAFETY: this CPU's scratch value, valid for this run.
        unsafe { conntrack.write(ConntrackEntry::default()) };
    }
    if let Some(mut record) = emit::<DropEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place.
        unsafe {
            (&raw mut (*e).reason).write(reason);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).skaddr).write(sk as u64);
            (&raw mut (*e).tuple).write(tuple);
            (&raw mut (*e).netns).write(netns);
            (&raw mut (*e).tcp_flags).write(tcp_flags);
            (&raw mut (*e).flags).write(flags);
            (&raw mut (*e)._pad).write([0; 2]);
            (&raw mut (*e).conntrack).write(*conntrack);
        }
        record.submit();
    }
    Ok(())
}

/// Counts a drop under its reason (this CPU's entry; the subsystems' reasons, 256 and up, in
/// the last slot).
#[inline(always)]
fn count_reason(reason: u32) {
    let slot = (reason as usize).min(DROP_REASON_SLOTS - 1);
    if let Some(counts) = DROP_REASONS.get_ptr_mut(0) {
        // SAFETY: this CPU's map value, valid for this run; a program is not re-entered on a
        // CPU; the index is below the array's length.
        unsafe { (*counts).by_reason[slot] += 1 };
    }
}

/// Whether this CPU may send one more drop record this second (`drop_records_per_s`).
#[inline(always)]
fn within_budget(now: u64) -> bool {
    let limit = config!(drop_records_per_s);
    if limit == 0 {
        return true;
    }
    let Some(budget) = DROP_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's map value, valid for this run; a program is not re-entered on a CPU.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_ns) >= DROP_BUDGET_WINDOW_NS {
        budget.window_ns = now;
        budget.sent = 0;
    }
    budget.sent += 1;
    budget.sent <= limit
}

/// Whether the filters admit a dropped packet: its addresses either way round (a packet
/// going out has ours first, one coming in the peer's), its socket's owner when the socket
/// is a tracked flow.
#[inline(always)]
fn admitted(sk: *const u8, tuple: &Tuple, netns: u32) -> bool {
    let (socket, owner) = match FLOW_TABLE.get_by_address(sk as u64) {
        // SAFETY: a map value, valid for this run; one byte and a pid read.
        Some(flow) if unsafe { (*flow).flags } & flow_flags::OWNER_KNOWN != 0 => {
            (Some(sk), Some(unsafe { (*flow).pid }))
        }
        Some(_) => (Some(sk), None),
        None => (None, None),
    };
    if filter::judge::<sock::Typed>(slot::DROP, socket, tuple, netns, owner) == Verdict::Match {
        return true;
    }
    let reversed = Tuple {
        saddr: tuple.daddr,
        daddr: tuple.saddr,
        sport: tuple.dport,
        dport: tuple.sport,
        ..*tuple
    };
    filter::judge::<sock::Typed>(slot::DROP, socket, &reversed, netns, owner) == Verdict::Match
}

/// The packet's conntrack entry (`skb->_nfct`, its low 3 bits the packet's direction), read
/// into this CPU's `CONNTRACK_SCRATCH`: both directions' tuples and the status. `false`
/// where the packet has none, or the kernel no conntrack (`skb.nfct` 0).
#[inline(always)]
fn conntrack_entry(skb: *const u8, entry: *mut ConntrackEntry, family: u16) -> Result<bool, i32> {
    let nfct_at = config!(skb.nfct);
    if nfct_at == 0 {
        return Ok(false);
    }
    let ct = (read::<u64>(skb, nfct_at)? & !7) as usize as *const u8;
    if ct.is_null() {
        return Ok(false);
    }
    let hashes = ct.wrapping_add(config!(skb.ct_tuplehash) as usize);
    let at = config!(skb.ct_hash_tuple) as usize;
    let reply_at = config!(skb.ct_hash_size) as usize + at;
    let status_at = config!(skb.ct_status);
    // SAFETY: `entry` is this CPU's scratch value, valid for this run; the reads below write
    // into its fields in place.
    let (original, reply, status) = unsafe {
        (
            &raw mut (*entry).original,
            &raw mut (*entry).reply,
            &raw mut (*entry).status,
        )
    };
    ct_tuple(hashes.wrapping_add(at), original, family)?;
    ct_tuple(hashes.wrapping_add(reply_at), reply, family)?;
    let value = probe_read::<u64>(ct, status_at)? as u32;
    // SAFETY: as above.
    unsafe { status.write(value) };
    Ok(true)
}

/// One `nf_conntrack_tuple` into `out`: its addresses and ports (network order in the
/// kernel, host order in the record).
#[inline(always)]
fn ct_tuple(tuple: *const u8, out: *mut Tuple, family: u16) -> Result<(), i32> {
    let len = if family == sock::AF_INET6 { 16 } else { 4 };
    let (src_addr, dst_addr) = (config!(skb.ct_src_addr), config!(skb.ct_dst_addr));
    let sport = u16::from_be(probe_read::<u16>(tuple, config!(skb.ct_src_port))?);
    let dport = u16::from_be(probe_read::<u16>(tuple, config!(skb.ct_dst_port))?);
    // SAFETY: `out` points into the scratch map value (see `conntrack_entry`); the addresses
    // are read into its fields in place.
    unsafe {
        (*out).family = family;
        (*out)._pad = 0;
        (*out).sport = sport;
        (*out).dport = dport;
        (*out).saddr = [0; 16];
        (*out).daddr = [0; 16];
        read_into(tuple, src_addr, (*out).saddr.as_mut_ptr(), len)?;
        read_into(tuple, dst_addr, (*out).daddr.as_mut_ptr(), len)?;
    }
    Ok(())
}

/// `len` bytes at `base + offset` into `dst`, in place.
#[inline(always)]
fn read_into(base: *const u8, offset: u32, dst: *mut u8, len: u32) -> Result<(), i32> {
    // SAFETY: bpf_probe_read_kernel checks the source address; `dst` is map memory of at
    // least `len` bytes (an address field of a `Tuple`).
    let rc = unsafe {
        bpf_probe_read_kernel(dst.cast(), len, base.wrapping_add(offset as usize).cast())
    };
    if rc < 0 {
        return Err(rc as i32);
    }
    Ok(())
}
