//! KEP-1645 merge of one service's exports across the cluster set (pure).
//!
//! Every cluster's controller runs this on the same exports and must reach
//! the same import, so the result depends only on the set of exports, never
//! on the order they are given in: exports are first put in precedence
//! order — oldest `creationTimestamp` first, ties broken by cluster name —
//! and every property is then decided by that order:
//!
//! * **ports**: the union of the exports' ports. A port is identified by its
//!   name; a later export that declares a known name with another
//!   `(port, protocol, appProtocol)`, or another name for a known
//!   `(port, protocol)`, loses that port (`PortConflict`).
//! * **headlessness**, **session affinity** (and its config), **exported
//!   labels**, **exported annotations**, **internalTrafficPolicy**,
//!   **trafficDistribution**: the oldest export's value; any export that
//!   differs raises the conflict of that property.
//! * **IP families**: the families every export has (in the oldest export's
//!   order); when they share none, the oldest export's (`IPFamilyConflict`).
//!
//! A conflict is reported on every export of the service (the KEP asks for
//! the condition on all constituent ServiceExports).

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use k8s_openapi::jiff::Timestamp;

use crate::model::{DEFAULT_AFFINITY_TIMEOUT_SECONDS, Protocol};

/// An IP family, as `ipFamilies` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }

    pub const fn of(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(_) => Self::V4,
            std::net::IpAddr::V6(_) => Self::V6,
        }
    }
}

/// A service port as the import exposes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Empty when unnamed (a single-port Service).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub app_protocol: Option<String>,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)?;
        if let Some(app) = &self.app_protocol {
            write!(f, " ({app})")?;
        }
        Ok(())
    }
}

/// `sessionAffinity` with its `sessionAffinityConfig`, as the Service
/// declares it (the timeout is kept as given, so the import matches the
/// Service field for field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Affinity {
    None,
    ClientIp { timeout_seconds: Option<i32> },
}

impl Affinity {
    fn effective_timeout(self) -> Option<i64> {
        match self {
            Self::None => None,
            Self::ClientIp { timeout_seconds } => {
                Some(timeout_seconds.map_or(i64::from(DEFAULT_AFFINITY_TIMEOUT_SECONDS), i64::from))
            }
        }
    }
}

/// What one cluster exports for a service: the parts of its ServiceExport
/// and Service that shape the import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    pub cluster: String,
    /// The ServiceExport's `creationTimestamp` (`None`: unknown, ordered
    /// after every known one).
    pub created: Option<Timestamp>,
    pub headless: bool,
    pub ports: Vec<Port>,
    pub affinity: Affinity,
    /// Never empty (conversion defaults it from the Service's addresses).
    pub ip_families: Vec<IpFamily>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Kinds of conflict, with the reasons mcs-api v1beta1 defines for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictKind {
    Port,
    Type,
    SessionAffinity,
    SessionAffinityConfig,
    Labels,
    Annotations,
    InternalTrafficPolicy,
    TrafficDistribution,
    IpFamily,
}

impl ConflictKind {
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Port => "PortConflict",
            Self::Type => "TypeConflict",
            Self::SessionAffinity => "SessionAffinityConflict",
            Self::SessionAffinityConfig => "SessionAffinityConfigConflict",
            Self::Labels => "LabelsConflict",
            Self::Annotations => "AnnotationsConflict",
            Self::InternalTrafficPolicy => "InternalTrafficPolicyConflict",
            Self::TrafficDistribution => "TrafficDistributionConflict",
            Self::IpFamily => "IPFamilyConflict",
        }
    }
}

/// One property under contention: which clusters disagree and who won.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub message: String,
}

/// The import every cluster computes from the same exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// Cluster of the oldest export, whose values win conflicts.
    pub winner: String,
    pub headless: bool,
    pub ports: Vec<Port>,
    pub affinity: Affinity,
    pub ip_families: Vec<IpFamily>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Exporting clusters, sorted.
    pub clusters: Vec<String>,
    /// In [`ConflictKind`] order.
    pub conflicts: Vec<Conflict>,
}

impl Merged {
    /// The Conflict condition's reason: every kind, comma-separated (as
    /// mcs-api allows when several conflicts occur).
    pub fn conflict_reason(&self) -> Option<String> {
        let reasons: BTreeSet<&str> = self.conflicts.iter().map(|c| c.kind.reason()).collect();
        (!reasons.is_empty()).then(|| reasons.into_iter().collect::<Vec<_>>().join(","))
    }

    /// The Conflict condition's message: every conflict, each saying what
    /// is contended, which cluster won and why.
    pub fn conflict_message(&self) -> Option<String> {
        (!self.conflicts.is_empty()).then(|| {
            self.conflicts
                .iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// Precedence: oldest export first, then cluster name.
fn precedence(a: &Exported, b: &Exported) -> Ordering {
    let created = match (a.created, b.created) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    created.then_with(|| a.cluster.cmp(&b.cluster))
}

/// Merges the exports of one service. `None` when there is none.
pub fn merge(exports: &[Exported]) -> Option<Merged> {
    let mut ordered: Vec<&Exported> = exports.iter().collect();
    ordered.sort_by(|a, b| precedence(a, b));
    let winner = *ordered.first()?;
    let why = match winner.created {
        Some(created) => format!("{} has the oldest export ({created})", winner.cluster),
        None => format!("{} wins by name (no creation time)", winner.cluster),
    };
    let mut conflicts = Vec::new();

    let ports = merge_ports(&ordered, &why, &mut conflicts);

    let mut whole = |kind: ConflictKind, what: &str, differs: &dyn Fn(&Exported) -> bool| {
        let losers: Vec<&str> = ordered
            .iter()
            .filter(|e| differs(e))
            .map(|e| e.cluster.as_str())
            .collect();
        if !losers.is_empty() {
            conflicts.push(Conflict {
                kind,
                message: format!(
                    "{what} differs in {}; {why}, its value is used",
                    losers.join(", ")
                ),
            });
        }
    };
    whole(ConflictKind::Type, "headlessness", &|e| {
        e.headless != winner.headless
    });
    whole(ConflictKind::SessionAffinity, "sessionAffinity", &|e| {
        std::mem::discriminant(&e.affinity) != std::mem::discriminant(&winner.affinity)
    });
    whole(
        ConflictKind::SessionAffinityConfig,
        "sessionAffinityConfig",
        &|e| {
            let (mine, theirs) = (
                e.affinity.effective_timeout(),
                winner.affinity.effective_timeout(),
            );
            mine.is_some() && theirs.is_some() && mine != theirs
        },
    );
    whole(ConflictKind::Labels, "exportedLabels", &|e| {
        e.labels != winner.labels
    });
    whole(ConflictKind::Annotations, "exportedAnnotations", &|e| {
        e.annotations != winner.annotations
    });
    // An unset internalTrafficPolicy is the API server's default, Cluster.
    let policy = |e: &Exported| {
        e.internal_traffic_policy
            .clone()
            .unwrap_or_else(|| "Cluster".to_owned())
    };
    whole(
        ConflictKind::InternalTrafficPolicy,
        "internalTrafficPolicy",
        &|e| policy(e) != policy(winner),
    );
    whole(
        ConflictKind::TrafficDistribution,
        "trafficDistribution",
        &|e| e.traffic_distribution != winner.traffic_distribution,
    );

    let agreed: Vec<IpFamily> = winner
        .ip_families
        .iter()
        .copied()
        .filter(|family| ordered.iter().all(|e| e.ip_families.contains(family)))
        .collect();
    let ip_families = if agreed.is_empty() {
        let families = |e: &Exported| {
            e.ip_families
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("+")
        };
        let each: Vec<String> = ordered
            .iter()
            .map(|e| format!("{} {}", e.cluster, families(e)))
            .collect();
        conflicts.push(Conflict {
            kind: ConflictKind::IpFamily,
            message: format!(
                "ipFamilies share no family ({}); {why}, its families are used and the other clusters' endpoints may be unreachable",
                each.join(", ")
            ),
        });
        winner.ip_families.clone()
    } else {
        agreed
    };
    conflicts.sort_by_key(|c| c.kind);

    let mut clusters: Vec<String> = ordered.iter().map(|e| e.cluster.clone()).collect();
    clusters.sort();
    clusters.dedup();
    Some(Merged {
        winner: winner.cluster.clone(),
        headless: winner.headless,
        ports,
        affinity: winner.affinity,
        ip_families,
        internal_traffic_policy: winner.internal_traffic_policy.clone(),
        traffic_distribution: winner.traffic_distribution.clone(),
        labels: winner.labels.clone(),
        annotations: winner.annotations.clone(),
        clusters,
        conflicts,
    })
}

/// Union of ports by name, earlier exports winning (see the module doc).
fn merge_ports(ordered: &[&Exported], why: &str, conflicts: &mut Vec<Conflict>) -> Vec<Port> {
    // Index into `ports` and the cluster that brought it.
    let mut by_name: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    let mut by_number: BTreeMap<(Protocol, u16), (usize, &str)> = BTreeMap::new();
    let mut ports: Vec<Port> = Vec::new();
    let mut lost: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for export in ordered {
        for port in &export.ports {
            let label = if port.name.is_empty() {
                "(unnamed)".to_owned()
            } else {
                format!("{:?}", port.name)
            };
            if let Some(&(index, owner)) = by_name.get(port.name.as_str()) {
                if ports[index] != *port {
                    lost.entry(format!("port {label} is {} in {owner}", ports[index]))
                        .or_default()
                        .push(format!("{} in {}", port, export.cluster));
                }
                continue;
            }
            if let Some(&(index, owner)) = by_number.get(&(port.protocol, port.port)) {
                let other = &ports[index];
                let other_label = if other.name.is_empty() {
                    "(unnamed)".to_owned()
                } else {
                    format!("{:?}", other.name)
                };
                lost.entry(format!(
                    "{}/{} is port {other_label} in {owner}",
                    port.port, port.protocol
                ))
                .or_default()
                .push(format!("port {label} in {}", export.cluster));
                continue;
            }
            by_name.insert(&port.name, (ports.len(), &export.cluster));
            by_number.insert((port.protocol, port.port), (ports.len(), &export.cluster));
            ports.push(port.clone());
        }
    }
    if !lost.is_empty() {
        let mut message = String::new();
        for (kept, losers) in &lost {
            if !message.is_empty() {
                message.push_str("; ");
            }
            let _ = write!(message, "{kept}, {} not imported", losers.join(", "));
        }
        let _ = write!(message, " ({why})");
        conflicts.push(Conflict {
            kind: ConflictKind::Port,
            message,
        });
    }
    ports
}

#[cfg(test)]
mod tests {
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
    fn ip_families_are_those_every_export_has() {
        let mut a = hello("a", 100);
        a.ip_families = vec![IpFamily::V6, IpFamily::V4];
        let mut b = hello("b", 200);
        b.ip_families = vec![IpFamily::V4, IpFamily::V6];
        let merged = merge(&[a.clone(), b]).unwrap();
        assert_eq!(merged.ip_families, [IpFamily::V6, IpFamily::V4]);
        assert!(merged.conflicts.is_empty());
        let merged = merge(&[a.clone(), hello("c", 300)]).unwrap();
        assert_eq!(merged.ip_families, [IpFamily::V4]);
        assert!(merged.conflicts.is_empty());
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
                        .filter(|p| {
                            names.insert(p.name.clone()) & numbers.insert((p.protocol, p.port))
                        })
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
        }
    }
}
