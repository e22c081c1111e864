//! `tp_btf/tcp_retransmit_synack`: a listener sent a SYN-ACK again (the client's ACK did not
//! come: a client gone mid-handshake, a SYN flood, or loss). The accepted child does not exist
//! yet, so the record carries the handshake's 4-tuple (read from the request socket, whose
//! `sock_common` starts it as it starts a `struct sock`), and userspace counts it on the
//! child's flow when that one ends.
//!
//! Arguments: `(const struct sock *sk, const struct request_sock *req)`.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{
    event_flags, slot, stat, tcp_state, ListenerKey, RetransmitEvent, Tuple, COMM_LEN,
};

use crate::{
    config,
    events::emit,
    filter::{self, Verdict},
    maps::{Stats, LISTENERS},
    sock::{self, read},
};

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    if try_tcp_retransmit_synack(&ctx).is_err() {
        Stats::at(slot::SYNACK).bump(stat::READ_ERRORS);
    }
    0
}

/// The handshake's addresses, ours first, from the request socket's `sock_common` (its local
/// port is `skc_num`, in host order).
#[inline(always)]
fn request_tuple(req: *const u8) -> Result<Tuple, i32> {
    sock::common_tuple::<sock::Typed>(req, read::<u16>(req, config!(offsets.num))?)
}

#[inline(always)]
fn try_tcp_retransmit_synack(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let stats = Stats::at(slot::SYNACK);
    let listener: *const u8 = ctx.arg(0);
    let req: *const u8 = ctx.arg(1);
    let tuple = request_tuple(req)?;
    let netns = sock::netns(listener)?;
    // The listener's owner, as the child will inherit it.
    let key = ListenerKey {
        netns,
        port: tuple.sport,
        _pad: 0,
    };
    // Not copied (the stack is tight under the filter's frame): read in place below; a map
    // value stays valid for this run.
    let owner = LISTENERS.get_ptr(&key);
    if filter::active() != 0
        && filter::judge::<sock::Typed>(
            slot::SYNACK,
            Some(listener),
            &tuple,
            netns,
            // SAFETY: a map value, valid for this run; one u32 read.
            owner.map(|o| unsafe { (*o).pid }),
        ) != Verdict::Match
    {
        stats.bump(stat::FILTERED);
        return Ok(());
    }
    stats.bump(stat::SYNACK_RETRANSMITS);
    stats.retransmit_in(tcp_state::SYN_RECV);
    let (flags, cgroup) = match owner {
        // SAFETY: a map value, valid for this run; one u64 read.
        Some(o) => (event_flags::SYNACK | event_flags::OWNER_KNOWN, unsafe {
            (*o).cgroup
        }),
        None => (event_flags::SYNACK, sock::cgroup_id(listener)),
    };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(mut record) = emit::<RetransmitEvent>(stats) {
        let e = record.as_mut_ptr();
        // SAFETY: `e` is the reserved slot, ours alone until submit (`emit` wrote its
        // kind); every other field is written here, in place. `o` is a map value, valid for
        // this run; a comm is 16 bytes, 4-aligned in both (after a u32 pid at an 8-aligned
        // offset).
        unsafe {
            (&raw mut (*e).state).write(tcp_state::SYN_RECV);
            (&raw mut (*e).flags).write(flags);
            (&raw mut (*e)._pad0).write([0; 2]);
            (&raw mut (*e).ts_ns).write(now);
            (&raw mut (*e).skaddr).write(req as u64);
            (&raw mut (*e).tuple).write(tuple);
            (&raw mut (*e).err).write(0);
            match owner {
                // The listener's pid and comm, copied from its map value in four words.
                Some(o) => {
                    (&raw mut (*e).pid).write((*o).pid);
                    let to = (&raw mut (*e).comm).cast::<u32>();
                    let from = (&raw const (*o).comm).cast::<u32>();
                    for i in 0..4 {
                        to.add(i).write_volatile(from.add(i).read_volatile());
                    }
                }
                None => {
                    (&raw mut (*e).pid).write(0);
                    (&raw mut (*e).comm).write([0; COMM_LEN]);
                }
            }
            (&raw mut (*e).cgroup).write(cgroup);
        }
        record.submit();
    }
    Ok(())
}
