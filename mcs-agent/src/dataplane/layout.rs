//! The expected layout of every pinned map, and the checks that decide
//! whether an earlier agent's pins can be adopted. The layout is
//! `mcs_common::MAPS` (the one table of maps) in aya's terms.

use std::{fs, path::Path};

use aya::maps::{Array, Map, MapData, MapInfo, MapType};

use super::pins::PinLedger;
use mcs_common::{
    ABI_MAGIC, ABI_VERSION, AbiInfo, Capacity, MAGLEV_CHUNK_BYTES, MAPS, MapDef, MapKind,
    default_entries, names,
};

use crate::reconcile::Capacities;

/// What a pinned map must look like to be adopted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*` creation flags (preallocation, LRU lists, mmap).
    pub flags: u32,
}

impl MapSpec {
    /// A row of `mcs_common::MAPS`.
    pub const fn of(def: &MapDef) -> Self {
        Self {
            name: def.name,
            map_type: match def.kind {
                MapKind::Hash => MapType::Hash,
                MapKind::LruHash => MapType::LruHash,
                MapKind::Array => MapType::Array,
                MapKind::PerCpuArray => MapType::PerCpuArray,
            },
            key_size: def.key_size,
            value_size: def.value_size,
            max_entries: def.max_entries,
            flags: def.flags,
        }
    }
}

/// Every pinned map as this agent's eBPF object declares it: the rows of
/// `mcs_common::MAPS`, in its order (a root test checks this table
/// against the loaded object).
pub const EXPECTED: [MapSpec; MAPS.len()] = {
    let mut specs = [MapSpec::of(&MAPS[0]); MAPS.len()];
    let mut i = 1;
    while i < MAPS.len() {
        specs[i] = MapSpec::of(&MAPS[i]);
        i += 1;
    }
    specs
};

/// Map capacities, sized per node by the flags of `mcs-agent run` (every
/// map but the fixed ones: `mcs_common::Capacity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Frontends (service ports and two markers per ClusterSetIP): the
    /// service map, names and per-frontend counters.
    pub frontends: u32,
    /// Backend slots over all frontends.
    pub backend_slots: u32,
    /// Distinct backends (address and port) with their own counters: the
    /// per-CPU counter array takes 32 bytes × this × possible CPUs.
    pub backends: u32,
    /// Chunks (8 bytes) of the Maglev table array.
    pub maglev_chunks: u32,
    /// Conntrack entries (two per translated flow).
    pub conntrack: u32,
    /// Session-affinity entries.
    pub affinity: u32,
    /// Socket-LB reverse translations.
    pub sock_revnat: u32,
    /// The IPv6 maps' own capacities (`mcs_common::MAX_*_V6`): frontends,
    /// backend slots, conntrack and affinity entries.
    pub frontends_v6: u32,
    pub backend_slots_v6: u32,
    pub conntrack_v6: u32,
    pub affinity_v6: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            frontends: default_entries(Capacity::Frontends),
            backend_slots: default_entries(Capacity::BackendSlots),
            backends: default_entries(Capacity::Backends),
            maglev_chunks: default_entries(Capacity::MaglevChunks),
            conntrack: default_entries(Capacity::Conntrack),
            affinity: default_entries(Capacity::Affinity),
            sock_revnat: default_entries(Capacity::SockRevnat),
            frontends_v6: default_entries(Capacity::FrontendsV6),
            backend_slots_v6: default_entries(Capacity::BackendSlotsV6),
            conntrack_v6: default_entries(Capacity::ConntrackV6),
            affinity_v6: default_entries(Capacity::AffinityV6),
        }
    }
}

impl MapSizes {
    /// Maglev table chunks for `bytes` of tables.
    pub fn maglev_chunks_for(bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(u64::from(MAGLEV_CHUNK_BYTES))).unwrap_or(u32::MAX)
    }

    /// Entries of every map sized by `capacity`.
    pub fn entries(&self, capacity: Capacity, fixed: u32) -> u32 {
        match capacity {
            Capacity::Fixed => fixed,
            Capacity::Frontends => self.frontends,
            Capacity::BackendSlots => self.backend_slots,
            Capacity::Backends => self.backends,
            Capacity::MaglevChunks => self.maglev_chunks,
            Capacity::Conntrack => self.conntrack,
            Capacity::Affinity => self.affinity,
            Capacity::SockRevnat => self.sock_revnat,
            Capacity::FrontendsV6 => self.frontends_v6,
            Capacity::BackendSlotsV6 => self.backend_slots_v6,
            Capacity::ConntrackV6 => self.conntrack_v6,
            Capacity::AffinityV6 => self.affinity_v6,
        }
    }

    /// The sized maps by name, as `EbpfLoader::map_max_entries` takes them.
    pub fn overrides(&self) -> Vec<(&'static str, u32)> {
        MAPS.iter()
            .filter(|def| def.capacity != Capacity::Fixed)
            .map(|def| (def.name, self.entries(def.capacity, def.max_entries)))
            .collect()
    }

    /// [`EXPECTED`] with these sizes.
    pub fn expected(&self) -> [MapSpec; names::ALL.len()] {
        let mut specs = EXPECTED;
        for (spec, def) in specs.iter_mut().zip(&MAPS) {
            spec.max_entries = self.entries(def.capacity, def.max_entries);
        }
        specs
    }

    /// What the reconciler must keep within.
    pub fn capacities(&self) -> Capacities {
        Capacities {
            frontends: self.frontends,
            backend_slots: self.backend_slots,
            backends: self.backends,
            maglev_chunks: self.maglev_chunks,
            frontends_v6: self.frontends_v6,
            backend_slots_v6: self.backend_slots_v6,
        }
    }
}

/// Maps whose entries refer to each other by frontend id and slot: adopted
/// together or not at all (a service entry names its id, slots and table
/// place; a name belongs to an id). When one of them cannot be adopted
/// (a layout change, another size), the others are recreated with it and
/// the first sync writes all of them anew; nothing established depends on
/// them (conntrack entries carry their own translation).
pub const FRONTEND_GROUP: [&str; 6] = [
    names::SERVICES,
    names::BACKENDS,
    names::FRONTEND_META,
    names::MAGLEV,
    names::SERVICES_V6,
    names::BACKENDS_V6,
];

/// What happened to each pinned map at load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptionReport {
    /// Compatible pins reused as they are (state kept).
    pub adopted: Vec<&'static str>,
    /// No pin existed: created fresh.
    pub created: Vec<&'static str>,
    /// Incompatible pins removed and recreated, with the reason.
    pub recreated: Vec<(&'static str, String)>,
    /// Pins of maps this agent no longer has (an older name of a map whose
    /// layout or flags changed), removed.
    pub retired: Vec<String>,
}

impl AdoptionReport {
    /// Whether the reconciler should rebuild its state from the maps.
    pub fn adopted_state(&self) -> bool {
        self.adopted.contains(&names::SERVICES) && self.adopted.contains(&names::BACKENDS)
    }

    /// Whether no map was pinned before this agent (every pin is its own).
    pub fn found_nothing(&self) -> bool {
        self.adopted.is_empty() && self.recreated.is_empty() && self.retired.is_empty()
    }
}

/// What recreating a map costs, for the log line that announces it.
pub fn disruption(name: &str) -> &'static str {
    match name {
        names::CONNTRACK | names::CONNTRACK_V6 => {
            "established flows lose their entries; Maglev re-selects the same backend for most of them, flows whose backend changed meanwhile may reset"
        }
        names::AFFINITY | names::AFFINITY_V6 => {
            "ClientIP affinity bindings are lost; Maglev keeps most clients on the same backend"
        }
        names::FRONTEND_STATS
        | names::BACKEND_STATS
        | names::SOCK_STATS
        | "MCS_SOCK_STATS"
        | names::DROPS => "counters restart from zero",
        // `_V1` is retired by the upgrade to `_V2` (entries carry a last use).
        names::SOCK_REVNAT | "MCS_SOCK_REV_V1" => {
            "sockets connected through socket LB before the restart see the backend instead of the ClusterSetIP in getpeername/recvfrom"
        }
        names::CLOCK => {
            "calibrated again before the first sync; until then entry timestamps come from the clock helper"
        }
        names::PREFILTER => {
            "rebuilt from the services, backends and conntrack before the program is attached; no flow is affected"
        }
        _ => "rebuilt from the source at the first sync; no established flow is affected",
    }
}

fn describe(info: &MapInfo, expected: &MapSpec) -> Option<String> {
    let map_type = info.map_type().ok();
    let mut differences = Vec::new();
    if map_type != Some(expected.map_type) {
        differences.push(format!(
            "type {map_type:?} (expected {:?})",
            expected.map_type
        ));
    }
    for (what, actual, wanted) in [
        ("key size", info.key_size(), expected.key_size),
        ("value size", info.value_size(), expected.value_size),
        ("max entries", info.max_entries(), expected.max_entries),
    ] {
        if actual != wanted {
            differences.push(format!("{what} {actual} (expected {wanted})"));
        }
    }
    if info.map_flags() != expected.flags {
        differences.push(format!(
            "flags {:#x} (expected {:#x})",
            info.map_flags(),
            expected.flags
        ));
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

fn stored_abi(pin_dir: &Path) -> Option<AbiInfo> {
    let data = MapData::from_pin(pin_dir.join(names::ABI)).ok()?;
    let map = Map::from_map_data(data).ok()?;
    let abi: Array<MapData, AbiInfo> = Array::try_from(map).ok()?;
    abi.get(&0, 0).ok()
}

/// Checks every pin against [`EXPECTED`] (with `sizes`) and the stored
/// layout version, and moves the ones that cannot be adopted aside through
/// `ledger` (never silently: each is in the report with its reason), so a
/// start that fails can put them back.
pub fn prepare_pins(pin_dir: &Path, sizes: &MapSizes, ledger: &mut PinLedger) -> AdoptionReport {
    let mut report = AdoptionReport::default();
    let expected = sizes.expected();
    let any_pinned = expected.iter().any(|spec| pin_dir.join(spec.name).exists());
    let version_problem = if !any_pinned {
        None
    } else {
        match stored_abi(pin_dir) {
            Some(abi) if abi.magic == ABI_MAGIC && abi.version == ABI_VERSION => None,
            Some(abi) if abi.magic == ABI_MAGIC => Some(format!(
                "pinned by layout version {} (this agent has {ABI_VERSION})",
                abi.version
            )),
            _ => Some("no mcs layout version stored with the pins".to_owned()),
        }
    };
    if let Ok(entries) = fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("MCS_") && !names::ALL.contains(&name.as_str()) {
                ledger.replace(&entry.path());
                report.retired.push(name);
            }
        }
    }
    let problems: Vec<Option<Option<String>>> = expected
        .iter()
        .map(|spec| {
            let path = pin_dir.join(spec.name);
            path.exists().then(|| match MapInfo::from_pin(&path) {
                Err(error) => Some(format!("unreadable pin: {error}")),
                Ok(info) => describe(&info, spec).or_else(|| version_problem.clone()),
            })
        })
        .collect();
    // The first member of the frontend group that cannot be adopted takes
    // the others with it.
    let group_breaker = expected
        .iter()
        .zip(&problems)
        .find(|(spec, problem)| {
            FRONTEND_GROUP.contains(&spec.name) && !matches!(problem, Some(None))
        })
        .map(|(spec, _)| spec.name);
    for (spec, problem) in expected.iter().zip(problems) {
        let path = pin_dir.join(spec.name);
        let problem = match (problem, group_breaker) {
            (None, _) => {
                report.created.push(spec.name);
                continue;
            }
            (Some(None), Some(breaker)) if FRONTEND_GROUP.contains(&spec.name) => Some(format!(
                "{breaker} is created anew, and frontend ids, slots, names and table places are only valid together"
            )),
            (Some(problem), _) => problem,
        };
        match problem {
            None => report.adopted.push(spec.name),
            Some(reason) => {
                ledger.replace(&path);
                report.recreated.push((spec.name, reason));
            }
        }
    }
    report
}
