//! Writes a [`Plan`] into the own cluster: server-side apply (field manager
//! [`FIELD_MANAGER`], forced: these objects are the controller's) of
//! ServiceImports, their status and EndpointSlices, of the own exports'
//! status; deletes of what the plan says, which is only ever what this
//! controller manages.
//!
//! * Only what differs from what the cluster holds is written (the
//!   applied-hash annotation, then the fields themselves).
//! * A condition keeps its `lastTransitionTime` while its status stays.
//! * Leadership is checked before every write: a replica that lost the
//!   Lease stops at once.
//! * Writes go out a few at a time; each failure is reported with the
//!   object it concerns and retried by the next reconcile.

use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::{api::discovery::v1::EndpointSlice, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{
    FIELD_MANAGER,
    desired::{Condition, ExportStatus, ImportWrite, Plan},
    exports::{ObservedCondition, export_resource, import_resource},
    leader::Leadership,
    metrics::Metrics,
    observed::{ImportGroup, Observed},
};
use crate::model::{Flavour, ObjectKey};

/// Writes in flight at once.
const CONCURRENCY: usize = 8;

/// A write that failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{operation} {kind} {object}")]
    Api {
        operation: &'static str,
        kind: &'static str,
        object: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("{skipped} writes skipped: this replica no longer holds the Lease")]
    NotLeader { skipped: usize },
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct WriteReport {
    pub applied: usize,
    pub deleted: usize,
    pub errors: Vec<WriteError>,
}

impl WriteReport {
    pub fn changed(&self) -> bool {
        self.applied + self.deleted > 0
    }
}

/// One write to make.
enum Op<'a> {
    Import(&'a ImportWrite),
    ImportStatus(&'a ImportWrite, Value),
    Slice(ObjectKey, &'a Value),
    ExportStatus(&'a ExportStatus, Value),
    DeleteSlice(&'a ObjectKey),
    DeleteImport(&'a ObjectKey, Flavour),
}

pub struct Writer {
    client: Client,
    leadership: Leadership,
    metrics: Arc<Metrics>,
}

/// Conditions with their times: kept from `observed` while type and status
/// are unchanged.
fn timed(
    conditions: &[Condition],
    observed: &[ObservedCondition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Value> {
    conditions
        .iter()
        .map(|c| {
            let time = observed
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status_str())
                .and_then(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.to_owned());
            let mut value = json!({
                "type": c.type_, "status": c.status_str(), "reason": c.reason,
                "message": c.message, "lastTransitionTime": time,
            });
            if let Some(generation) = generation {
                value["observedGeneration"] = json!(generation);
            }
            value
        })
        .collect()
}

/// Whether the observed conditions already say what is desired.
fn conditions_current(
    conditions: &[Condition],
    observed: &[ObservedCondition],
    generation: Option<i64>,
) -> bool {
    conditions.len() == observed.len()
        && conditions.iter().zip(observed).all(|(c, o)| {
            o.type_ == c.type_
                && o.status == c.status_str()
                && o.reason == c.reason
                && o.message == c.message
                && (generation.is_none() || o.observed_generation == generation)
        })
}

impl Writer {
    pub fn new(client: Client, leadership: Leadership, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            leadership,
            metrics,
        }
    }

    /// Writes what differs between `plan` and `observed`; own exports'
    /// observed conditions come with the plan's statuses.
    pub async fn apply(
        &self,
        plan: &Plan,
        observed: &Observed,
        own_exports: &[(ObjectKey, Vec<ObservedCondition>)],
    ) -> WriteReport {
        let now = Timestamp::now().to_string();
        let mut first: Vec<Op<'_>> = Vec::new();
        let mut then: Vec<Op<'_>> = Vec::new();
        for import in &plan.imports {
            let held = observed
                .imports
                .get(&(import.key.clone(), ImportGroup::of(import.flavour)));
            if !import.is_current(held) {
                first.push(Op::Import(import));
            }
            let conditions = held.map_or(&[][..], |h| h.conditions.as_slice());
            let clusters: Vec<Value> = import
                .clusters
                .iter()
                .map(|c| json!({"cluster": c}))
                .collect();
            let clusters_current = held.is_some_and(|h| h.clusters == import.clusters);
            if !clusters_current || !conditions_current(&import.conditions, conditions, None) {
                let status = json!({
                    "clusters": clusters,
                    "conditions": timed(&import.conditions, conditions, None, &now),
                });
                then.push(Op::ImportStatus(import, status));
            }
        }
        for slice in &plan.slices {
            if !slice.is_current(observed.slices.get(&slice.key)) {
                first.push(Op::Slice(slice.key.clone(), &slice.object));
            }
        }
        for export in &plan.exports {
            let conditions = own_exports
                .iter()
                .find(|(key, _)| *key == export.key)
                .map_or(&[][..], |(_, c)| c.as_slice());
            if !conditions_current(&export.conditions, conditions, export.generation) {
                let status = json!({"conditions": timed(&export.conditions, conditions, export.generation, &now)});
                then.push(Op::ExportStatus(export, status));
            }
        }
        then.extend(plan.delete_slices.iter().map(Op::DeleteSlice));
        then.extend(
            plan.delete_imports
                .iter()
                .map(|(key, flavour)| Op::DeleteImport(key, *flavour)),
        );

        let mut report = WriteReport::default();
        // Imports and slices before statuses and deletes: a status needs
        // its object, and a moved object is written before the old goes.
        for phase in [first, then] {
            if !self.leadership.is_leader() {
                report.errors.push(WriteError::NotLeader {
                    skipped: phase.len(),
                });
                continue;
            }
            let results: Vec<(bool, Result<(), WriteError>)> = stream::iter(phase)
                .map(|op| self.write(op))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for (delete, result) in results {
                match result {
                    Ok(()) if delete => report.deleted += 1,
                    Ok(()) => report.applied += 1,
                    Err(error) => report.errors.push(error),
                }
            }
        }
        report
    }

    fn dynamic(&self, namespace: &str, resource: &kube::api::ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, resource)
    }

    /// One write; `(is a delete, result)`.
    async fn write(&self, op: Op<'_>) -> (bool, Result<(), WriteError>) {
        if !self.leadership.is_leader() {
            return (false, Err(WriteError::NotLeader { skipped: 1 }));
        }
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let (operation, kind, key, result) = match op {
            Op::Import(import) => {
                let api = self.dynamic(&import.key.namespace, &import_resource(import.flavour));
                let result = api
                    .patch(&import.key.name, &apply, &Patch::Apply(&import.object))
                    .await;
                ("apply", "ServiceImport", &import.key, result.map(drop))
            }
            Op::ImportStatus(import, status) => {
                let api = self.dynamic(&import.key.namespace, &import_resource(import.flavour));
                let body = status_body(import.flavour, "ServiceImport", &import.key, status);
                let result = api
                    .patch_status(&import.key.name, &apply, &Patch::Apply(&body))
                    .await;
                (
                    "apply status of",
                    "ServiceImport",
                    &import.key,
                    result.map(drop),
                )
            }
            Op::Slice(key, object) => {
                let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
                let result = api.patch(&key.name, &apply, &Patch::Apply(object)).await;
                self.metrics.write("EndpointSlice", "apply", result.is_ok());
                tracing::debug!(operation = "apply", kind = "EndpointSlice", object = %key, ok = result.is_ok(), "write");
                return (
                    false,
                    result.map(drop).map_err(|source| WriteError::Api {
                        operation: "apply",
                        kind: "EndpointSlice",
                        object: key,
                        source,
                    }),
                );
            }
            Op::ExportStatus(export, status) => {
                let api = self.dynamic(&export.key.namespace, &export_resource(export.flavour));
                let body = status_body(export.flavour, "ServiceExport", &export.key, status);
                let result = api
                    .patch_status(&export.key.name, &apply, &Patch::Apply(&body))
                    .await;
                (
                    "apply status of",
                    "ServiceExport",
                    &export.key,
                    result.map(drop),
                )
            }
            Op::DeleteSlice(key) => {
                let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
                let result = api.delete(&key.name, &DeleteParams::default()).await;
                ("delete", "EndpointSlice", key, gone_is_fine(result))
            }
            Op::DeleteImport(key, flavour) => {
                let api = self.dynamic(&key.namespace, &import_resource(flavour));
                let result = api.delete(&key.name, &DeleteParams::default()).await;
                ("delete", "ServiceImport", key, gone_is_fine(result))
            }
        };
        let delete = operation == "delete";
        tracing::debug!(operation, kind, object = %key, ok = result.is_ok(), "write");
        let metric_kind = if operation == "apply status of" {
            "status"
        } else {
            kind
        };
        self.metrics.write(
            metric_kind,
            if delete { "delete" } else { "apply" },
            result.is_ok(),
        );
        let result = result.map_err(|source| WriteError::Api {
            operation,
            kind,
            object: key.clone(),
            source,
        });
        (delete, result)
    }
}

/// A delete of what is already gone succeeded.
fn gone_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

fn status_body(flavour: Flavour, kind: &str, key: &ObjectKey, status: Value) -> Value {
    let (group, version) = flavour.group_version();
    json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind,
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(type_: &str, status: &str, time: &str) -> ObservedCondition {
        ObservedCondition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: Some(time.into()),
        }
    }

    fn condition(type_: &'static str, status: bool) -> Condition {
        Condition {
            type_,
            status,
            reason: "R".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn transition_times_stay_while_the_status_does() {
        let held = [
            observed("Valid", "True", "2025-01-01T00:00:00Z"),
            observed("Conflict", "False", "2025-01-01T00:00:00Z"),
        ];
        let want = [condition("Valid", true), condition("Conflict", true)];
        let timed = timed(&want, &held, Some(1), "2025-02-02T00:00:00Z");
        assert_eq!(timed[0]["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(timed[1]["lastTransitionTime"], "2025-02-02T00:00:00Z");
        assert_eq!(timed[1]["observedGeneration"], 1);
        assert!(!conditions_current(&want, &held, Some(1)));
        let same = [condition("Valid", true), condition("Conflict", false)];
        assert!(conditions_current(&same, &held, Some(1)));
        assert!(
            !conditions_current(&same, &held, Some(2)),
            "a new generation is acknowledged"
        );
        assert!(!conditions_current(&same[..1], &held, Some(1)));
    }
}
