//! What one import asks for: its frontends (every ClusterSetIP × port,
//! plus the per-address markers) with their backends, and its own
//! rejections. A ClusterSetIP's backends are the endpoints of its own
//! family (`addressType` of the slices): a dual-stack import is two sets of
//! frontends, one per family. O(endpoints of the import); conflicts between imports are
//! the engine's business (`incremental.rs`).

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use mcs_common::MAX_BACKENDS_PER_FRONTEND;

use super::{
    Backend, ClusterName, Frontend, FrontendKind, FrontendSpec, IpFamily,
    policy::{ClusterCidrs, Locality, Policy, apply_locality},
};
use crate::model::{
    AddressType, ImportType, Problem, Protocol, Rejection, ServiceImport, SessionAffinity, Snapshot,
};

fn rejection(import: &ServiceImport, problem: Problem) -> Rejection {
    Rejection {
        kind: "ServiceImport".into(),
        object: import.key.clone(),
        problem,
        fatal: false,
    }
}

/// The frontends of one import with their specs, in listing order, and
/// its own rejections. O(endpoints of the import).
pub(super) fn import_frontends(
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
    let allowed: Vec<IpAddr> = import
        .ips
        .iter()
        .copied()
        .filter(|ip| {
            let allowed = policy.clusterset_ip_cidrs.allows(*ip);
            if !allowed {
                rejections.push(rejection(
                    import,
                    Problem::OutsideClustersetIpCidrs {
                        field: "spec.ips[]".into(),
                        value: *ip,
                    },
                ));
            }
            allowed
        })
        .collect();
    for vip in &allowed {
        let family = IpFamily::of(vip);
        let exported_in_family = snapshot
            .slices_of(import)
            .any(|slice| address_family(slice.address_type) == Some(family));
        if !exported_in_family && snapshot.slices_of(import).next().is_some() {
            // Exported, but only in the other family: the frontends stay
            // (the datapath refuses their connections), the operator sees why.
            rejections.push(rejection(
                import,
                Problem::NoEndpointsOfFamily { vip: *vip, family },
            ));
        }
    }
    let key = Arc::new(import.key.clone());
    for vip in allowed {
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
                IpFamily::of(&vip),
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
                    import: key.clone(),
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
                    import: key.clone(),
                    backends: Vec::new(),
                    affinity_timeout: None,
                },
            ));
        }
    }
    (entries, rejections)
}

fn display_port(name: &str, port: u16) -> String {
    if name.is_empty() {
        port.to_string()
    } else {
        name.to_owned()
    }
}

/// The family of a slice's addresses (none for FQDN slices).
fn address_family(address_type: AddressType) -> Option<IpFamily> {
    match address_type {
        AddressType::IPv4 => Some(IpFamily::V4),
        AddressType::IPv6 => Some(IpFamily::V6),
        AddressType::Fqdn => None,
    }
}

/// Usable `family` endpoints of every slice backing `import` that exposes a
/// port named `port_name` with `protocol`, deduplicated by address and port
/// (the first slice in name order wins the cluster label): the ready ones,
/// or — when none is ready — the serving and terminating ones. Returns
/// whether the list was cut at [`MAX_BACKENDS_PER_FRONTEND`].
fn backends_of(
    snapshot: &Snapshot,
    import: &ServiceImport,
    port_name: &str,
    protocol: Protocol,
    family: IpFamily,
    cidrs: &ClusterCidrs,
    rejections: &mut Vec<Rejection>,
) -> (Vec<Backend>, bool) {
    let mut ready: BTreeMap<(IpAddr, u16), ClusterName> = BTreeMap::new();
    let mut terminating: BTreeMap<(IpAddr, u16), ClusterName> = BTreeMap::new();
    let mut truncated = false;
    for slice in snapshot.slices_of(import) {
        if address_family(slice.address_type) != Some(family) {
            continue;
        }
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue; // this cluster does not expose the port
        };
        let cluster = ClusterName::from(slice.source_cluster.as_str());
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
                if IpFamily::of(address) != family {
                    continue; // the model rejected it already (addressType mismatch)
                }
                if !cidrs.allows(&slice.source_cluster, *address) {
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
                let key = (*address, slice_port.port);
                if target.len() >= MAX_BACKENDS_PER_FRONTEND as usize && !target.contains_key(&key)
                {
                    truncated = true;
                    continue;
                }
                target.entry(key).or_insert_with(|| cluster.clone());
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
