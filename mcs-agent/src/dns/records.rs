//! The record builder: a pure function from the import model to the zone's
//! records, and the lookup that decides between an answer, NODATA,
//! NXDOMAIN and "not our zone".

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use hickory_proto::rr::{
    LowerName, Name, RData, Record, RecordType,
    rdata::{A, AAAA, SOA, SRV, TXT},
};

use crate::{
    desired::ClustersetIpCidrs,
    model::{
        EndpointSlice, ImportPort, ImportType, Problem, Protocol, Rejection, ServiceImport,
        Snapshot,
    },
};

/// The version of the KEP-1645 multicluster DNS specification served, as
/// its section 1 ("Schema Version") states it; answered in the TXT record
/// `dns-version.<zone>`.
pub const DNS_SCHEMA_VERSION: &str = "1.0.0";

/// SRV priority and weight of every record: the specification leaves them
/// open, and all targets are equal here.
const SRV_PRIORITY: u16 = 0;
const SRV_WEIGHT: u16 = 100;

// SOA timers (seconds). Only secondaries (none exist) use refresh/retry/
// expire; the negative-caching TTL (SOA minimum) is the record TTL, so a
// name that appears is seen as quickly as a changed one.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86_400;

/// The RRset an `ANY` query gets, by preference (every type the zone
/// holds is listed).
pub const ANY_PREFERENCE: [RecordType; 5] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::SOA,
];

/// What the zone has for a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name exists and has records of the asked type.
    Answer(Vec<&'a Record>),
    /// The name exists (possibly as an empty non-terminal, RFC 8020) but
    /// has no record of the asked type.
    NoData,
    /// The name does not exist in the zone.
    NxDomain,
    /// The name is outside the zone: not ours to answer.
    NotInZone,
}

/// One owner name: its records (an empty list makes it an empty
/// non-terminal, which exists but has no data).
#[derive(Debug, Default)]
struct Node {
    records: Vec<Record>,
}

/// Every record of the zone, by lower-case owner name. Immutable once
/// built; the server swaps a whole new table in on every model change.
#[derive(Debug)]
pub struct ZoneTable {
    origin: LowerName,
    soa: Record,
    nodes: HashMap<LowerName, Node>,
}

impl ZoneTable {
    /// Builds the records of `zone` (an absolute, lower-case name) from the
    /// model. Objects whose names cannot form DNS names are reported as
    /// rejections and left out; nothing else is.
    pub fn build(
        snapshot: &Snapshot,
        zone: &Name,
        ttl: u32,
        serial: u32,
    ) -> (Self, Vec<Rejection>) {
        Self::build_with(snapshot, zone, ttl, serial, &ClustersetIpCidrs::default())
    }

    /// [`build`](Self::build), leaving out ClusterSetIPs outside
    /// `clusterset_ips` as the dataplane does (the desired-state engine
    /// reports them; they are not reported twice).
    pub fn build_with(
        snapshot: &Snapshot,
        zone: &Name,
        ttl: u32,
        serial: u32,
        clusterset_ips: &ClustersetIpCidrs,
    ) -> (Self, Vec<Rejection>) {
        let mut builder = Builder::new(zone, ttl, clusterset_ips);
        let soa = Record::from_rdata(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(
                builder.name_in_zone(&["ns", "dns"]),
                builder.name_in_zone(&["hostmaster"]),
                serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                ttl,
            )),
        );
        builder.insert(soa.clone());
        let version = builder.name_in_zone(&["dns-version"]);
        builder.add(
            version,
            RData::TXT(TXT::new(vec![DNS_SCHEMA_VERSION.to_owned()])),
        );
        for import in snapshot.imports.values() {
            builder.add_import(snapshot, import);
        }
        let table = Self {
            origin: LowerName::new(zone),
            soa,
            nodes: builder.nodes,
        };
        (table, builder.rejections)
    }

    /// The zone apex.
    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// The apex SOA record (also the authority of negative answers).
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Looks up `name`/`record_type`. `ANY` gets one RRset of the name, not
    /// all of them (RFC 8482 section 4.1: a minimal answer, so ANY cannot
    /// amplify): the addresses when it has any, else its first type in
    /// [`ANY_PREFERENCE`] order.
    pub fn lookup(&self, name: &LowerName, record_type: RecordType) -> Lookup<'_> {
        if !self.origin.zone_of(name) {
            return Lookup::NotInZone;
        }
        let Some(node) = self.nodes.get(name) else {
            return Lookup::NxDomain;
        };
        let record_type = if record_type == RecordType::ANY {
            let has = |wanted: RecordType| node.records.iter().any(|r| r.record_type() == wanted);
            match ANY_PREFERENCE.into_iter().find(|t| has(*t)) {
                Some(chosen) => chosen,
                None => return Lookup::NoData, // an empty non-terminal
            }
        } else {
            record_type
        };
        let records: Vec<&Record> = node
            .records
            .iter()
            .filter(|record| record.record_type() == record_type)
            .collect();
        if records.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Answer(records)
        }
    }

    /// Every owner name with its records (including empty non-terminals),
    /// sorted; for tests and operators.
    pub fn names(&self) -> Vec<(&LowerName, &[Record])> {
        let mut names: Vec<_> = self
            .nodes
            .iter()
            .map(|(name, node)| (name, node.records.as_slice()))
            .collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        names
    }

    /// Number of records (SOA included).
    pub fn record_count(&self) -> usize {
        self.nodes.values().map(|node| node.records.len()).sum()
    }
}

struct Builder<'a> {
    zone: Name,
    ttl: u32,
    clusterset_ips: &'a ClustersetIpCidrs,
    nodes: HashMap<LowerName, Node>,
    /// Records already added (every record has the same TTL and class), so
    /// an address seen in several slices is answered once, in O(1).
    seen: HashSet<(LowerName, RData)>,
    rejections: Vec<Rejection>,
}

/// Why a model value cannot be a DNS label.
fn label_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.len() > 63 {
        Some("is longer than 63 characters")
    } else if !value
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        Some("has characters other than letters, digits and '-'")
    } else {
        None
    }
}

/// An endpoint's `<hostname>`: its `hostname` field, or else the address
/// with dashes (`10-1-0-7`, `fd00--7`), the "unique, system-assigned
/// identifier" the specification falls back to, in the form Kubernetes DNS
/// servers and the mcs-api conformance suite use.
fn endpoint_hostname(hostname: Option<&str>, address: IpAddr) -> String {
    match hostname {
        Some(hostname) => hostname.to_ascii_lowercase(),
        None => address.to_string().replace(['.', ':'], "-"),
    }
}

fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "_tcp",
        Protocol::Udp => "_udp",
        Protocol::Sctp => "_sctp",
    }
}

fn address_rdata(address: IpAddr) -> RData {
    match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

impl<'a> Builder<'a> {
    fn new(zone: &Name, ttl: u32, clusterset_ips: &'a ClustersetIpCidrs) -> Self {
        Self {
            zone: zone.clone(),
            ttl,
            clusterset_ips,
            nodes: HashMap::new(),
            seen: HashSet::new(),
            rejections: Vec::new(),
        }
    }

    /// A fixed name under the apex (labels are constants known to be
    /// valid, and the zone leaves room for them: checked when parsing it).
    fn name_in_zone(&self, labels: &[&str]) -> Name {
        self.name(labels).unwrap_or_else(|_| self.zone.clone())
    }

    /// `labels` (relative, most specific first) under the apex.
    fn name(&self, labels: &[&str]) -> Result<Name, String> {
        // Raw bytes: the labels were checked (letters, digits, '-', or a
        // leading '_'), and the IDNA conversion of `&str` labels is not wanted.
        let mut relative = Name::from_labels(labels.iter().map(|label| label.as_bytes()))
            .map_err(|error| error.to_string())?;
        relative.set_fqdn(false);
        relative
            .append_domain(&self.zone)
            .map(|name| name.to_lowercase())
            .map_err(|error| error.to_string())
    }

    fn reject(&mut self, kind: &str, object: &crate::model::ObjectKey, problem: String) {
        let rejection = Rejection {
            kind: kind.to_owned(),
            object: object.clone(),
            problem: Problem::Unsupported(format!("DNS: {problem}")),
            fatal: false,
        };
        if !self.rejections.contains(&rejection) {
            self.rejections.push(rejection);
        }
    }

    /// Adds a record, and the empty non-terminals between it and the apex.
    fn add(&mut self, name: Name, rdata: RData) {
        self.insert(Record::from_rdata(name, self.ttl, rdata));
    }

    fn insert(&mut self, record: Record) {
        let mut name = record.name.clone();
        let owner = LowerName::new(&name);
        if !self.seen.insert((owner.clone(), record.data.clone())) {
            return;
        }
        self.nodes.entry(owner).or_default().records.push(record);
        while name.num_labels() > self.zone.num_labels() {
            name = name.base_name();
            self.nodes.entry(LowerName::new(&name)).or_default();
        }
    }

    fn add_import(&mut self, snapshot: &Snapshot, import: &ServiceImport) {
        let service = import.key.name.to_ascii_lowercase();
        let namespace = import.key.namespace.to_ascii_lowercase();
        for (what, value) in [("name", &service), ("namespace", &namespace)] {
            if let Some(problem) = label_problem(value) {
                self.reject(
                    "ServiceImport",
                    &import.key,
                    format!("{what} {value:?} {problem}; no records"),
                );
                return;
            }
        }
        let labels = [service.as_str(), namespace.as_str(), "svc"];
        let service_name = match self.name(&labels) {
            Ok(name) => name,
            Err(error) => {
                self.reject("ServiceImport", &import.key, format!("{error}; no records"));
                return;
            }
        };
        match import.import_type {
            ImportType::ClusterSetIp => self.add_clusterset_ip(import, &labels, &service_name),
            ImportType::Headless => self.add_headless(snapshot, import, &labels, &service_name),
        }
    }

    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>` for a named port.
    fn port_name(
        &mut self,
        import: &ServiceImport,
        service_labels: &[&str],
        port: &ImportPort,
    ) -> Option<Name> {
        if port.name.is_empty() {
            return None; // unnamed ports have no SRV name (spec 2.3.2, 2.4.2)
        }
        let port_label = format!("_{}", port.name.to_ascii_lowercase());
        if let Some(problem) = label_problem(&port.name)
            .or_else(|| (port_label.len() > 63).then_some("is longer than 62 characters"))
        {
            self.reject(
                "ServiceImport",
                &import.key,
                format!("port name {:?} {problem}; no SRV name for it", port.name),
            );
            return None;
        }
        let mut labels = vec![port_label.as_str(), protocol_label(port.protocol)];
        labels.extend_from_slice(service_labels);
        match self.name(&labels) {
            Ok(name) => Some(name),
            Err(error) => {
                self.reject(
                    "ServiceImport",
                    &import.key,
                    format!("port {:?}: {error}", port.name),
                );
                None
            }
        }
    }

    /// Spec 2.3: A/AAAA → ClusterSetIPs; SRV per named port pointing at the
    /// service name. Nothing disambiguates to a single cluster (2.3.4).
    fn add_clusterset_ip(
        &mut self,
        import: &ServiceImport,
        service_labels: &[&str],
        service_name: &Name,
    ) {
        let ips: Vec<IpAddr> = import
            .ips
            .iter()
            .copied()
            .filter(|ip| self.clusterset_ips.allows(*ip))
            .collect();
        if ips.is_empty() {
            // No (usable) ClusterSetIP: the service cannot be reached, and
            // SRV records pointing at an address-less name would not help.
            return;
        }
        for ip in ips {
            self.add(service_name.clone(), address_rdata(ip));
        }
        for port in &import.ports {
            let srv = RData::SRV(SRV::new(
                SRV_PRIORITY,
                SRV_WEIGHT,
                port.port,
                service_name.clone(),
            ));
            // SRV at the service name itself, one per port, as Kubernetes
            // DNS servers answer and the mcs-api conformance suite queries.
            self.add(service_name.clone(), srv.clone());
            if let Some(name) = self.port_name(import, service_labels, port) {
                self.add(name, srv);
            }
        }
    }

    /// Spec 2.4: A/AAAA → ready endpoint addresses of every cluster;
    /// `<hostname>.<clusterid>.<svc>...` per ready endpoint; SRV per named
    /// port × ready endpoint pointing at the per-endpoint names. A headless
    /// service without ready endpoints does not exist (NXDOMAIN, 2.4.1).
    fn add_headless(
        &mut self,
        snapshot: &Snapshot,
        import: &ServiceImport,
        service_labels: &[&str],
        service_name: &Name,
    ) {
        let port_names: Vec<(Option<Name>, &ImportPort)> = import
            .ports
            .iter()
            .map(|port| (self.port_name(import, service_labels, port), port))
            .collect();
        for slice in snapshot.slices_of(import) {
            let cluster = self.cluster_labels(slice);
            for endpoint in slice.endpoints.iter().filter(|e| e.conditions.ready) {
                for address in &endpoint.addresses {
                    self.add(service_name.clone(), address_rdata(*address));
                    let Some(cluster) = &cluster else { continue };
                    let Some(host_name) = self.host_name(
                        slice,
                        endpoint.hostname.as_deref(),
                        *address,
                        cluster,
                        service_labels,
                    ) else {
                        continue;
                    };
                    self.add(host_name.clone(), address_rdata(*address));
                    for (port_name, port) in &port_names {
                        // A cluster that does not expose a port gets no SRV
                        // record for it (KEP-1645 port conflict rule), as in
                        // the dataplane.
                        if !slice
                            .ports
                            .iter()
                            .any(|p| p.name == port.name && p.protocol == port.protocol)
                        {
                            continue;
                        }
                        let srv = RData::SRV(SRV::new(
                            SRV_PRIORITY,
                            SRV_WEIGHT,
                            port.port,
                            host_name.clone(),
                        ));
                        self.add(service_name.clone(), srv.clone());
                        if let Some(port_name) = port_name {
                            self.add(port_name.clone(), srv);
                        }
                    }
                }
            }
        }
    }

    /// The slice's cluster id as labels (`membership.location` of GKE is two
    /// labels), or `None` when the slice has none usable: its endpoints then
    /// get no per-endpoint names, only the service's A/AAAA records.
    fn cluster_labels(&mut self, slice: &EndpointSlice) -> Option<Vec<String>> {
        let has_ready = slice
            .endpoints
            .iter()
            .any(|e| e.conditions.ready && !e.addresses.is_empty());
        if slice.source_cluster.is_empty() {
            if has_ready {
                self.reject(
                    "EndpointSlice",
                    &slice.key,
                    "no source-cluster label; no per-endpoint names".to_owned(),
                );
            }
            return None;
        }
        let labels: Vec<String> = slice
            .source_cluster
            .split('.')
            .map(str::to_ascii_lowercase)
            .collect();
        if let Some(problem) = labels.iter().find_map(|label| label_problem(label)) {
            if has_ready {
                self.reject(
                    "EndpointSlice",
                    &slice.key,
                    format!(
                        "cluster id {:?}: a label {problem}; no per-endpoint names",
                        slice.source_cluster
                    ),
                );
            }
            return None;
        }
        Some(labels)
    }

    fn host_name(
        &mut self,
        slice: &EndpointSlice,
        hostname: Option<&str>,
        address: IpAddr,
        cluster: &[String],
        service_labels: &[&str],
    ) -> Option<Name> {
        let host = endpoint_hostname(hostname, address);
        if let Some(problem) = label_problem(&host) {
            self.reject(
                "EndpointSlice",
                &slice.key,
                format!("hostname {host:?} {problem}; no per-endpoint name"),
            );
            return None;
        }
        let mut labels = vec![host.as_str()];
        labels.extend(cluster.iter().map(String::as_str));
        labels.extend_from_slice(service_labels);
        match self.name(&labels) {
            Ok(name) => Some(name),
            Err(error) => {
                self.reject(
                    "EndpointSlice",
                    &slice.key,
                    format!("hostname {host:?}: {error}"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
