//! The map ABI of mcs: every key and value the eBPF programs and the agent
//! exchange, with their names and capacities.
//!
//! Rules (checked by the `const` assertions below and by unit tests):
//! * `#[repr(C)]`, no implicit padding: explicit `_pad` fields, `u32` flags,
//!   no `bool`/enum/`Option`.
//! * Addresses and ports marked "network order" hold the bytes exactly as they
//!   sit in the packet (`u32::from_ne_bytes(octets)`), so the datapath never
//!   byte-swaps.
//! * A layout change of a pinned map bumps the `_Vn` suffix of its name.
#![no_std]

pub mod checksum;
pub mod flow;
pub mod maps;
pub mod prefilter;

pub use maps::*;
