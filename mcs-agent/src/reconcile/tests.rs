//! Reconciler properties, checked against in-memory maps: after every
//! apply the maps render exactly the desired state; unchanged frontends cost
//! no write; at no point does a service entry point at a missing slot.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use mcs_common::{
    BACKEND_F_TERMINATING, BackendKey, BackendValue, BackendValueV6, MaglevPlace, NameValue,
    SVC_F_VIP_MARKER, ServiceKey, ServiceKeyV6, ServiceValue,
};
use proptest::prelude::*;

use super::{DataplaneWriter, Reconciler, WriteError, memory::MemoryMaps};
use crate::{
    desired::{Backend, DesiredState, Frontend, FrontendKind, FrontendSpec},
    model::{ObjectKey, Protocol},
};

/// Checks after every single write that each service's slots exist: the
/// datapath can never pick a missing backend mid-update.
#[derive(Default)]
struct Checked(MemoryMaps);

impl Checked {
    /// Every service's slots exist, its table (read where its entry says,
    /// as the datapath does) suits its backend count and every entry names
    /// an existing slot.
    fn check(&self) {
        if let Err(error) = super::check::check_serving(&self.0) {
            panic!("{error}");
        }
    }
}

impl DataplaneWriter for Checked {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        let result = self.0.put_service(key, value);
        self.check();
        result
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        self.0.delete_service(key)
    }
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        self.0.put_backend(key, value)
    }
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        let result = self.0.delete_backend(key);
        self.check();
        result
    }
    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError> {
        let result = self.0.put_service_v6(key, value);
        self.check();
        result
    }
    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError> {
        self.0.delete_service_v6(key)
    }
    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError> {
        self.0.put_backend_v6(key, value)
    }
    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        let result = self.0.delete_backend_v6(key);
        self.check();
        result
    }
    fn put_frontend_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.0.put_frontend_name(id, name)
    }
    fn delete_frontend_name(&mut self, id: u32) -> Result<(), WriteError> {
        self.0.delete_frontend_name(id)
    }
    fn reset_frontend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.0.reset_frontend_stats(id)
    }
    fn put_cluster_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.0.put_cluster_name(id, name)
    }
    fn reset_backend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.0.reset_backend_stats(id)
    }
    fn put_maglev(&mut self, id: u32, place: MaglevPlace, slots: &[u16]) -> Result<(), WriteError> {
        let result = self.0.put_maglev(id, place, slots);
        self.check();
        result
    }
}

/// Fails every put of chosen frontend ids, per map (single puts and the
/// default one-by-one batch puts alike); the rest reach [`Checked`].
#[derive(Default)]
struct FailingPuts<W = Checked> {
    maps: W,
    names: BTreeSet<u32>,
    slots: BTreeSet<u32>,
    tables: BTreeSet<u32>,
    services: BTreeSet<u32>,
    /// Ids that had a put refused.
    refused: BTreeSet<u32>,
}

impl<W> FailingPuts<W> {
    fn refuse(&mut self, map: &'static str, id: u32) -> Result<(), WriteError> {
        self.refused.insert(id);
        Err(WriteError {
            map,
            op: "insert",
            source: "injected failure".into(),
        })
    }
}

impl<W: DataplaneWriter> DataplaneWriter for FailingPuts<W> {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), WriteError> {
        if self.services.contains(&value.frontend_id) {
            return self.refuse("services", value.frontend_id);
        }
        self.maps.put_service(key, value)
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), WriteError> {
        self.maps.delete_service(key)
    }
    fn put_backend(&mut self, key: &BackendKey, value: &BackendValue) -> Result<(), WriteError> {
        if self.slots.contains(&key.frontend_id) {
            return self.refuse("backends", key.frontend_id);
        }
        self.maps.put_backend(key, value)
    }
    fn delete_backend(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.maps.delete_backend(key)
    }
    fn put_service_v6(
        &mut self,
        key: &ServiceKeyV6,
        value: &ServiceValue,
    ) -> Result<(), WriteError> {
        if self.services.contains(&value.frontend_id) {
            return self.refuse("services_v6", value.frontend_id);
        }
        self.maps.put_service_v6(key, value)
    }
    fn delete_service_v6(&mut self, key: &ServiceKeyV6) -> Result<(), WriteError> {
        self.maps.delete_service_v6(key)
    }
    fn put_backend_v6(
        &mut self,
        key: &BackendKey,
        value: &BackendValueV6,
    ) -> Result<(), WriteError> {
        if self.slots.contains(&key.frontend_id) {
            return self.refuse("backends_v6", key.frontend_id);
        }
        self.maps.put_backend_v6(key, value)
    }
    fn delete_backend_v6(&mut self, key: &BackendKey) -> Result<(), WriteError> {
        self.maps.delete_backend_v6(key)
    }
    fn put_frontend_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        if self.names.contains(&id) {
            return self.refuse("names", id);
        }
        self.maps.put_frontend_name(id, name)
    }
    fn delete_frontend_name(&mut self, id: u32) -> Result<(), WriteError> {
        self.maps.delete_frontend_name(id)
    }
    fn reset_frontend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.maps.reset_frontend_stats(id)
    }
    fn put_cluster_name(&mut self, id: u32, name: &NameValue) -> Result<(), WriteError> {
        self.maps.put_cluster_name(id, name)
    }
    fn reset_backend_stats(&mut self, id: u32) -> Result<(), WriteError> {
        self.maps.reset_backend_stats(id)
    }
    fn put_maglev(&mut self, id: u32, place: MaglevPlace, slots: &[u16]) -> Result<(), WriteError> {
        if self.tables.contains(&id) {
            return self.refuse("maglev", id);
        }
        self.maps.put_maglev(id, place, slots)
    }
}

type Rendered = BTreeMap<Frontend, (FrontendKind, String, Vec<Backend>)>;

/// Reads the maps back into frontends and backends; panics on leaks.
fn render(maps: &MemoryMaps) -> Rendered {
    let mut rendered = Rendered::new();
    let mut slots_seen = 0;
    for (addr, port, proto, service) in maps.service_entries() {
        let frontend = Frontend {
            addr,
            port,
            protocol: Protocol::from_number(proto).expect("valid protocol"),
        };
        let backends = (0..service.backend_count)
            .map(|slot| {
                let key = BackendKey {
                    frontend_id: service.frontend_id,
                    slot,
                };
                let value = maps.slot(frontend.family(), &key).expect("slot exists");
                slots_seen += 1;
                Backend {
                    addr: value.addr,
                    port: value.port,
                    cluster: if value.cluster_id == 0 {
                        "".into()
                    } else {
                        maps.clusters[&value.cluster_id].as_str().into()
                    },
                    // Weights live only in the table: checked below.
                    weight: 1,
                    terminating: value.flags & BACKEND_F_TERMINATING != 0,
                }
            })
            .collect::<Vec<_>>();
        // Every slot owns table entries (all weights are 1 here).
        if let Some(place) = service.maglev() {
            let table = maps.table(place);
            for slot in 0..service.backend_count {
                assert!(
                    table.iter().any(|s| u32::from(*s) == slot),
                    "slot {slot} owns no entry"
                );
            }
        }
        let mut backends = backends;
        backends.sort();
        let kind = if service.flags & SVC_F_VIP_MARKER != 0 {
            FrontendKind::VipMarker
        } else {
            FrontendKind::Service
        };
        // Markers have no name.
        let name = maps
            .names
            .get(&service.frontend_id)
            .cloned()
            .unwrap_or_default();
        rendered.insert(frontend, (kind, name, backends));
    }
    assert_eq!(
        slots_seen,
        maps.backends.len() + maps.backends_v6.len(),
        "leaked backend slots"
    );
    // Tables never share chunks (their places are checked against the
    // reconciler's books by `check::check_ids`).
    if let Err(error) = super::check::render(maps) {
        panic!("{error}");
    }
    assert_eq!(
        maps.service_entries()
            .filter(|(.., s)| s.flags & SVC_F_VIP_MARKER == 0)
            .count(),
        maps.names.len(),
        "leaked frontend names"
    );
    rendered
}

fn expected(desired: &DesiredState) -> Rendered {
    desired
        .frontends
        .iter()
        .map(|(f, s)| {
            let name = match s.kind {
                FrontendKind::Service => s.name.clone(),
                FrontendKind::VipMarker => String::new(),
            };
            (*f, (s.kind, name, s.backends.clone()))
        })
        .collect()
}

/// ClusterSetIPs 10.96.0.0 and .1, and fd00:96::2 and ::3: both families.
fn frontend_strategy() -> impl Strategy<Value = Frontend> {
    (0u8..4, 1u16..4, prop::bool::ANY).prop_map(|(vip, port, udp)| Frontend {
        addr: if vip < 2 {
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, vip))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd00,
                0x96,
                0,
                0,
                0,
                0,
                0,
                vip.into(),
            ))
        },
        port: port * 10,
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
    })
}

fn backend_strategy() -> impl Strategy<Value = Backend> {
    (0u8..12, 0u16..2, 0usize..3, prop::bool::weighted(0.2)).prop_map(
        |(host, port, cluster, terminating)| Backend {
            addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 1, 0, host)),
            port: 8000 + port,
            cluster: ["", "cluster-a", "cluster-b"][cluster].into(),
            weight: 1,
            terminating,
        },
    )
}

/// Port `port` of ClusterSetIP 10.96.0.1 (TCP).
fn frontend(port: u16) -> Frontend {
    Frontend {
        addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        port,
        protocol: Protocol::Tcp,
    }
}

/// Ready backend 10.1.0.HOST:80 in cluster "a".
fn backend(host: u8) -> Backend {
    Backend {
        addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 1, 0, host)),
        port: 80,
        cluster: "a".into(),
        weight: 1,
        terminating: false,
    }
}

fn spec(backends: Vec<Backend>) -> FrontendSpec {
    FrontendSpec {
        kind: FrontendKind::Service,
        name: "ns/svc:http".into(),
        import: ObjectKey::new("ns", "svc").into(),
        backends,
        affinity_timeout: None,
    }
}

fn desired_strategy() -> impl Strategy<Value = DesiredState> {
    prop::collection::btree_map(
        frontend_strategy(),
        prop::collection::btree_set(backend_strategy(), 0..6),
        0..8,
    )
    .prop_map(|frontends| DesiredState {
        frontends: frontends
            .into_iter()
            .map(|(frontend, backends)| {
                (
                    frontend,
                    FrontendSpec {
                        kind: FrontendKind::Service,
                        name: format!("ns/{frontend}"),
                        import: ObjectKey::new("ns", "svc").into(),
                        backends: dedup_by_address(
                            backends
                                .into_iter()
                                .map(|backend| of_family(backend, &frontend))
                                .collect(),
                        ),
                        affinity_timeout: None,
                    },
                )
            })
            .collect(),
    })
}

/// `backend` (10.1.0.HOST) in the family of `frontend` (fd00:1::HOST for an
/// IPv6 one, which keeps the order): a frontend's backends share its family.
fn of_family(backend: Backend, frontend: &Frontend) -> Backend {
    match (frontend.addr, backend.addr) {
        (IpAddr::V6(_), IpAddr::V4(v4)) => Backend {
            addr: IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd00,
                1,
                0,
                0,
                0,
                0,
                0,
                v4.octets()[3].into(),
            )),
            ..backend
        },
        _ => backend,
    }
}

/// Desired states never hold two backends with one address and port.
fn dedup_by_address(mut backends: Vec<Backend>) -> Vec<Backend> {
    backends.dedup_by_key(|b| (b.addr, b.port));
    backends
}

/// The reference counts and pending sets agree with a scan of the applied
/// frontends (what the reconciler did at the end of every apply before).
fn assert_refs_match_a_scan(reconciler: &Reconciler) {
    let mut backends: BTreeMap<(IpAddr, u16), u32> = BTreeMap::new();
    let mut clusters: BTreeMap<String, u32> = BTreeMap::new();
    for applied in reconciler.applied.values() {
        for backend in &applied.backends {
            *backends.entry((backend.addr, backend.port)).or_default() += 1;
            *clusters.entry(backend.cluster.to_string()).or_default() += 1;
        }
    }
    let refs: BTreeMap<(IpAddr, u16), u32> = reconciler
        .backend_refs
        .iter()
        .map(|(identity, count)| (identity, *count))
        .collect();
    assert_eq!(refs, backends);
    assert_eq!(reconciler.cluster_refs, clusters);
    // After an apply, ids are held exactly by referenced backends.
    let held: BTreeSet<_> = reconciler.backend_ids.keys().collect();
    let referenced: BTreeSet<_> = backends.keys().copied().collect();
    assert_eq!(held, referenced);
}

/// Frontends whose spec differs between two states.
fn changed_between(old: &DesiredState, new: &DesiredState) -> BTreeSet<Frontend> {
    old.frontends
        .keys()
        .chain(new.frontends.keys())
        .filter(|f| old.frontends.get(f) != new.frontends.get(f))
        .copied()
        .collect()
}

proptest! {
    #[test]
    fn applying_only_changed_frontends_equals_a_full_apply(
        states in prop::collection::vec(desired_strategy(), 1..10),
        failures in prop::collection::vec(prop::option::of(0usize..30), 10),
    ) {
        // Two agents see the same history (and the same write failures):
        // one applies every state whole, the other only what changed.
        let (mut full, mut incremental) = (Reconciler::new(), Reconciler::new());
        let (mut full_maps, mut incremental_maps) = (Checked::default(), Checked::default());
        let mut previous = DesiredState::default();
        for (desired, fail_after) in states.iter().zip(&failures) {
            full_maps.0.fail_after = fail_after.map(|n| full_maps.0.writes + n);
            incremental_maps.0.fail_after = fail_after.map(|n| incremental_maps.0.writes + n);
            let full_report = full.apply(desired, &mut full_maps);
            let changed = changed_between(&previous, desired);
            let report = incremental.apply_changed(desired, &changed, &mut incremental_maps);
            prop_assert_eq!(&full_maps.0, &incremental_maps.0);
            prop_assert_eq!(full_report.errors.len(), report.errors.len());
            prop_assert_eq!(full_report.retired, report.retired);
            previous = desired.clone();
        }
        // Without failures, both converge on the last state.
        full_maps.0.fail_after = None;
        incremental_maps.0.fail_after = None;
        full.apply(&previous, &mut full_maps);
        let report = incremental.apply_changed(&previous, &BTreeSet::new(), &mut incremental_maps);
        prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        prop_assert_eq!(&full_maps.0, &incremental_maps.0);
        prop_assert_eq!(render(&incremental_maps.0), expected(&previous));
        assert_refs_match_a_scan(&incremental);
    }

    #[test]
    fn maps_always_render_the_desired_state(states in prop::collection::vec(desired_strategy(), 1..12)) {
        let mut reconciler = Reconciler::new();
        let mut maps = Checked::default();
        for desired in &states {
            let report = reconciler.apply(desired, &mut maps);
            prop_assert!(report.errors.is_empty());
            prop_assert_eq!(render(&maps.0), expected(desired));
            assert_refs_match_a_scan(&reconciler);
            // Applying the same state again writes nothing.
            let writes = maps.0.writes;
            let again = reconciler.apply(desired, &mut maps);
            prop_assert!(!again.changed());
            prop_assert_eq!(maps.0.writes, writes);
        }
        // Ids are reused, not leaked: everything removed leaves nothing.
        reconciler.apply(&DesiredState::default(), &mut maps);
        prop_assert!(maps.0.services.is_empty() && maps.0.backends.is_empty());
        prop_assert!(maps.0.names.is_empty() && maps.0.clusters.is_empty());
    }

    #[test]
    fn a_restarted_agent_adopts_the_maps_and_diffs(
        first in desired_strategy(),
        second in desired_strategy(),
    ) {
        let mut maps = Checked::default();
        Reconciler::new().apply(&first, &mut maps);
        let before = maps.0.clone();
        // A new agent adopts the pinned state: the same desired state only
        // re-swaps tables (weights are not stored), nothing is removed.
        let mut adopted = Reconciler::adopt(&maps.0.pinned_state()).expect("adopt");
        let report = adopted.apply(&first, &mut maps);
        prop_assert!(report.errors.is_empty());
        prop_assert_eq!(report.removed + report.added, 0);
        prop_assert_eq!(&maps.0.services, &before.services);
        prop_assert_eq!(&maps.0.backends, &before.backends);
        prop_assert_eq!(&maps.0.maglev, &before.maglev);
        // A change made while it was down is applied as a diff.
        let report = adopted.apply(&second, &mut maps);
        prop_assert!(report.errors.is_empty());
        prop_assert_eq!(render(&maps.0), expected(&second));
        // Ids stay unique: everything removed leaves nothing behind.
        adopted.apply(&DesiredState::default(), &mut maps);
        prop_assert!(maps.0.services.is_empty() && maps.0.backends.is_empty());
    }

    #[test]
    fn failed_writes_are_repaired_by_the_next_apply(
        first in desired_strategy(),
        second in desired_strategy(),
        fail_after in 0usize..40,
    ) {
        let mut reconciler = Reconciler::new();
        let mut maps = MemoryMaps::default();
        reconciler.apply(&first, &mut maps);
        maps.fail_after = Some(maps.writes + fail_after);
        let _partial = reconciler.apply(&second, &mut maps);
        maps.fail_after = None;
        let report = reconciler.apply(&second, &mut maps);
        prop_assert!(report.errors.is_empty());
        prop_assert_eq!(render(&maps), expected(&second));
    }
}

proptest! {
    /// A cold sync writes by groups (all names, slots, tables, then
    /// services): a frontend whose put failed in one group gets nothing of
    /// a later one, so it never becomes visible half written.
    #[test]
    fn a_cold_sync_never_exposes_a_frontend_whose_puts_failed(
        desired in desired_strategy(),
        names in prop::collection::btree_set(0u32..8, 0..3),
        slots in prop::collection::btree_set(0u32..8, 0..3),
        tables in prop::collection::btree_set(0u32..8, 0..3),
        services in prop::collection::btree_set(0u32..8, 0..3),
    ) {
        let mut reconciler = Reconciler::new();
        let mut maps: FailingPuts = FailingPuts { names, slots, tables, services, ..FailingPuts::default() };
        let report = reconciler.apply(&desired, &mut maps);
        // Each frontend with a refused put is reported once, and only those.
        let failed: BTreeSet<Frontend> = report.errors.iter().map(|(f, _)| *f).collect();
        prop_assert_eq!(failed.len(), report.errors.len());
        prop_assert_eq!(failed.len(), maps.refused.len());
        let visible: BTreeSet<Frontend> = maps.maps.0.service_entries().map(|(addr, port, proto, _)| Frontend {
            addr,
            port,
            protocol: Protocol::from_number(proto).expect("valid protocol"),
        }).collect();
        let wanted: BTreeSet<Frontend> = desired.frontends.keys().copied().collect();
        prop_assert_eq!(visible, &wanted - &failed);
        for id in &maps.refused {
            prop_assert!(!maps.maps.0.services.values().any(|s| s.frontend_id == *id));
        }
        // Without failures, the next apply completes every frontend.
        let mut maps = maps.maps;
        let report = reconciler.apply(&desired, &mut maps);
        prop_assert!(report.errors.is_empty());
        prop_assert_eq!(render(&maps.0), expected(&desired));
    }
}

#[test]
fn a_cold_sync_of_several_chunks_reports_exactly_the_failed_frontends() {
    // More frontends than one batch chunk holds, so tables are built ahead
    // on the builder thread and failures land in later chunks.
    let mut desired = DesiredState::default();
    for i in 0..2500u32 {
        let frontend = Frontend {
            addr: std::net::IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let backends = (0..1 + i % 3)
            .map(|j| Backend {
                addr: std::net::IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i * 4 + j)),
                port: 8080,
                cluster: "a".into(),
                weight: 1,
                terminating: false,
            })
            .collect();
        desired.frontends.insert(
            frontend,
            FrontendSpec {
                kind: FrontendKind::Service,
                name: format!("ns/{frontend}"),
                import: ObjectKey::new("ns", "svc").into(),
                backends,
                affinity_timeout: None,
            },
        );
    }
    // (Plain maps: checking every service after every write is quadratic.)
    let mut maps = FailingPuts::<MemoryMaps> {
        services: BTreeSet::from([10]),
        slots: BTreeSet::from([1500]),
        tables: BTreeSet::from([2100]),
        ..FailingPuts::default()
    };
    let mut reconciler = Reconciler::new();
    let report = reconciler.apply(&desired, &mut maps);
    let mut failed_ids: Vec<u32> = report
        .errors
        .iter()
        .map(|(frontend, _)| reconciler.applied[frontend].id)
        .collect();
    failed_ids.sort_unstable();
    assert_eq!(failed_ids, [10, 1500, 2100], "{:?}", report.errors);
    assert_eq!(report.added, 2500 - 3);
    assert_eq!(maps.maps.services.len(), 2500 - 3);
    for id in [10, 1500, 2100] {
        assert!(!maps.maps.services.values().any(|s| s.frontend_id == id));
    }
    let mut maps = maps.maps;
    let report = reconciler.apply(&desired, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(render(&maps), expected(&desired));
}

#[test]
fn backends_beyond_the_counter_capacity_fail_by_name_and_fit_once_freed() {
    let mut reconciler = Reconciler::new().with_max_backends(2);
    let mut maps = Checked::default();
    let mut desired = DesiredState::default();
    desired
        .frontends
        .insert(frontend(80), spec(vec![backend(1), backend(2)]));
    // The same two backends behind another port need no new id.
    desired
        .frontends
        .insert(frontend(81), spec(vec![backend(2), backend(1)]));
    desired
        .frontends
        .insert(frontend(82), spec(vec![backend(3)]));
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let (failed, error) = &report.errors[0];
    assert_eq!(*failed, frontend(82));
    assert!(
        error
            .source
            .to_string()
            .contains("all 2 backend ids in use"),
        "{error}: {}",
        error.source
    );
    // Once a backend is gone its id is released, at the end of that apply;
    // the waiting frontend gets it on the next one.
    desired
        .frontends
        .insert(frontend(80), spec(vec![backend(1)]));
    desired
        .frontends
        .insert(frontend(81), spec(vec![backend(1)]));
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let report = reconciler.apply(&desired, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(render(&maps.0), expected(&desired));
}

#[test]
fn unchanged_frontends_are_not_rewritten_when_others_change() {
    let mut desired = DesiredState::default();
    desired
        .frontends
        .insert(frontend(80), spec(vec![backend(1), backend(2)]));
    desired
        .frontends
        .insert(frontend(81), spec(vec![backend(3)]));
    let mut reconciler = Reconciler::new();
    let mut maps = MemoryMaps::default();
    reconciler.apply(&desired, &mut maps);

    desired
        .frontends
        .insert(frontend(81), spec(vec![backend(3), backend(4)]));
    let before = maps.clone();
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!((report.added, report.updated, report.removed), (0, 1, 0));
    // One new slot, its backend's counters, the table and the count: four
    // writes, none for port 80.
    assert_eq!(report.map_writes, 4);
    let id80 = before.service(&frontend(80)).expect("served").frontend_id;
    for slot in 0..2 {
        let key = BackendKey {
            frontend_id: id80,
            slot,
        };
        assert_eq!(before.backends[&key], maps.backends[&key]);
    }
}

#[test]
fn fresh_stats_maps_are_reset_only_for_reused_ids() {
    let mut desired = DesiredState::default();
    desired
        .frontends
        .insert(frontend(80), spec(vec![backend(1)]));
    desired
        .frontends
        .insert(frontend(81), spec(vec![backend(2)]));
    let mut fresh = Reconciler::new().with_fresh_stats(true, true);
    let mut maps = MemoryMaps::default();
    fresh.apply(&desired, &mut maps);
    assert!(maps.stats_resets.is_empty() && maps.backend_stats_resets.is_empty());
    // Port 81 goes, port 82 comes and takes its ids: their counters are
    // the old frontend's and backend's, so they are reset.
    let old_id = maps.service(&frontend(81)).expect("served").frontend_id;
    desired.frontends.remove(&frontend(81));
    fresh.apply(&desired, &mut maps);
    desired
        .frontends
        .insert(frontend(82), spec(vec![backend(3)]));
    fresh.apply(&desired, &mut maps);
    assert_eq!(maps.stats_resets, [old_id]);
    assert_eq!(maps.backend_stats_resets.len(), 1);
    // Without the promise of fresh maps every first use is reset.
    let mut maps = MemoryMaps::default();
    Reconciler::new().apply(&desired, &mut maps);
    assert_eq!(maps.stats_resets.len(), 2);
    assert_eq!(maps.backend_stats_resets.len(), 2);
}
