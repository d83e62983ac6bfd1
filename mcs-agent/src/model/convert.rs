//! Raw Kubernetes objects (as JSON values, from YAML files or the API
//! server) → validated model objects plus [`Rejection`]s.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{core::v1::Endpoints, discovery::v1::EndpointSlice as K8sEndpointSlice};
use serde::Deserialize;
use serde_json::Value;

use super::{
    AddressType, Conditions, DEFAULT_AFFINITY_TIMEOUT_SECONDS, Endpoint, EndpointSlice, Flavour,
    ImportPort, ImportType, ObjectKey, Problem, Protocol, Rejection, ServiceImport,
    SessionAffinity, SliceOwner, SlicePort,
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
        Kind::ServiceImport(flavour) => convert_import(ctx, flavour, value),
        Kind::EndpointSlice => convert_slice(ctx, value),
        Kind::Endpoints => convert_endpoints(ctx, value),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawImportSpec {
    #[serde(rename = "type")]
    import_type: Option<String>,
    ips: Option<Vec<String>>,
    ports: Option<Vec<RawPort>>,
    session_affinity: Option<String>,
    session_affinity_config: Option<RawAffinityConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawImportStatus {
    ips: Option<Vec<String>>,
    ports: Option<Vec<RawPort>>,
    clusters: Option<Vec<RawCluster>>,
}

#[derive(Deserialize)]
struct RawCluster {
    cluster: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    name: Option<String>,
    protocol: Option<String>,
    app_protocol: Option<String>,
    port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    client_ip: Option<RawClientIpConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClientIpConfig {
    timeout_seconds: Option<i64>,
}

fn parse_part<T: for<'de> Deserialize<'de> + Default>(
    ctx: &mut Ctx,
    value: &Value,
    field: &str,
) -> Result<T, Problem> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(part) => T::deserialize(part).map_err(|error| {
            let _ = ctx;
            Problem::Unparsable(format!("{field}: {error}"))
        }),
    }
}

fn convert_import(mut ctx: Ctx, flavour: Flavour, value: &Value) -> Converted {
    let spec: RawImportSpec = match parse_part(&mut ctx, value, "spec") {
        Ok(spec) => spec,
        Err(problem) => return ctx.fatal(problem),
    };
    let status: RawImportStatus = match parse_part(&mut ctx, value, "status") {
        Ok(status) => status,
        Err(problem) => return ctx.fatal(problem),
    };
    let import_type = match spec.import_type.as_deref() {
        None | Some("ClusterSetIP") => ImportType::ClusterSetIp,
        Some("Headless") => ImportType::Headless,
        Some(other) => return ctx.fatal(Problem::UnknownImportType(truncate(other))),
    };
    // GKE publishes ips/ports in spec or in status; accept either.
    let raw_ips = spec.ips.or(status.ips).unwrap_or_default();
    let raw_ports = spec.ports.or(status.ports).unwrap_or_default();

    let mut ips = Vec::new();
    if raw_ips.len() > 2 {
        ctx.problem(Problem::TooManyIps(raw_ips.len()));
    }
    for (index, raw) in raw_ips.iter().enumerate().take(2) {
        let field = format!("spec.ips[{index}]");
        if let Some(ip) = parse_ip(&mut ctx, &field, raw) {
            if ips
                .iter()
                .any(|known: &IpAddr| known.is_ipv4() == ip.is_ipv4())
            {
                ctx.problem(Problem::Conflict(format!(
                    "{field}: second address of the same family ({ip})"
                )));
            } else {
                ips.push(ip);
            }
        }
    }

    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    for (index, raw) in raw_ports.iter().enumerate() {
        let field = format!("spec.ports[{index}]");
        let Some((name, protocol, port)) = parse_port(&mut ctx, &field, raw) else {
            continue;
        };
        if !names.insert(name.clone()) {
            ctx.problem(Problem::DuplicatePortName { field, name });
            continue;
        }
        ports.push(ImportPort {
            name,
            protocol,
            port,
            app_protocol: raw.app_protocol.clone(),
        });
    }

    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .and_then(|config| config.client_ip)
                .and_then(|client_ip| client_ip.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                // Kubernetes allows 1..=86400.
                Some(seconds @ 1..=86_400) => seconds as u32,
                Some(other) => {
                    ctx.problem(Problem::Unsupported(format!(
                        "sessionAffinityConfig.clientIP.timeoutSeconds {other} outside 1..=86400; using {DEFAULT_AFFINITY_TIMEOUT_SECONDS}"
                    )));
                    DEFAULT_AFFINITY_TIMEOUT_SECONDS
                }
            };
            SessionAffinity::ClientIp { timeout_seconds }
        }
        None | Some("None") => SessionAffinity::None,
        Some(other) => {
            ctx.problem(Problem::Unsupported(format!(
                "sessionAffinity {:?}; using None",
                truncate(other)
            )));
            SessionAffinity::None
        }
    };

    let annotations = value.get("metadata").and_then(|m| m.get("annotations"));
    let derived_service = [ANNOTATION_DERIVED_SERVICE, ANNOTATION_GKE_DERIVED_SERVICE]
        .iter()
        .find_map(|key| annotations.and_then(|a| a.get(key)).and_then(Value::as_str))
        .filter(|name| !name.is_empty() && name.len() <= MAX_NAME_LEN)
        .map(str::to_owned);

    let locality = annotations
        .and_then(|a| a.get(ANNOTATION_LOCALITY))
        .and_then(Value::as_str)
        .map(truncate);

    let clusters = status
        .clusters
        .unwrap_or_default()
        .into_iter()
        .filter_map(|cluster| cluster.cluster)
        .map(|name| truncate(&name))
        .collect();

    let import = ServiceImport {
        key: ctx.key.clone(),
        flavour,
        import_type,
        ips,
        ports,
        session_affinity,
        derived_service,
        clusters,
        locality,
    };
    ctx.done(vec![Object::Import(import.into())])
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

fn convert_slice(mut ctx: Ctx, value: &Value) -> Converted {
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
            addresses,
            conditions: Conditions {
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            },
            hostname: endpoint.hostname.as_deref().map(truncate),
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
fn convert_endpoints(mut ctx: Ctx, value: &Value) -> Converted {
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
                    addresses: vec![ip],
                    conditions: Conditions {
                        ready,
                        serving: ready,
                        terminating: false,
                    },
                    hostname: address.hostname.as_deref().map(truncate),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn import(spec: Value) -> Value {
        json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": spec,
        })
    }

    fn only_import(converted: &Converted) -> &ServiceImport {
        match converted.objects.as_slice() {
            [Object::Import(import)] => import,
            other => panic!("expected one import, got {other:?}"),
        }
    }

    #[test]
    fn valid_import_converts_without_problems() {
        let converted = convert(&import(json!({
            "type": "ClusterSetIP",
            "ips": ["10.96.0.10"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80},
                      {"name": "dns", "protocol": "UDP", "port": 53}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
        })));
        assert!(
            converted.rejections.is_empty(),
            "{:?}",
            converted.rejections
        );
        let import = only_import(&converted);
        assert_eq!(import.ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(import.ports.len(), 2);
        assert_eq!(import.ports[1].protocol, Protocol::Udp);
        assert_eq!(
            import.session_affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: 10
            }
        );
    }

    #[test]
    fn bad_parts_are_rejected_and_the_rest_kept() {
        let converted = convert(&import(json!({
            "ips": ["127.0.0.1", "10.96.0.10", "not-an-ip"],
            "ports": [{"name": "a", "port": 0},
                      {"name": "b", "port": 70000},
                      {"name": "c", "protocol": "QUIC", "port": 1},
                      {"name": "d", "port": 80},
                      {"name": "d", "port": 81}],
        })));
        let import = only_import(&converted);
        // Only the first two addresses are considered; loopback is refused.
        assert_eq!(import.ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(import.ports.len(), 1);
        assert_eq!(import.ports[0].port, 80);
        let reasons: Vec<_> = converted.rejections.iter().map(Rejection::reason).collect();
        assert_eq!(
            reasons,
            [
                "too_many_ips",
                "forbidden_ip",
                "port_out_of_range",
                "port_out_of_range",
                "unknown_protocol",
                "duplicate_port_name"
            ]
        );
        assert!(converted.rejections.iter().all(|r| !r.fatal));
        let message = converted.rejections[1].to_string();
        assert!(message.contains("ServiceImport demo/web"), "{message}");
        assert!(message.contains("loopback"), "{message}");
    }

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "0.0.0.0",
            "127.0.0.5",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "ff02::1",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(forbidden_reason(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["10.1.2.3", "192.168.0.1", "2001:db8::1"] {
            assert!(forbidden_reason(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    fn slice(labels: Value, address_type: &str, addresses: Value) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-b", "namespace": "demo", "labels": labels},
            "addressType": address_type,
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": addresses, "conditions": {"ready": true}},
                          {"addresses": ["10.2.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}}],
        })
    }

    #[test]
    fn slice_converts_with_owner_cluster_and_conditions() {
        let converted = convert(&slice(
            json!({LABEL_MC_SERVICE_NAME: "web", LABEL_SOURCE_CLUSTER: "cluster-b"}),
            "IPv4",
            json!(["10.2.0.7", "fd00::1", "127.0.0.1"]),
        ));
        let [Object::Slice(slice)] = converted.objects.as_slice() else {
            panic!("{:?}", converted.objects);
        };
        assert_eq!(slice.owner, SliceOwner::Import("web".into()));
        assert_eq!(slice.source_cluster, "cluster-b");
        assert_eq!(
            slice.endpoints[0].addresses,
            vec!["10.2.0.7".parse::<IpAddr>().unwrap()]
        );
        assert!(!slice.endpoints[1].conditions.ready);
        assert!(slice.endpoints[1].conditions.terminating);
        let reasons: Vec<_> = converted.rejections.iter().map(Rejection::reason).collect();
        assert_eq!(reasons, ["address_type_mismatch", "forbidden_ip"]);
    }

    #[test]
    fn slices_of_the_ordinary_controller_are_ignored() {
        let converted = convert(&slice(
            json!({LABEL_MC_SERVICE_NAME: "web", LABEL_MANAGED_BY: MANAGED_BY_ENDPOINTSLICE_CONTROLLER}),
            "IPv4",
            json!(["10.2.0.7"]),
        ));
        assert!(converted.objects.is_empty());
        assert!(converted.rejections.is_empty());
    }

    #[test]
    fn unknown_kinds_and_garbage_are_fatal_rejections() {
        for value in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "y"}}),
            json!("just a string"),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "x", "namespace": "y"}, "addressType": 7}),
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "x"}}),
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "x", "namespace": "y"}, "spec": {"ports": "nope"}}),
        ] {
            let converted = convert(&value);
            assert!(converted.objects.is_empty(), "{value}");
            assert_eq!(converted.rejections.len(), 1, "{value}");
            assert!(converted.rejections[0].fatal);
        }
    }

    #[test]
    fn gke_import_reads_status_and_derived_service() {
        let converted = convert(&json!({
            "apiVersion": "net.gke.io/v1",
            "kind": "ServiceImport",
            "metadata": {"name": "web", "namespace": "demo",
                         "annotations": {ANNOTATION_GKE_DERIVED_SERVICE: "gke-mcs-abc"}},
            "status": {"ips": ["10.96.0.20"], "ports": [{"port": 80, "protocol": "TCP"}]},
        }));
        let import = only_import(&converted);
        assert_eq!(import.flavour, Flavour::Gke);
        assert_eq!(import.derived_service.as_deref(), Some("gke-mcs-abc"));
        assert_eq!(import.ports[0].port, 80);
        assert_eq!(import.ips.len(), 1);
    }
}
