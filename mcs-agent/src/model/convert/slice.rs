//! EndpointSlices (MCS-labelled and derived Services' slices) and core
//! `Endpoints`, into model slices.

use k8s_openapi::api::{core::v1::Endpoints, discovery::v1::EndpointSlice as K8sEndpointSlice};
use serde::Deserialize;
use serde_json::Value;

use super::*;

pub(super) fn convert_slice(mut ctx: Ctx, value: &Value) -> Converted {
    let slice: K8sEndpointSlice = match K8sEndpointSlice::deserialize(value) {
        Ok(slice) => slice,
        Err(error) => return ctx.fatal(Problem::Unparsable(error.to_string())),
    };
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    for label in [
        LABEL_MC_SERVICE_NAME,
        LABEL_SERVICE_NAME,
        LABEL_SOURCE_CLUSTER,
    ] {
        if let Some(value) = labels.get(label).filter(|v| v.len() > MAX_LABEL_VALUE_LEN) {
            return ctx.fatal(Problem::Unparsable(format!(
                "label {label} is {} bytes long (limit {MAX_LABEL_VALUE_LEN})",
                value.len()
            )));
        }
    }
    let managed_by = labels.get(LABEL_MANAGED_BY).map(String::as_str);
    let owner = match (
        labels.get(LABEL_MC_SERVICE_NAME),
        labels.get(LABEL_SERVICE_NAME),
    ) {
        (Some(import), _) if managed_by != Some(MANAGED_BY_ENDPOINTSLICE_CONTROLLER) => {
            SliceOwner::Import(truncate(import))
        }
        (_, Some(service)) => SliceOwner::Service(truncate(service)),
        // An MCS label on a slice of the ordinary controller: not ours.
        (Some(_), None) => return ctx.done(Vec::new()),
        (None, None) => return ctx.fatal(Problem::MissingLabel(LABEL_MC_SERVICE_NAME)),
    };
    let source_cluster = labels
        .get(LABEL_SOURCE_CLUSTER)
        .map(|name| truncate(name))
        .unwrap_or_default();
    let address_type = match slice.address_type.as_str() {
        "IPv4" => AddressType::IPv4,
        "IPv6" => AddressType::IPv6,
        "FQDN" => {
            return ctx.fatal(Problem::Unsupported(
                "addressType FQDN cannot be load-balanced".to_owned(),
            ));
        }
        other => return ctx.fatal(Problem::UnknownAddressType(truncate(other))),
    };

    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    for (index, port) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{index}]");
        let raw = RawPort {
            name: port.name.clone(),
            protocol: port.protocol.clone(),
            app_protocol: port.app_protocol.clone(),
            port: port.port.map(i64::from),
        };
        let Some((name, protocol, number)) = parse_port(&mut ctx, &field, &raw) else {
            continue;
        };
        if !names.insert(name.clone()) {
            ctx.problem(Problem::DuplicatePortName { field, name });
            continue;
        }
        ports.push(SlicePort {
            name,
            protocol,
            port: number,
        });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (index, endpoint) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::with_capacity(endpoint.addresses.len());
        for (address_index, raw) in endpoint.addresses.iter().enumerate() {
            let field = format!("endpoints[{index}].addresses[{address_index}]");
            let Some(ip) = parse_ip(&mut ctx, &field, raw) else {
                continue;
            };
            let matches = match address_type {
                AddressType::IPv4 => ip.is_ipv4(),
                AddressType::IPv6 => ip.is_ipv6(),
                AddressType::Fqdn => false,
            };
            if !matches {
                ctx.problem(Problem::AddressTypeMismatch {
                    field,
                    value: ip,
                    address_type,
                });
                continue;
            }
            addresses.push(ip);
        }
        let conditions = endpoint.conditions.as_ref();
        endpoints.push(Endpoint {
            addresses: addresses.into(),
            conditions: Conditions {
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            },
            hostname: endpoint
                .hostname
                .as_deref()
                .map(|h| truncate(h).into_boxed_str()),
        });
    }

    let converted = EndpointSlice {
        key: ctx.key.clone(),
        owner,
        source_cluster,
        address_type,
        ports,
        endpoints,
    };
    ctx.done(vec![Object::Slice(converted.into())])
}

/// A legacy `Endpoints` object (the derived Service's, for GKE): each subset
/// becomes one slice-shaped model object.
pub(super) fn convert_endpoints(mut ctx: Ctx, value: &Value) -> Converted {
    let endpoints: Endpoints = match Endpoints::deserialize(value) {
        Ok(endpoints) => endpoints,
        Err(error) => return ctx.fatal(Problem::Unparsable(error.to_string())),
    };
    let service = ctx.key.name.clone();
    let mut objects = Vec::new();
    for (subset_index, subset) in endpoints.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for (index, port) in subset.ports.iter().flatten().enumerate() {
            let raw = RawPort {
                name: port.name.clone(),
                protocol: port.protocol.clone(),
                app_protocol: port.app_protocol.clone(),
                port: Some(i64::from(port.port)),
            };
            let field = format!("subsets[{subset_index}].ports[{index}]");
            if let Some((name, protocol, port)) = parse_port(&mut ctx, &field, &raw) {
                ports.push(SlicePort {
                    name,
                    protocol,
                    port,
                });
            }
        }
        let mut slice_endpoints = Vec::new();
        for (ready, list, list_name) in [
            (true, &subset.addresses, "addresses"),
            (false, &subset.not_ready_addresses, "notReadyAddresses"),
        ] {
            for (index, address) in list.iter().flatten().enumerate() {
                let field = format!("subsets[{subset_index}].{list_name}[{index}].ip");
                let Some(ip) = parse_ip(&mut ctx, &field, &address.ip) else {
                    continue;
                };
                slice_endpoints.push(Endpoint {
                    addresses: vec![ip].into(),
                    conditions: Conditions {
                        ready,
                        serving: ready,
                        terminating: false,
                    },
                    hostname: address
                        .hostname
                        .as_deref()
                        .map(|h| truncate(h).into_boxed_str()),
                });
            }
        }
        let address_type = if slice_endpoints
            .iter()
            .flat_map(|e| &e.addresses)
            .all(IpAddr::is_ipv4)
        {
            AddressType::IPv4
        } else {
            AddressType::IPv6
        };
        objects.push(Object::Slice(
            EndpointSlice {
                key: ObjectKey::new(
                    ctx.key.namespace.clone(),
                    format!("{}#subset{subset_index}", ctx.key.name),
                ),
                owner: SliceOwner::Service(service.clone()),
                source_cluster: String::new(),
                address_type,
                ports,
                endpoints: slice_endpoints,
            }
            .into(),
        ));
    }
    ctx.done(objects)
}
