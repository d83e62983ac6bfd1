//! mcs datapath programs.
//!
//! * `xdp/`   — per-packet ClusterSetIP DNAT, conntrack and reverse NAT.
//! * `sock.rs` — socket-level LB for local sockets (cgroup connect4,
//!   sendmsg4, recvmsg4, getpeername4): the backend is chosen once.
//! * `lb.rs`  — service lookup and backend selection, shared by every hook.
//! * `maps.rs` — the maps; their key/value types live in `mcs-common`.
//! * `bench.rs` — calibration programs for `cargo xtask bench` (never
//!   attached by the agent).
//! * `clock.rs` — the jiffies probe behind the agent's clock calibration
//!   (never attached).
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`. On the host
//! the crate compiles to an empty binary so `cargo clippy --workspace` lints it.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

mod bench;
mod clock;
mod lb;
mod maps;
mod packet;
mod sock;
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
