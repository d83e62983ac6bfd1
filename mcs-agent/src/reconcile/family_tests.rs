//! IPv6 frontends in their own maps: ids and shared maps as for IPv4,
//! minimal writes, their own capacities.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mcs_common::{BackendKey, ServiceKeyV6, names};

use super::{Capacities, CapacityError, Reconciler, check, memory::MemoryMaps};
use crate::{
    desired::{Backend, DesiredState, Frontend, FrontendKind, FrontendSpec},
    model::{ObjectKey, Protocol},
};

fn frontend(addr: IpAddr, port: u16) -> Frontend {
    Frontend {
        addr,
        port,
        protocol: Protocol::Tcp,
    }
}

fn vip6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, n))
}

fn backend(addr: IpAddr) -> Backend {
    Backend {
        addr,
        port: 8080,
        cluster: "a".into(),
        weight: 1,
        terminating: false,
    }
}

fn backend6(host: u16) -> Backend {
    backend(IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, host)))
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

/// The maps render `desired` and the reconciler's books match them.
fn assert_serves(reconciler: &Reconciler, maps: &MemoryMaps, desired: &DesiredState) {
    let rendered = check::render(maps).expect("consistent maps");
    assert_eq!(rendered, check::expected(desired, &rendered));
    check::check_ids(reconciler, maps).expect("id tables match the maps");
}

#[test]
fn ipv6_frontends_go_to_the_ipv6_maps_with_ids_shared_with_ipv4() {
    let mut desired = DesiredState::default();
    let v4 = frontend(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 80);
    let v6 = frontend(vip6(1), 80);
    desired.frontends.insert(
        v4,
        spec(vec![backend(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)))]),
    );
    desired
        .frontends
        .insert(v6, spec(vec![backend6(1), backend6(2)]));
    let mut reconciler = Reconciler::new();
    let mut maps = MemoryMaps::default();
    let report = reconciler.apply(&desired, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((maps.services.len(), maps.backends.len()), (1, 1));
    assert_eq!((maps.services_v6.len(), maps.backends_v6.len()), (1, 2));
    let key = ServiceKeyV6::new(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1), 80, 6);
    let id6 = maps.services_v6[&key].frontend_id;
    let id4 = maps.service(&v4).expect("served").frontend_id;
    assert_ne!(id4, id6, "one id space");
    // Names and tables are in the shared maps, by id.
    assert!(maps.names.contains_key(&id6));
    assert!(maps.services_v6[&key].maglev().is_some());
    assert_serves(&reconciler, &maps, &desired);

    // Removing the IPv6 frontend empties the IPv6 maps only.
    desired.frontends.remove(&v6);
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!(report.removed, 1);
    assert!(maps.services_v6.is_empty() && maps.backends_v6.is_empty());
    assert_eq!((maps.services.len(), maps.backends.len()), (1, 1));
    assert_eq!(report.retired.len(), 2);
    assert!(report.retired.iter().all(|r| r.addr.is_ipv6()));
    assert_serves(&reconciler, &maps, &desired);
}

#[test]
fn an_ipv6_backend_change_costs_as_few_writes_as_an_ipv4_one() {
    let mut desired = DesiredState::default();
    let (http, metrics) = (frontend(vip6(1), 80), frontend(vip6(1), 9090));
    desired
        .frontends
        .insert(http, spec(vec![backend6(1), backend6(2)]));
    desired.frontends.insert(metrics, spec(vec![backend6(1)]));
    let mut reconciler = Reconciler::new();
    let mut maps = MemoryMaps::default();
    reconciler.apply(&desired, &mut maps);
    let before = maps.clone();
    desired
        .frontends
        .insert(http, spec(vec![backend6(1), backend6(2), backend6(3)]));
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!((report.added, report.updated, report.removed), (0, 1, 0));
    // One new slot, its backend's counters, the table and the count.
    assert_eq!(report.map_writes, 4);
    let id = before.service(&http).expect("served").frontend_id;
    for slot in 0..2 {
        let key = BackendKey {
            frontend_id: id,
            slot,
        };
        assert_eq!(before.backends_v6[&key], maps.backends_v6[&key]);
    }
    assert_eq!(before.service(&metrics), maps.service(&metrics));
    assert_serves(&reconciler, &maps, &desired);
    // Nothing changed: nothing written.
    assert_eq!(reconciler.apply(&desired, &mut maps).map_writes, 0);
}

#[test]
fn the_ipv6_maps_have_capacities_of_their_own() {
    let capacities = Capacities {
        frontends_v6: 2,
        backend_slots_v6: 3,
        ..Capacities::default()
    };
    let mut desired = DesiredState::default();
    for n in 1..=3 {
        desired
            .frontends
            .insert(frontend(vip6(n), 80), spec(vec![backend6(n)]));
    }
    // IPv4 frontends are not limited by the IPv6 sizes.
    for n in 1..=4 {
        let addr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, n));
        desired.frontends.insert(
            frontend(addr, 80),
            spec(vec![backend(IpAddr::V4(Ipv4Addr::new(10, 1, 0, n)))]),
        );
    }
    let mut reconciler = Reconciler::with_capacities(capacities);
    let mut maps = MemoryMaps::default();
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let (failed, error) = &report.errors[0];
    assert!(failed.addr.is_ipv6());
    assert!(error.is_full());
    assert_eq!(error.map, names::SERVICES_V6);
    let full = error.source.downcast_ref::<CapacityError>().expect("typed");
    assert_eq!((full.capacity, full.flag), (2, "--frontends-v6-max"));
    assert_eq!((maps.services.len(), maps.services_v6.len()), (4, 2));

    // Slots: a frontend whose slots do not fit names the IPv6 slot flag.
    desired.frontends.retain(|f, _| f.addr.is_ipv4());
    desired
        .frontends
        .insert(frontend(vip6(1), 80), spec((1..=4).map(backend6).collect()));
    let report = reconciler.apply(&desired, &mut maps);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let full = report.errors[0]
        .1
        .source
        .downcast_ref::<CapacityError>()
        .expect("typed");
    assert_eq!((full.capacity, full.flag), (3, "--backend-slots-v6-max"));
    assert!(maps.backends_v6.len() <= 3);
}

#[test]
fn adoption_reads_the_ipv6_maps_back() {
    let mut desired = DesiredState::default();
    desired
        .frontends
        .insert(frontend(vip6(1), 80), spec(vec![backend6(1), backend6(2)]));
    desired.frontends.insert(
        frontend(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)), 80),
        spec(vec![backend(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)))]),
    );
    let mut maps = MemoryMaps::default();
    Reconciler::new().apply(&desired, &mut maps);
    // An interrupted removal left an IPv6 slot without a service entry.
    let orphan = BackendKey {
        frontend_id: 900,
        slot: 0,
    };
    let any_slot = *maps.backends_v6.values().next().expect("a slot");
    maps.backends_v6.insert(orphan, any_slot);
    let mut adopted = Reconciler::adopt(&maps.pinned_state()).expect("adopt");
    assert_eq!(adopted.frontend_count(), 2);
    let report = adopted.apply(&desired, &mut maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // Nothing added or removed; the orphaned slot is gone.
    assert_eq!((report.added, report.removed), (0, 0));
    assert!(!maps.backends_v6.contains_key(&orphan));
    assert_serves(&adopted, &maps, &desired);
}
