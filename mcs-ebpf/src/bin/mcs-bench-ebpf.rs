//! `mcs-bench-ebpf`: the calibration programs of `cargo xtask bench`
//! (per-packet cost through `BPF_PROG_TEST_RUN`), in an object of their own
//! that the agent never embeds. Built beside the agent's object by `cargo
//! xtask build-ebpf`, with the same compiler and flags, so the bench
//! measures both alike.
//!
//! * `mcs_bench_pass`   — returns `XDP_PASS`: the floor of a test run.
//! * `mcs_bench_tc_pass` — a tc program that passes every packet on
//!   (`TC_ACT_UNSPEC`, as mcs's tc programs do): the end-to-end floor of a
//!   tc program on a pod interface.
//! * `mcs_bench_tc_write` — the helper calls of mcs's tc rewrite with every
//!   value unchanged (see the program): the end-to-end floor of a tc
//!   program that rewrites packets.
//! * `mcs_bench_lookup` — one hash lookup with a 16-byte key read from the
//!   packet (bytes 26..42 of the frame: IPv4 addresses, ports and 4 more
//!   bytes): the unit in which the bench states the mcs program's cost.
//! * `mcs_bench_lru_insert` — one insert of that key into an LRU hash shaped
//!   like conntrack (16-byte key, 40-byte value): what a new flow pays twice.
//! * `mcs_bench_lru_insert_pcpu` — the same into an LRU hash with per-CPU
//!   LRU lists (`BPF_F_NO_COMMON_LRU`), for comparison in the same run.
//! * `mcs_bench_count_pcpu` / `mcs_bench_count_shared` — a conntrack hit's
//!   counter updates (packets and bytes of a frontend and of a backend) in
//!   per-CPU counters, and in counters shared by all CPUs updated with
//!   atomic adds: the bench runs them on one CPU and on two CPUs at once
//!   (both updating the same counters), which says whether per-packet
//!   counters need per-CPU copies.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC, xdp_action},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};

use mcs_ebpf::{atomic, packet::ptr_at};

/// Offset of the lookup key in the frame (Ethernet 14 + IPv4 `saddr` at 12).
const KEY_OFFSET: usize = 26;

/// Calibration map: 16-byte key → counter; the bench sizes it at load
/// (`EbpfLoader::map_max_entries`) and fills it.
#[btf_map]
pub static MCS_BENCH_MAP: HashMap<[u8; 16], u64, 1> = HashMap::new();

#[xdp]
pub fn mcs_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn mcs_bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// The helper calls of mcs's tc rewrite of a destination (two L4 checksum
/// updates, one IPv4 header checksum update, two stores: `tc/rewrite.rs`)
/// with every value unchanged, on IPv4 TCP and UDP packets with a 20-byte
/// header, then passes the packet on. No lookup: what any tc program that
/// rewrites packets pays — the first helper makes a cloned buffer (every TCP
/// segment a local stack sent) writable, which copies its head.
#[classifier]
pub fn mcs_bench_tc_write(ctx: TcContext) -> i32 {
    // A packet the helpers refuse is passed on as it is.
    let _ = rewrite_unchanged(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn rewrite_unchanged(ctx: &TcContext) -> Result<(), i64> {
    const ETH_LEN: usize = 14;
    const IPV4_LEN: usize = 20;
    const ETH_P_IP: u16 = 0x0800;
    let ethertype: u16 = ctx.load(12)?;
    let version_ihl: u8 = ctx.load(ETH_LEN)?;
    if u16::from_be(ethertype) != ETH_P_IP || version_ihl != 0x45 {
        return Ok(());
    }
    let check_off = match ctx.load::<u8>(ETH_LEN + 9)? {
        6 => ETH_LEN + IPV4_LEN + 16,
        17 => ETH_LEN + IPV4_LEN + 6,
        _ => return Ok(()),
    };
    let (addr_off, port_off) = (ETH_LEN + 16, ETH_LEN + IPV4_LEN + 2);
    let addr: u32 = ctx.load(addr_off)?;
    let port: u16 = ctx.load(port_off)?;
    ctx.l4_csum_replace(
        check_off,
        u64::from(addr),
        u64::from(addr),
        u64::from(BPF_F_PSEUDO_HDR) | 4,
    )?;
    ctx.l4_csum_replace(check_off, u64::from(port), u64::from(port), 2)?;
    ctx.l3_csum_replace(ETH_LEN + 10, u64::from(addr), u64::from(addr), 4)?;
    ctx.store(addr_off, &addr, 0)?;
    ctx.store(port_off, &port, 0)
}

/// `XDP_PASS` when the packet's key is in the map, `XDP_DROP` when not (so
/// the bench can check that it measures hits).
#[xdp]
pub fn mcs_bench_lookup(ctx: XdpContext) -> u32 {
    let Some(key) = ptr_at::<[u8; 16]>(&ctx, KEY_OFFSET) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the 16 bytes are inside the packet.
    let key = unsafe { *key };
    if MCS_BENCH_MAP.get_ptr(key).is_some() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Conntrack-shaped LRU hash for `mcs_bench_lru_insert`; sized by the bench
/// at load like the conntrack map under test.
#[btf_map]
pub static MCS_BENCH_LRU: LruHashMap<[u8; 16], [u8; 40], 256> = LruHashMap::new();

/// Inserts the packet's key: `XDP_PASS` when the insert succeeded.
#[xdp]
pub fn mcs_bench_lru_insert(ctx: XdpContext) -> u32 {
    let Some(key) = ptr_at::<[u8; 16]>(&ctx, KEY_OFFSET) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the 16 bytes are inside the packet.
    let key = unsafe { *key };
    match MCS_BENCH_LRU.insert(key, [0u8; 40], 0) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(_) => xdp_action::XDP_DROP,
    }
}

/// `MCS_BENCH_LRU` with per-CPU LRU lists; sized by the bench the same way.
#[btf_map]
pub static MCS_BENCH_LRU_PCPU: LruHashMap<
    [u8; 16],
    [u8; 40],
    256,
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// Inserts the packet's key into `MCS_BENCH_LRU_PCPU`: `XDP_PASS` when the
/// insert succeeded.
#[xdp]
pub fn mcs_bench_lru_insert_pcpu(ctx: XdpContext) -> u32 {
    let Some(key) = ptr_at::<[u8; 16]>(&ctx, KEY_OFFSET) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the 16 bytes are inside the packet.
    let key = unsafe { *key };
    match MCS_BENCH_LRU_PCPU.insert(key, [0u8; 40], 0) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(_) => xdp_action::XDP_DROP,
    }
}

/// Counters shaped like `FrontendStats` (packets, bytes, new flows, no
/// backend): entry 0 stands for a frontend, entry 1 for a backend.
type Counters = [u64; 4];

#[btf_map]
pub static MCS_BENCH_PCPU: PerCpuArray<Counters, 2> = PerCpuArray::new();

#[btf_map]
pub static MCS_BENCH_SHARED: Array<Counters, 2> = Array::new();

#[inline(always)]
fn packet_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// Adds the packet to two per-CPU counters, as the XDP program does.
#[xdp]
pub fn mcs_bench_count_pcpu(ctx: XdpContext) -> u32 {
    let len = packet_len(&ctx);
    for index in 0..2 {
        if let Some(counters) = MCS_BENCH_PCPU.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, only this CPU writes it while the
            // program runs.
            unsafe {
                (*counters)[0] += 1;
                (*counters)[1] += len;
            }
        }
    }
    xdp_action::XDP_PASS
}

/// Adds the packet to two shared counters with atomic adds.
#[xdp]
pub fn mcs_bench_count_shared(ctx: XdpContext) -> u32 {
    let len = packet_len(&ctx);
    for index in 0..2 {
        if let Some(counters) = MCS_BENCH_SHARED.get_ptr_mut(index) {
            // SAFETY: a map value, valid and u64-aligned for the run; every
            // writer updates it atomically.
            unsafe {
                atomic::add(&raw mut (*counters)[0], 1);
                atomic::add(&raw mut (*counters)[1], len);
            }
        }
    }
    xdp_action::XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
