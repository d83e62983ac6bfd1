//! What the apiserver fills in for built-in kinds on writes through the
//! API: a Service's type, session affinity, port protocols and target
//! ports, IP family, and a ClusterIP allocated from 10.96.0.0/16 (kept on
//! updates, immutable once set); a new Namespace's phase, finalizer and
//! name label; the protocol of EndpointSlice and Endpoints ports.

use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::{Value, json};

use super::{registry::GroupResource, state::State};

/// ClusterIPs handed out: 10.96.0.10 to 10.96.255.254 (below .10 is left
/// to well-known services, as clusters do for DNS).
const CLUSTER_IP_FIRST: u32 = u32::from_be_bytes([10, 96, 0, 10]);
const CLUSTER_IP_LAST: u32 = u32::from_be_bytes([10, 96, 255, 254]);

fn default(object: &mut Value, field: &str, value: Value) {
    if let Value::Object(map) = object
        && map.get(field).is_none_or(Value::is_null)
    {
        map.insert(field.to_owned(), value);
    }
}

fn ports(list: &mut Value, target_port: bool) {
    for port in list.as_array_mut().into_iter().flatten() {
        default(port, "protocol", json!("TCP"));
        if target_port {
            let number = port["port"].clone();
            default(port, "targetPort", number);
        }
    }
}

/// Fills in `object`'s defaults (a write over `old`, `None` for a create);
/// the error is the field and problem of an invalid change.
pub(crate) fn builtin(
    state: &State,
    resource: &GroupResource,
    object: &mut Value,
    old: Option<&Value>,
) -> Result<(), (String, String)> {
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "services") => service(state, object, old),
        ("", "namespaces") if old.is_none() => {
            let name = object["metadata"]["name"].clone();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            default(&mut object["spec"], "finalizers", json!(["kubernetes"]));
            object["status"] = json!({"phase": "Active"});
            Ok(())
        }
        ("discovery.k8s.io", "endpointslices") => {
            ports(&mut object["ports"], false);
            Ok(())
        }
        ("", "endpoints") => {
            for subset in object["subsets"].as_array_mut().into_iter().flatten() {
                ports(&mut subset["ports"], false);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn service(state: &State, object: &mut Value, old: Option<&Value>) -> Result<(), (String, String)> {
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let spec = &mut object["spec"];
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    ports(&mut spec["ports"], true);
    if spec["type"] == "ExternalName" {
        return Ok(());
    }
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    let previous = old
        .map(|o| &o["spec"]["clusterIP"])
        .filter(|ip| ip.is_string());
    match (
        spec["clusterIP"].as_str().filter(|ip| !ip.is_empty()),
        previous,
    ) {
        (None, Some(previous)) => {
            spec["clusterIP"] = previous.clone();
        }
        (Some(ip), Some(previous)) if previous != ip => {
            return Err((
                "spec.clusterIP".into(),
                format!("Invalid value: {ip:?}: field is immutable"),
            ));
        }
        (None, None) => spec["clusterIP"] = json!(allocate(state)?),
        _ => {}
    }
    let ip = spec["clusterIP"].clone();
    default(spec, "clusterIPs", json!([ip]));
    default(spec, "ipFamilies", json!(["IPv4"]));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    Ok(())
}

fn allocate(state: &State) -> Result<String, (String, String)> {
    let services = GroupResource::new("", "services");
    let used: BTreeSet<Ipv4Addr> = state
        .store
        .list(&services, None)
        .filter_map(|(_, s)| s.object["spec"]["clusterIP"].as_str()?.parse().ok())
        .collect();
    (CLUSTER_IP_FIRST..=CLUSTER_IP_LAST)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
        .map(|ip| ip.to_string())
        .ok_or_else(|| {
            (
                "spec.clusterIP".into(),
                "Internal error: no ClusterIP left in 10.96.0.0/16".into(),
            )
        })
}
