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
//! * **IP families** (`ipFamilies`, compared as sets): the oldest export's;
//!   an export with other families raises `IPFamilyConflict`.
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
    /// The ports of `exported` that the import exposes as that cluster
    /// declares them, by name and protocol. A port that lost a conflict
    /// (its name imported with another number, protocol or appProtocol, or
    /// its number under another name) is not one of them: that cluster's
    /// endpoints must not serve the import's port, which its Service does
    /// not expose.
    pub fn exposed_by(&self, exported: &Exported) -> BTreeSet<(String, Protocol)> {
        exported
            .ports
            .iter()
            .filter(|port| self.ports.contains(port))
            .map(|port| (port.name.clone(), port.protocol))
            .collect()
    }

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

    // The oldest export's families, as for every other property: its
    // clients of a family reach whichever clusters serve that family. An
    // export with another set of families (the order, the primary family,
    // is not compared) loses.
    let same_families = |e: &Exported| {
        let mine: BTreeSet<IpFamily> = e.ip_families.iter().copied().collect();
        let theirs: BTreeSet<IpFamily> = winner.ip_families.iter().copied().collect();
        mine == theirs
    };
    if ordered.iter().any(|e| !same_families(e)) {
        let families = |e: &Exported| {
            e.ip_families
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("+")
        };
        let losers: Vec<String> = ordered
            .iter()
            .filter(|e| !same_families(e))
            .map(|e| format!("{} {}", e.cluster, families(e)))
            .collect();
        conflicts.push(Conflict {
            kind: ConflictKind::IpFamily,
            message: format!(
                "ipFamilies differs in {} ({} {}); {why}, its families are used: a family a cluster lacks reaches only the clusters that have it",
                losers.join(", "),
                winner.cluster,
                families(winner),
            ),
        });
    }
    let ip_families = winner.ip_families.clone();
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
#[path = "merge_tests.rs"]
mod tests;
