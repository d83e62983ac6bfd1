//! The BPF memory of the maps, as the kernel accounts it (`memlock` in a
//! map's fdinfo, bpftool's `bytes_memlock`, charged to the agent's memory
//! cgroup), computed from the map sizes and the number of possible CPUs:
//! what decides whether the agent's DaemonSet fits a node
//! (`docs/operations.md`, "Memory"). A root test compares it with the
//! kernel's figures for every map at two sizes.
//!
//! Per map kind (kernel 6.x accounting, `htab_map_mem_usage` and
//! `array_map_mem_usage`):
//! * hash (preallocated) and LRU hash: an element per entry (a 48-byte
//!   header, the key and the value, each rounded up to 8 bytes) and a
//!   16-byte bucket per entry rounded up to a power of two; a plain hash
//!   preallocates one spare element per CPU;
//! * hash without preallocation (the frontend names): the buckets, and an
//!   element (plus an 8-byte free-list node) per entry present;
//! * array: the values (rounded up to 8 bytes); mmapable arrays in whole
//!   pages; per-CPU arrays a value per possible CPU and a pointer per entry;
//! * under 1 KiB per map besides.

use mcs_common::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, MAPS, MapDef, MapKind};

use super::MapSizes;

/// `struct htab_elem` before the key.
const HTAB_ELEM_HEADER: u64 = 48;
/// `struct bucket`.
const HTAB_BUCKET: u64 = 16;
/// `struct bpf_htab` and what the kernel adds per map.
const HTAB_FIXED: u64 = 880;
/// A no-prealloc element's free-list node.
const LLIST_NODE: u64 = 8;
/// `struct bpf_array`.
const ARRAY_FIXED: u64 = 312;
const PAGE: u64 = 4096;

fn round8(bytes: u32) -> u64 {
    u64::from(bytes).div_ceil(8) * 8
}

fn page_align(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE) * PAGE
}

/// Bytes of map `def` with `entries` capacity on a node with `cpus`
/// possible CPUs; `present`: entries in a map allocated as written (the
/// frontend names), the capacity when `None` (its most).
pub fn map_bytes(def: &MapDef, entries: u32, cpus: u32, present: Option<u32>) -> u64 {
    let (entries, cpus) = (u64::from(entries), u64::from(cpus));
    let value = round8(def.value_size);
    match def.kind {
        MapKind::Array if def.flags & BPF_F_MMAPABLE != 0 => {
            page_align(ARRAY_FIXED) + page_align(entries * value)
        }
        MapKind::Array => ARRAY_FIXED + entries * value,
        MapKind::PerCpuArray => ARRAY_FIXED + entries * (8 + value * cpus),
        MapKind::Hash | MapKind::LruHash => {
            let element = HTAB_ELEM_HEADER + round8(def.key_size) + value;
            let buckets = HTAB_BUCKET * entries.max(1).next_power_of_two();
            let fixed = HTAB_FIXED + buckets;
            if def.flags & BPF_F_NO_PREALLOC != 0 {
                let present = present.map_or(entries, u64::from).min(entries);
                fixed + (element + LLIST_NODE) * present + 8 * cpus
            } else if def.kind == MapKind::LruHash {
                fixed + element * entries + 8 * cpus
            } else {
                // One spare element per CPU for updates in place.
                fixed + element * entries + (element + 16) * cpus
            }
        }
    }
}

/// Every map's bytes at `sizes` on a node with `cpus` possible CPUs, maps
/// allocated as written counted full: the most the maps can take.
pub fn model(sizes: &MapSizes, cpus: u32) -> Vec<(&'static str, u64)> {
    MAPS.iter()
        .map(|def| {
            let entries = sizes.entries(def.capacity, def.max_entries);
            (def.name, map_bytes(def, entries, cpus, None))
        })
        .collect()
}

/// The sum of [`model`]: the BPF memory to allow for the agent at `sizes`.
pub fn total(sizes: &MapSizes, cpus: u32) -> u64 {
    model(sizes, cpus).iter().map(|(_, bytes)| bytes).sum()
}

/// The agent process itself (its resident memory, not the maps): the
/// bench measures it at 10k and 100k service ports (`docs/benchmarks.md`);
/// this is a bound above those measurements, for a memory limit.
pub fn agent_bytes(service_ports: u64) -> u64 {
    AGENT_BASE_BYTES + AGENT_BYTES_PER_SERVICE_PORT * service_ports
}

/// The agent's resident memory without services (code, runtime, the
/// eBPF object, buffers).
pub const AGENT_BASE_BYTES: u64 = 64 << 20;
/// Per service port of the imports (its ServiceImport and EndpointSlices
/// parsed and kept once, shared by the source, the run loop and DNS; the
/// desired state; what the reconciler applied), with 10 endpoints.
pub const AGENT_BYTES_PER_SERVICE_PORT: u64 = 6 << 10;

/// Possible CPUs of this node (what per-CPU maps are sized by).
pub fn possible_cpus() -> std::io::Result<u32> {
    aya::util::nr_cpus()
        .map(|cpus| u32::try_from(cpus).unwrap_or(u32::MAX))
        .map_err(|(_, error)| error)
}

#[cfg(test)]
mod tests {
    use mcs_common::{def, names};

    use super::*;

    /// Figures read from the kernel (bpftool `bytes_memlock`, 2 possible
    /// CPUs) for maps shaped like ours: the formulas reproduce them.
    #[test]
    fn formulas_match_kernel_figures() {
        assert_eq!(map_bytes(&def::BACKENDS, 1000, 2, None), 97_456);
        assert_eq!(map_bytes(&def::BACKENDS, 4096, 2, None), 394_288);
        assert_eq!(map_bytes(&def::BACKENDS, 5000, 2, None), 532_144);
        assert_eq!(map_bytes(&def::CONNTRACK, 1000, 2, None), 121_280);
        assert_eq!(map_bytes(&def::CONNTRACK, 4096, 2, None), 492_416);
        assert_eq!(map_bytes(&def::FRONTEND_STATS, 1000, 2, None), 72_312);
        assert_eq!(map_bytes(&def::SOCK_STATS, 1000, 2, None), 32_312);
    }

    /// The IPv6 maps at their default (fixed, for now) sizes: what the
    /// memory formula of docs/operations.md adds for them.
    #[test]
    fn the_ipv6_maps_at_their_defaults_stay_small() {
        let sizes = MapSizes::default();
        let v6: u64 = [
            def::SERVICES_V6,
            def::BACKENDS_V6,
            def::CONNTRACK_V6,
            def::AFFINITY_V6,
            def::SOCK_REVNAT_V6,
        ]
        .iter()
        .map(|def| map_bytes(def, sizes.entries(def.capacity, def.max_entries), 2, None))
        .sum();
        assert!((4 << 20..6 << 20).contains(&v6), "{v6} bytes");
    }

    #[test]
    fn the_model_grows_with_every_size_and_the_per_cpu_maps_with_cpus() {
        let sizes = MapSizes::default();
        let base = total(&sizes, 2);
        for capacity in [
            |s: &mut MapSizes| s.frontends *= 2,
            |s: &mut MapSizes| s.backend_slots *= 2,
            |s: &mut MapSizes| s.backends *= 2,
            |s: &mut MapSizes| s.maglev_chunks *= 2,
            |s: &mut MapSizes| s.conntrack *= 2,
            |s: &mut MapSizes| s.affinity *= 2,
            |s: &mut MapSizes| s.sock_revnat *= 2,
        ] {
            let mut bigger = sizes;
            capacity(&mut bigger);
            assert!(total(&bigger, 2) > base, "{bigger:?}");
        }
        let per_cpu = |cpus| {
            model(&sizes, cpus)
                .into_iter()
                .find(|(name, _)| *name == names::FRONTEND_STATS)
                .map(|(_, bytes)| bytes)
                .expect("counters")
        };
        assert_eq!(
            per_cpu(64) - per_cpu(2),
            62 * 32 * u64::from(sizes.frontends)
        );
    }
}
