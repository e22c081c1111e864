//! Kernel programs of tcptrace: one module per hook.
#![no_std]
#![no_main]

mod drop;
mod events;
mod filter;
#[cfg(feature = "bench")]
mod floor;
mod flow_end;
mod learn;
mod maps;
mod owner;
mod reset;
mod retransmit;
#[cfg(feature = "bench")]
mod ring_probe;
mod set_state;
mod sock;
#[cfg(feature = "bench")]
mod storage_probe;
mod synack;
mod syscalls;
mod timers;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the programs never panic: every index is masked and every fallible read is
    // handled; a panic path that survived would be rejected by the verifier anyway.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
