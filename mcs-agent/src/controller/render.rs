//! The objects the controller writes, as JSON (pure): a ServiceImport of
//! the merged export in the flavour the cluster serves, and an
//! EndpointSlice per source slice. Each carries, in an annotation, a hash of
//! its own content, so an object that is current can be told from one that
//! must be written again, also after a restart.

use std::{collections::BTreeSet, hash::Hasher as _, net::IpAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Map, Value, json};

use super::{
    ANNOTATION_APPLIED, ANNOTATION_UNREACHABLE_SINCE, CONTROLLER_NAME, LABEL_IMPORT_MANAGED_BY,
    desired::{Member, SliceWrite},
    exports::group_version,
    merge::{Affinity, IpFamily, Merged},
};
use crate::model::{
    Flavour, ObjectKey, Protocol,
    convert::{LABEL_MANAGED_BY, LABEL_MC_SERVICE_NAME, LABEL_SOURCE_CLUSTER},
};

/// Stamps `object` with the hash of its content (FNV-1a of its JSON, keys
/// sorted) and returns the hash.
pub fn stamp(object: &mut Value) -> String {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(object.to_string().as_bytes());
    let hash = format!("{:016x}", hasher.finish());
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.insert(ANNOTATION_APPLIED.to_owned(), Value::String(hash.clone()));
    }
    hash
}

/// The name of the slice holding `cluster`'s endpoints from its slice
/// `source` of `service`: readable, unique per (cluster, source slice),
/// within the 253 characters of a name.
pub fn slice_name(service: &str, cluster: &str, source: &str) -> String {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(cluster.as_bytes());
    hasher.write(b"/");
    hasher.write(source.as_bytes());
    let suffix = format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff);
    let prefix: String = format!("{service}-{cluster}")
        .chars()
        .take(253 - 13)
        .collect();
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

/// The ServiceImport of `merged` with its ClusterSetIPs `ips` (none when
/// headless), and its hash.
pub fn import_object(
    flavour: Flavour,
    key: &ObjectKey,
    merged: &Merged,
    ips: &[IpAddr],
) -> (Value, String) {
    let ports: Vec<Value> = merged
        .ports
        .iter()
        .map(|port| {
            let mut value = json!({"protocol": port.protocol.as_str(), "port": port.port});
            if !port.name.is_empty() {
                value["name"] = json!(port.name);
            }
            if let Some(app) = &port.app_protocol {
                value["appProtocol"] = json!(app);
            }
            value
        })
        .collect();
    let mut spec = json!({
        "type": if merged.headless { "Headless" } else { "ClusterSetIP" },
        "ports": ports,
    });
    let families: Vec<&str> = if merged.headless {
        merged.ip_families.iter().map(|f| f.as_str()).collect()
    } else {
        ips.iter().map(|ip| IpFamily::of(*ip).as_str()).collect()
    };
    if !ips.is_empty() {
        spec["ips"] = json!(ips.iter().map(IpAddr::to_string).collect::<Vec<_>>());
    }
    if !families.is_empty() {
        spec["ipFamilies"] = json!(families);
    }
    match merged.affinity {
        Affinity::None => spec["sessionAffinity"] = json!("None"),
        Affinity::ClientIp { timeout_seconds } => {
            spec["sessionAffinity"] = json!("ClientIP");
            if let Some(timeout) = timeout_seconds {
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
            }
        }
    }
    // Fields only v1beta1 defines (a v1alpha1 schema would prune them).
    if flavour == Flavour::McsV1beta1 {
        if let Some(policy) = &merged.internal_traffic_policy {
            spec["internalTrafficPolicy"] = json!(policy);
        }
        if let Some(distribution) = &merged.traffic_distribution {
            spec["trafficDistribution"] = json!(distribution);
        }
    }
    let mut labels: Map<String, Value> = merged
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    labels.insert(LABEL_IMPORT_MANAGED_BY.to_owned(), json!(CONTROLLER_NAME));
    let annotations: Map<String, Value> = merged
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let (group, version) = group_version(flavour);
    let mut object = json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": "ServiceImport",
        "metadata": {
            "name": key.name, "namespace": key.namespace,
            "labels": labels, "annotations": annotations,
        },
        "spec": spec,
    });
    let hash = stamp(&mut object);
    (object, hash)
}

/// The slice holding `member`'s endpoints of `service` from its slice
/// `source`, with only the ports the import exposes as `member` declares
/// them (`exposed`: name and protocol, [`Merged::exposed_by`]); `None` for
/// an FQDN slice (no addresses to balance).
pub fn slice_write(
    service: &ObjectKey,
    member: &Member<'_>,
    source: &EndpointSlice,
    exposed: &BTreeSet<(String, Protocol)>,
) -> Option<SliceWrite> {
    if !matches!(source.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let source_name = source.metadata.name.as_deref().unwrap_or_default();
    let name = slice_name(&service.name, member.id, source_name);
    let ports: Vec<Value> = source
        .ports
        .iter()
        .flatten()
        .filter(|port| {
            Protocol::parse(port.protocol.as_deref()).is_some_and(|protocol| {
                exposed.contains(&(port.name.clone().unwrap_or_default(), protocol))
            })
        })
        .map(|port| {
            let mut value = json!({"protocol": port.protocol.as_deref().unwrap_or("TCP")});
            if let Some(number) = port.port {
                value["port"] = json!(number);
            }
            if let Some(name) = &port.name {
                value["name"] = json!(name);
            }
            if let Some(app) = &port.app_protocol {
                value["appProtocol"] = json!(app);
            }
            value
        })
        .collect();
    let endpoints: Vec<Value> = source
        .endpoints
        .iter()
        .map(|endpoint| {
            let mut value = json!({"addresses": endpoint.addresses});
            if let Some(conditions) = &endpoint.conditions {
                let mut c = Map::new();
                for (field, flag) in [
                    ("ready", conditions.ready),
                    ("serving", conditions.serving),
                    ("terminating", conditions.terminating),
                ] {
                    if let Some(flag) = flag {
                        c.insert(field.to_owned(), json!(flag));
                    }
                }
                value["conditions"] = Value::Object(c);
            }
            if let Some(hostname) = &endpoint.hostname {
                value["hostname"] = json!(hostname);
            }
            if let Some(zone) = &endpoint.zone {
                value["zone"] = json!(zone);
            }
            value
        })
        .collect();
    let mut annotations = Map::new();
    if let Some(since) = member.unreachable_since {
        annotations.insert(
            ANNOTATION_UNREACHABLE_SINCE.to_owned(),
            json!(since.to_string()),
        );
    }
    let mut object = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": service.namespace,
            "labels": {
                LABEL_MC_SERVICE_NAME: service.name,
                LABEL_SOURCE_CLUSTER: member.id,
                LABEL_MANAGED_BY: CONTROLLER_NAME,
            },
            "annotations": annotations,
        },
        "addressType": source.address_type,
        "ports": ports,
        "endpoints": endpoints,
    });
    let hash = stamp(&mut object);
    Some(SliceWrite {
        key: ObjectKey::new(service.namespace.clone(), name),
        object,
        hash,
    })
}
