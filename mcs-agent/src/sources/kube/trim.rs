//! Objects are trimmed with `.modify()` before they are stored: only what
//! conversion reads is kept, with the uid (Events name the object by it)
//! and the resourceVersion (conversions are reused by it) — no
//! managedFields, no unrelated labels or annotations, no endpoint topology
//! or target references.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{core::v1::Endpoints, discovery::v1::EndpointSlice as K8sEndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::api::{DynamicObject, TypeMeta};
use serde_json::Value;

use crate::model::convert::{
    IMPORT_ANNOTATIONS, LABEL_MANAGED_BY, LABEL_MC_SERVICE_NAME, LABEL_SERVICE_NAME,
    LABEL_SOURCE_CLUSTER,
};

/// Keeps only the metadata conversion and Events need.
fn trimmed_meta(
    meta: &mut ObjectMeta,
    keep_labels: &[&str],
    keep_annotations: &[&str],
) -> ObjectMeta {
    let keep = |map: Option<BTreeMap<String, String>>, keys: &[&str]| {
        map.map(|mut map| {
            map.retain(|key, _| keys.contains(&key.as_str()));
            map
        })
        .filter(|map| !map.is_empty())
    };
    ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: keep(meta.labels.take(), keep_labels),
        annotations: keep(meta.annotations.take(), keep_annotations),
        ..ObjectMeta::default()
    }
}

/// Trims a ServiceImport to metadata, `spec` and `status` (without
/// conditions) and gives it its type: list items need not carry
/// `apiVersion`/`kind`, and conversion dispatches on them.
pub(super) fn trim_import(import: &mut DynamicObject, types: &TypeMeta) {
    import.types = Some(types.clone());
    import.metadata = trimmed_meta(&mut import.metadata, &[], &IMPORT_ANNOTATIONS);
    if let Value::Object(data) = &mut import.data {
        data.retain(|key, _| key == "spec" || key == "status");
        if let Some(Value::Object(status)) = data.get_mut("status") {
            status.remove("conditions");
        }
    }
}

pub(super) fn trim_slice(slice: &mut K8sEndpointSlice) {
    slice.metadata = trimmed_meta(
        &mut slice.metadata,
        &[
            LABEL_MC_SERVICE_NAME,
            LABEL_SOURCE_CLUSTER,
            LABEL_SERVICE_NAME,
            LABEL_MANAGED_BY,
        ],
        &[],
    );
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.node_name = None;
        endpoint.zone = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
    }
}

pub(super) fn trim_endpoints(endpoints: &mut Endpoints) {
    endpoints.metadata = trimmed_meta(&mut endpoints.metadata, &[], &[]);
    for subset in endpoints.subsets.iter_mut().flatten() {
        for address in subset
            .addresses
            .iter_mut()
            .chain(subset.not_ready_addresses.iter_mut())
            .flatten()
        {
            address.target_ref = None;
            address.node_name = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::convert;

    #[test]
    fn trimming_keeps_what_conversion_reads() {
        let raw = json!({
            "apiVersion": "net.gke.io/v1",
            "kind": "ServiceImport",
            "metadata": {
                "name": "web", "namespace": "demo", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {
                    "net.gke.io/derived-service": "gke-mcs-x",
                    "dataplane.mcs.dev/locality": "local-first",
                    "other": "y",
                },
                "managedFields": [{"manager": "importer", "operation": "Update"}],
            },
            "spec": {"ips": ["10.96.0.1"], "ports": [{"port": 80}]},
            "status": {"clusters": [{"cluster": "a"}], "conditions": [{"type": "Ready"}]},
            "extra": {"big": true},
        });
        let mut object: DynamicObject = serde_json::from_value(raw.clone()).unwrap();
        object.types = None; // as list items may come
        trim_import(
            &mut object,
            &TypeMeta {
                api_version: "net.gke.io/v1".into(),
                kind: "ServiceImport".into(),
            },
        );
        let trimmed = serde_json::to_value(&object).unwrap();
        assert_eq!(
            trimmed["metadata"]["annotations"],
            json!({
                "net.gke.io/derived-service": "gke-mcs-x",
                "dataplane.mcs.dev/locality": "local-first",
            })
        );
        assert!(trimmed["metadata"].get("managedFields").is_none());
        assert!(trimmed["metadata"].get("labels").is_none());
        assert!(trimmed.get("extra").is_none());
        assert!(trimmed["status"].get("conditions").is_none());
        let (full, small) = (convert::convert(&raw), convert::convert(&trimmed));
        assert_eq!(full.objects, small.objects);
        assert_eq!(full.rejections, small.rejections);
    }
}
