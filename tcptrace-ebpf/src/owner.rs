//! Who owns a socket, as the programs record it: the current task (pid, comm) and the
//! socket's cgroup, written in place into a flow or a map value (the main handler's stack
//! has no room for copies), or built whole for a syscall's caller.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use tcptrace_common::{slot, Owner};

/// Writes the current task, as the owner of `sk`, into the fields of an owner in place (a
/// flow's, or a map value's): nothing is built on the stack, whose 512 bytes the main
/// handler needs. The socket's cgroup, or the task's where the kernel has no socket cgroup;
/// only meaningful in process context.
#[inline(always)]
pub fn write_current_owner(pid: &mut u32, comm: &mut [u8; 16], cgroup: &mut u64, sk: *const u8) {
    *pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the helper writes at most 16 bytes into `comm` (ARG_PTR_TO_UNINIT_MEM), which
    // is 16 bytes of a map value.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
    }
    // Decided by the configuration (a constant to the verifier), not by the value read: no
    // branch for the verifier to follow twice.
    *cgroup = if crate::config!(offsets.sk_cgroup) == 0 {
        // SAFETY: a plain helper call with no arguments.
        unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() }
    } else {
        crate::sock::cgroup_id(sk)
    };
}

/// This CPU's owner slot for the program whose `slot` this is (a listener's owner is built
/// there before it is inserted into `LISTENERS`).
#[inline(always)]
pub fn owner_scratch(slot: u32) -> Option<*mut Owner> {
    crate::maps::OWNER_SCRATCH.get_ptr_mut(slot & (slot::SCRATCH - 1))
}

/// The current task as the caller of a syscall, with its own cgroup.
#[inline(always)]
pub fn current_caller() -> Owner {
    Owner {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: current_comm(),
        _pad: [0; 4],
        // SAFETY: a plain helper call with no arguments.
        cgroup: unsafe { aya_ebpf::helpers::generated::bpf_get_current_cgroup_id() },
    }
}

/// The current task's comm (the helper fills all 16 bytes: the name, NUL-padded, or zeroes
/// on failure). The buffer is not zeroed first: zeroing makes LLVM call a byte-wise `memset`
/// subprogram, and a call from the main handler would break the 512-byte stack budget of
/// kernels before 6.13.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    let mut words = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper takes uninitialised memory (ARG_PTR_TO_UNINIT_MEM) and writes all
    // 16 bytes on success and on failure.
    let words = unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(words.as_mut_ptr().cast(), 16);
        words.assume_init()
    };
    let (a, b) = (words[0].to_ne_bytes(), words[1].to_ne_bytes());
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ]
}
