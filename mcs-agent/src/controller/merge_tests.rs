//! Tests of the merge: the conformance suite's port, type, affinity and
//! label cases, and properties every cluster relies on (any order of
//! exports gives the same import).

use proptest::prelude::*;

use super::*;

fn port(name: &str, protocol: Protocol, number: u16) -> Port {
    Port {
        name: name.to_owned(),
        protocol,
        port: number,
        app_protocol: None,
    }
}

/// The conformance suite's `hello` Service: TCP and UDP 42, ClientIP
/// affinity with a 10 s timeout.
fn hello(cluster: &str, created: i64) -> Exported {
    Exported {
        cluster: cluster.to_owned(),
        created: Some(Timestamp::from_second(created).unwrap()),
        headless: false,
        ports: vec![
            port("tcp", Protocol::Tcp, 42),
            port("udp", Protocol::Udp, 42),
        ],
        affinity: Affinity::ClientIp {
            timeout_seconds: Some(10),
        },
        ip_families: vec![IpFamily::V4],
        internal_traffic_policy: None,
        traffic_distribution: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    }
}

fn kinds(merged: &Merged) -> Vec<ConflictKind> {
    merged.conflicts.iter().map(|c| c.kind).collect()
}

#[test]
fn one_export_is_imported_as_it_is() {
    let merged = merge(&[hello("a", 100)]).unwrap();
    assert_eq!(merged.ports, hello("a", 100).ports);
    assert_eq!(
        merged.affinity,
        Affinity::ClientIp {
            timeout_seconds: Some(10)
        }
    );
    assert_eq!(merged.clusters, ["a"]);
    assert!(merged.conflicts.is_empty());
    assert_eq!(merged.conflict_reason(), None);
    assert!(merge(&[]).is_none());
}

#[test]
fn different_port_sets_are_united() {
    let mut b = hello("b", 200);
    b.ports = vec![
        port("tcp", Protocol::Tcp, 42),
        port("stcp", Protocol::Sctp, 142),
    ];
    let merged = merge(&[b, hello("a", 100)]).unwrap();
    let names: Vec<&str> = merged.ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tcp", "udp", "stcp"]);
    assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
    assert_eq!(merged.clusters, ["a", "b"]);
}

#[test]
fn a_port_name_with_another_number_loses_to_the_older_export() {
    let mut b = hello("b", 100);
    b.ports = vec![port("tcp", Protocol::Tcp, 43)];
    // b is older, although a sorts first by name.
    let merged = merge(&[hello("a", 200), b]).unwrap();
    assert_eq!(merged.winner, "b");
    assert_eq!(
        merged.ports,
        vec![
            port("tcp", Protocol::Tcp, 43),
            port("udp", Protocol::Udp, 42)
        ]
    );
    assert_eq!(kinds(&merged), [ConflictKind::Port]);
    let message = merged.conflict_message().unwrap();
    assert!(message.contains("\"tcp\" is 43/TCP in b"), "{message}");
    assert!(message.contains("42/TCP in a not imported"), "{message}");
    assert_eq!(merged.conflict_reason().as_deref(), Some("PortConflict"));
}

#[test]
fn a_port_lost_to_a_conflict_is_not_exposed_by_its_cluster() {
    let mut b = hello("b", 200);
    b.ports[0].port = 43;
    let a = hello("a", 100);
    let merged = merge(&[a.clone(), b.clone()]).unwrap();
    let both = BTreeSet::from([
        ("tcp".to_owned(), Protocol::Tcp),
        ("udp".to_owned(), Protocol::Udp),
    ]);
    assert_eq!(merged.exposed_by(&a), both);
    // b's tcp is 43, the import's 42: only b's udp serves the import.
    assert_eq!(
        merged.exposed_by(&b),
        BTreeSet::from([("udp".to_owned(), Protocol::Udp)])
    );
    // Another name for a known number loses too; a new name is exposed.
    let mut c = hello("c", 300);
    c.ports = vec![
        port("web", Protocol::Tcp, 42),
        port("admin", Protocol::Tcp, 81),
    ];
    let merged = merge(&[a, c.clone()]).unwrap();
    assert_eq!(
        merged.exposed_by(&c),
        BTreeSet::from([("admin".to_owned(), Protocol::Tcp)])
    );
}

#[test]
fn another_name_for_a_known_port_number_is_a_conflict() {
    let mut b = hello("b", 200);
    b.ports = vec![port("web", Protocol::Tcp, 42)];
    let merged = merge(&[hello("a", 100), b]).unwrap();
    assert_eq!(merged.ports, hello("a", 1).ports);
    assert_eq!(kinds(&merged), [ConflictKind::Port]);
    // The same number on another protocol is another port.
    let mut c = hello("c", 200);
    c.ports = vec![port("sctp", Protocol::Sctp, 42)];
    let merged = merge(&[hello("a", 100), c]).unwrap();
    assert_eq!(merged.ports.len(), 3);
    assert!(merged.conflicts.is_empty());
}

#[test]
fn app_protocol_is_part_of_a_port() {
    let mut b = hello("b", 200);
    b.ports[0].app_protocol = Some("kubernetes.io/h2c".into());
    let merged = merge(&[hello("a", 100), b]).unwrap();
    assert_eq!(merged.ports[0].app_protocol, None);
    assert_eq!(kinds(&merged), [ConflictKind::Port]);
}

#[test]
fn headlessness_affinity_and_policies_follow_the_oldest_export() {
    let mut b = hello("b", 50);
    b.headless = true;
    b.affinity = Affinity::None;
    b.internal_traffic_policy = Some("Local".into());
    b.traffic_distribution = Some("PreferClose".into());
    let merged = merge(&[hello("a", 100), b]).unwrap();
    assert!(merged.headless);
    assert_eq!(merged.affinity, Affinity::None);
    assert_eq!(merged.internal_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(
        kinds(&merged),
        [
            ConflictKind::Type,
            ConflictKind::SessionAffinity,
            ConflictKind::InternalTrafficPolicy,
            ConflictKind::TrafficDistribution
        ]
    );
    let reason = merged.conflict_reason().unwrap();
    assert_eq!(
        reason,
        "InternalTrafficPolicyConflict,SessionAffinityConflict,TrafficDistributionConflict,TypeConflict"
    );
    assert!(
        merged
            .conflict_message()
            .unwrap()
            .contains("headlessness differs in a; b has the oldest export")
    );
}

#[test]
fn affinity_timeouts_compare_with_the_default() {
    let mut b = hello("b", 200);
    b.affinity = Affinity::ClientIp {
        timeout_seconds: Some(20),
    };
    let merged = merge(&[hello("a", 100), b.clone()]).unwrap();
    assert_eq!(kinds(&merged), [ConflictKind::SessionAffinityConfig]);
    assert_eq!(
        merged.affinity,
        Affinity::ClientIp {
            timeout_seconds: Some(10)
        }
    );
    let mut a = hello("a", 100);
    a.affinity = Affinity::ClientIp {
        timeout_seconds: None,
    };
    b.affinity = Affinity::ClientIp {
        timeout_seconds: Some(10_800),
    };
    assert!(merge(&[a, b]).unwrap().conflicts.is_empty());
    // Unset internalTrafficPolicy is Cluster.
    let mut c = hello("c", 300);
    c.internal_traffic_policy = Some("Cluster".into());
    assert!(merge(&[hello("a", 100), c]).unwrap().conflicts.is_empty());
}

#[test]
fn exported_labels_and_annotations_are_the_oldest_exports() {
    let mut a = hello("a", 100);
    a.labels.insert("dummy-label".into(), "true".into());
    a.annotations
        .insert("dummy-annotation".into(), "true".into());
    let mut b = hello("b", 200);
    b.labels.insert("dummy-label2".into(), "true".into());
    b.annotations
        .insert("dummy-annotation2".into(), "true".into());
    let merged = merge(&[b, a.clone()]).unwrap();
    assert_eq!(merged.labels, a.labels);
    assert_eq!(merged.annotations, a.annotations);
    assert_eq!(
        kinds(&merged),
        [ConflictKind::Labels, ConflictKind::Annotations]
    );
}

#[test]
fn ip_families_are_the_oldest_exports_and_other_sets_conflict() {
    let mut a = hello("a", 100);
    a.ip_families = vec![IpFamily::V6, IpFamily::V4];
    let mut b = hello("b", 200);
    b.ip_families = vec![IpFamily::V4, IpFamily::V6];
    // Another primary family is not a conflict: both serve both.
    let merged = merge(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(merged.ip_families, [IpFamily::V6, IpFamily::V4]);
    assert!(merged.conflicts.is_empty());
    // Dual stack oldest, IPv4 only later: dual stack, the IPv4 one loses.
    let merged = merge(&[hello("c", 300), a.clone()]).unwrap();
    assert_eq!(merged.ip_families, [IpFamily::V6, IpFamily::V4]);
    assert_eq!(kinds(&merged), [ConflictKind::IpFamily]);
    let message = &merged.conflicts[0].message;
    assert!(
        message.contains("ipFamilies differs in c IPv4 (a IPv6+IPv4)"),
        "{message}"
    );
    assert!(!message.contains("b "), "{message}");
    // IPv4 only oldest: IPv4 only, even though a later one has IPv6 too.
    let merged = merge(&[hello("c", 50), a, b]).unwrap();
    assert_eq!(merged.ip_families, [IpFamily::V4]);
    assert_eq!(kinds(&merged), [ConflictKind::IpFamily]);
    // Disjoint: the oldest's.
    let mut d = hello("d", 300);
    d.ip_families = vec![IpFamily::V6];
    let merged = merge(&[hello("a", 100), d]).unwrap();
    assert_eq!(merged.ip_families, [IpFamily::V4]);
    assert_eq!(kinds(&merged), [ConflictKind::IpFamily]);
}

#[test]
fn equal_timestamps_fall_back_to_cluster_names_and_unknown_times_come_last() {
    let mut a = hello("a", 100);
    a.headless = true;
    let merged = merge(&[hello("b", 100), a.clone()]).unwrap();
    assert_eq!(merged.winner, "a");
    let mut z = hello("z", 0);
    z.created = None;
    assert_eq!(merge(&[z, hello("y", 500)]).unwrap().winner, "y");
}

fn arb_port() -> impl Strategy<Value = Port> {
    (
        prop::sample::select(vec!["", "a", "b", "c"]),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]),
        1u16..4,
        prop::option::of(prop::sample::select(vec!["http", "h2c"])),
    )
        .prop_map(|(name, protocol, port, app)| Port {
            name: name.to_owned(),
            protocol,
            port,
            app_protocol: app.map(str::to_owned),
        })
}

fn arb_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["k1", "k2"]).prop_map(str::to_owned),
        prop::sample::select(vec!["v1", "v2"]).prop_map(str::to_owned),
        0..2,
    )
}

fn arb_export(cluster: String) -> impl Strategy<Value = Exported> {
    (
        prop::option::of(0i64..4),
        any::<bool>(),
        prop::collection::vec(arb_port(), 0..4),
        prop::option::of(prop::option::of(prop::sample::select(vec![10, 10_800, 20]))),
        prop::sample::select(vec![
            vec![IpFamily::V4],
            vec![IpFamily::V6],
            vec![IpFamily::V4, IpFamily::V6],
            vec![IpFamily::V6, IpFamily::V4],
        ]),
        prop::option::of(prop::sample::select(vec!["Cluster", "Local"])),
        prop::option::of(Just("PreferClose")),
        arb_map(),
        arb_map(),
    )
        .prop_map(
            move |(
                created,
                headless,
                ports,
                affinity,
                ip_families,
                itp,
                td,
                labels,
                annotations,
            )| {
                // A Service's ports have distinct names and numbers.
                let mut names = BTreeSet::new();
                let mut numbers = BTreeSet::new();
                let ports = ports
                    .into_iter()
                    .filter(|p| names.insert(p.name.clone()) & numbers.insert((p.protocol, p.port)))
                    .collect();
                Exported {
                    cluster: cluster.clone(),
                    created: created.map(|s| Timestamp::from_second(s).unwrap()),
                    headless,
                    ports,
                    affinity: match affinity {
                        None => Affinity::None,
                        Some(timeout_seconds) => Affinity::ClientIp { timeout_seconds },
                    },
                    ip_families,
                    internal_traffic_policy: itp.map(str::to_owned),
                    traffic_distribution: td.map(str::to_owned),
                    labels,
                    annotations,
                }
            },
        )
}

/// One export per cluster (a service has at most one export per
/// cluster), two to four clusters.
fn arb_exports() -> impl Strategy<Value = Vec<Exported>> {
    (2usize..5).prop_flat_map(|n| {
        (0..n)
            .map(|i| arb_export(format!("cluster-{i}")))
            .collect::<Vec<_>>()
    })
}

proptest! {
    /// Every cluster computes the same import from the same exports,
    /// whatever order its watchers delivered them in.
    #[test]
    fn any_order_gives_the_same_import(exports in arb_exports(), seed in any::<u64>()) {
        let reference = merge(&exports);
        let mut shuffled = exports.clone();
        // A deterministic shuffle driven by the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(merge(&shuffled), reference);
    }

    #[test]
    fn merged_ports_are_consistent(exports in arb_exports()) {
        let merged = merge(&exports).unwrap();
        let names: BTreeSet<&str> = merged.ports.iter().map(|p| p.name.as_str()).collect();
        let numbers: BTreeSet<(Protocol, u16)> = merged.ports.iter().map(|p| (p.protocol, p.port)).collect();
        prop_assert_eq!(names.len(), merged.ports.len(), "a port name twice");
        prop_assert_eq!(numbers.len(), merged.ports.len(), "a port number twice");
        for port in &merged.ports {
            prop_assert!(exports.iter().any(|e| e.ports.contains(port)), "invented {:?}", port);
        }
        // The winner keeps every port it declares (first of each name/number).
        let winner = exports.iter().find(|e| e.cluster == merged.winner).unwrap();
        let mut seen_names = BTreeSet::new();
        let mut seen_numbers = BTreeSet::new();
        for port in &winner.ports {
            if seen_names.insert(port.name.clone()) && seen_numbers.insert((port.protocol, port.port)) {
                prop_assert!(merged.ports.contains(port));
            }
        }
        // What a cluster exposes is exactly its ports the import has.
        for export in &exports {
            let exposed = merged.exposed_by(export);
            for port in &export.ports {
                let key = (port.name.clone(), port.protocol);
                prop_assert_eq!(exposed.contains(&key), merged.ports.contains(port), "{:?}", port);
            }
        }
        // Without a port conflict, the import has every port of every export.
        if !merged.conflicts.iter().any(|c| c.kind == ConflictKind::Port) {
            for export in &exports {
                for port in &export.ports {
                    prop_assert!(merged.ports.contains(port));
                }
            }
        }
    }

    #[test]
    fn identical_exports_never_conflict(export in arb_export("a".into()), others in 1usize..4) {
        let mut exports = vec![export.clone()];
        for i in 0..others {
            let mut copy = export.clone();
            copy.cluster = format!("other-{i}");
            exports.push(copy);
        }
        let merged = merge(&exports).unwrap();
        prop_assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
        prop_assert_eq!(&merged.ports, &export.ports);
        prop_assert_eq!(merged.headless, export.headless);
        prop_assert_eq!(merged.labels, export.labels);
        prop_assert_eq!(merged.ip_families, export.ip_families);
    }

    #[test]
    fn the_winner_is_the_oldest_export(exports in arb_exports()) {
        let merged = merge(&exports).unwrap();
        let winner = exports.iter().find(|e| e.cluster == merged.winner).unwrap();
        for export in &exports {
            prop_assert_ne!(precedence(export, winner), Ordering::Less);
        }
        prop_assert_eq!(merged.headless, winner.headless);
        prop_assert_eq!(&merged.labels, &winner.labels);
        prop_assert_eq!(merged.affinity, winner.affinity);
        prop_assert_eq!(&merged.ip_families, &winner.ip_families);
        let sets_differ = exports.iter().any(|e| {
            e.ip_families.iter().collect::<BTreeSet<_>>()
                != winner.ip_families.iter().collect::<BTreeSet<_>>()
        });
        prop_assert_eq!(
            merged.conflicts.iter().any(|c| c.kind == ConflictKind::IpFamily),
            sets_differ
        );
    }
}
