//! What the controller's own cluster holds: its ServiceImports (ours and
//! others'), the EndpointSlices this controller manages, its namespaces.
//! The desired state is compared with this so that only what differs is
//! written, and the ClusterSetIP allocation is read back from it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Namespace, discovery::v1::EndpointSlice};
use kube::api::DynamicObject;
use serde_json::Value;

use super::{
    ANNOTATION_APPLIED, CONTROLLER_NAME, LABEL_IMPORT_MANAGED_BY,
    exports::{FLAVOURS, ObservedCondition, conditions_of},
};
use crate::model::{
    Flavour, ObjectKey,
    convert::{LABEL_MANAGED_BY, LABEL_MC_SERVICE_NAME, LABEL_SOURCE_CLUSTER},
};

/// The API group a ServiceImport flavour lives in: v1alpha1 and v1beta1
/// are one object, GKE's is another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImportGroup {
    Mcs,
    Gke,
}

impl ImportGroup {
    pub const fn of(flavour: Flavour) -> Self {
        match flavour {
            Flavour::McsV1alpha1 | Flavour::McsV1beta1 => Self::Mcs,
            Flavour::Gke => Self::Gke,
        }
    }
}

/// A ServiceImport of the own cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedImport {
    pub key: ObjectKey,
    pub flavour: Flavour,
    /// Written by this controller (labelled so).
    pub managed: bool,
    /// `spec.ips` (or GKE's `status.ips`) that parse.
    pub ips: Vec<IpAddr>,
    /// `status.clusters`.
    pub clusters: Vec<String>,
    /// The whole object, to compare with what would be written.
    pub object: Value,
    pub applied: Option<String>,
    pub conditions: Vec<ObservedCondition>,
}

/// An EndpointSlice this controller manages.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedSlice {
    pub key: ObjectKey,
    pub service: String,
    pub source_cluster: String,
    pub object: Value,
    pub applied: Option<String>,
}

/// The own cluster as last read.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub imports: BTreeMap<(ObjectKey, ImportGroup), ObservedImport>,
    pub slices: BTreeMap<ObjectKey, ObservedSlice>,
    /// `None` when namespaces cannot be read: every namespace is assumed.
    pub namespaces: Option<BTreeSet<String>>,
}

fn annotation(object: &Value, key: &str) -> Option<String> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}

impl Observed {
    pub fn build(
        imports: &[(Flavour, Vec<Arc<DynamicObject>>)],
        slices: &[Arc<EndpointSlice>],
        namespaces: Option<&[Arc<Namespace>]>,
    ) -> Self {
        let mut observed = Self::default();
        for flavour in FLAVOURS {
            for (_, objects) in imports.iter().filter(|(f, _)| *f == flavour) {
                for object in objects {
                    let key = ObjectKey::new(
                        object.metadata.namespace.clone().unwrap_or_default(),
                        object.metadata.name.clone().unwrap_or_default(),
                    );
                    let group = ImportGroup::of(flavour);
                    if key.name.is_empty() || observed.imports.contains_key(&(key.clone(), group)) {
                        continue;
                    }
                    let value = serde_json::to_value(&**object).unwrap_or(Value::Null);
                    let ips = ["/spec/ips", "/status/ips"]
                        .iter()
                        .find_map(|path| value.pointer(path).and_then(Value::as_array))
                        .into_iter()
                        .flatten()
                        .filter_map(|ip| ip.as_str()?.parse().ok())
                        .collect();
                    let clusters = value
                        .pointer("/status/clusters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.get("cluster")?.as_str().map(str::to_owned))
                        .collect();
                    observed.imports.insert(
                        (key.clone(), group),
                        ObservedImport {
                            key,
                            flavour,
                            managed: label(&value, LABEL_IMPORT_MANAGED_BY)
                                == Some(CONTROLLER_NAME),
                            ips,
                            clusters,
                            applied: annotation(&value, ANNOTATION_APPLIED),
                            conditions: conditions_of(&value),
                            object: value,
                        },
                    );
                }
            }
        }
        for slice in slices {
            let value = serde_json::to_value(&**slice).unwrap_or(Value::Null);
            if label(&value, LABEL_MANAGED_BY) != Some(CONTROLLER_NAME) {
                continue;
            }
            let key = ObjectKey::new(
                slice.metadata.namespace.clone().unwrap_or_default(),
                slice.metadata.name.clone().unwrap_or_default(),
            );
            observed.slices.insert(
                key.clone(),
                ObservedSlice {
                    key,
                    service: label(&value, LABEL_MC_SERVICE_NAME)
                        .unwrap_or_default()
                        .to_owned(),
                    source_cluster: label(&value, LABEL_SOURCE_CLUSTER)
                        .unwrap_or_default()
                        .to_owned(),
                    applied: annotation(&value, ANNOTATION_APPLIED),
                    object: value,
                },
            );
        }
        observed.namespaces = namespaces.map(|list| {
            list.iter()
                .filter(|ns| {
                    // A namespace being deleted refuses new objects.
                    ns.metadata.deletion_timestamp.is_none()
                })
                .filter_map(|ns| ns.metadata.name.clone())
                .collect()
        });
        observed
    }

    /// Addresses of the imports this controller does not manage.
    pub fn foreign_ips(&self) -> BTreeSet<IpAddr> {
        self.imports
            .values()
            .filter(|i| !i.managed)
            .flat_map(|i| i.ips.iter().copied())
            .collect()
    }
}

/// Whether every field of `desired` is in `observed` with the same value:
/// objects field by field (extra observed fields are fine: defaults, other
/// writers' metadata), arrays element by element (same length).
pub fn covers(observed: &Value, desired: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .all(|(key, value)| have.get(key).is_some_and(|h| covers(h, value))),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| covers(h, w))
        }
        _ => desired == observed,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dynamic(value: Value) -> Arc<DynamicObject> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn imports_are_read_once_per_group_with_their_addresses() {
        let ours = json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"name": "web", "namespace": "demo",
                         "labels": {LABEL_IMPORT_MANAGED_BY: CONTROLLER_NAME},
                         "annotations": {ANNOTATION_APPLIED: "abc"}},
            "spec": {"ips": ["10.240.0.7", "bad"], "type": "ClusterSetIP", "ports": []},
            "status": {"clusters": [{"cluster": "a"}, {"cluster": "b"}]},
        });
        let mut alpha = ours.clone();
        alpha["apiVersion"] = json!("multicluster.x-k8s.io/v1alpha1");
        let gke = json!({
            "apiVersion": "net.gke.io/v1", "kind": "ServiceImport",
            "metadata": {"name": "web", "namespace": "demo"},
            "status": {"ips": ["10.96.0.3"]},
        });
        let observed = Observed::build(
            &[
                (Flavour::McsV1alpha1, vec![dynamic(alpha)]),
                (Flavour::Gke, vec![dynamic(gke)]),
                (Flavour::McsV1beta1, vec![dynamic(ours)]),
            ],
            &[],
            None,
        );
        let key = ObjectKey::new("demo", "web");
        let mcs = &observed.imports[&(key.clone(), ImportGroup::Mcs)];
        assert_eq!(mcs.flavour, Flavour::McsV1beta1);
        assert!(mcs.managed);
        assert_eq!(mcs.ips, ["10.240.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(mcs.clusters, ["a", "b"]);
        assert_eq!(mcs.applied.as_deref(), Some("abc"));
        let gke = &observed.imports[&(key, ImportGroup::Gke)];
        assert!(!gke.managed);
        assert_eq!(
            observed.foreign_ips(),
            BTreeSet::from(["10.96.0.3".parse().unwrap()])
        );
    }

    #[test]
    fn only_managed_slices_and_live_namespaces_are_kept() {
        let slice = |name: &str, managed_by: &str| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "demo", "labels": {
                        LABEL_MANAGED_BY: managed_by, LABEL_MC_SERVICE_NAME: "web",
                        LABEL_SOURCE_CLUSTER: "b"}},
                    "addressType": "IPv4", "endpoints": [],
                }))
                .unwrap(),
            )
        };
        let namespace = |name: &str, deleting: bool| -> Arc<Namespace> {
            let mut value = json!({"metadata": {"name": name}});
            if deleting {
                value["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
            }
            Arc::new(serde_json::from_value(value).unwrap())
        };
        let observed = Observed::build(
            &[],
            &[
                slice("ours", CONTROLLER_NAME),
                slice("theirs", "other.example"),
            ],
            Some(&[namespace("demo", false), namespace("gone", true)]),
        );
        assert_eq!(observed.slices.len(), 1);
        let ours = &observed.slices[&ObjectKey::new("demo", "ours")];
        assert_eq!(
            (ours.service.as_str(), ours.source_cluster.as_str()),
            ("web", "b")
        );
        assert_eq!(
            observed.namespaces,
            Some(BTreeSet::from(["demo".to_owned()]))
        );
    }

    #[test]
    fn covers_compares_what_is_desired_only() {
        let observed = json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}]}, "extra": true});
        assert!(covers(
            &observed,
            &json!({"a": 1, "b": {"c": [1, {"d": 2}]}})
        ));
        assert!(!covers(&observed, &json!({"a": 2})));
        assert!(!covers(&observed, &json!({"b": {"c": [1]}})));
        assert!(!covers(&observed, &json!({"missing": null})));
    }
}
