//! ServiceImport and EndpointSlice manifests, written the way
//! `kubectl get -o yaml` prints them, for the agent's `file:` source.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Label naming the service an EndpointSlice belongs to (MCS API).
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// Label naming the cluster an exported EndpointSlice comes from (MCS API).
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";
/// Label naming the controller that manages an EndpointSlice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// A named port of a ServiceImport or an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl Port {
    pub fn new(name: &str, protocol: Protocol, port: u16) -> Self {
        Self {
            name: name.to_owned(),
            protocol,
            port,
        }
    }
}

/// `multicluster.x-k8s.io/v1alpha1` ServiceImport of type ClusterSetIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceImport {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<Ipv4Addr>,
    pub ports: Vec<Port>,
}

/// One endpoint address and its readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub ready: bool,
}

impl Endpoint {
    pub fn ready(addr: Ipv4Addr) -> Self {
        Self { addr, ready: true }
    }

    pub fn not_ready(addr: Ipv4Addr) -> Self {
        Self { addr, ready: false }
    }
}

/// `discovery.k8s.io/v1` EndpointSlice exported from `cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub cluster: String,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

/// A multi-document YAML manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub imports: Vec<ServiceImport>,
    pub slices: Vec<EndpointSlice>,
}

impl Manifest {
    /// The YAML text: every ServiceImport, then every EndpointSlice.
    pub fn to_yaml(&self) -> String {
        let mut docs: Vec<String> = self.imports.iter().map(ServiceImport::to_yaml).collect();
        docs.extend(self.slices.iter().map(EndpointSlice::to_yaml));
        docs.join("---\n")
    }
}

impl ServiceImport {
    pub fn to_yaml(&self) -> String {
        let ips: Vec<String> = self.ips.iter().map(|ip| format!("\"{ip}\"")).collect();
        let ports: String = self
            .ports
            .iter()
            .map(|p| format!("  - {}\n", port_yaml(p)))
            .collect();
        format!(
            "apiVersion: multicluster.x-k8s.io/v1alpha1\n\
             kind: ServiceImport\n\
             metadata:\n  name: {name}\n  namespace: {namespace}\n\
             spec:\n  type: ClusterSetIP\n  ips: [{ips}]\n  ports:\n{ports}",
            name = self.name,
            namespace = self.namespace,
            ips = ips.join(", "),
        )
    }
}

impl EndpointSlice {
    pub fn to_yaml(&self) -> String {
        let ports: String = self
            .ports
            .iter()
            .map(|p| format!("- {}\n", port_yaml(p)))
            .collect();
        let endpoints = if self.endpoints.is_empty() {
            "endpoints: []\n".to_owned()
        } else {
            let list: String = self
                .endpoints
                .iter()
                .map(|ep| {
                    format!(
                        "- addresses: [\"{}\"]\n  conditions: {{ready: {}}}\n",
                        ep.addr, ep.ready
                    )
                })
                .collect();
            format!("endpoints:\n{list}")
        };
        format!(
            "apiVersion: discovery.k8s.io/v1\n\
             kind: EndpointSlice\n\
             metadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n\
             \x20   {LABEL_SERVICE_NAME}: {service}\n\
             \x20   {LABEL_SOURCE_CLUSTER}: {cluster}\n\
             \x20   {LABEL_MANAGED_BY}: mcs-controller\n\
             addressType: IPv4\n\
             ports:\n{ports}{endpoints}",
            name = self.name,
            namespace = self.namespace,
            service = self.service,
            cluster = self.cluster,
        )
    }
}

fn port_yaml(port: &Port) -> String {
    format!(
        "{{name: {}, protocol: {}, port: {}}}",
        port.name,
        port.protocol.as_str(),
        port.port
    )
}

/// A directory holding one manifest file for the agent's `file:` source.
///
/// Updates are atomic: the new text is written to a staging file outside the
/// watched directory and renamed over the old file, so the agent never reads
/// a half-written manifest.
#[derive(Debug)]
pub struct ManifestDir {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl ManifestDir {
    /// A new temporary directory with `file_name` holding `yaml`.
    pub fn new(file_name: &str, yaml: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mcs-tests-")
            .tempdir()
            .context("creating manifest directory")?;
        std::fs::create_dir(dir.path().join("watched"))?;
        let file = dir.path().join("watched").join(file_name);
        let this = Self { dir, file };
        this.write(yaml)?;
        Ok(this)
    }

    /// The watched directory (pass as `--source file:DIR`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("watched")
    }

    /// The manifest file inside [`dir`](Self::dir).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Replaces the manifest with `yaml`.
    pub fn write(&self, yaml: &str) -> Result<()> {
        let staging = self.dir.path().join("staging.yaml");
        std::fs::write(&staging, yaml).context("writing staged manifest")?;
        std::fs::rename(&staging, &self.file)
            .with_context(|| format!("replacing {}", self.file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_matches_the_api_shape() {
        let manifest = Manifest {
            imports: vec![ServiceImport {
                name: "web".into(),
                namespace: "demo".into(),
                ips: vec![Ipv4Addr::new(10, 96, 100, 10)],
                ports: vec![
                    Port::new("http", Protocol::Tcp, 80),
                    Port::new("echo", Protocol::Udp, 53),
                ],
            }],
            slices: vec![EndpointSlice {
                name: "web-cluster-b-1".into(),
                namespace: "demo".into(),
                service: "web".into(),
                cluster: "cluster-b".into(),
                ports: vec![Port::new("http", Protocol::Tcp, 8080)],
                endpoints: vec![
                    Endpoint::ready(Ipv4Addr::new(10, 102, 1, 10)),
                    Endpoint::not_ready(Ipv4Addr::new(10, 102, 1, 11)),
                ],
            }],
        };
        let expected = r#"apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata:
  name: web
  namespace: demo
spec:
  type: ClusterSetIP
  ips: ["10.96.100.10"]
  ports:
  - {name: http, protocol: TCP, port: 80}
  - {name: echo, protocol: UDP, port: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-cluster-b-1
  namespace: demo
  labels:
    multicluster.kubernetes.io/service-name: web
    multicluster.kubernetes.io/source-cluster: cluster-b
    endpointslice.kubernetes.io/managed-by: mcs-controller
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: ["10.102.1.10"]
  conditions: {ready: true}
- addresses: ["10.102.1.11"]
  conditions: {ready: false}
"#;
        assert_eq!(manifest.to_yaml(), expected);
    }

    #[test]
    fn manifest_dir_replaces_the_file() {
        let dir = ManifestDir::new("clusterset.yaml", "a: 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.file()).unwrap(), "a: 1\n");
        dir.write("a: 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.file()).unwrap(), "a: 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["clusterset.yaml"]);
    }
}
