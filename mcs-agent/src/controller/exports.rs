//! What a member cluster exports, read from its ServiceExports (mcs-api
//! `v1alpha1`/`v1beta1` and GKE `net.gke.io/v1`), Services and
//! EndpointSlices into a model the merge and the desired state work on.
//!
//! Conversion never fails as a whole: a bad part (an unknown protocol, an
//! exported label the API server would refuse) is left out and named in
//! [`Export::dropped`] or [`ServiceInfo::dropped`], so one odd object can
//! neither stop the controller nor make an import unwritable.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use super::merge::{Affinity, IpFamily, Port};
use crate::model::{
    Flavour, ObjectKey, Protocol,
    convert::{LABEL_MC_SERVICE_NAME, LABEL_SERVICE_NAME},
};
/// The slices a member's Services own are those of the ordinary
/// EndpointSlice controller (or any other writer of
/// `kubernetes.io/service-name`), never the MCS slices controllers write:
/// the agent's kube source watches the same set.
pub use crate::sources::kube::{SERVICE_SLICES_SELECTOR, import_resource};

/// The `ApiResource` of a ServiceExport flavour.
pub fn export_resource(flavour: Flavour) -> ApiResource {
    let (group, version) = flavour.group_version();
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: "ServiceExport".to_owned(),
        plural: "serviceexports".to_owned(),
    }
}

/// Flavours in the order an object seen in several is taken from: v1beta1
/// (the storage version) before v1alpha1 — two views of one CRD, so the same
/// object — and mcs-api before GKE.
pub const FLAVOURS: [Flavour; 3] = [Flavour::McsV1beta1, Flavour::McsV1alpha1, Flavour::Gke];

/// A status condition as observed on an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedCondition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
    /// Kept verbatim so an unchanged condition keeps its time.
    pub last_transition_time: Option<String>,
}

/// Reads `status.conditions` of a raw object.
pub fn conditions_of(data: &Value) -> Vec<ObservedCondition> {
    let text = |value: &Value, field: &str| {
        value
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    data.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|condition| ObservedCondition {
            type_: text(condition, "type"),
            status: text(condition, "status"),
            reason: text(condition, "reason"),
            message: text(condition, "message"),
            observed_generation: condition.get("observedGeneration").and_then(Value::as_i64),
            last_transition_time: condition
                .get("lastTransitionTime")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
        .collect()
}

/// One cluster's ServiceExport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    pub key: ObjectKey,
    pub flavour: Flavour,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub created: Option<Timestamp>,
    /// `spec.exportedLabels`, valid ones only.
    pub labels: BTreeMap<String, String>,
    /// `spec.exportedAnnotations`, valid ones only.
    pub annotations: BTreeMap<String, String>,
    /// What was left out, for the operator.
    pub dropped: Vec<String>,
    pub conditions: Vec<ObservedCondition>,
}

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Reads a ServiceExport of any flavour.
pub fn export_of(object: &DynamicObject, flavour: Flavour) -> Export {
    let mut dropped = Vec::new();
    let mut map = |field: &str, check: fn(&str, &str) -> Result<(), String>| {
        let mut out = BTreeMap::new();
        let entries = object
            .data
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_object);
        for (key, value) in entries.into_iter().flatten() {
            let Some(value) = value.as_str() else {
                dropped.push(format!("spec.{field}[{key:?}]: not a string"));
                continue;
            };
            match check(key, value) {
                Ok(()) => {
                    out.insert(key.clone(), value.to_owned());
                }
                Err(why) => dropped.push(format!("spec.{field}[{key:?}]: {why}")),
            }
        }
        out
    };
    let labels = map("exportedLabels", check_label);
    let annotations = map("exportedAnnotations", check_annotation);
    Export {
        key: key_of(&object.metadata),
        flavour,
        uid: object.metadata.uid.clone(),
        generation: object.metadata.generation,
        created: object.metadata.creation_timestamp.as_ref().map(|t| t.0),
        labels,
        annotations,
        dropped,
        conditions: conditions_of(&object.data),
    }
}

/// Labels and annotations this controller sets itself: an export may not
/// override them.
pub const RESERVED_KEYS: [&str; 2] = [super::LABEL_IMPORT_MANAGED_BY, super::ANNOTATION_APPLIED];

/// A qualified name as labels and annotations keys are: an optional DNS
/// subdomain prefix and `/`, then up to 63 alphanumerics, `-`, `_`, `.`
/// starting and ending alphanumeric.
fn check_key(key: &str) -> Result<(), String> {
    if RESERVED_KEYS.contains(&key) {
        return Err("set by the controller itself".to_owned());
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let labels_ok = prefix.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if prefix.is_empty() || prefix.len() > 253 || !labels_ok {
            return Err("prefix is not a DNS subdomain".to_owned());
        }
    }
    if name.is_empty() || name.len() > 63 || !label_value_ok(name) {
        return Err(
            "name must be 1-63 alphanumerics, '-', '_' or '.', alphanumeric at both ends"
                .to_owned(),
        );
    }
    Ok(())
}

fn label_value_ok(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

fn check_label(key: &str, value: &str) -> Result<(), String> {
    check_key(key)?;
    if value.len() > 63 || !label_value_ok(value) {
        return Err(
            "value must be at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends"
                .to_owned(),
        );
    }
    Ok(())
}

/// Annotation values are free text; the API server limits all of an
/// object's annotations to 256 KiB together, so one is held to 64 KiB.
fn check_annotation(key: &str, value: &str) -> Result<(), String> {
    check_key(key)?;
    if value.len() > 64 * 1024 {
        return Err("value longer than 64 KiB".to_owned());
    }
    Ok(())
}

/// How a Service can be exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// ClusterIP, NodePort or LoadBalancer: imported with a ClusterSetIP.
    ClusterSetIp,
    /// `clusterIP: None`.
    Headless,
    /// Cannot be exported (KEP-1645: service types).
    ExternalName,
}

/// The parts of a Service an import is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub kind: ServiceKind,
    pub ports: Vec<Port>,
    pub affinity: Affinity,
    pub ip_families: Vec<IpFamily>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    pub dropped: Vec<String>,
}

/// Reads a Service.
pub fn service_of(service: &Service) -> ServiceInfo {
    let spec = service.spec.clone().unwrap_or_default();
    let mut dropped = Vec::new();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        ServiceKind::ExternalName
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        ServiceKind::ClusterSetIp
    };
    let mut ports = Vec::new();
    for (index, port) in spec.ports.iter().flatten().enumerate() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
            dropped.push(format!(
                "spec.ports[{index}]: unknown protocol {:?}",
                port.protocol
            ));
            continue;
        };
        let Ok(number @ 1..=65_535) = u16::try_from(port.port) else {
            dropped.push(format!(
                "spec.ports[{index}]: port {} outside 1..=65535",
                port.port
            ));
            continue;
        };
        ports.push(Port {
            name: port.name.clone().unwrap_or_default(),
            protocol,
            port: number,
            app_protocol: port.app_protocol.clone(),
        });
    }
    let affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Affinity::ClientIp {
            timeout_seconds: spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds),
        },
        _ => Affinity::None,
    };
    let mut ip_families: Vec<IpFamily> = Vec::new();
    for family in spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| IpFamily::parse(f))
    {
        if !ip_families.contains(&family) {
            ip_families.push(family);
        }
    }
    if ip_families.is_empty() {
        // Not defaulted (an API server that does not allocate): the
        // families of its addresses, else IPv4 as Kubernetes defaults.
        let addresses = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.as_ref());
        for ip in addresses.filter_map(|a| a.parse::<IpAddr>().ok()) {
            let family = IpFamily::of(ip);
            if !ip_families.contains(&family) {
                ip_families.push(family);
            }
        }
    }
    if ip_families.is_empty() {
        ip_families.push(IpFamily::V4);
    }
    ServiceInfo {
        kind,
        ports,
        affinity,
        ip_families,
        internal_traffic_policy: spec.internal_traffic_policy.clone(),
        traffic_distribution: spec.traffic_distribution.clone(),
        dropped,
    }
}

/// Whether a member's slice belongs to one of its own Services (and is
/// therefore a source of MCS endpoints): labelled with the Service and not
/// an MCS slice some controller wrote.
pub fn service_of_slice(slice: &EndpointSlice) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(LABEL_MC_SERVICE_NAME) {
        return None;
    }
    let service = labels.get(LABEL_SERVICE_NAME)?;
    Some(ObjectKey::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        service.clone(),
    ))
}

/// What one member cluster exports, as last read.
#[derive(Clone, Debug, Default)]
pub struct ClusterModel {
    pub exports: BTreeMap<ObjectKey, Export>,
    pub services: BTreeMap<ObjectKey, ServiceInfo>,
    /// Slices by the Service that owns them, in name order.
    pub slices: BTreeMap<ObjectKey, Vec<Arc<EndpointSlice>>>,
}

impl ClusterModel {
    /// Builds the model from store contents. An export seen in several
    /// flavours is taken once, from the first of [`FLAVOURS`]; Services and
    /// slices are kept only for exported services.
    pub fn build(
        exports: &[(Flavour, Vec<Arc<DynamicObject>>)],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Self {
        let mut model = Self::default();
        for flavour in FLAVOURS {
            for (_, objects) in exports.iter().filter(|(f, _)| *f == flavour) {
                for object in objects {
                    let key = key_of(&object.metadata);
                    if key.name.is_empty() || model.exports.contains_key(&key) {
                        continue;
                    }
                    model.exports.insert(key, export_of(object, flavour));
                }
            }
        }
        for service in services {
            let key = key_of(&service.metadata);
            if model.exports.contains_key(&key) {
                model.services.insert(key, service_of(service));
            }
        }
        let mut seen = BTreeSet::new();
        for slice in slices {
            let Some(service) = service_of_slice(slice) else {
                continue;
            };
            if !model.exports.contains_key(&service) || !seen.insert(key_of(&slice.metadata)) {
                continue;
            }
            model.slices.entry(service).or_default().push(slice.clone());
        }
        for slices in model.slices.values_mut() {
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        model
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn export(flavour: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": flavour,
            "kind": "ServiceExport",
            "metadata": {"name": "hello", "namespace": "demo", "uid": "u1", "generation": 2,
                         "creationTimestamp": "2025-01-02T03:04:05Z"},
            "spec": spec,
            "status": {"conditions": [{"type": "Valid", "status": "True", "reason": "Valid",
                                       "message": "ok", "lastTransitionTime": "2025-01-02T03:04:06Z"}]},
        }))
        .unwrap()
    }

    #[test]
    fn exports_keep_valid_exported_labels_and_annotations() {
        let export = export_of(
            &export(
                "multicluster.x-k8s.io/v1beta1",
                json!({
                    "exportedLabels": {"team": "web", "example.com/tier": "front",
                                       "bad key": "x", "long": "v".repeat(64),
                                       super::super::LABEL_IMPORT_MANAGED_BY: "me"},
                    "exportedAnnotations": {"note": "free text, with spaces", "n": 3},
                }),
            ),
            Flavour::McsV1beta1,
        );
        assert_eq!(export.key, ObjectKey::new("demo", "hello"));
        assert_eq!(
            export.created,
            Some("2025-01-02T03:04:05Z".parse().unwrap())
        );
        assert_eq!(export.generation, Some(2));
        assert_eq!(
            export.labels.keys().collect::<Vec<_>>(),
            ["example.com/tier", "team"]
        );
        assert_eq!(export.annotations.len(), 1);
        assert_eq!(export.dropped.len(), 4, "{:?}", export.dropped);
        assert_eq!(export.conditions[0].type_, "Valid");
        assert_eq!(
            export.conditions[0].last_transition_time.as_deref(),
            Some("2025-01-02T03:04:06Z")
        );
    }

    #[test]
    fn label_keys_and_values_follow_the_api_rules() {
        for good in ["a", "a.b-c_d", "example.com/x", "k8s.io/A9"] {
            assert!(check_label(good, "v-1.2_x").is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Example.com/x", "/x", "a/", "a/b/c", "x y"] {
            assert!(check_label(bad, "v").is_err(), "{bad:?}");
        }
        assert!(check_label("a", "").is_ok());
        assert!(check_label("a", "-v").is_err());
        assert!(check_annotation("a", "any text: {}").is_ok());
    }

    fn service(spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "hello", "namespace": "demo"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn services_become_ports_type_affinity_and_families() {
        let info = service_of(&service(json!({
            "ports": [{"name": "tcp", "port": 42, "protocol": "TCP"},
                      {"name": "udp", "port": 42, "protocol": "UDP", "appProtocol": "dns"},
                      {"name": "bad", "port": 7, "protocol": "QUIC"}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
            "internalTrafficPolicy": "Local",
        })));
        assert_eq!(info.kind, ServiceKind::ClusterSetIp);
        assert_eq!(info.ports.len(), 2);
        assert_eq!(info.ports[1].app_protocol.as_deref(), Some("dns"));
        assert_eq!(
            info.affinity,
            Affinity::ClientIp {
                timeout_seconds: Some(10)
            }
        );
        assert_eq!(info.ip_families, [IpFamily::V4]);
        assert_eq!(info.internal_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(info.dropped.len(), 1);

        let headless = service_of(&service(
            json!({"clusterIP": "None", "ipFamilies": ["IPv6", "IPv4"]}),
        ));
        assert_eq!(headless.kind, ServiceKind::Headless);
        assert_eq!(headless.ip_families, [IpFamily::V6, IpFamily::V4]);
        let dual = service_of(&service(json!({"clusterIPs": ["fd00::1", "10.0.0.1"]})));
        assert_eq!(dual.ip_families, [IpFamily::V6, IpFamily::V4]);
        let external = service_of(&service(
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ));
        assert_eq!(external.kind, ServiceKind::ExternalName);
    }

    fn slice(name: &str, labels: Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "demo", "labels": labels},
                "addressType": "IPv4",
                "endpoints": [],
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_model_takes_each_export_once_and_only_exported_services() {
        let beta = Arc::new(export("multicluster.x-k8s.io/v1beta1", json!({})));
        let alpha = Arc::new(export("multicluster.x-k8s.io/v1alpha1", json!({})));
        let other: Arc<DynamicObject> = Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "net.gke.io/v1", "kind": "ServiceExport",
                "metadata": {"name": "other", "namespace": "demo"},
            }))
            .unwrap(),
        );
        let model = ClusterModel::build(
            &[
                (Flavour::Gke, vec![other]),
                (Flavour::McsV1alpha1, vec![alpha]),
                (Flavour::McsV1beta1, vec![beta]),
            ],
            &[
                Arc::new(service(json!({}))),
                Arc::new(
                    serde_json::from_value(
                        json!({"metadata": {"name": "unexported", "namespace": "demo"}}),
                    )
                    .unwrap(),
                ),
            ],
            &[
                slice("hello-2", json!({LABEL_SERVICE_NAME: "hello"})),
                slice("hello-1", json!({LABEL_SERVICE_NAME: "hello"})),
                slice(
                    "mcs",
                    json!({LABEL_SERVICE_NAME: "hello", LABEL_MC_SERVICE_NAME: "hello"}),
                ),
                slice("unexported-1", json!({LABEL_SERVICE_NAME: "unexported"})),
            ],
        );
        assert_eq!(model.exports.len(), 2);
        assert_eq!(
            model.exports[&ObjectKey::new("demo", "hello")].flavour,
            Flavour::McsV1beta1
        );
        assert_eq!(
            model.exports[&ObjectKey::new("demo", "other")].flavour,
            Flavour::Gke
        );
        assert_eq!(model.services.len(), 1);
        let names: Vec<_> = model.slices[&ObjectKey::new("demo", "hello")]
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["hello-1", "hello-2"]);
    }
}
