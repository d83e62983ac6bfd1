//! The agent's eBPF object (embedded in `mcs-agent`).
//!
//! * `datapath.rs` — the per-packet translation (ClusterSetIP DNAT with
//!   conntrack, reverse NAT of replies, refusals), shared by the packet
//!   hooks; `conntrack.rs` its flow entries, `reject.rs` its refusals.
//! * `tc/`    — the packet hook on pod interfaces (ingress: the whole
//!   translation; egress: reverse NAT of replies), checksums through the
//!   kernel's helpers.
//! * `xdp/`   — the packet hook on physical NICs, checksum arithmetic in the
//!   program.
//! * `sock.rs` — socket-level LB for local sockets (cgroup connect4,
//!   sendmsg4, recvmsg4, getpeername4): the backend is chosen once.
//! * `lb.rs`  — service lookup and backend selection, shared by every hook.
//! * `family.rs` — each address family's maps behind one trait, so the
//!   translation is written once for IPv4 and IPv6.
//! * `maps.rs` — the maps, declared from `mcs_common::MAPS`.
//! * `clock.rs` — the jiffies probe behind the agent's clock calibration
//!   (never attached).
//! * `log.rs` — `debug-log`: debug-level aya-log lines in the packet path,
//!   compiled out without the feature.
//!
//! Packet access and parsing come from the crate's library (`lib.rs`),
//! shared with the bench's calibration object (`bin/mcs-bench-ebpf.rs`).
//! Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`. On the host
//! the crate compiles to an empty binary so `cargo clippy --workspace` lints it.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[macro_use]
mod log;

mod clock;
mod conntrack;
mod datapath;
mod family;
mod lb;
mod maps;
mod reject;
mod reject6;
mod sock;
mod sock6;
mod tc;
mod xdp;

use mcs_ebpf::packet;

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
