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
use mcs_common::{ABI_MAGIC, AbiInfo, CT_F_REPLY, CtKey, CtValue, PROTO_TCP, names, programs};

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
        conntrack: 4096,
        backends: 128,
    };
    let max_entries = |name: &str| {
        aya::maps::MapInfo::from_pin(dataplane::map_pin_dir(&pins.0).join(name))
            .expect("map info")
            .max_entries()
    };
    let (first, report) =
        Dataplane::load(&pins.0, &small, LoadOptions::default()).expect("first load");
    assert_eq!(report.created.len(), names::ALL.len(), "{report:?}");
    assert_eq!(max_entries(names::CONNTRACK), 4096);
    assert_eq!(max_entries(names::BACKEND_STATS), 128);
    first.shutdown(false);

    // The same sizes adopt everything.
    let (second, report) =
        Dataplane::load(&pins.0, &small, LoadOptions::default()).expect("second load");
    assert_eq!(report.adopted.len(), names::ALL.len(), "{report:?}");
    second.shutdown(false);

    // Other sizes recreate exactly the two sized maps, naming the change.
    let (third, report) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("third load");
    let mut recreated: Vec<_> = report.recreated.iter().map(|(name, _)| *name).collect();
    recreated.sort_unstable();
    let mut sized = [names::BACKEND_STATS, names::CONNTRACK];
    sized.sort_unstable();
    assert_eq!(recreated, sized, "{report:?}");
    for (name, reason) in &report.recreated {
        let was = if *name == names::CONNTRACK { 4096 } else { 128 };
        assert!(
            reason.contains(&format!("max entries {was} (expected")),
            "{name}: {reason}"
        );
    }
    assert_eq!(max_entries(names::CONNTRACK), mcs_common::MAX_CONNTRACK);
    assert_eq!(max_entries(names::BACKEND_STATS), mcs_common::MAX_BACKENDS);
    third.shutdown(true);
}

/// The memory the kernel accounts to each map (`bpftool map show`'s
/// `memlock`) is what `dataplane::memory` says the agent's cgroup pays for
/// it (the DaemonSet's memory limit is sized from it).
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn map_memory_matches_the_kernels_accounting() {
    let pins = PinDir::new("memory");
    let (dataplane, _) =
        Dataplane::load(&pins.0, &MapSizes::default(), LoadOptions::default()).expect("load");
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u64;
    for spec in MapSizes::default().expected() {
        let output = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(dataplane::map_pin_dir(&pins.0).join(spec.name))
            .output()
            .expect("run bpftool");
        assert!(output.status.success(), "bpftool: {output:?}");
        let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let memlock = shown["bytes_memlock"].as_u64().expect("bytes_memlock");
        let estimate = dataplane::memory::map_bytes(&spec, cpus, 0);
        assert!(
            estimate >= memlock && estimate - memlock <= 8192,
            "{}: the kernel accounts {memlock} bytes, the estimate is {estimate}",
            spec.name
        );
    }
    dataplane.shutdown(true);
}
