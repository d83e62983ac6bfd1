//! Three simulated clusters for the export controller's traffic and DNS
//! cases: network namespaces with flat pod routing, each cluster with its
//! own local API server (on its node's underlay address), its own `mcs-agent
//! controller` and the agent (`--source kube`, `--dns-addr`) on its node.
//! Services are exported with ServiceExports only; everything the agents
//! route and answer comes from the controllers. Every `web1` pod serves
//! HTTP on [`TARGET_PORT`], answering with its name.
//!
//! | cluster   | node (underlay)  | pods                                        |
//! |-----------|------------------|---------------------------------------------|
//! | cluster-a | a1 (10.100.0.11) | a-client 10.101.1.100, a-web1 10.101.1.10   |
//! | cluster-b | b1 (10.100.0.12) | b-client 10.102.1.100, b-web1 10.102.1.10   |
//! | cluster-c | c1 (10.100.0.13) | c-client 10.103.1.100, c-web1 10.103.1.10   |
//!
//! Needs root (namespaces, XDP).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
    serialize::binary::{BinDecodable, BinEncodable},
};
use serde_json::{Value, json};

use crate::{
    agent::{Agent, AgentConfig},
    apiserver::LocalApiServer,
    client::http_get,
    clusterset::{Controller, SimCluster, imports, wait_for},
    manifest::Protocol,
    servers::{HttpServer, Identity},
    topology::{Topology, xdp_attached},
};

/// The namespace of the services.
pub const NS: &str = "demo";
/// The port every `web1` pod serves HTTP on.
pub const TARGET_PORT: u16 = 8080;
/// The agents' DNS port, on their node's underlay address.
pub const DNS_PORT: u16 = 5353;
/// How long a change may take to reach an agent.
pub const SETTLE: Duration = Duration::from_secs(30);
/// (cluster, node, node underlay IP, pod /24 prefix)
pub const CLUSTERS: [(&str, &str, &str, &str); 3] = [
    ("cluster-a", "a1", "10.100.0.11", "10.101.1"),
    ("cluster-b", "b1", "10.100.0.12", "10.102.1"),
    ("cluster-c", "c1", "10.100.0.13", "10.103.1"),
];

/// Address `host` of cluster `cluster`'s pod range (index into [`CLUSTERS`]).
pub fn pod_ip(cluster: usize, host: u8) -> Ipv4Addr {
    let prefix: Ipv4Addr = format!("{}.0", CLUSTERS[cluster].3)
        .parse()
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let [a, b, c, _] = prefix.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// The address of a `web1` pod by name (`a-web1`, `b-web1`, `c-web1`).
pub fn backend_ip(name: &str) -> Result<Ipv4Addr> {
    let cluster = CLUSTERS
        .iter()
        .position(|(cluster, ..)| name.get(..1).is_some_and(|c| cluster.ends_with(c)))
        .with_context(|| format!("cluster of backend {name}"))?;
    Ok(pod_ip(cluster, 10))
}

/// A Service with TCP ports `(name, port)`, all to [`TARGET_PORT`];
/// `headless` sets `clusterIP: None`.
pub fn service(name: &str, ports: &[(&str, u16)], headless: bool) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port)| {
            json!({"name": port_name, "port": port, "protocol": "TCP", "targetPort": TARGET_PORT})
        })
        .collect();
    let mut object = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": ports}});
    if headless {
        object["spec"]["clusterIP"] = json!("None");
    }
    object
}

/// An endpoint of a source slice.
pub fn endpoint(addr: Ipv4Addr, hostname: Option<&str>, ready: bool) -> Value {
    let mut value = json!({"addresses": [addr.to_string()], "conditions": {"ready": ready}});
    if let Some(hostname) = hostname {
        value["hostname"] = json!(hostname);
    }
    value
}

/// The EndpointSlice `NAME-SUFFIX` of Service `name` as the ordinary
/// EndpointSlice controller writes it: TCP ports named `ports`, all on
/// [`TARGET_PORT`].
pub fn source_slice(name: &str, suffix: &str, ports: &[&str], endpoints: Vec<Value>) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|port| json!({"name": port, "port": TARGET_PORT, "protocol": "TCP"}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-{suffix}"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints})
}

/// A ServiceExport, created at `created` (RFC 3339) when given, so that a
/// test decides which export is the oldest.
pub fn export(name: &str, created: Option<&str>) -> Value {
    let mut object = json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": NS}});
    if let Some(created) = created {
        object["metadata"]["creationTimestamp"] = json!(created);
    }
    object
}

/// The running clusters; see the module documentation.
pub struct ThreeClusters {
    // Dropped in this order: agents detach while their interfaces exist.
    pub agents: Vec<Agent>,
    pub controllers: Vec<Controller>,
    _servers: Vec<HttpServer>,
    pub clusters: Vec<SimCluster>,
    pub topology: Topology,
    /// The agents' DNS port on their node's underlay address.
    pub dns_port: u16,
    _source: tempfile::TempDir,
}

impl ThreeClusters {
    pub fn build() -> Result<Self> {
        Self::build_with_dns_port(DNS_PORT)
    }

    /// As [`ThreeClusters::build`], the agents answering DNS on `dns_port`
    /// (53 lets a pod's own resolver reach them).
    pub fn build_with_dns_port(dns_port: u16) -> Result<Self> {
        crate::require_root();
        let mut builder = Topology::builder().underlay("10.100.0.1/24");
        for (i, (cluster, node, ip, prefix)) in CLUSTERS.iter().enumerate() {
            builder = builder
                .cluster(cluster, &format!("10.{}.0.0/16", 101 + i))
                .node(node, ip, &format!("{prefix}.0/24"))
                .pod(
                    &format!("{}-client", &cluster[8..]),
                    &pod_ip(i, 100).to_string(),
                )
                .pod(
                    &format!("{}-web1", &cluster[8..]),
                    &pod_ip(i, 10).to_string(),
                );
        }
        let topology = builder.build()?;
        let mut servers = Vec::new();
        let mut clusters = Vec::new();
        for (cluster, node, ip, _) in CLUSTERS {
            let short = &cluster[8..];
            let web = topology.pod(&format!("{short}-web1"))?;
            servers.push(HttpServer::start(
                &web.netns,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, TARGET_PORT).into(),
                Identity::new(&format!("{short}-web1"), cluster),
            )?);
            let ns = &topology.node(node)?.netns;
            let addr: SocketAddr = format!("{ip}:0").parse()?;
            let server = ns.enter(|| LocalApiServer::start_on(addr))??;
            let sim = SimCluster::with_server(cluster, server)?;
            sim.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))?;
            clusters.push(sim);
        }
        let members: Vec<&SimCluster> = clusters.iter().collect();
        let mut controllers = Vec::new();
        for ((_, node, _, _), cluster) in CLUSTERS.iter().zip(&clusters) {
            let ns = &topology.node(node)?.netns;
            controllers.push(Controller::start_in(Some(ns), cluster, &members, &[])?);
        }
        let source = tempfile::tempdir()?;
        let mut agents = Vec::new();
        for ((cluster_id, node, ip, _), cluster) in CLUSTERS.iter().zip(&clusters) {
            let mut config = AgentConfig::new(source.path(), topology.agent_ifaces(node)?);
            config.cluster_id = Some((*cluster_id).to_owned());
            config.source_arg = Some("kube".to_owned());
            config.extra_args = vec![
                "--kubeconfig".into(),
                cluster.kubeconfig.display().to_string(),
                "--dns-addr".into(),
                format!("{ip}:{dns_port}"),
            ];
            agents.push(Agent::start(&topology.node(node)?.netns, &config)?);
        }
        Ok(Self {
            agents,
            controllers,
            _servers: servers,
            clusters,
            topology,
            dns_port,
            _source: source,
        })
    }

    /// Cluster `i`'s ServiceImport `name` (as served in v1alpha1), once it
    /// exists and `ready` holds for it.
    pub fn import(&self, i: usize, name: &str, ready: impl Fn(&Value) -> bool) -> Result<Value> {
        let cluster = &self.clusters[i];
        wait_for(SETTLE, &format!("import {name} in {}", cluster.id), || {
            cluster
                .server
                .get(&imports("v1alpha1"), NS, name)
                .filter(|import| ready(import))
        })
    }

    /// The ClusterSetIP of `name` in cluster `i`, once the agent there
    /// routes its TCP `port` to exactly the pods `backends` (`a-web1`…).
    pub fn routed(
        &mut self,
        i: usize,
        name: &str,
        port: u16,
        backends: &[&str],
    ) -> Result<Ipv4Addr> {
        let import = self.import(i, name, |import| import["spec"]["ips"][0].is_string())?;
        let vip: Ipv4Addr = import["spec"]["ips"][0].as_str().context("ip")?.parse()?;
        let mut want: Vec<Ipv4Addr> = backends
            .iter()
            .map(|b| backend_ip(b))
            .collect::<Result<_>>()?;
        want.sort();
        self.agents[i].wait_until(SETTLE, |dump| {
            dump.service(vip, port, Protocol::Tcp)
                .is_some_and(|s| s.backend_addrs() == want)
        })?;
        let node = CLUSTERS[i].1;
        let node_ns = &self.topology.node(node)?.netns;
        for dev in self.topology.agent_ifaces(node)? {
            wait_for(SETTLE, &format!("XDP on {dev}"), || {
                xdp_attached(node_ns, &dev).ok().filter(|a| *a)
            })?;
        }
        Ok(vip)
    }

    /// Cluster `i`'s client pod.
    pub fn client(&self, i: usize) -> Result<&crate::netns::Netns> {
        Ok(&self
            .topology
            .pod(&format!("{}-client", &CLUSTERS[i].0[8..]))?
            .netns)
    }

    /// Who answered `n` requests from cluster `i`'s client to `target`.
    pub fn answered(&self, i: usize, target: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
        let client = self.client(i)?;
        (0..n)
            .map(|_| http_get(client, target).map(|r| r.backend.pod))
            .collect()
    }

    /// `dig` of `name`'s A records from cluster `i`'s client against its
    /// node's DNS server.
    pub fn resolve(&self, i: usize, name: &str) -> Result<Vec<Ipv4Addr>> {
        let server = format!("@{}", CLUSTERS[i].2);
        let port = self.dns_port.to_string();
        let out = self.client(i)?.exec(
            "dig",
            &[
                &server, "-p", &port, "+short", "+time=2", "+tries=2", name, "A",
            ],
        )?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// One DNS query over UDP from cluster `i`'s client to its node's DNS
    /// server: the whole response, to check codes and records.
    pub fn query(&self, i: usize, name: &str, record_type: RecordType) -> Result<Message> {
        let mut query = Message::query();
        query.metadata.id = 4242;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(
            Name::from_ascii(name).with_context(|| format!("name {name}"))?,
            record_type,
        ));
        let bytes = query.to_bytes().context("encode the query")?;
        let server: SocketAddr = format!("{}:{}", CLUSTERS[i].2, self.dns_port).parse()?;
        let reply = self.client(i)?.enter(move || -> Result<Vec<u8>> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.connect(server)?;
            socket.send(&bytes)?;
            let mut buffer = vec![0u8; 4096];
            let length = socket.recv(&mut buffer)?;
            buffer.truncate(length);
            Ok(buffer)
        })??;
        let response = Message::from_bytes(&reply).context("decode the response")?;
        if response.metadata.id != 4242 {
            bail!("response to another query: {response:?}");
        }
        Ok(response)
    }

    /// Every controller's and agent's log, for a failure.
    pub fn logs(&self) -> String {
        let mut text: String = self
            .controllers
            .iter()
            .map(|c| format!("--- controller {} ---\n{}", c.cluster, c.log()))
            .collect();
        for agent in &self.agents {
            text.push_str(&format!(
                "--- agent in {} ---\n{}",
                agent.netns(),
                agent.log()
            ));
        }
        text
    }
}

/// Builds the clusters and runs `case`; a failure panics with every log.
pub fn run(case: impl FnOnce(&mut ThreeClusters) -> Result<()>) {
    let mut world = ThreeClusters::build().expect("three clusters");
    if let Err(error) = case(&mut world) {
        panic!("{error:#}\n{}", world.logs());
    }
}
