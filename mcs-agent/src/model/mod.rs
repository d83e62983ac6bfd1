//! The import model: what mcs needs to know of ServiceImports and
//! EndpointSlices, independent of where they came from (file or API server)
//! and of their flavour (mcs-api v1alpha1/v1beta1, GKE `net.gke.io/v1`).
//!
//! Sources turn raw objects into this model with [`convert`]; validation
//! problems become [`Rejection`]s naming the object, and never stop the rest
//! of that object or any other object from working.

pub mod convert;
pub mod manifest;

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name; an absent protocol means TCP.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which API the object came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// `multicluster.x-k8s.io/v1alpha1`
    McsV1alpha1,
    /// `multicluster.x-k8s.io/v1beta1`
    McsV1beta1,
    /// `net.gke.io/v1`
    Gke,
}

impl Flavour {
    /// The API group and version of its ServiceImports and ServiceExports.
    pub const fn group_version(self) -> (&'static str, &'static str) {
        match self {
            Self::McsV1alpha1 => ("multicluster.x-k8s.io", "v1alpha1"),
            Self::McsV1beta1 => ("multicluster.x-k8s.io", "v1beta1"),
            Self::Gke => ("net.gke.io", "v1"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportType {
    ClusterSetIp,
    Headless,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout_seconds: u32 },
}

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportPort {
    /// Port name; empty when unnamed (allowed for a single port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub app_protocol: Option<String>,
}

/// A validated ServiceImport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceImport {
    pub key: ObjectKey,
    pub flavour: Flavour,
    pub import_type: ImportType,
    /// ClusterSetIPs (at most two, one per family).
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ImportPort>,
    pub session_affinity: SessionAffinity,
    /// Derived Service whose endpoints back this import (GKE, or the
    /// upstream `multicluster.kubernetes.io/derived-service` annotation).
    pub derived_service: Option<String>,
    /// Clusters exporting the service (`status.clusters[].cluster`).
    pub clusters: Vec<String>,
    /// Raw value of the locality annotation (see `desired::Locality`),
    /// overriding the agent's policy for this import.
    pub locality: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    IPv4,
    IPv6,
    Fqdn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// Endpoint conditions (KEP-1669). Absent `ready`/`serving` mean true,
/// absent `terminating` means false, as the Kubernetes API defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub conditions: Conditions,
    /// Boxed: never grown after parsing, so no capacity word per endpoint.
    pub hostname: Option<Box<str>>,
}

/// Whose endpoints a slice holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SliceOwner {
    /// `multicluster.kubernetes.io/service-name`: endpoints of an import.
    Import(String),
    /// `kubernetes.io/service-name`: endpoints of an ordinary (derived)
    /// Service, or an `Endpoints` object of that name.
    Service(String),
}

/// A validated EndpointSlice (or a legacy `Endpoints` object converted to
/// the same shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    pub owner: SliceOwner,
    /// `multicluster.kubernetes.io/source-cluster`; empty when absent.
    pub source_cluster: String,
    pub address_type: AddressType,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// All objects a source currently knows.
///
/// Slices are reached through methods so an index by owner stays in step:
/// [`Snapshot::slices_of`] costs O(slices of the import), not O(slices of
/// the namespace) — with thousands of services in one namespace the scan
/// made every full computation quadratic.
///
/// Objects are shared (`Arc`): a clone of a snapshot is cheap, and objects
/// a source did not touch compare equal by pointer, so finding what changed
/// between two snapshots costs little more than walking the keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Keyed by each import's own `key` (finding changes relies on it).
    pub imports: BTreeMap<ObjectKey, Arc<ServiceImport>>,
    slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// (namespace, owner) → names of the slices it owns, sorted (a vector:
    /// most own one slice, and a set's node is sized for eleven).
    owners: BTreeMap<(String, SliceOwner), Vec<String>>,
}

impl Snapshot {
    pub fn slices(&self) -> &BTreeMap<ObjectKey, Arc<EndpointSlice>> {
        &self.slices
    }

    /// Adds or replaces a slice (by key); returns the replaced one.
    pub fn insert_slice(
        &mut self,
        slice: impl Into<Arc<EndpointSlice>>,
    ) -> Option<Arc<EndpointSlice>> {
        let slice = slice.into();
        let old = self.remove_slice(&slice.key);
        let names = self
            .owners
            .entry((slice.key.namespace.clone(), slice.owner.clone()))
            .or_default();
        if let Err(index) = names.binary_search(&slice.key.name) {
            names.reserve_exact(1);
            names.insert(index, slice.key.name.clone());
        }
        self.slices.insert(slice.key.clone(), slice);
        old
    }

    pub fn remove_slice(&mut self, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
        let old = self.slices.remove(key)?;
        let owner = (key.namespace.clone(), old.owner.clone());
        if let Some(names) = self.owners.get_mut(&owner) {
            if let Ok(index) = names.binary_search(&key.name) {
                names.remove(index);
            }
            if names.is_empty() {
                self.owners.remove(&owner);
            }
        }
        Some(old)
    }

    /// The slices whose endpoints back `import`: same namespace, and labelled
    /// with the import's name (`multicluster.kubernetes.io/service-name`) or
    /// with its derived Service's (`kubernetes.io/service-name`, GKE), in key
    /// order. The dataplane and DNS both use this, so they always agree on
    /// the endpoints.
    pub fn slices_of<'a>(
        &'a self,
        import: &'a ServiceImport,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let namespace = &import.key.namespace;
        let owned_by = |owner: SliceOwner| self.owners.get(&(namespace.clone(), owner));
        let mut names: Vec<&String> = owned_by(SliceOwner::Import(import.key.name.clone()))
            .into_iter()
            .flatten()
            .collect();
        if let Some(service) = &import.derived_service {
            // Both lists are sorted; merged they keep key order.
            names.extend(
                owned_by(SliceOwner::Service(service.clone()))
                    .into_iter()
                    .flatten(),
            );
            names.sort_unstable();
        }
        names.into_iter().filter_map(move |name| {
            self.slices
                .get(&ObjectKey::new(namespace.clone(), name.clone()))
                .map(|slice| &**slice)
        })
    }
}

/// An address family: the maps a frontend or backend lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// What was wrong with (part of) an object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cannot parse: {0}")]
    Unparsable(String),
    #[error("unsupported kind {api_version}/{kind}")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("missing metadata.{0}")]
    MissingMetadata(&'static str),
    #[error("missing label {0}")]
    MissingLabel(&'static str),
    #[error("{field}: {value:?} is not an IP address")]
    MalformedIp { field: String, value: String },
    #[error("{field}: {value} is {reason} and cannot be used")]
    ForbiddenIp {
        field: String,
        value: IpAddr,
        reason: &'static str,
    },
    #[error("spec.ips has {0} addresses; at most 2 (one per family) are allowed")]
    TooManyIps(usize),
    #[error("{field}: port {value} is outside 1..=65535")]
    PortOutOfRange { field: String, value: i64 },
    #[error("{field}: unknown protocol {value:?}")]
    UnknownProtocol { field: String, value: String },
    #[error("{field}: duplicate port name {name:?}")]
    DuplicatePortName { field: String, name: String },
    #[error("{field}: several ports but port name missing")]
    UnnamedPort { field: String },
    #[error("{field}: {value} does not match addressType {address_type:?}")]
    AddressTypeMismatch {
        field: String,
        value: IpAddr,
        address_type: AddressType,
    },
    #[error("unknown addressType {0:?}")]
    UnknownAddressType(String),
    #[error("unknown spec.type {0:?}")]
    UnknownImportType(String),
    #[error("{field}: {value} is outside the address ranges allowed for cluster {cluster:?}")]
    OutsideClusterCidr {
        field: String,
        value: IpAddr,
        cluster: String,
    },
    #[error(
        "{field}: {value} is outside the ranges ClusterSetIPs are allocated from \
         (--clusterset-ip-cidrs); not served"
    )]
    OutsideClustersetIpCidrs { field: String, value: IpAddr },
    #[error("{field}: second address of the {family} family ({value}); one per family")]
    SameFamilyIps {
        field: String,
        value: IpAddr,
        family: IpFamily,
    },
    #[error(
        "ClusterSetIP {vip}: no exporting cluster has {family} endpoints; \
         its clients' connections are refused"
    )]
    NoEndpointsOfFamily { vip: IpAddr, family: IpFamily },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
}

/// A problem with a named object. `fatal` problems made the whole object
/// unusable; others dropped only the offending part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: String,
    pub object: ObjectKey,
    pub problem: Problem,
    pub fatal: bool,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = if self.fatal {
            "object ignored"
        } else {
            "offending part ignored"
        };
        write!(
            f,
            "{} {}: {} ({effect})",
            self.kind, self.object, self.problem
        )
    }
}

impl Rejection {
    /// A short, stable label for metrics (`objects_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self.problem {
            Problem::Unparsable(_) => "unparsable",
            Problem::UnsupportedKind { .. } => "unsupported_kind",
            Problem::MissingMetadata(_) => "missing_metadata",
            Problem::MissingLabel(_) => "missing_label",
            Problem::MalformedIp { .. } => "malformed_ip",
            Problem::ForbiddenIp { .. } => "forbidden_ip",
            Problem::TooManyIps(_) => "too_many_ips",
            Problem::PortOutOfRange { .. } => "port_out_of_range",
            Problem::UnknownProtocol { .. } => "unknown_protocol",
            Problem::DuplicatePortName { .. } => "duplicate_port_name",
            Problem::UnnamedPort { .. } => "unnamed_port",
            Problem::AddressTypeMismatch { .. } => "address_type_mismatch",
            Problem::UnknownAddressType(_) => "unknown_address_type",
            Problem::UnknownImportType(_) => "unknown_import_type",
            Problem::OutsideClusterCidr { .. } => "outside_cluster_cidr",
            Problem::OutsideClustersetIpCidrs { .. } => "outside_clusterset_ip_cidrs",
            Problem::SameFamilyIps { .. } => "same_family_ips",
            Problem::NoEndpointsOfFamily { .. } => "no_endpoints_of_family",
            Problem::Conflict(_) => "conflict",
            Problem::Unsupported(_) => "unsupported",
        }
    }
}
