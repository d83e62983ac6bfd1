//! Pinned-state tier: adoption of an earlier agent's maps, detection of
//! incompatible layouts, and the one table of maps (`mcs_common::MAPS`)
//! matching the object and the agent's map handles.
//!
//! Needs root (CAP_BPF) and bpffs; run by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::Command,
};

use aya::EbpfLoader;
use mcs_agent::{
    dataplane::{
        self, Dataplane, EBPF_OBJECT, LoadOptions, MapHandles, MapSizes, layout::EXPECTED,
        prefilter::Member,
    },
    desired,
    model::manifest,
    reconcile::Reconciler,
};
use mcs_common::{
    ABI_MAGIC, AbiInfo, CT_F_REPLY, Capacity, CtKey, CtValue, MAPS, PROTO_TCP, names, programs,
};

/// Root, and bpffs where the agent pins.
fn require_root_and_bpffs() {
    mcs_tests::require_root();
    assert!(
        dataplane::is_bpffs(std::path::Path::new("/sys/fs/bpf")),
        "bpffs not mounted at /sys/fs/bpf (cargo xtask setup mounts it)"
    );
}

/// A private pin directory, removed (with everything pinned) on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(test: &str) -> Self {
        require_root_and_bpffs();
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/mcs-test-{test}-{}",
            std::process::id()
        ));
        dataplane::remove_pins(&path);
        Self(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        dataplane::remove_pins(&self.0);
    }
}

const MANIFEST: &str = r#"
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec: {ips: ["10.96.100.10"], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.101.1.10"]}, {addresses: ["10.102.1.10"]}]
"#;

fn desired_state(yaml: &str) -> desired::DesiredState {
    let (snapshot, _) = manifest::snapshot_from_yaml(yaml).expect("manifest");
    desired::compute(&snapshot).0
}

/// The table of maps, the object and the handles agree: every map the
/// kernel creates from the object is its row of the table (the eBPF side
/// also checks its declarations against the rows at compile time), the
/// object declares nothing else (no benchmark map or program), and the
/// agent's handles take every map of the table.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn expected_layout_matches_the_object() {
    // Load without any pin so nothing but the object decides the layout.
    let pins = PinDir::new("layout");
    let mut loader = EbpfLoader::new();
    let paths: Vec<_> = names::ALL
        .iter()
        .map(|name| (*name, dataplane::map_pin_dir(&pins.0).join(name)))
        .collect();
    std::fs::create_dir_all(dataplane::map_pin_dir(&pins.0)).expect("pin dir");
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).expect("load object");
    for spec in &EXPECTED {
        let path = dataplane::map_pin_dir(&pins.0).join(spec.name);
        let info = aya::maps::MapInfo::from_pin(&path).expect("map info");
        assert_eq!(info.map_type().ok(), Some(spec.map_type), "{}", spec.name);
        assert_eq!(info.key_size(), spec.key_size, "{} key", spec.name);
        assert_eq!(info.value_size(), spec.value_size, "{} value", spec.name);
        assert_eq!(
            info.max_entries(),
            spec.max_entries,
            "{} max entries",
            spec.name
        );
        assert_eq!(info.map_flags(), spec.flags, "{} flags", spec.name);
    }
    assert_eq!(EXPECTED.map(|spec| spec.name), names::ALL);

    // Nothing beyond the table: aya-log's ring buffer and the data
    // sections (`.rodata`, ...) are all the object may add.
    let extra: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| !names::ALL.contains(name) && *name != "AYA_LOGS" && !name.starts_with('.'))
        .collect();
    assert!(extra.is_empty(), "maps outside the table: {extra:?}");
    let object_programs: BTreeSet<&str> = ebpf.programs().map(|(name, _)| name).collect();
    assert_eq!(object_programs, BTreeSet::from(programs::ALL));

    // The handles take every map of the table.
    let _maps = MapHandles::take(&mut ebpf).expect("map handles");
    let unhandled: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| names::ALL.contains(name))
        .collect();
    assert!(unhandled.is_empty(), "maps without a handle: {unhandled:?}");
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_second_agent_adopts_the_pinned_maps_and_diffs() {
    let pins = PinDir::new("adopt");
    let desired = desired_state(MANIFEST);
    {
        let (mut first, report) =
            Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
                .expect("first load");
        assert_eq!(report.created.len(), names::ALL.len());
        let mut maps = first.maps().expect("maps");
        let applied = Reconciler::new().apply(&desired, &mut maps);
        assert!(applied.errors.is_empty());
        first.shutdown(false); // keep the pins, as after SIGKILL or upgrade
    }
    let (mut second, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
            .expect("second load");
    assert_eq!(report.adopted.len(), names::ALL.len(), "{report:?}");
    assert!(report.adopted_state());
    let mut maps = second.maps().expect("maps");
    let state = maps.read_state().expect("read pinned state");
    assert_eq!(state.backends.len(), 2);
    let mut reconciler = Reconciler::adopt(&state).expect("adopt");
    let again = reconciler.apply(&desired, &mut maps);
    assert_eq!(
        (again.added, again.removed),
        (0, 0),
        "a diff, not a flush: {again:?}"
    );
    // A change made while no agent ran is applied as a diff.
    let changed = desired_state(&MANIFEST.replace(", {addresses: [\"10.102.1.10\"]}", ""));
    let report = reconciler.apply(&changed, &mut maps);
    assert_eq!((report.added, report.updated, report.removed), (0, 1, 0));
    assert_eq!(maps.read_state().expect("state").backends.len(), 1);
    second.shutdown(true);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_prefilter_created_next_to_adopted_maps_is_rebuilt_from_them() {
    let pins = PinDir::new("prefilter");
    let backend = Ipv4Addr::new(10, 101, 1, 10);
    let vip = Ipv4Addr::new(10, 96, 100, 10);
    // A flow through a backend no map lists any more (retired, TCP kept).
    let gone = SocketAddrV4::new(Ipv4Addr::new(10, 103, 1, 10), 8080);
    {
        let (mut first, _) = Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
            .expect("first load");
        let mut maps = first.maps().expect("maps");
        let applied = Reconciler::new().apply(&desired_state(MANIFEST), &mut maps);
        assert!(applied.errors.is_empty());
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 1), 40000);
        let key = CtKey::new(gone, client, PROTO_TCP);
        let value = CtValue::new(SocketAddrV4::new(vip, 80), CT_F_REPLY, 0, gone, 0);
        maps.conntrack.insert(key, value, 0).expect("flow");
        first.shutdown(false);
    }
    // As after an upgrade from an agent without the prefilter.
    std::fs::remove_file(dataplane::map_pin_dir(&pins.0).join(names::PREFILTER))
        .expect("unpin the prefilter");
    let (mut second, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
            .expect("second load");
    assert_eq!(report.created, [names::PREFILTER], "{report:?}");
    // The agent's adoption path: one read serves the prefilter and the
    // reconciler.
    let (maps, state) = second.maps_with_state().expect("maps");
    assert!(
        state.services.iter().any(|(key, _)| key.addr() == vip),
        "{:?}",
        state.services
    );
    assert!(state.backends.values().any(|value| value.addr() == backend));
    let adopted = Reconciler::adopt(&state).expect("adopt");
    assert_eq!(adopted.frontend_count(), state.services.len());
    assert!(maps.prefilter.contains(Member::destination(vip)));
    assert!(maps.prefilter.contains(Member::source(backend)));
    assert!(maps.prefilter.contains(Member::source(*gone.ip())));
    assert!(!maps.prefilter.contains(Member::destination(*gone.ip())));
    second.shutdown(true);
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn an_incompatible_pinned_map_is_detected_and_recreated() {
    let pins = PinDir::new("mismatch");
    {
        let (first, _) = Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
            .expect("first load");
        first.shutdown(false);
    }
    // An older agent's conntrack map with a different value layout.
    let ct_pin = dataplane::map_pin_dir(&pins.0).join(names::CONNTRACK);
    std::fs::remove_file(&ct_pin).expect("unpin conntrack");
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&ct_pin)
        .args([
            "type",
            "lru_hash",
            "key",
            "16",
            "value",
            "32",
            "entries",
            "1024",
            "name",
            names::CONNTRACK,
        ])
        .status()
        .expect("run bpftool (installed by cargo xtask setup)");
    assert!(status.success(), "bpftool map create");

    // And the pin of a map under a name this agent no longer uses (as a
    // map's older `_Vn` name after its layout changed).
    let old_pin = dataplane::map_pin_dir(&pins.0).join("MCS_CT_V0");
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&old_pin)
        .args([
            "type",
            "lru_hash",
            "key",
            "16",
            "value",
            "40",
            "entries",
            "1024",
            "name",
            "MCS_CT_V0",
        ])
        .status()
        .expect("run bpftool");
    assert!(status.success(), "bpftool map create");

    let (second, report) = Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
        .expect("second load");
    assert_eq!(report.retired, ["MCS_CT_V0"], "{report:?}");
    assert!(!old_pin.exists());
    let recreated: Vec<_> = report.recreated.iter().map(|(name, _)| *name).collect();
    assert_eq!(recreated, [names::CONNTRACK], "{report:?}");
    let reason = &report.recreated[0].1;
    assert!(reason.contains("value size 32 (expected 40)"), "{reason}");
    assert!(reason.contains("max entries 1024"), "{reason}");
    assert_eq!(report.adopted.len(), names::ALL.len() - 1);
    second.shutdown(false);

    // A different layout version recreates everything, loudly.
    let abi_pin = dataplane::map_pin_dir(&pins.0).join(names::ABI);
    let data = aya::maps::MapData::from_pin(&abi_pin).expect("abi pin");
    let mut abi: aya::maps::Array<_, AbiInfo> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).expect("map"))
            .expect("array");
    abi.set(
        0,
        AbiInfo {
            magic: ABI_MAGIC,
            version: 999,
        },
        0,
    )
    .expect("write version");
    drop(abi);
    let (third, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("third load");
    assert_eq!(report.recreated.len(), names::ALL.len(), "{report:?}");
    assert!(
        report
            .recreated
            .iter()
            .all(|(_, reason)| reason.contains("layout version 999"))
    );
    assert!(report.adopted.is_empty());
    third.shutdown(true);
    assert!(
        !dataplane::map_pin_dir(&pins.0).exists(),
        "detach removes the pins"
    );
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn sized_maps_are_created_at_their_size_and_resized_loudly() {
    let pins = PinDir::new("sizes");
    let small = MapSizes {
        frontends: 2048,
        backend_slots: 4096,
        backends: 128,
        maglev_chunks: 4096,
        conntrack: 4096,
        affinity: 2048,
        sock_revnat: 1024,
        frontends_v6: 512,
        backend_slots_v6: 1024,
        conntrack_v6: 2048,
        affinity_v6: 512,
        sock_revnat_v6: 1024,
    };
    let max_entries = |name: &str| {
        aya::maps::MapInfo::from_pin(dataplane::map_pin_dir(&pins.0).join(name))
            .expect("map info")
            .max_entries()
    };
    let (first, report) =
        Dataplane::load(&pins.0, &small, LoadOptions::default()).expect("first load");
    assert_eq!(report.created.len(), names::ALL.len(), "{report:?}");
    for def in MAPS {
        assert_eq!(
            max_entries(def.name),
            small.entries(def.capacity, def.max_entries),
            "{}",
            def.name
        );
    }
    first.shutdown(false);

    // The same sizes adopt everything.
    let (second, report) =
        Dataplane::load(&pins.0, &small, LoadOptions::default()).expect("second load");
    assert_eq!(report.adopted.len(), names::ALL.len(), "{report:?}");
    second.shutdown(false);

    // Other sizes recreate exactly the sized maps, naming the change.
    let (third, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("third load");
    let recreated: BTreeSet<&str> = report.recreated.iter().map(|(name, _)| *name).collect();
    let sized: BTreeSet<&str> = MAPS
        .iter()
        .filter(|def| def.capacity != Capacity::Fixed)
        .map(|def| def.name)
        .collect();
    assert_eq!(recreated, sized, "{report:?}");
    for (name, reason) in &report.recreated {
        let def = MAPS.iter().find(|def| def.name == *name).expect("a row");
        let was = small.entries(def.capacity, def.max_entries);
        assert!(
            reason.contains(&format!("max entries {was} (expected")),
            "{name}: {reason}"
        );
    }
    assert_eq!(max_entries(names::CONNTRACK), mcs_common::MAX_CONNTRACK);
    assert_eq!(max_entries(names::BACKEND_STATS), mcs_common::MAX_BACKENDS);
    third.shutdown(true);
}

/// Every pin under the map directory and the id of the map it holds.
fn pinned_ids(dir: &std::path::Path) -> std::collections::BTreeMap<String, u32> {
    std::fs::read_dir(dataplane::map_pin_dir(dir))
        .expect("map pins")
        .flatten()
        .map(|entry| {
            let id = aya::maps::MapInfo::from_pin(entry.path())
                .expect("map info")
                .id();
            (entry.file_name().to_string_lossy().into_owned(), id)
        })
        .collect()
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_start_that_fails_or_stops_before_attaching_leaves_the_pins_as_it_found_them() {
    let pins = PinDir::new("rollback");
    {
        let (first, _) = Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
            .expect("first load");
        first.shutdown(false);
    }
    // An older agent's map under a name this one retired, and a conntrack
    // of another layout: a start replaces both.
    let map_dir = dataplane::map_pin_dir(&pins.0);
    let create = |pin: &std::path::Path, name: &str, value: &str| {
        let status = Command::new("bpftool")
            .args(["map", "create"])
            .arg(pin)
            .args([
                "type", "lru_hash", "key", "16", "value", value, "entries", "1024", "name", name,
            ])
            .status()
            .expect("run bpftool (installed by cargo xtask setup)");
        assert!(status.success(), "bpftool map create {name}");
    };
    std::fs::remove_file(map_dir.join(names::CONNTRACK)).expect("unpin conntrack");
    create(&map_dir.join(names::CONNTRACK), names::CONNTRACK, "32");
    create(&map_dir.join("MCS_SOCK_REV_V1"), "MCS_SOCK_REV_V1", "16");
    let before = pinned_ids(&pins.0);

    // A load that fails (a conntrack the kernel cannot create) puts back
    // what it replaced and removes what it created.
    let broken = MapSizes {
        conntrack: 0,
        ..MapSizes::default()
    };
    assert!(Dataplane::load(&pins.0, &broken, LoadOptions::default()).is_err());
    assert_eq!(pinned_ids(&pins.0), before, "after a failed load");
    assert!(!dataplane::pins::stash_dir(&pins.0).exists());

    // A load that succeeds but is abandoned before attaching (its source
    // never delivered, SIGTERM meanwhile, a port it cannot bind) likewise.
    let (second, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("load");
    assert_eq!(report.retired, ["MCS_SOCK_REV_V1"], "{report:?}");
    assert_eq!(report.recreated.len(), 1, "{report:?}");
    assert_ne!(pinned_ids(&pins.0), before, "the load replaced the maps");
    second.abandon();
    assert_eq!(pinned_ids(&pins.0), before, "after an abandoned start");

    // One killed between the two (the replaced pins still aside): the next
    // start puts them back first, then replaces them again, and keeps its
    // own maps on a normal stop.
    let (third, _) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("load");
    let replaced = dataplane::pins::stash_dir(&pins.0);
    assert!(replaced.join(names::CONNTRACK).exists());
    std::mem::forget(third); // as a SIGKILL would: no rollback, no commit
    let (fourth, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("load");
    assert_eq!(report.retired, ["MCS_SOCK_REV_V1"], "{report:?}");
    fourth.shutdown(false);
    assert!(!replaced.exists(), "a normal stop keeps nothing aside");
    let after = pinned_ids(&pins.0);
    assert!(!after.contains_key("MCS_SOCK_REV_V1"));
    assert_ne!(after.get(names::CONNTRACK), before.get(names::CONNTRACK));
}

/// Services, slots, names and tables refer to each other by frontend id
/// and table place: when one of them cannot be adopted (here the table
/// array of another size), the others are recreated with it and the agent
/// syncs from scratch; conntrack and the counters are kept.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn the_frontend_maps_are_adopted_together_or_recreated_together() {
    let pins = PinDir::new("group");
    let desired = desired_state(MANIFEST);
    {
        let (mut first, _) = Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default())
            .expect("first load");
        let mut maps = first.maps().expect("maps");
        assert!(
            Reconciler::new()
                .apply(&desired, &mut maps)
                .errors
                .is_empty()
        );
        first.shutdown(false);
    }
    let bigger = MapSizes {
        maglev_chunks: MapSizes::default().maglev_chunks * 2,
        ..MapSizes::default()
    };
    let (mut second, report) =
        Dataplane::load(&pins.0, &bigger, LoadOptions::default()).expect("second load");
    let recreated: BTreeSet<&str> = report.recreated.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        recreated,
        BTreeSet::from(dataplane::layout::FRONTEND_GROUP),
        "{report:?}"
    );
    for (name, reason) in &report.recreated {
        if *name != names::MAGLEV {
            assert!(reason.contains("only valid together"), "{name}: {reason}");
        }
    }
    assert!(!report.adopted_state());
    assert!(report.adopted.contains(&names::CONNTRACK));
    assert!(report.adopted.contains(&names::FRONTEND_STATS));
    // A cold sync into the new maps, as the agent does.
    let mut maps = second.maps().expect("maps");
    assert!(maps.read_state().expect("state").services.is_empty());
    let mut reconciler = Reconciler::with_capacities(bigger.capacities());
    let applied = reconciler.apply(&desired, &mut maps);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert_eq!(maps.read_state().expect("state").backends.len(), 2);
    second.shutdown(true);
}

/// The kernel's accounting (`memlock` in each map's fdinfo) of every map
/// the agent creates is what the memory model (`dataplane::memory`, the
/// formula of docs/operations.md) says, at two sets of sizes; the frontend
/// names, allocated as written, count the names present.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn map_memory_is_what_the_model_says_at_two_sizes() {
    use mcs_agent::dataplane::memory;
    let cpus = memory::possible_cpus().expect("possible CPUs");
    let small = MapSizes {
        frontends: 4096,
        backend_slots: 8192,
        backends: 1024,
        maglev_chunks: 100_000,
        conntrack: 10_000,
        affinity: 3000,
        sock_revnat: 5000,
        frontends_v6: 1000,
        backend_slots_v6: 3000,
        conntrack_v6: 5000,
        affinity_v6: 1000,
        sock_revnat_v6: 2000,
    };
    let desired = desired_state(MANIFEST);
    for (test, sizes) in [
        ("memory-small", small),
        ("memory-default", MapSizes::default()),
    ] {
        let pins = PinDir::new(test);
        let (mut dataplane, _) =
            Dataplane::load(&pins.0, &sizes, LoadOptions::default()).expect("load");
        let mut maps = dataplane.maps().expect("maps");
        let applied = Reconciler::with_capacities(sizes.capacities()).apply(&desired, &mut maps);
        assert!(applied.errors.is_empty(), "{:?}", applied.errors);
        let names_written = maps.read_state().expect("state").frontend_names.len() as u32;
        assert_eq!(
            names_written, 1,
            "a port (ClusterSetIP markers store no name)"
        );
        for def in MAPS {
            let pin = dataplane::map_pin_dir(&pins.0).join(def.name);
            let data = aya::maps::MapData::from_pin(&pin).expect("pin");
            let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
            let fdinfo =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
            let memlock: u64 = fdinfo
                .lines()
                .find_map(|line| line.strip_prefix("memlock:"))
                .and_then(|value| value.trim().parse().ok())
                .expect("memlock in fdinfo");
            let entries = sizes.entries(def.capacity, def.max_entries);
            let present = (def.name == names::FRONTEND_META).then_some(names_written);
            let model = memory::map_bytes(&def, entries, cpus, present);
            assert_eq!(memlock, model, "{} at {entries} entries", def.name);
        }
        dataplane.shutdown(true);
    }
}
