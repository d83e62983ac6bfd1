//! Raw Kubernetes objects (as JSON values, from YAML files or the API
//! server) → validated model objects plus [`Rejection`]s.
//!
//! This file dispatches by kind and holds what every kind shares (metadata,
//! addresses, ports); `import.rs` converts ServiceImports, `slice.rs`
//! EndpointSlices and `Endpoints`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use serde::Deserialize;
use serde_json::Value;

use super::{
    AddressType, Conditions, Endpoint, EndpointSlice, Flavour, ObjectKey, Problem, Protocol,
    Rejection, ServiceImport, SliceOwner, SlicePort,
};

pub const LABEL_MC_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Slices managed by the ordinary controller are never MCS endpoints.
pub const MANAGED_BY_ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
pub const ANNOTATION_DERIVED_SERVICE: &str = "multicluster.kubernetes.io/derived-service";
pub const ANNOTATION_GKE_DERIVED_SERVICE: &str = "net.gke.io/derived-service";
/// Per-import locality policy override (`none`, `local-first`,
/// `weighted:CLUSTER=W,...`).
pub const ANNOTATION_LOCALITY: &str = "dataplane.mcs.dev/locality";
/// Every ServiceImport annotation conversion reads: what a source that trims
/// objects (the kube source) must keep, so both sources convert alike.
pub const IMPORT_ANNOTATIONS: [&str; 3] = [
    ANNOTATION_DERIVED_SERVICE,
    ANNOTATION_GKE_DERIVED_SERVICE,
    ANNOTATION_LOCALITY,
];

mod import;
mod slice;
#[cfg(test)]
mod tests;

/// Longest name accepted (DNS subdomain limit); longer names are hostile.
const MAX_NAME_LEN: usize = 253;
/// Longest label value Kubernetes accepts; a longer service-name or
/// source-cluster label cannot come from the API server, and truncating it
/// would silently orphan the slice or rename its cluster.
const MAX_LABEL_VALUE_LEN: usize = 63;

/// A converted object, shared: a source that keeps conversions of
/// unchanged objects hands the same object to every snapshot, and finding
/// what changed between snapshots compares pointers, not contents.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Import(std::sync::Arc<ServiceImport>),
    Slice(std::sync::Arc<EndpointSlice>),
}

/// The result of converting one raw object: the model objects it yields
/// (none if it was fatally rejected or is irrelevant, several for an
/// `Endpoints` object with several subsets) and the problems found.
#[derive(Debug, Default)]
pub struct Converted {
    pub objects: Vec<Object>,
    pub rejections: Vec<Rejection>,
}

/// The kinds mcs reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ServiceImport(Flavour),
    EndpointSlice,
    Endpoints,
}

impl Kind {
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("multicluster.x-k8s.io/v1alpha1", "ServiceImport") => {
                Some(Self::ServiceImport(Flavour::McsV1alpha1))
            }
            ("multicluster.x-k8s.io/v1beta1", "ServiceImport") => {
                Some(Self::ServiceImport(Flavour::McsV1beta1))
            }
            ("net.gke.io/v1", "ServiceImport") => Some(Self::ServiceImport(Flavour::Gke)),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            ("v1", "Endpoints") => Some(Self::Endpoints),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::ServiceImport(_) => "ServiceImport",
            Self::EndpointSlice => "EndpointSlice",
            Self::Endpoints => "Endpoints",
        }
    }
}

fn str_field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut current = value;
    for key in path {
        current = current.get(key)?;
    }
    current.as_str()
}

/// Namespace/name of a raw object, for naming it in errors even when the
/// rest of it cannot be parsed.
pub fn object_key(value: &Value) -> ObjectKey {
    let namespace = str_field(value, &["metadata", "namespace"]).unwrap_or("default");
    let name = str_field(value, &["metadata", "name"]).unwrap_or("<unnamed>");
    ObjectKey::new(truncate(namespace), truncate(name))
}

fn truncate(name: &str) -> String {
    if name.len() <= MAX_NAME_LEN {
        return name.to_owned();
    }
    let mut end = MAX_NAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

struct Ctx {
    kind: &'static str,
    key: ObjectKey,
    rejections: Vec<Rejection>,
}

impl Ctx {
    fn problem(&mut self, problem: Problem) {
        self.rejections.push(Rejection {
            kind: self.kind.to_owned(),
            object: self.key.clone(),
            problem,
            fatal: false,
        });
    }

    fn fatal(mut self, problem: Problem) -> Converted {
        self.rejections.push(Rejection {
            kind: self.kind.to_owned(),
            object: self.key,
            problem,
            fatal: true,
        });
        Converted {
            objects: Vec::new(),
            rejections: self.rejections,
        }
    }

    fn done(self, objects: Vec<Object>) -> Converted {
        Converted {
            objects,
            rejections: self.rejections,
        }
    }
}

/// Converts one raw object. Never panics, whatever the input.
pub fn convert(value: &Value) -> Converted {
    let api_version = str_field(value, &["apiVersion"]).unwrap_or("");
    let kind = str_field(value, &["kind"]).unwrap_or("");
    let Some(known) = Kind::of(api_version, kind) else {
        let ctx = Ctx {
            kind: "object",
            key: object_key(value),
            rejections: Vec::new(),
        };
        return ctx.fatal(Problem::UnsupportedKind {
            api_version: truncate(api_version),
            kind: truncate(kind),
        });
    };
    let ctx = Ctx {
        kind: known.name(),
        key: object_key(value),
        rejections: Vec::new(),
    };
    for (field, present) in [
        ("name", str_field(value, &["metadata", "name"])),
        ("namespace", str_field(value, &["metadata", "namespace"])),
    ] {
        match present {
            None | Some("") => return ctx.fatal(Problem::MissingMetadata(field)),
            Some(text) if text.len() > MAX_NAME_LEN => {
                return ctx.fatal(Problem::Unparsable(format!(
                    "metadata.{field} is {} bytes long (limit {MAX_NAME_LEN})",
                    text.len()
                )));
            }
            Some(_) => {}
        }
    }
    match known {
        Kind::ServiceImport(flavour) => import::convert_import(ctx, flavour, value),
        Kind::EndpointSlice => slice::convert_slice(ctx, value),
        Kind::Endpoints => slice::convert_endpoints(ctx, value),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    name: Option<String>,
    protocol: Option<String>,
    app_protocol: Option<String>,
    port: Option<i64>,
}

/// Parses and vets an address: loopback, link-local, multicast, broadcast
/// and unspecified addresses must never become ClusterSetIPs or backends
/// (CVE-2021-25737 class: endpoints pointing at the node itself).
fn parse_ip(ctx: &mut Ctx, field: &str, raw: &str) -> Option<IpAddr> {
    let Ok(ip) = raw.parse::<IpAddr>() else {
        ctx.problem(Problem::MalformedIp {
            field: field.to_owned(),
            value: truncate(raw),
        });
        return None;
    };
    if let Some(reason) = forbidden_reason(ip) {
        ctx.problem(Problem::ForbiddenIp {
            field: field.to_owned(),
            value: ip,
            reason,
        });
        return None;
    }
    Some(ip)
}

/// Why an address may not be used, if it may not.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4 == Ipv4Addr::BROADCAST {
                Some("broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if let Some(v4) = v6.to_ipv4_mapped() {
                forbidden_reason(IpAddr::V4(v4)).or(Some("IPv4-mapped"))
            } else {
                None
            }
        }
    }
}

fn parse_port(ctx: &mut Ctx, field: &str, raw: &RawPort) -> Option<(String, Protocol, u16)> {
    let Some(protocol) = Protocol::parse(raw.protocol.as_deref()) else {
        ctx.problem(Problem::UnknownProtocol {
            field: format!("{field}.protocol"),
            value: truncate(raw.protocol.as_deref().unwrap_or_default()),
        });
        return None;
    };
    let number = raw.port.unwrap_or(0);
    let Ok(port @ 1..=65_535) = u16::try_from(number) else {
        ctx.problem(Problem::PortOutOfRange {
            field: format!("{field}.port"),
            value: number,
        });
        return None;
    };
    let name = raw.name.as_deref().map(truncate).unwrap_or_default();
    Some((name, protocol, port))
}
