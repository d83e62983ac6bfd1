//! The desired state of the controller's own cluster (pure): from what
//! every member exports and what the own cluster holds, the ServiceImports
//! and EndpointSlices to write or delete, and the status conditions of the
//! own cluster's ServiceExports.
//!
//! * One import per service exported validly by at least one member, in
//!   every namespace that exists here, made by [`merge`]; a ClusterSetIP
//!   import gets one address per family of the merge (the oldest export's
//!   `ipFamilies`) from the [`Allocator`]; a family it cannot serve is
//!   reported without holding the other back.
//! * One EndpointSlice per exporting cluster and source slice of a family
//!   the import serves, named after the service, the cluster and a hash of
//!   the source slice's name, labelled `multicluster.kubernetes.io/service-name`,
//!   `multicluster.kubernetes.io/source-cluster` and
//!   `endpointslice.kubernetes.io/managed-by` (this controller), endpoints
//!   and their conditions copied.
//! * **Nothing is deleted on missing information**: a member that has not
//!   answered yet ("unknown") keeps its slices and the imports that list it
//!   as they are; a member that stopped answering contributes its last
//!   known exports, marked (an annotation on its slices, the import's Ready
//!   message).
//! * Only objects this controller manages are ever written or deleted: an
//!   import of the same name written by someone else is left alone and
//!   reported.
//!
//! The objects themselves are rendered by [`render`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::{
    CONTROLLER_NAME,
    allocate::{AllocError, Allocator},
    exports::{ClusterModel, Export, ServiceKind},
    merge::{Exported, IpFamily, Merged, merge},
    observed::{ImportGroup, Observed, ObservedImport, ObservedSlice, covers},
    render::{self, SliceWrite},
};
use crate::model::{Flavour, ObjectKey};

/// A member cluster as last read.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    pub id: &'a str,
    pub model: &'a ClusterModel,
    /// Set while its API server does not answer (its last known state is
    /// used meanwhile).
    pub unreachable_since: Option<Timestamp>,
}

/// Everything the plan is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub cluster_id: &'a str,
    /// Members listed at least once (the own cluster among them).
    pub members: &'a [Member<'a>],
    /// Members never listed: what they contributed is kept as it is.
    pub unknown: &'a BTreeSet<String>,
    pub observed: &'a Observed,
    /// ServiceImport flavour written.
    pub flavour: Flavour,
}

/// A status condition to write (its time is set by the writer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    fn new(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    pub const fn status_str(&self) -> &'static str {
        if self.status { "True" } else { "False" }
    }
}

/// A ServiceImport to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportWrite {
    pub key: ObjectKey,
    pub flavour: Flavour,
    /// Metadata and spec, with the applied-hash annotation.
    pub object: Value,
    pub hash: String,
    pub clusters: Vec<String>,
    pub conditions: Vec<Condition>,
}

/// Status conditions of one of the own cluster's ServiceExports.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportStatus {
    pub key: ObjectKey,
    pub flavour: Flavour,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

/// Something an operator should hear about (logged, and published as an
/// Event on the own cluster's export when there is one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Notice {
    pub service: ObjectKey,
    pub reason: &'static str,
    pub message: String,
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub exports_valid: usize,
    pub exports_invalid: usize,
    pub imports: usize,
    pub slices: usize,
    /// Services whose exports conflict.
    pub conflicts: usize,
}

/// What to write into the own cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub imports: Vec<ImportWrite>,
    pub slices: Vec<SliceWrite>,
    pub delete_imports: Vec<(ObjectKey, Flavour)>,
    pub delete_slices: Vec<ObjectKey>,
    pub exports: Vec<ExportStatus>,
    pub notices: Vec<Notice>,
    pub summary: Summary,
}

impl ImportWrite {
    /// Whether `observed` already holds this object (spec and metadata).
    pub fn is_current(&self, observed: Option<&ObservedImport>) -> bool {
        observed.is_some_and(|o| {
            o.flavour == self.flavour
                && o.applied.as_deref() == Some(self.hash.as_str())
                && covers(&o.object, &self.object)
        })
    }
}

impl SliceWrite {
    pub fn is_current(&self, observed: Option<&ObservedSlice>) -> bool {
        observed.is_some_and(|o| {
            o.applied.as_deref() == Some(self.hash.as_str()) && covers(&o.object, &self.object)
        })
    }
}

/// One export with where it comes from.
struct Entry<'a> {
    member: &'a Member<'a>,
    export: &'a Export,
}

/// Computes the plan; allocates and releases ClusterSetIPs on `allocator`.
pub fn plan(input: &Input<'_>, allocator: &mut Allocator) -> Plan {
    let mut plan = Plan::default();
    let target = ImportGroup::of(input.flavour);
    allocator.set_reserved(input.observed.foreign_ips());

    let mut services: BTreeMap<&ObjectKey, Vec<Entry<'_>>> = BTreeMap::new();
    for member in input.members {
        for (key, export) in &member.model.exports {
            services
                .entry(key)
                .or_default()
                .push(Entry { member, export });
        }
    }

    let mut desired_imports: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut desired_slices: BTreeSet<ObjectKey> = BTreeSet::new();
    for (key, entries) in &services {
        let mut valid: Vec<(Exported, &Entry<'_>)> = Vec::new();
        for entry in entries {
            let own = entry.member.id == input.cluster_id;
            let service = entry.member.model.services.get(*key);
            if own {
                for dropped in entry
                    .export
                    .dropped
                    .iter()
                    .chain(service.iter().flat_map(|s| &s.dropped))
                {
                    plan.notices
                        .push(notice(key, "Ignored", format!("left out: {dropped}")));
                }
            }
            let invalid = match service {
                None => Some((
                    "NoService",
                    format!(
                        "Service {key} does not exist in cluster {}",
                        entry.member.id
                    ),
                )),
                Some(s) if s.kind == ServiceKind::ExternalName => Some((
                    "InvalidServiceType",
                    "ExternalName Services cannot be exported".to_owned(),
                )),
                Some(_) => None,
            };
            match (invalid, service) {
                (Some((reason, message)), _) => {
                    plan.summary.exports_invalid += 1;
                    if own {
                        plan.notices
                            .push(notice(key, "InvalidExport", message.clone()));
                        plan.exports.push(export_status(
                            entry.export,
                            vec![
                                Condition::new("Valid", false, reason, message.clone()),
                                Condition::new(
                                    "Ready",
                                    false,
                                    "Failed",
                                    format!("not exported: {message}"),
                                ),
                            ],
                        ));
                    }
                }
                (None, Some(service)) => {
                    plan.summary.exports_valid += 1;
                    valid.push((
                        Exported {
                            cluster: entry.member.id.to_owned(),
                            created: entry.export.created,
                            headless: service.kind == ServiceKind::Headless,
                            ports: service.ports.clone(),
                            affinity: service.affinity,
                            ip_families: service.ip_families.clone(),
                            internal_traffic_policy: service.internal_traffic_policy.clone(),
                            traffic_distribution: service.traffic_distribution.clone(),
                            labels: entry.export.labels.clone(),
                            annotations: entry.export.annotations.clone(),
                        },
                        entry,
                    ));
                }
                (None, None) => {}
            }
        }
        let exported: Vec<Exported> = valid.iter().map(|(e, _)| e.clone()).collect();
        let Some(merged) = merge(&exported) else {
            continue;
        };
        if !merged.conflicts.is_empty() {
            plan.summary.conflicts += 1;
        }
        for (_, entry) in valid
            .iter()
            .filter(|(_, e)| e.member.id == input.cluster_id)
        {
            let conflict = match (merged.conflict_reason(), merged.conflict_message()) {
                (Some(reason), Some(message)) => {
                    plan.notices.push(notice(key, "Conflict", message.clone()));
                    Condition::new("Conflict", true, &reason, message)
                }
                _ => Condition::new("Conflict", false, "NoConflicts", ""),
            };
            plan.exports.push(export_status(
                entry.export,
                vec![
                    Condition::new("Valid", true, "Valid", "the Service can be exported"),
                    Condition::new(
                        "Ready",
                        true,
                        "Ready",
                        "exported: every cluster of the set imports it",
                    ),
                    conflict,
                ],
            ));
        }

        let namespace_exists = input
            .observed
            .namespaces
            .as_ref()
            .is_none_or(|names| names.contains(&key.namespace));
        if !namespace_exists {
            continue;
        }
        if let Some(foreign) = input
            .observed
            .imports
            .get(&((*key).clone(), target))
            .filter(|i| !i.managed)
        {
            plan.notices.push(notice(
                key,
                "ImportNotManaged",
                format!(
                    "ServiceImport {key} ({}) exists and was not written by {CONTROLLER_NAME}; it is left alone",
                    foreign.flavour.group_version().1
                ),
            ));
            continue;
        }
        let (import, families) =
            import_write(input, key, &merged, &valid, allocator, &mut plan.notices);
        desired_imports.insert((*key).clone());
        for (exported, entry) in &valid {
            let exposed = merged.exposed_by(exported);
            // Only slices of a family the import serves: an IPv6 endpoint
            // behind an import without an IPv6 address (no range, range
            // full, the oldest export IPv4 only) would reach no client of
            // its family and could only be mistaken for an IPv4 backend.
            let sources = entry.member.model.slices.get(*key).into_iter().flatten();
            for source in sources
                .filter(|s| IpFamily::parse(&s.address_type).is_none_or(|f| families.contains(&f)))
            {
                if let Some(slice) = render::slice_write(
                    key,
                    entry.member.id,
                    entry.member.unreachable_since,
                    source,
                    &exposed,
                ) {
                    desired_slices.insert(slice.key.clone());
                    plan.slices.push(slice);
                }
            }
        }
        plan.imports.push(import);
    }

    // Deletions: only what is managed here, never what an unknown member
    // may still export.
    let mut kept: BTreeSet<ObjectKey> = BTreeSet::new();
    for ((key, group), import) in &input.observed.imports {
        if !import.managed || (*group == target && desired_imports.contains(key)) {
            continue;
        }
        let frozen = import.clusters.iter().any(|c| input.unknown.contains(c));
        if *group == target && frozen {
            kept.insert(key.clone());
            continue;
        }
        plan.delete_imports.push((key.clone(), import.flavour));
    }
    for (key, slice) in &input.observed.slices {
        if desired_slices.contains(key) || input.unknown.contains(&slice.source_cluster) {
            continue;
        }
        plan.delete_slices.push(key.clone());
    }
    allocator.retain(|key| desired_imports.contains(key) || kept.contains(key));
    plan.slices.sort_by(|a, b| a.key.cmp(&b.key));
    plan.summary.imports = plan.imports.len();
    plan.summary.slices = plan.slices.len();
    plan.notices.sort();
    plan.notices.dedup();
    plan
}

fn notice(service: &ObjectKey, reason: &'static str, message: String) -> Notice {
    Notice {
        service: service.clone(),
        reason,
        message,
    }
}

fn export_status(export: &Export, conditions: Vec<Condition>) -> ExportStatus {
    ExportStatus {
        key: export.key.clone(),
        flavour: export.flavour,
        uid: export.uid.clone(),
        generation: export.generation,
        conditions,
    }
}

fn import_write(
    input: &Input<'_>,
    key: &ObjectKey,
    merged: &Merged,
    valid: &[(Exported, &Entry<'_>)],
    allocator: &mut Allocator,
    notices: &mut Vec<Notice>,
) -> (ImportWrite, Vec<IpFamily>) {
    let (ips, errors) = if merged.headless {
        allocator.release(key);
        (Vec::new(), Vec::new())
    } else {
        allocator.ensure(key, &merged.ip_families)
    };
    // The families the import serves: a headless import's are the merged
    // ones; a ClusterSetIP import's those it has an address of.
    let families: Vec<IpFamily> = if merged.headless {
        merged.ip_families.clone()
    } else {
        ips.iter().map(|ip| IpFamily::of(*ip)).collect()
    };
    let mut ready = Condition::new("Ready", true, "Ready", "");
    let mut notes: Vec<String> = errors
        .iter()
        .map(|e| format!("no {} ClusterSetIP: {e}", e.family().as_str()))
        .collect();
    if !errors.is_empty() {
        notices.push(notice(
            key,
            "ClusterSetIPNotAllocated",
            format!("ServiceImport {key}: {}", notes.join("; ")),
        ));
        if ips.is_empty() {
            ready.status = false;
            ready.reason = if errors.iter().all(|e| matches!(e, AllocError::NoRange(_))) {
                "IPFamilyNotSupported".to_owned()
            } else {
                "Pending".to_owned()
            };
        }
    }
    for (_, entry) in valid {
        if let Some(since) = entry.member.unreachable_since {
            notes.push(format!(
                "cluster {} unreachable since {since}: its last known endpoints are kept",
                entry.member.id
            ));
        }
    }
    let mut clusters = merged.clusters.clone();
    let observed = input
        .observed
        .imports
        .get(&(key.clone(), ImportGroup::of(input.flavour)));
    for cluster in observed.iter().flat_map(|o| &o.clusters) {
        if input.unknown.contains(cluster) && !clusters.contains(cluster) {
            notes.push(format!(
                "cluster {cluster} not read yet: its endpoints are kept"
            ));
            clusters.push(cluster.clone());
        }
    }
    clusters.sort();
    ready.message = notes.join("; ");

    let (object, hash) = render::import_object(input.flavour, key, merged, &ips);
    let import = ImportWrite {
        key: key.clone(),
        flavour: input.flavour,
        object,
        hash,
        clusters,
        conditions: vec![ready],
    };
    (import, families)
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
