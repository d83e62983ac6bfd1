//! Desired dataplane state: a pure function of the import model.
//!
//! A *frontend* is one ClusterSetIP × port × protocol; its backends are the
//! ready endpoints of every slice of the import (any cluster) that exposes a
//! port of the same name and protocol — so a cluster that does not export a
//! port never receives its traffic (KEP-1645 port conflict rule).

use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::{IpAddr, Ipv4Addr},
};

use mcs_common::MAX_BACKENDS_PER_FRONTEND;

use crate::model::{
    AddressType, ImportType, ObjectKey, Problem, Protocol, Rejection, ServiceImport, Snapshot,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Source cluster; empty when the slice does not say.
    pub cluster: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    /// A service port that balances to backends.
    Service,
    /// Port-0 marker telling the datapath an address is a ClusterSetIP
    /// (used to drop fragments and malformed packets sent to it).
    VipMarker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub kind: FrontendKind,
    /// `namespace/name:port-name` for operators.
    pub name: String,
    pub import: ObjectKey,
    /// Sorted, deduplicated.
    pub backends: Vec<Backend>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendSpec>,
}

impl DesiredState {
    pub fn service_frontends(&self) -> impl Iterator<Item = (&Frontend, &FrontendSpec)> {
        self.frontends
            .iter()
            .filter(|(_, spec)| spec.kind == FrontendKind::Service)
    }
}

fn rejection(import: &ServiceImport, problem: Problem) -> Rejection {
    Rejection {
        kind: "ServiceImport".into(),
        object: import.key.clone(),
        problem,
        fatal: false,
    }
}

/// Computes the frontends and their backends. Deterministic: the same
/// snapshot always yields the same state.
pub fn compute(snapshot: &Snapshot) -> (DesiredState, Vec<Rejection>) {
    let mut state = DesiredState::default();
    let mut rejections = Vec::new();

    for import in snapshot.imports.values() {
        if import.import_type == ImportType::Headless {
            continue; // kept in the model (DNS), no ClusterSetIP in the dataplane
        }
        let vips: Vec<Ipv4Addr> = import
            .ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if import.ips.iter().any(IpAddr::is_ipv6) {
            rejections.push(rejection(
                import,
                Problem::Unsupported("IPv6 ClusterSetIP is not served by the dataplane yet".into()),
            ));
        }
        for vip in vips {
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
                let (backends, truncated) = backends_of(snapshot, import, &port.name, port.protocol);
                if truncated {
                    rejections.push(rejection(
                        import,
                        Problem::Unsupported(format!(
                            "port {:?}: more than {MAX_BACKENDS_PER_FRONTEND} endpoints; the rest are ignored",
                            port.name
                        )),
                    ));
                }
                let spec = FrontendSpec {
                    kind: FrontendKind::Service,
                    name: format!("{}:{}", import.key, display_port(&port.name, port.port)),
                    import: import.key.clone(),
                    backends,
                };
                match state.frontends.entry(frontend) {
                    Entry::Vacant(entry) => {
                        entry.insert(spec);
                    }
                    Entry::Occupied(entry) => rejections.push(rejection(
                        import,
                        Problem::Conflict(format!(
                            "{frontend} is already served for {}",
                            entry.get().import
                        )),
                    )),
                }
            }
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let marker = Frontend {
                    addr: vip,
                    port: 0,
                    protocol,
                };
                state.frontends.entry(marker).or_insert_with(|| FrontendSpec {
                    kind: FrontendKind::VipMarker,
                    name: format!("{}:<vip>", import.key),
                    import: import.key.clone(),
                    backends: Vec::new(),
                });
            }
        }
    }
    (state, rejections)
}

fn display_port(name: &str, port: u16) -> String {
    if name.is_empty() {
        port.to_string()
    } else {
        name.to_owned()
    }
}

/// Ready IPv4 endpoints of every slice backing `import` that exposes a port
/// named `port_name` with `protocol`, deduplicated by address and port (the
/// first slice in name order wins the cluster label). Returns whether the
/// list was cut at [`MAX_BACKENDS_PER_FRONTEND`].
fn backends_of(
    snapshot: &Snapshot,
    import: &ServiceImport,
    port_name: &str,
    protocol: Protocol,
) -> (Vec<Backend>, bool) {
    let mut found: BTreeMap<(Ipv4Addr, u16), String> = BTreeMap::new();
    let mut truncated = false;
    for slice in snapshot.slices_of(import) {
        if slice.address_type != AddressType::IPv4 {
            continue;
        }
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue; // this cluster does not expose the port
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.conditions.ready) {
            for address in &endpoint.addresses {
                let IpAddr::V4(addr) = address else { continue };
                if found.len() >= MAX_BACKENDS_PER_FRONTEND as usize
                    && !found.contains_key(&(*addr, slice_port.port))
                {
                    truncated = true;
                    continue;
                }
                found
                    .entry((*addr, slice_port.port))
                    .or_insert_with(|| slice.source_cluster.clone());
            }
        }
    }
    let backends = found
        .into_iter()
        .map(|((addr, port), cluster)| Backend {
            addr,
            port,
            cluster,
        })
        .collect();
    (backends, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest;

    fn state_of(yaml: &str) -> (DesiredState, Vec<Rejection>) {
        let converted = manifest::parse(yaml).expect("valid YAML");
        assert!(converted.rejections.is_empty(), "{:?}", converted.rejections);
        let (snapshot, _) = manifest::snapshot(converted.objects);
        compute(&snapshot)
    }

    const TWO_CLUSTERS: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec:
  ips: ["10.96.0.10"]
  ports: [{name: http, protocol: TCP, port: 80}, {name: metrics, protocol: TCP, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: metrics, protocol: TCP, port: 9100}]
endpoints:
- addresses: ["10.1.0.1"]
- addresses: ["10.1.0.2"]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: b}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8081}]
endpoints:
- addresses: ["10.2.0.1", "10.1.0.1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: elsewhere, labels: {multicluster.kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 1}]
endpoints: [{addresses: ["10.9.9.9"]}]
"#;

    fn frontend(port: u16) -> Frontend {
        Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn backends_merge_clusters_per_port_with_their_target_ports() {
        let (state, rejections) = state_of(TWO_CLUSTERS);
        assert!(rejections.is_empty(), "{rejections:?}");
        let http = &state.frontends[&frontend(80)];
        let addrs: Vec<_> = http
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.port, b.cluster.as_str()))
            .collect();
        // Ready only, target port per cluster, other namespaces ignored.
        assert_eq!(
            addrs,
            [("10.1.0.1".into(), 8080, "a"), ("10.1.0.1".into(), 8081, "b"), ("10.2.0.1".into(), 8081, "b")]
        );
        // Only cluster a exposes `metrics`: b must never get its traffic.
        let metrics = &state.frontends[&frontend(9090)];
        assert_eq!(metrics.backends.len(), 1);
        assert_eq!(metrics.backends[0].cluster, "a");
        assert_eq!(http.name, "demo/web:http");
        // Markers for fragment handling, one per protocol.
        assert_eq!(state.frontends[&frontend(0)].kind, FrontendKind::VipMarker);
        assert_eq!(state.service_frontends().count(), 2);
    }

    #[test]
    fn duplicate_addresses_across_slices_are_merged() {
        let yaml = TWO_CLUSTERS.replace("10.2.0.1", "10.1.0.1").replace("8081", "8080");
        let (state, _) = state_of(&yaml);
        assert_eq!(state.frontends[&frontend(80)].backends.len(), 1);
    }

    #[test]
    fn conflicting_frontends_first_import_wins() {
        let second = TWO_CLUSTERS.replacen("name: web, namespace: demo", "name: zz, namespace: demo", 1);
        let (state, rejections) = state_of(&format!("{TWO_CLUSTERS}\n---\n{}", second.split("---").next().unwrap()));
        assert_eq!(state.frontends[&frontend(80)].import.name, "web");
        assert_eq!(rejections.len(), 2, "{rejections:?}");
        assert!(rejections.iter().all(|r| r.object.name == "zz" && r.reason() == "conflict"));
    }

    #[test]
    fn headless_imports_get_no_frontend() {
        let yaml = TWO_CLUSTERS.replace("ips: [\"10.96.0.10\"]", "type: Headless");
        let (state, _) = state_of(&yaml);
        assert!(state.frontends.is_empty());
    }

    #[test]
    fn derived_service_slices_back_gke_imports() {
        let yaml = r#"
apiVersion: net.gke.io/v1
kind: ServiceImport
metadata: {name: web, namespace: demo, annotations: {net.gke.io/derived-service: gke-mcs-x}}
spec: {ips: ["10.96.0.10"], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gke-mcs-x-abc, namespace: demo, labels: {kubernetes.io/service-name: gke-mcs-x, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.3.0.1"]}]
"#;
        let (state, _) = state_of(yaml);
        assert_eq!(state.frontends[&frontend(80)].backends.len(), 1);
    }
}
