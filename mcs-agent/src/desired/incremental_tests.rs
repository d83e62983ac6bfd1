//! The incremental engine against full computations: for random snapshots
//! and random change sequences, updating only the affected imports yields
//! exactly what computing everything from the final snapshot yields — and
//! that equals a from-scratch reference: every import's own frontends (the
//! same per-import code), conflicts resolved in one pass in key order.

use std::{
    collections::{BTreeSet, btree_map::Entry},
    net::{IpAddr, Ipv4Addr},
};

use proptest::prelude::*;

use super::{import::import_frontends, incremental::conflict, *};
use crate::model::{
    AddressType, Conditions, Endpoint, EndpointSlice, Flavour, ImportPort, ImportType,
    ServiceImport, SessionAffinity, SliceOwner, SlicePort,
};

/// The whole state in one pass over the imports in key order: the first
/// listing of a service frontend serves it, every later one is a conflict;
/// an address's markers are shared.
fn reference_compute(snapshot: &Snapshot, policy: &Policy) -> (DesiredState, Vec<Rejection>) {
    let mut state = DesiredState::default();
    let mut rejections = Vec::new();
    for import in snapshot.imports.values() {
        let (entries, own) = import_frontends(snapshot, import, policy);
        rejections.extend(own);
        for (frontend, spec) in entries {
            match state.frontends.entry(frontend) {
                Entry::Vacant(entry) => {
                    entry.insert(spec);
                }
                Entry::Occupied(entry) => {
                    if spec.kind == FrontendKind::Service {
                        rejections.push(conflict(&import.key, &frontend, &entry.get().import));
                    }
                }
            }
        }
    }
    // An endpoint refused for one port is refused for every port: report once.
    let mut seen = BTreeSet::new();
    rejections.retain(|rejection| seen.insert(rejection.to_string()));
    (state, rejections)
}

const NAMESPACES: [&str; 2] = ["a", "b"];
const CLUSTERS: [&str; 3] = ["c0", "c1", ""];

fn import_strategy() -> impl Strategy<Value = ServiceImport> {
    let port = (0..3usize, prop::bool::ANY, 0..3u16).prop_map(|(name, udp, port)| ImportPort {
        name: ["", "p", "q"][name].to_owned(),
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        port: 80 + port,
        app_protocol: None,
    });
    (
        0..2usize,
        0..5usize,
        prop::collection::vec(1..4u8, 0..3),
        prop::bool::weighted(0.1),
        prop::collection::vec(port, 0..4),
        prop::option::of(0..2usize),
        prop::option::of(0..4usize),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(ns, name, vips, v6, ports, derived, locality, headless, affinity, sctp)| {
                let mut ips: Vec<IpAddr> = vips
                    .into_iter()
                    .map(|last| IpAddr::V4(Ipv4Addr::new(10, 96, 0, last)))
                    .collect();
                if v6 {
                    ips.push("fd00::1".parse().expect("valid"));
                }
                let mut ports = ports;
                if sctp && let Some(first) = ports.first_mut() {
                    first.protocol = Protocol::Sctp;
                }
                ServiceImport {
                    key: ObjectKey::new(NAMESPACES[ns], format!("s{name}")),
                    flavour: Flavour::McsV1beta1,
                    import_type: if headless {
                        ImportType::Headless
                    } else {
                        ImportType::ClusterSetIp
                    },
                    ips,
                    ports,
                    session_affinity: if affinity {
                        SessionAffinity::ClientIp {
                            timeout_seconds: 30,
                        }
                    } else {
                        SessionAffinity::None
                    },
                    derived_service: derived.map(|d| format!("d{d}")),
                    clusters: Vec::new(),
                    locality: locality.map(|l| {
                        ["local-first", "none", "weighted:c0=2,c1=1", "bogus"][l].to_owned()
                    }),
                }
            },
        )
}

fn slice_strategy() -> impl Strategy<Value = EndpointSlice> {
    let port = (0..3usize, prop::bool::ANY, 0..3u16).prop_map(|(name, udp, port)| SlicePort {
        name: ["", "p", "q"][name].to_owned(),
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        port: 8080 + port,
    });
    let endpoint = (
        prop::collection::vec(1..6u8, 1..3),
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(addrs, ready, serving, terminating)| Endpoint {
            addresses: addrs
                .into_iter()
                .map(|last| IpAddr::V4(Ipv4Addr::new(10, (last % 2) + 1, 0, last)))
                .collect(),
            conditions: Conditions {
                ready,
                serving,
                terminating,
            },
            hostname: None,
        });
    (
        0..2usize,
        0..6usize,
        prop::bool::weighted(0.3),
        0..5usize,
        0..3usize,
        prop::collection::vec(port, 0..3),
        prop::collection::vec(endpoint, 0..4),
    )
        .prop_map(
            |(ns, name, service, owner, cluster, ports, endpoints)| EndpointSlice {
                key: ObjectKey::new(NAMESPACES[ns], format!("sl{name}")),
                owner: if service {
                    SliceOwner::Service(format!("d{}", owner % 2))
                } else {
                    SliceOwner::Import(format!("s{owner}"))
                },
                source_cluster: CLUSTERS[cluster].to_owned(),
                address_type: AddressType::IPv4,
                ports,
                endpoints,
            },
        )
}

#[derive(Clone, Debug)]
enum Step {
    PutImport(ServiceImport),
    DropImport(usize, usize),
    PutSlice(EndpointSlice),
    DropSlice(usize, usize),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => import_strategy().prop_map(Step::PutImport),
        1 => (0..2usize, 0..5usize).prop_map(|(ns, n)| Step::DropImport(ns, n)),
        3 => slice_strategy().prop_map(Step::PutSlice),
        1 => (0..2usize, 0..6usize).prop_map(|(ns, n)| Step::DropSlice(ns, n)),
    ]
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (0..3usize, prop::bool::ANY, prop::bool::ANY).prop_map(|(locality, cidrs, vips)| Policy {
        local_cluster: Some("c1".to_owned()),
        locality: ["none", "local-first", "weighted:c0=1,c1=3"][locality]
            .parse()
            .expect("valid"),
        cluster_cidrs: if cidrs {
            "c0=10.1.0.0/16, c1=10.2.0.0/16".parse().expect("valid")
        } else {
            ClusterCidrs::default()
        },
        // Only 10.96.0.1 of the ClusterSetIPs drawn (10.96.0.1-3, fd00::1).
        clusterset_ip_cidrs: if vips {
            "10.96.0.0/31".parse().expect("valid")
        } else {
            ClustersetIpCidrs::default()
        },
    })
}

fn apply(snapshot: &mut Snapshot, step: &Step) {
    match step {
        Step::PutImport(import) => {
            snapshot
                .imports
                .insert(import.key.clone(), import.clone().into());
        }
        Step::DropImport(ns, n) => {
            snapshot
                .imports
                .remove(&ObjectKey::new(NAMESPACES[*ns], format!("s{n}")));
        }
        Step::PutSlice(slice) => {
            snapshot.insert_slice(slice.clone());
        }
        Step::DropSlice(ns, n) => {
            snapshot.remove_slice(&ObjectKey::new(NAMESPACES[*ns], format!("sl{n}")));
        }
    }
}

fn sorted(rejections: Vec<Rejection>) -> Vec<String> {
    let set: BTreeSet<String> = rejections.iter().map(ToString::to_string).collect();
    set.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_updates_equal_a_full_computation(
        policy in policy_strategy(),
        initial in prop::collection::vec(step_strategy(), 0..12),
        steps in prop::collection::vec(prop::collection::vec(step_strategy(), 1..3), 1..10),
    ) {
        let mut snapshot = Snapshot::default();
        for step in &initial {
            apply(&mut snapshot, step);
        }
        let mut engine = Incremental::new(&snapshot, policy.clone());
        for batch in &steps {
            let before = snapshot.clone();
            for step in batch {
                apply(&mut snapshot, step);
            }
            let changes = Changes::between(&before, &snapshot);
            let affected = engine.affected(&changes);
            let previous = engine.state().clone();
            let touched = engine.update(&snapshot, &affected);

            let (full, full_rejections) = compute_with(&snapshot, &policy);
            prop_assert_eq!(engine.state(), &full);
            prop_assert_eq!(sorted(engine.rejections()), sorted(full_rejections.clone()));
            // Whatever changed is reported as touched.
            let keys: BTreeSet<&Frontend> =
                previous.frontends.keys().chain(full.frontends.keys()).collect();
            for frontend in keys {
                if previous.frontends.get(frontend) != full.frontends.get(frontend) {
                    prop_assert!(touched.contains(frontend), "{frontend} changed unreported");
                }
            }
            // And the full computation is the one-pass reference.
            let (reference, reference_rejections) = reference_compute(&snapshot, &policy);
            prop_assert_eq!(&full, &reference);
            prop_assert_eq!(sorted(full_rejections), sorted(reference_rejections));
        }
    }
}

#[test]
fn changes_name_both_owners_of_a_moved_slice() {
    let slice = |owner: &str| EndpointSlice {
        key: ObjectKey::new("a", "sl"),
        owner: SliceOwner::Import(owner.to_owned()),
        source_cluster: String::new(),
        address_type: AddressType::IPv4,
        ports: Vec::new(),
        endpoints: Vec::new(),
    };
    let (mut old, mut new) = (Snapshot::default(), Snapshot::default());
    old.insert_slice(slice("x"));
    new.insert_slice(slice("y"));
    let changes = Changes::between(&old, &new);
    let owners: Vec<_> = changes.slice_owners.iter().cloned().collect();
    assert_eq!(
        owners,
        [
            ("a".to_owned(), SliceOwner::Import("x".into())),
            ("a".to_owned(), SliceOwner::Import("y".into()))
        ]
    );
    assert!(Changes::between(&new, &new.clone()).is_empty());
    // The owner index follows replacements and removals.
    assert_eq!(new.slices_of(&import_named("y")).count(), 1);
    new.insert_slice(slice("x"));
    assert_eq!(new.slices_of(&import_named("y")).count(), 0);
    assert_eq!(new.slices_of(&import_named("x")).count(), 1);
    new.remove_slice(&ObjectKey::new("a", "sl"));
    assert_eq!(new.slices_of(&import_named("x")).count(), 0);
    assert_eq!(new, Snapshot::default(), "the index is emptied too");
}

fn import_named(name: &str) -> ServiceImport {
    ServiceImport {
        key: ObjectKey::new("a", name),
        flavour: Flavour::McsV1beta1,
        import_type: ImportType::ClusterSetIp,
        ips: Vec::new(),
        ports: Vec::new(),
        session_affinity: SessionAffinity::None,
        derived_service: None,
        clusters: Vec::new(),
        locality: None,
    }
}
