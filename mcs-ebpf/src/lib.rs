//! What the two eBPF objects of this crate share: bounds-checked packet
//! access and IPv4 TCP/UDP parsing (`packet`), atomic counter adds
//! (`atomic`), and the panic handler.
//!
//! * `mcs-ebpf` (`src/main.rs`) — the agent's object, embedded in
//!   `mcs-agent`: the datapath programs and the maps of `mcs_common::MAPS`.
//! * `mcs-bench-ebpf` (`src/bin/mcs-bench-ebpf.rs`) — the calibration
//!   programs of `cargo xtask bench`, in an object of their own that the
//!   agent never embeds.
#![no_std]
#![cfg_attr(
    target_arch = "bpf",
    expect(unstable_features, reason = "inline assembly for BPF is unstable"),
    feature(asm_experimental_arch)
)]

pub mod atomic;
pub mod packet;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}
