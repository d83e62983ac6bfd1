//! The map ABI of mcs: every key and value the eBPF programs and the agent
//! exchange, with their names and capacities.
//!
//! * [`maps`] — the one table of maps ([`MAPS`]): name, kind, key and value
//!   sizes, capacity and flags of every pinned map. `names::ALL`, the eBPF
//!   declarations' compile-time checks (`mcs-ebpf/src/maps.rs`) and the
//!   agent's adoption layout (`mcs-agent/src/dataplane/layout.rs`) follow
//!   from it.
//! * [`service`], [`maglev`], [`conntrack`], [`sock`], [`meta`] — the keys
//!   and values; those holding an address are generic over its family
//!   (`byte_order::NetAddr`: `u32` or `Addr6`), IPv6 in maps of their own
//!   (`_V6` names).
//! * [`byte_order`] — the conversions between packet byte order and
//!   `Ipv4Addr`/host-order ports, behind the types' accessors.
//! * [`pod`] — `aya::Pod` for every key and value, each checked field by
//!   field for implicit padding.
//! * [`checksum`], [`flow`], [`prefilter`] — arithmetic shared by the
//!   datapath and the host (tests, fuzzing, the agent).
//!
//! Rules (checked by `const` assertions and by unit tests):
//! * `#[repr(C)]`, no implicit padding: explicit `_pad` fields, `u32` flags,
//!   no `bool`/enum/`Option`.
//! * Addresses and ports marked "network order" hold the bytes exactly as they
//!   sit in the packet (`u32::from_ne_bytes(octets)`), so the datapath never
//!   byte-swaps. Host code reads and writes them through the accessors
//!   (`ServiceKey::new(addr, port, proto)`, `.addr()`, `.port()`), never by
//!   converting by hand.
//! * A layout change of a pinned map bumps the `_Vn` suffix of its name.
#![no_std]

pub mod byte_order;
pub mod checksum;
pub mod conntrack;
pub mod flow;
pub mod maglev;
pub mod maps;
pub mod meta;
pub mod pod;
pub mod prefilter;
pub mod service;
pub mod sock;

pub use conntrack::*;
pub use maglev::*;
pub use maps::*;
pub use meta::*;
pub use service::*;
pub use sock::*;
