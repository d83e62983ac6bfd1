//! What the maps cost in memory: the kernel charges every map's memory to
//! the memory cgroup of the process that creates it (Linux 5.11+), so the
//! agent's container limit must cover them (`deploy/daemonset.yaml`,
//! `docs/operations.md#memory`). The arithmetic follows the kernel's own
//! accounting (`map_mem_usage` of each map type, what `bpftool map show`
//! prints as `memlock`; a root test in `tests/tests/pinning.rs` holds them
//! together), with the slab size class an element allocated per entry
//! really takes.

use mcs_common::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, MapKind, names};

use super::{MapSizes, MapSpec};

/// `struct htab_elem` before the key.
const HTAB_ELEM: u64 = 48;
/// `struct bucket`.
const BUCKET: u64 = 16;
/// `struct llist_node` kept with each element allocated per entry.
const LLIST_NODE: u64 = 8;
/// A per-CPU array's pointer to each element's per-CPU area.
const PERCPU_POINTER: u64 = 8;
/// The fixed part of a map (`struct bpf_htab`/`bpf_array` and lock
/// counters), rounded up.
const MAP_HEADER: u64 = 4096;
const PAGE: u64 = 4096;

const fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// The slab size class of an allocation of `n` bytes (powers of two from
/// 8 bytes, with the 96- and 192-byte classes).
fn size_class(n: u64) -> u64 {
    match n {
        0..=96 if n > 64 => 96,
        0..=192 if n > 128 => 192,
        _ => n.next_power_of_two().max(8),
    }
}

/// Bytes one map takes: `entries` elements in use for maps allocated per
/// entry (the others are allocated whole when created).
pub fn map_bytes(spec: &MapSpec, possible_cpus: u64, entries: u64) -> u64 {
    let max = u64::from(spec.max_entries);
    let (key, value) = (
        round8(u64::from(spec.key_size)),
        round8(u64::from(spec.value_size)),
    );
    let kind = mcs_common::MAPS
        .iter()
        .find(|def| def.name == spec.name)
        .map_or(MapKind::Hash, |def| def.kind);
    MAP_HEADER
        + match kind {
            MapKind::Array if spec.flags & BPF_F_MMAPABLE != 0 => {
                (max * value).next_multiple_of(PAGE)
            }
            MapKind::Array => max * value,
            MapKind::PerCpuArray => max * (PERCPU_POINTER + value * possible_cpus),
            MapKind::Hash | MapKind::LruHash => {
                let buckets = u64::from(spec.max_entries).next_power_of_two() * BUCKET;
                let elem = HTAB_ELEM + key + value;
                buckets
                    + if spec.flags & BPF_F_NO_PREALLOC != 0 {
                        size_class(elem + LLIST_NODE) * entries.min(max)
                    } else {
                        elem * max
                    }
            }
        }
}

/// Bytes all maps take at `sizes` on a node with `possible_cpus`, with
/// `frontends` frontends programmed (one Maglev table and one name each).
pub fn charged_bytes(sizes: &MapSizes, possible_cpus: u64, frontends: u64) -> u64 {
    sizes
        .expected()
        .iter()
        .map(|spec| {
            let in_use = match spec.name {
                names::MAGLEV | names::FRONTEND_META => frontends,
                _ => 0,
            };
            map_bytes(spec, possible_cpus, in_use)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes() {
        assert_eq!(size_class(72), 96);
        assert_eq!(size_class(192), 192);
        assert_eq!(size_class(193), 256);
        assert_eq!(size_class(2108), 4096);
        assert_eq!(size_class(1), 8);
    }

    #[test]
    fn per_cpu_arrays_grow_with_cpus_and_the_rest_does_not() {
        let sizes = MapSizes::default();
        let one = charged_bytes(&sizes, 1, 0);
        let two = charged_bytes(&sizes, 2, 0);
        // The three counter arrays: 32-byte values, one per CPU.
        let per_cpu: u64 = [
            names::FRONTEND_STATS,
            names::BACKEND_STATS,
            names::SOCK_STATS,
        ]
        .iter()
        .map(|name| {
            let spec = sizes
                .expected()
                .into_iter()
                .find(|s| s.name == *name)
                .expect("map");
            u64::from(spec.max_entries) * 32
        })
        .sum::<u64>()
            + u64::from(mcs_common::DropReason::COUNT) * 8;
        assert_eq!(two - one, per_cpu);
        assert_eq!(per_cpu >> 20, 10, "about 10 MiB per possible CPU");
        // Frontends cost a Maglev table and a name, allocated per entry.
        let with = charged_bytes(&sizes, 2, 1000);
        assert_eq!(with - two, 1000 * (4096 + 192));
    }
}
