//! The export side end to end, with traffic: three simulated clusters
//! (network namespaces with flat pod routing), each with its own local API
//! server (on its node's underlay address), its own `mcs-agent controller`
//! and the agent (`--source kube`, `--dns-addr`) on its node. Services are
//! exported with ServiceExports only; everything the agents route comes
//! from the controllers. Named after the conformance suite's connectivity
//! cases.
//!
//! | cluster   | node (underlay)  | pods                                        |
//! |-----------|------------------|---------------------------------------------|
//! | cluster-a | a1 (10.100.0.11) | a-client 10.101.1.100, a-web1 10.101.1.10   |
//! | cluster-b | b1 (10.100.0.12) | b-client 10.102.1.100, b-web1 10.102.1.10   |
//! | cluster-c | c1 (10.100.0.13) | c-client 10.103.1.100, c-web1 10.103.1.10   |
//!
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use mcs_tests::{
    agent::{Agent, AgentConfig},
    apiserver::LocalApiServer,
    client::http_get,
    clusterset::{Controller, SimCluster, imports, wait_for},
    manifest::Protocol,
    servers::{HttpServer, Identity},
    topology::{Topology, xdp_attached},
};
use serde_json::json;

const NS: &str = "demo";
const SERVICE: &str = "web";
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const DNS_PORT: u16 = 5353;
const SETTLE: Duration = Duration::from_secs(30);
/// (cluster, node, node underlay IP, pod /24 prefix)
const CLUSTERS: [(&str, &str, &str, &str); 3] = [
    ("cluster-a", "a1", "10.100.0.11", "10.101.1"),
    ("cluster-b", "b1", "10.100.0.12", "10.102.1"),
    ("cluster-c", "c1", "10.100.0.13", "10.103.1"),
];

struct World {
    // Dropped in this order: agents detach while their interfaces exist.
    agents: Vec<Agent>,
    controllers: Vec<Controller>,
    _servers: Vec<HttpServer>,
    clusters: Vec<SimCluster>,
    topology: Topology,
    _source: tempfile::TempDir,
}

fn pod(prefix: &str, host: u8) -> String {
    format!("{prefix}.{host}")
}

impl World {
    fn build() -> Result<Self> {
        mcs_tests::require_root();
        let mut builder = Topology::builder().underlay("10.100.0.1/24");
        for (i, (cluster, node, ip, prefix)) in CLUSTERS.iter().enumerate() {
            builder = builder
                .cluster(cluster, &format!("10.{}.0.0/16", 101 + i))
                .node(node, ip, &format!("{prefix}.0/24"))
                .pod(&format!("{}-client", &cluster[8..]), &pod(prefix, 100))
                .pod(&format!("{}-web1", &cluster[8..]), &pod(prefix, 10));
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
                format!("{ip}:{DNS_PORT}"),
            ];
            agents.push(Agent::start(&topology.node(node)?.netns, &config)?);
        }
        Ok(Self {
            agents,
            controllers,
            _servers: servers,
            clusters,
            topology,
            _source: source,
        })
    }

    /// Every cluster has Service `web` with its pod in a slice; `exported`
    /// clusters also export it.
    fn services(&self, exported: &[&str]) -> Result<()> {
        for ((cluster_id, _, _, prefix), cluster) in CLUSTERS.iter().zip(&self.clusters) {
            cluster.apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": PORT, "protocol": "TCP", "targetPort": TARGET_PORT}]}}))?;
            cluster.apply(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{SERVICE}-x1"), "namespace": NS,
                             "labels": {"kubernetes.io/service-name": SERVICE}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
                "endpoints": [{"addresses": [pod(prefix, 10)], "conditions": {"ready": true}}]}),
            )?;
            let export = json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                "metadata": {"name": SERVICE, "namespace": NS}});
            if exported.contains(cluster_id) {
                cluster.apply(export)?;
            } else {
                cluster.server.delete_object(&export);
            }
        }
        Ok(())
    }

    /// The ClusterSetIP of `web` in cluster `i`, once the agent there
    /// routes it to exactly the pods of `backends`.
    fn routed(&mut self, i: usize, backends: &[&str]) -> Result<Ipv4Addr> {
        let cluster = &self.clusters[i];
        let import = wait_for(SETTLE, &format!("import in {}", cluster.id), || {
            cluster
                .server
                .get(&imports("v1alpha1"), NS, SERVICE)
                .filter(|i| i["spec"]["ips"][0].is_string())
        })?;
        let vip: Ipv4Addr = import["spec"]["ips"][0].as_str().context("ip")?.parse()?;
        let mut want: Vec<Ipv4Addr> = backends
            .iter()
            .map(|b| backend_ip(b))
            .collect::<Result<_>>()?;
        want.sort();
        self.agents[i].wait_until(SETTLE, |dump| {
            dump.service(vip, PORT, Protocol::Tcp)
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

    /// Who answered `n` requests from cluster `i`'s client to `target`.
    fn answered(&self, i: usize, target: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
        let client = &self
            .topology
            .pod(&format!("{}-client", &CLUSTERS[i].0[8..]))?
            .netns;
        (0..n)
            .map(|_| http_get(client, target).map(|r| r.backend.pod))
            .collect()
    }

    /// `dig` from cluster `i`'s client against its node's DNS server.
    fn resolve(&self, i: usize, name: &str) -> Result<Vec<Ipv4Addr>> {
        let client = &self
            .topology
            .pod(&format!("{}-client", &CLUSTERS[i].0[8..]))?
            .netns;
        let server = format!("@{}", CLUSTERS[i].2);
        let port = DNS_PORT.to_string();
        let out = client.exec(
            "dig",
            &[
                &server, "-p", &port, "+short", "+time=2", "+tries=2", name, "A",
            ],
        )?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn logs(&self) -> String {
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

fn backend_ip(name: &str) -> Result<Ipv4Addr> {
    let (_, _, _, prefix) = CLUSTERS
        .iter()
        .find(|(cluster, ..)| cluster.ends_with(&name[..1]))
        .context("backend's cluster")?;
    Ok(pod(prefix, 10).parse()?)
}

fn run(case: impl FnOnce(&mut World) -> Result<()>) {
    let mut world = World::build().expect("three clusters");
    if let Err(error) = case(&mut world) {
        panic!("{error:#}\n{}", world.logs());
    }
}

fn fqdn() -> String {
    format!("{SERVICE}.{NS}.svc.clusterset.local")
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_pod_in_cluster_a_reaches_the_exported_pods_of_clusters_b_and_c_through_the_clusterset_ip_and_the_dns_name()
 {
    run(|world| {
        world.services(&["cluster-b", "cluster-c"])?;
        let vip = world.routed(0, &["b-web1", "c-web1"])?;
        let through_ip = world.answered(0, SocketAddrV4::new(vip, PORT).into(), 40)?;
        ensure!(
            through_ip == BTreeSet::from(["b-web1".to_owned(), "c-web1".to_owned()]),
            "{through_ip:?}"
        );
        let resolved = wait_for(SETTLE, "the clusterset name", || {
            world.resolve(0, &fqdn()).ok().filter(|ips| !ips.is_empty())
        })?;
        ensure!(
            resolved == [vip],
            "A record {resolved:?}, ClusterSetIP {vip}"
        );
        let through_name = world.answered(0, SocketAddrV4::new(resolved[0], PORT).into(), 40)?;
        ensure!(through_name == through_ip, "{through_name:?}");
        Ok(())
    });
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn an_exported_cluster_ip_service_should_be_accessible_through_dns_from_all_clusters() {
    run(|world| {
        world.services(&["cluster-a"])?;
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            let vip = world.routed(i, &["a-web1"])?;
            let resolved = wait_for(SETTLE, "the clusterset name", || {
                world.resolve(i, &fqdn()).ok().filter(|ips| !ips.is_empty())
            })?;
            ensure!(
                resolved == [vip],
                "{cluster}: A record {resolved:?}, ClusterSetIP {vip}"
            );
            let answered = world.answered(i, SocketAddrV4::new(resolved[0], PORT).into(), 5)?;
            ensure!(
                answered == BTreeSet::from(["a-web1".to_owned()]),
                "{cluster}: {answered:?}"
            );
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_service_in_every_cluster_exported_from_one_is_answered_only_by_that_cluster_and_unexported_reaches_nothing()
 {
    run(|world| {
        world.services(&["cluster-b"])?;
        let vip = world.routed(0, &["b-web1"])?;
        let answered = world.answered(0, SocketAddrV4::new(vip, PORT).into(), 30)?;
        ensure!(
            answered == BTreeSet::from(["b-web1".to_owned()]),
            "{answered:?}"
        );
        // Unexported everywhere: the name resolves to nothing and the
        // address answers nothing, from every cluster.
        world.services(&[])?;
        for (i, cluster) in world.clusters.iter().enumerate() {
            wait_for(SETTLE, &format!("no import in {}", cluster.id), || {
                cluster
                    .server
                    .get(&imports("v1alpha1"), NS, SERVICE)
                    .is_none()
                    .then_some(())
            })?;
            wait_for(SETTLE, "the name gone", || {
                world.resolve(i, &fqdn()).ok().filter(Vec::is_empty)
            })?;
            for _ in 0..3 {
                let reply = world.answered(i, SocketAddrV4::new(vip, PORT).into(), 1);
                ensure!(
                    reply.is_err(),
                    "{}: answered by {reply:?} after unexport",
                    cluster.id
                );
            }
        }
        Ok(())
    });
}
