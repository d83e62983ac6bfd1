//! Desired dataplane state: a pure function of the import model.
//!
//! A *frontend* is one ClusterSetIP × port × protocol; its backends are the
//! ready endpoints of every slice of the import (any cluster) that exposes a
//! port of the same name and protocol — so a cluster that does not export a
//! port never receives its traffic (KEP-1645 port conflict rule).
//!
//! Endpoint conditions (KEP-1669): ready endpoints serve; when a port has
//! none, serving-and-terminating endpoints serve instead. Then the locality
//! policy (agent default, overridable per import by annotation) narrows or
//! weights the set: see [`Locality`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use mcs_common::MAX_BACKENDS_PER_FRONTEND;

use crate::model::{
    AddressType, ImportType, ObjectKey, Problem, Protocol, Rejection, ServiceImport,
    SessionAffinity, SliceOwner, Snapshot,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Source cluster; empty when the slice does not say.
    pub cluster: String,
    /// Relative share of new flows (Maglev weight, > 0).
    pub weight: u32,
    /// Serving but terminating (used because no endpoint is ready).
    pub terminating: bool,
}

/// How traffic is spread over clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Locality {
    /// Spread over the endpoints of all clusters alike.
    #[default]
    None,
    /// Only the local cluster's endpoints while it has any usable one;
    /// otherwise spill over to all clusters.
    LocalFirst,
    /// Each listed cluster receives its weight's share of new flows, split
    /// evenly over its endpoints; unlisted clusters receive none, unless no
    /// listed cluster has endpoints (then all clusters share alike).
    Weighted(BTreeMap<String, u32>),
}

impl std::str::FromStr for Locality {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "none" => Ok(Self::None),
            "local-first" => Ok(Self::LocalFirst),
            other => {
                let Some(list) = other.strip_prefix("weighted:") else {
                    return Err(format!(
                        "unknown locality {other:?}; expected none, local-first or weighted:CLUSTER=WEIGHT,..."
                    ));
                };
                let mut weights = BTreeMap::new();
                for item in list.split(',').filter(|item| !item.trim().is_empty()) {
                    let (cluster, weight) = item
                        .split_once('=')
                        .ok_or_else(|| format!("{item:?} is not CLUSTER=WEIGHT"))?;
                    let weight: u32 = weight
                        .trim()
                        .parse()
                        .ok()
                        .filter(|w| *w <= 1000)
                        .ok_or_else(|| format!("weight of {cluster:?} must be 0..=1000"))?;
                    weights.insert(cluster.trim().to_owned(), weight);
                }
                if weights.values().all(|w| *w == 0) {
                    return Err("weighted locality needs at least one non-zero weight".into());
                }
                Ok(Self::Weighted(weights))
            }
        }
    }
}

/// The agent's own view: which cluster it is in and its default locality.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub local_cluster: Option<String>,
    pub locality: Locality,
    /// Per source cluster, the ranges its endpoints must lie in. When set,
    /// every cluster must be listed: endpoints of an unlisted cluster (or
    /// of a slice without cluster label) are rejected too, so no cluster
    /// can publish endpoints that hijack another's traffic.
    pub cluster_cidrs: ClusterCidrs,
}

/// `--cluster-cidrs cluster=CIDR,cluster=CIDR,...` (a cluster may repeat).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterCidrs(pub BTreeMap<String, Vec<ipnet::Ipv4Net>>);

impl ClusterCidrs {
    /// Whether `cluster` may publish `addr`.
    pub fn allows(&self, cluster: &str, addr: Ipv4Addr) -> bool {
        self.0.is_empty()
            || self
                .0
                .get(cluster)
                .is_some_and(|ranges| ranges.iter().any(|net| net.contains(&addr)))
    }
}

impl std::str::FromStr for ClusterCidrs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map: BTreeMap<String, Vec<ipnet::Ipv4Net>> = BTreeMap::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (cluster, cidr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not CLUSTER=CIDR"))?;
            let net: ipnet::Ipv4Net = cidr
                .trim()
                .parse()
                .map_err(|error| format!("{cidr:?} of cluster {cluster:?}: {error}"))?;
            map.entry(cluster.trim().to_owned())
                .or_default()
                .push(net.trunc());
        }
        Ok(Self(map))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    /// A service port that balances to backends.
    Service,
    /// Port-0 marker telling the datapath an address is a ClusterSetIP
    /// (used to drop fragments and malformed packets sent to it).
    VipMarker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub kind: FrontendKind,
    /// `namespace/name:port-name` for operators.
    pub name: String,
    pub import: ObjectKey,
    /// Sorted, deduplicated.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendSpec>,
}

impl DesiredState {
    pub fn service_frontends(&self) -> impl Iterator<Item = (&Frontend, &FrontendSpec)> {
        self.frontends
            .iter()
            .filter(|(_, spec)| spec.kind == FrontendKind::Service)
    }
}

fn rejection(import: &ServiceImport, problem: Problem) -> Rejection {
    Rejection {
        kind: "ServiceImport".into(),
        object: import.key.clone(),
        problem,
        fatal: false,
    }
}

/// [`compute_with`] under the default policy (no locality).
pub fn compute(snapshot: &Snapshot) -> (DesiredState, Vec<Rejection>) {
    compute_with(snapshot, &Policy::default())
}

/// Computes the frontends and their backends. Deterministic: the same
/// snapshot and policy always yield the same state.
pub fn compute_with(snapshot: &Snapshot, policy: &Policy) -> (DesiredState, Vec<Rejection>) {
    let engine = Incremental::new(snapshot, policy.clone());
    let rejections = engine.rejections();
    (engine.state, rejections)
}

/// What one import asks for, before conflicts between imports are resolved.
#[derive(Clone, Debug, Default)]
struct ImportOutput {
    /// Frontends in the order the import lists them (a frontend listed twice
    /// conflicts with itself).
    frontends: Vec<Frontend>,
    /// Its own rejections (conflicts are kept per frontend).
    rejections: Vec<Rejection>,
    derived_service: Option<String>,
}

/// A marker frontend (port 0) only says "this address is a ClusterSetIP";
/// service ports are 1..=65535 (conversion refuses 0), so the two kinds
/// never claim the same frontend.
fn is_marker(frontend: &Frontend) -> bool {
    frontend.port == 0
}

/// The frontends of one import with their specs, in listing order, and
/// its own rejections. O(endpoints of the import).
fn import_frontends(
    snapshot: &Snapshot,
    import: &ServiceImport,
    policy: &Policy,
) -> (Vec<(Frontend, FrontendSpec)>, Vec<Rejection>) {
    let mut entries = Vec::new();
    let mut rejections = Vec::new();
    if import.import_type == ImportType::Headless {
        return (entries, rejections); // kept in the model (DNS), no ClusterSetIP in the dataplane
    }
    let overridden;
    let locality = match import.locality.as_deref().map(str::parse::<Locality>) {
        None => &policy.locality,
        Some(Ok(locality)) => {
            overridden = locality;
            &overridden
        }
        Some(Err(error)) => {
            rejections.push(rejection(
                import,
                Problem::Unsupported(format!(
                    "annotation {}: {error}; using the agent's policy",
                    crate::model::convert::ANNOTATION_LOCALITY
                )),
            ));
            &policy.locality
        }
    };
    let affinity_timeout = match import.session_affinity {
        SessionAffinity::None => None,
        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
    };
    let vips: Vec<Ipv4Addr> = import
        .ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if import.ips.iter().any(IpAddr::is_ipv6) {
        rejections.push(rejection(
            import,
            Problem::Unsupported("IPv6 ClusterSetIP is not served by the dataplane yet".into()),
        ));
    }
    for vip in vips {
        for port in &import.ports {
            if port.protocol == Protocol::Sctp {
                rejections.push(rejection(
                    import,
                    Problem::Unsupported(format!("port {:?}: SCTP is not supported", port.name)),
                ));
                continue;
            }
            let frontend = Frontend {
                addr: vip,
                port: port.port,
                protocol: port.protocol,
            };
            let (candidates, truncated) = backends_of(
                snapshot,
                import,
                &port.name,
                port.protocol,
                &policy.cluster_cidrs,
                &mut rejections,
            );
            let backends = apply_locality(candidates, locality, policy.local_cluster.as_deref());
            if truncated {
                rejections.push(rejection(
                    import,
                    Problem::Unsupported(format!(
                        "port {:?}: more than {MAX_BACKENDS_PER_FRONTEND} endpoints; the rest are ignored",
                        port.name
                    )),
                ));
            }
            entries.push((
                frontend,
                FrontendSpec {
                    kind: FrontendKind::Service,
                    name: format!("{}:{}", import.key, display_port(&port.name, port.port)),
                    import: import.key.clone(),
                    backends,
                    affinity_timeout,
                },
            ));
        }
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            entries.push((
                Frontend {
                    addr: vip,
                    port: 0,
                    protocol,
                },
                FrontendSpec {
                    kind: FrontendKind::VipMarker,
                    name: format!("{}:<vip>", import.key),
                    import: import.key.clone(),
                    backends: Vec::new(),
                    affinity_timeout: None,
                },
            ));
        }
    }
    (entries, rejections)
}

/// Which imports changed between two snapshots: added, removed or modified
/// imports, and every import backed by an added, removed or modified slice
/// (under its old or its new owner).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub imports: BTreeSet<ObjectKey>,
    /// (namespace, owner) of changed slices.
    pub slice_owners: BTreeSet<(String, SliceOwner)>,
}

impl Changes {
    /// Compares two snapshots key by key: O(objects) comparisons, no
    /// allocation but for what changed.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let mut changes = Self::default();
        merge_diff(&old.imports, &new.imports, |key, _, _| {
            changes.imports.insert(key.clone());
        });
        merge_diff(old.slices(), new.slices(), |key, before, after| {
            for slice in [before, after].into_iter().flatten() {
                changes
                    .slice_owners
                    .insert((key.namespace.clone(), slice.owner.clone()));
            }
        });
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.imports.is_empty() && self.slice_owners.is_empty()
    }
}

/// Calls `changed` for every key whose value differs between two sorted
/// maps. Maps are keyed by their objects' own keys, so a shared value (one
/// pointer) means the same key: unchanged entries cost a pointer compare,
/// without touching the keys' strings (cache misses at 10k objects).
fn merge_diff<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
    mut changed: impl FnMut(&K, Option<&Arc<V>>, Option<&Arc<V>>),
) {
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((key, value)), None) => {
                changed(key, Some(value), None);
                old.next();
            }
            (None, Some((key, value))) => {
                changed(key, None, Some(value));
                new.next();
            }
            (Some((_, old_value)), Some((_, new_value))) if Arc::ptr_eq(old_value, new_value) => {
                old.next();
                new.next();
            }
            (Some((old_key, old_value)), Some((new_key, new_value))) => {
                match old_key.cmp(new_key) {
                    std::cmp::Ordering::Less => {
                        changed(old_key, Some(old_value), None);
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changed(new_key, None, Some(new_value));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if old_value != new_value {
                            changed(old_key, Some(old_value), Some(new_value));
                        }
                        old.next();
                        new.next();
                    }
                }
            }
        }
    }
}

/// Desired state kept up to date import by import: a change costs
/// O(size of the imports it touches), not O(all imports). Conflicts are
/// resolved exactly as a full computation does: the first import in key
/// order that lists a frontend serves it; every other listing is rejected.
#[derive(Clone, Debug)]
pub struct Incremental {
    policy: Policy,
    state: DesiredState,
    /// Every import known, with what it asks for.
    outputs: BTreeMap<ObjectKey, ImportOutput>,
    /// Frontend → imports listing it, with how often (first in key order wins).
    claims: BTreeMap<Frontend, BTreeMap<ObjectKey, u32>>,
    /// (namespace, derived Service) → imports backed by its slices.
    derived: BTreeMap<(String, String), BTreeSet<ObjectKey>>,
    /// Conflict rejections per contested service frontend.
    conflicts: BTreeMap<Frontend, Vec<Rejection>>,
}

impl Incremental {
    /// Computes everything (first sync, policy change).
    pub fn new(snapshot: &Snapshot, policy: Policy) -> Self {
        let mut engine = Self {
            policy,
            state: DesiredState::default(),
            outputs: BTreeMap::new(),
            claims: BTreeMap::new(),
            derived: BTreeMap::new(),
            conflicts: BTreeMap::new(),
        };
        for import in snapshot.imports.values() {
            let (entries, rejections) = import_frontends(snapshot, import, &engine.policy);
            let frontends = entries.iter().map(|(frontend, _)| *frontend).collect();
            for (frontend, spec) in entries {
                let claimants = engine.claims.entry(frontend).or_default();
                *claimants.entry(import.key.clone()).or_default() += 1;
                // Imports come in key order: the first listing wins.
                engine.state.frontends.entry(frontend).or_insert(spec);
            }
            engine.add_output(
                import,
                ImportOutput {
                    frontends,
                    rejections,
                    derived_service: import.derived_service.clone(),
                },
            );
        }
        let contested: Vec<Frontend> = engine
            .claims
            .iter()
            .filter(|(frontend, claimants)| {
                !is_marker(frontend) && claimants.values().sum::<u32>() > 1
            })
            .map(|(frontend, _)| *frontend)
            .collect();
        for frontend in contested {
            engine.update_conflicts(&frontend);
        }
        engine
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// Every rejection of the current state, each once: the imports' own
    /// in import order, then conflicts in frontend order.
    pub fn rejections(&self) -> Vec<Rejection> {
        let mut seen = BTreeSet::new();
        self.outputs
            .values()
            .flat_map(|output| &output.rejections)
            .chain(self.conflicts.values().flatten())
            .filter(|rejection| seen.insert(rejection.to_string()))
            .cloned()
            .collect()
    }

    /// Imports whose frontends `changes` may affect.
    pub fn affected(&self, changes: &Changes) -> BTreeSet<ObjectKey> {
        let mut affected = changes.imports.clone();
        for (namespace, owner) in &changes.slice_owners {
            match owner {
                SliceOwner::Import(name) => {
                    affected.insert(ObjectKey::new(namespace.clone(), name.clone()));
                }
                SliceOwner::Service(service) => {
                    if let Some(imports) = self.derived.get(&(namespace.clone(), service.clone())) {
                        affected.extend(imports.iter().cloned());
                    }
                }
            }
        }
        affected
    }

    /// Recomputes `imports` (added, changed or removed) from `snapshot`;
    /// returns the frontends whose desired spec may have changed.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        imports: &BTreeSet<ObjectKey>,
    ) -> BTreeSet<Frontend> {
        let mut touched = BTreeSet::new();
        // Each recomputed import's first listing of a frontend.
        let mut fresh: BTreeMap<(Frontend, ObjectKey), FrontendSpec> = BTreeMap::new();
        for key in imports {
            if let Some(old) = self.remove_output(key) {
                for frontend in old.frontends {
                    if let Some(claimants) = self.claims.get_mut(&frontend) {
                        claimants.remove(key);
                        if claimants.is_empty() {
                            self.claims.remove(&frontend);
                        }
                    }
                    touched.insert(frontend);
                }
            }
            let Some(import) = snapshot.imports.get(key) else {
                continue;
            };
            let (entries, rejections) = import_frontends(snapshot, import, &self.policy);
            let frontends = entries.iter().map(|(frontend, _)| *frontend).collect();
            for (frontend, spec) in entries {
                *self
                    .claims
                    .entry(frontend)
                    .or_default()
                    .entry(key.clone())
                    .or_default() += 1;
                touched.insert(frontend);
                fresh.entry((frontend, key.clone())).or_insert(spec);
            }
            self.add_output(
                import,
                ImportOutput {
                    frontends,
                    rejections,
                    derived_service: import.derived_service.clone(),
                },
            );
        }
        for frontend in &touched {
            let winner = self
                .claims
                .get(frontend)
                .and_then(|claimants| claimants.keys().next());
            match winner {
                None => {
                    self.state.frontends.remove(frontend);
                }
                Some(winner) => {
                    let current = self.state.frontends.get(frontend).map(|spec| &spec.import);
                    let spec = if let Some(spec) = fresh.remove(&(*frontend, winner.clone())) {
                        Some(spec)
                    } else if current == Some(winner) {
                        None // the winner did not change and still serves it
                    } else {
                        // An unchanged import wins it now (the previous
                        // winner left): recompute that import, as specs of
                        // losing listings are not kept.
                        snapshot.imports.get(winner).and_then(|import| {
                            import_frontends(snapshot, import, &self.policy)
                                .0
                                .into_iter()
                                .find(|(listed, _)| listed == frontend)
                                .map(|(_, spec)| spec)
                        })
                    };
                    if let Some(spec) = spec {
                        self.state.frontends.insert(*frontend, spec);
                    }
                }
            }
            self.update_conflicts(frontend);
        }
        touched
    }

    fn add_output(&mut self, import: &ServiceImport, output: ImportOutput) {
        if let Some(service) = &output.derived_service {
            self.derived
                .entry((import.key.namespace.clone(), service.clone()))
                .or_default()
                .insert(import.key.clone());
        }
        self.outputs.insert(import.key.clone(), output);
    }

    fn remove_output(&mut self, key: &ObjectKey) -> Option<ImportOutput> {
        let output = self.outputs.remove(key)?;
        if let Some(service) = &output.derived_service {
            let index = (key.namespace.clone(), service.clone());
            if let Some(imports) = self.derived.get_mut(&index) {
                imports.remove(key);
                if imports.is_empty() {
                    self.derived.remove(&index);
                }
            }
        }
        Some(output)
    }

    /// Every listing of a service frontend but the winning one is rejected.
    fn update_conflicts(&mut self, frontend: &Frontend) {
        let rejections: Vec<Rejection> = match self.claims.get(frontend) {
            Some(claimants) if !is_marker(frontend) => {
                let winner = claimants.keys().next();
                claimants
                    .iter()
                    .flat_map(|(key, count)| {
                        let losing = if Some(key) == winner {
                            count - 1
                        } else {
                            *count
                        };
                        std::iter::repeat_n(key, losing as usize)
                    })
                    .filter_map(|key| {
                        let winner = winner?;
                        Some(Rejection {
                            kind: "ServiceImport".into(),
                            object: key.clone(),
                            problem: Problem::Conflict(format!(
                                "{frontend} is already served for {winner}"
                            )),
                            fatal: false,
                        })
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        if rejections.is_empty() {
            self.conflicts.remove(frontend);
        } else {
            self.conflicts.insert(*frontend, rejections);
        }
    }
}

fn display_port(name: &str, port: u16) -> String {
    if name.is_empty() {
        port.to_string()
    } else {
        name.to_owned()
    }
}

/// Usable IPv4 endpoints of every slice backing `import` that exposes a
/// port named `port_name` with `protocol`, deduplicated by address and port
/// (the first slice in name order wins the cluster label): the ready ones,
/// or — when none is ready — the serving and terminating ones. Returns
/// whether the list was cut at [`MAX_BACKENDS_PER_FRONTEND`].
fn backends_of(
    snapshot: &Snapshot,
    import: &ServiceImport,
    port_name: &str,
    protocol: Protocol,
    cidrs: &ClusterCidrs,
    rejections: &mut Vec<Rejection>,
) -> (Vec<Backend>, bool) {
    let mut ready: BTreeMap<(Ipv4Addr, u16), String> = BTreeMap::new();
    let mut terminating: BTreeMap<(Ipv4Addr, u16), String> = BTreeMap::new();
    let mut truncated = false;
    for slice in snapshot.slices_of(import) {
        if slice.address_type != AddressType::IPv4 {
            continue;
        }
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue; // this cluster does not expose the port
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions;
            let target = if conditions.ready {
                &mut ready
            } else if conditions.serving && conditions.terminating {
                &mut terminating
            } else {
                continue;
            };
            for address in &endpoint.addresses {
                let IpAddr::V4(addr) = address else { continue };
                if !cidrs.allows(&slice.source_cluster, *addr) {
                    rejections.push(Rejection {
                        kind: "EndpointSlice".into(),
                        object: slice.key.clone(),
                        problem: Problem::OutsideClusterCidr {
                            field: "endpoints[].addresses[]".into(),
                            value: *address,
                            cluster: slice.source_cluster.clone(),
                        },
                        fatal: false,
                    });
                    continue;
                }
                let key = (*addr, slice_port.port);
                if target.len() >= MAX_BACKENDS_PER_FRONTEND as usize && !target.contains_key(&key)
                {
                    truncated = true;
                    continue;
                }
                target
                    .entry(key)
                    .or_insert_with(|| slice.source_cluster.clone());
            }
        }
    }
    let (chosen, is_terminating) = if ready.is_empty() {
        (terminating, true)
    } else {
        (ready, false)
    };
    let backends = chosen
        .into_iter()
        .map(|((addr, port), cluster)| Backend {
            addr,
            port,
            cluster,
            weight: 1,
            terminating: is_terminating,
        })
        .collect();
    (backends, truncated)
}

/// Narrows or weights `backends` by cluster (see [`Locality`]).
fn apply_locality(
    backends: Vec<Backend>,
    locality: &Locality,
    local_cluster: Option<&str>,
) -> Vec<Backend> {
    match locality {
        Locality::None => backends,
        Locality::LocalFirst => {
            let Some(local) = local_cluster else {
                return backends;
            };
            if backends.iter().any(|b| b.cluster == local) {
                backends
                    .into_iter()
                    .filter(|b| b.cluster == local)
                    .collect()
            } else {
                backends
            }
        }
        Locality::Weighted(weights) => {
            let mut per_cluster: BTreeMap<&str, u32> = BTreeMap::new();
            for backend in &backends {
                *per_cluster.entry(backend.cluster.as_str()).or_default() += 1;
            }
            let weighted: u32 = per_cluster
                .keys()
                .map(|cluster| weights.get(*cluster).copied().unwrap_or(0))
                .sum();
            if weighted == 0 {
                return backends; // no listed cluster has endpoints: share alike
            }
            // A cluster's weight is split over its endpoints; scale so the
            // integer Maglev weights keep the ratio (≥ 1 when non-zero).
            const SCALE: u64 = 1 << 16;
            let counts: BTreeMap<String, u32> = per_cluster
                .into_iter()
                .map(|(cluster, count)| (cluster.to_owned(), count))
                .collect();
            backends
                .into_iter()
                .filter_map(|mut backend| {
                    let weight = u64::from(weights.get(&backend.cluster).copied().unwrap_or(0));
                    let count = u64::from(counts.get(&backend.cluster).copied().unwrap_or(1));
                    if weight == 0 {
                        return None;
                    }
                    backend.weight =
                        u32::try_from((weight * SCALE / count).max(1)).unwrap_or(u32::MAX);
                    Some(backend)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod incremental_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest;

    fn state_of(yaml: &str) -> (DesiredState, Vec<Rejection>) {
        let converted = manifest::parse(yaml).expect("valid YAML");
        assert!(
            converted.rejections.is_empty(),
            "{:?}",
            converted.rejections
        );
        let (snapshot, _) = manifest::snapshot(converted.objects);
        compute(&snapshot)
    }

    const TWO_CLUSTERS: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec:
  ips: ["10.96.0.10"]
  ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: metrics, protocol: TCP, port: 9100}]
endpoints:
- addresses: ["10.1.0.1"]
- addresses: ["10.1.0.2"]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: b}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8081}]
endpoints:
- addresses: ["10.2.0.1", "10.1.0.1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: elsewhere, labels: {multicluster.kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 1}]
endpoints: [{addresses: ["10.9.9.9"]}]
"#;

    fn frontend(port: u16) -> Frontend {
        Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn backends_merge_clusters_per_port_with_their_target_ports() {
        let (state, rejections) = state_of(TWO_CLUSTERS);
        assert!(rejections.is_empty(), "{rejections:?}");
        let http = &state.frontends[&frontend(80)];
        let addrs: Vec<_> = http
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.port, b.cluster.as_str()))
            .collect();
        // Ready only, target port per cluster, other namespaces ignored.
        assert_eq!(
            addrs,
            [
                ("10.1.0.1".into(), 8080, "a"),
                ("10.1.0.1".into(), 8081, "b"),
                ("10.2.0.1".into(), 8081, "b")
            ]
        );
        // Only cluster a exposes `metrics`: b must never get its traffic.
        let metrics = &state.frontends[&frontend(9090)];
        assert_eq!(metrics.backends.len(), 1);
        assert_eq!(metrics.backends[0].cluster, "a");
        assert_eq!(http.name, "demo/web:http");
        // Markers for fragment handling, one per protocol.
        assert_eq!(state.frontends[&frontend(0)].kind, FrontendKind::VipMarker);
        assert_eq!(state.service_frontends().count(), 2);
    }

    #[test]
    fn duplicate_addresses_across_slices_are_merged() {
        let yaml = TWO_CLUSTERS
            .replace("10.2.0.1", "10.1.0.1")
            .replace("8081", "8080");
        let (state, _) = state_of(&yaml);
        assert_eq!(state.frontends[&frontend(80)].backends.len(), 1);
    }

    #[test]
    fn conflicting_frontends_first_import_wins() {
        let second =
            TWO_CLUSTERS.replacen("name: web, namespace: demo", "name: zz, namespace: demo", 1);
        let (state, rejections) = state_of(&format!(
            "{TWO_CLUSTERS}\n---\n{}",
            second.split("---").next().unwrap()
        ));
        assert_eq!(state.frontends[&frontend(80)].import.name, "web");
        assert_eq!(rejections.len(), 2, "{rejections:?}");
        assert!(
            rejections
                .iter()
                .all(|r| r.object.name == "zz" && r.reason() == "conflict")
        );
    }

    #[test]
    fn headless_imports_get_no_frontend() {
        let yaml = TWO_CLUSTERS.replace("ips: [\"10.96.0.10\"]", "type: Headless");
        let (state, _) = state_of(&yaml);
        assert!(state.frontends.is_empty());
    }

    #[test]
    fn derived_service_slices_back_gke_imports() {
        let yaml = r#"
apiVersion: net.gke.io/v1
kind: ServiceImport
metadata: {name: web, namespace: demo, annotations: {net.gke.io/derived-service: gke-mcs-x}}
spec: {ips: ["10.96.0.10"], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gke-mcs-x-abc, namespace: demo, labels: {kubernetes.io/service-name: gke-mcs-x, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.3.0.1"]}]
"#;
        let (state, _) = state_of(yaml);
        assert_eq!(state.frontends[&frontend(80)].backends.len(), 1);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let (state, _) = state_of(TWO_CLUSTERS);
        // 10.1.0.2 is serving+terminating but ready ones exist.
        assert!(
            state.frontends[&frontend(80)]
                .backends
                .iter()
                .all(|b| !b.terminating)
        );
        let none_ready = TWO_CLUSTERS
            .replace("- addresses: [\"10.1.0.1\"]\n", "")
            .replace(
                "- addresses: [\"10.2.0.1\", \"10.1.0.1\"]",
                "- addresses: [\"10.2.0.1\"]\n  conditions: {ready: false, serving: false}",
            );
        let (state, _) = state_of(&none_ready);
        let backends = &state.frontends[&frontend(80)].backends;
        assert_eq!(backends.len(), 1, "{backends:?}");
        assert_eq!(backends[0].addr, Ipv4Addr::new(10, 1, 0, 2));
        assert!(backends[0].terminating);
    }

    fn with_policy(yaml: &str, locality: &str, local: &str) -> Vec<Backend> {
        let converted = manifest::parse(yaml).expect("valid YAML");
        let (snapshot, _) = manifest::snapshot(converted.objects);
        let policy = Policy {
            local_cluster: Some(local.to_owned()),
            locality: locality.parse().expect("valid locality"),
            ..Policy::default()
        };
        let (state, _) = compute_with(&snapshot, &policy);
        state.frontends[&frontend(80)].backends.clone()
    }

    #[test]
    fn local_first_keeps_the_local_cluster_and_spills_over() {
        let local = with_policy(TWO_CLUSTERS, "local-first", "b");
        assert!(
            local.iter().all(|b| b.cluster == "b") && local.len() == 2,
            "{local:?}"
        );
        let spill = with_policy(TWO_CLUSTERS, "local-first", "elsewhere");
        assert_eq!(spill.len(), 3);
    }

    #[test]
    fn weights_split_a_cluster_share_over_its_endpoints() {
        let backends = with_policy(TWO_CLUSTERS, "weighted:a=2,b=1", "a");
        let weight = |cluster: &str| -> u32 {
            backends
                .iter()
                .filter(|b| b.cluster == cluster)
                .map(|b| b.weight)
                .sum()
        };
        // a: one endpoint with 2/3; b: two endpoints sharing 1/3.
        assert_eq!(weight("a"), 2 * weight("b"));
        let only_a = with_policy(TWO_CLUSTERS, "weighted:a=1", "a");
        assert!(only_a.iter().all(|b| b.cluster == "a"));
        let unlisted = with_policy(TWO_CLUSTERS, "weighted:zz=1", "a");
        assert_eq!(unlisted.len(), 3, "no listed cluster: share alike");
    }

    #[test]
    fn locality_parsing() {
        assert_eq!("none".parse::<Locality>(), Ok(Locality::None));
        assert!("weighted:a=x".parse::<Locality>().is_err());
        assert!("weighted:a=0".parse::<Locality>().is_err());
        assert!("nearest".parse::<Locality>().is_err());
        let annotated = TWO_CLUSTERS.replacen(
            "metadata: {name: web, namespace: demo}",
            "metadata: {name: web, namespace: demo, annotations: {dataplane.mcs.dev/locality: local-first}}",
            1,
        );
        let local = with_policy(&annotated, "none", "a");
        assert!(
            local.iter().all(|b| b.cluster == "a"),
            "annotation overrides the agent policy"
        );
    }

    #[test]
    fn affinity_reaches_the_frontend() {
        let yaml = TWO_CLUSTERS.replace(
            "ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]",
            "ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}",
        );
        let (state, _) = state_of(&yaml);
        assert_eq!(state.frontends[&frontend(80)].affinity_timeout, Some(30));
    }

    #[test]
    fn cluster_cidrs_keep_a_cluster_from_hijacking_another() {
        let converted = manifest::parse(TWO_CLUSTERS).expect("valid YAML");
        let (snapshot, _) = manifest::snapshot(converted.objects);
        let policy = Policy {
            // b may only publish 10.2.0.0/16: its 10.1.0.1 is refused.
            cluster_cidrs: "a=10.1.0.0/16, b=10.2.0.0/16".parse().expect("valid list"),
            ..Policy::default()
        };
        let (state, rejections) = compute_with(&snapshot, &policy);
        let http: Vec<_> = state.frontends[&frontend(80)]
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.cluster.clone()))
            .collect();
        assert_eq!(
            http,
            [
                ("10.1.0.1".into(), "a".into()),
                ("10.2.0.1".into(), "b".into())
            ]
        );
        assert_eq!(rejections.len(), 1, "{rejections:?}");
        assert_eq!(rejections[0].reason(), "outside_cluster_cidr");
        assert_eq!(rejections[0].object.name, "web-b");
        // Unlisted clusters publish nothing once a list is given.
        let only_a = Policy {
            cluster_cidrs: "a=10.0.0.0/8".parse().expect("valid"),
            ..Policy::default()
        };
        let (state, _) = compute_with(&snapshot, &only_a);
        assert!(
            state.frontends[&frontend(80)]
                .backends
                .iter()
                .all(|b| b.cluster == "a")
        );
        assert!("a=10.0.0.0/33".parse::<ClusterCidrs>().is_err());
        assert!("a".parse::<ClusterCidrs>().is_err());
    }
}
