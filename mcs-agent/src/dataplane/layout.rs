//! The expected layout of every pinned map, and the checks that decide
//! whether an earlier agent's pins can be adopted. The layout is
//! `mcs_common::MAPS` (the one table of maps) in aya's terms.

use std::{fs, path::Path};

use aya::maps::{Array, Map, MapData, MapInfo, MapType};

use super::pins::PinLedger;
use mcs_common::{
    ABI_MAGIC, ABI_VERSION, AbiInfo, MAPS, MAX_BACKENDS, MAX_CONNTRACK, MapDef, MapKind, names,
};

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

/// Map capacities an operator may size (`--conntrack-max`,
/// `--backends-max`); every other map has the object's fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Conntrack entries (two per translated flow).
    pub conntrack: u32,
    /// Distinct backends (address and port) with their own counters: the
    /// per-CPU counter array takes 32 bytes × this × possible CPUs.
    pub backends: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            conntrack: MAX_CONNTRACK,
            backends: MAX_BACKENDS,
        }
    }
}

impl MapSizes {
    /// The sized maps by name, as `EbpfLoader::map_max_entries` takes them.
    pub fn overrides(&self) -> [(&'static str, u32); 2] {
        [
            (names::CONNTRACK, self.conntrack),
            (names::BACKEND_STATS, self.backends),
        ]
    }

    /// [`EXPECTED`] with these sizes.
    pub fn expected(&self) -> [MapSpec; names::ALL.len()] {
        let mut specs = EXPECTED;
        for spec in &mut specs {
            if let Some((_, entries)) = self
                .overrides()
                .into_iter()
                .find(|(name, _)| *name == spec.name)
            {
                spec.max_entries = entries;
            }
        }
        specs
    }
}

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
        names::CONNTRACK => {
            "established flows lose their entries; Maglev re-selects the same backend for most of them, flows whose backend changed meanwhile may reset"
        }
        names::AFFINITY => {
            "ClientIP affinity bindings are lost; Maglev keeps most clients on the same backend"
        }
        names::FRONTEND_STATS | names::BACKEND_STATS | names::SOCK_STATS | names::DROPS => {
            "counters restart from zero"
        }
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
    for spec in &expected {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            report.created.push(spec.name);
            continue;
        }
        let problem = match MapInfo::from_pin(&path) {
            Err(error) => Some(format!("unreadable pin: {error}")),
            Ok(info) => describe(&info, spec).or_else(|| version_problem.clone()),
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
