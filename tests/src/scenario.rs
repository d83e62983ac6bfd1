//! The standard two-cluster ClusterSet used by the end-to-end tests and the
//! demo.
//!
//! | cluster   | node (underlay)  | pods                                         |
//! |-----------|------------------|----------------------------------------------|
//! | cluster-a | a1 (10.100.0.11) | a-client 10.101.1.100, a-web1 10.101.1.10    |
//! | cluster-b | b1 (10.100.0.12) | b-web1 10.102.1.10, b-web2 10.102.1.11,      |
//! |           |                  | b-extra 10.102.1.99 (runs servers, unlisted) |
//!
//! Service `demo/web` has ClusterSetIP 10.96.100.10 with ports `http`
//! (TCP 80 → 8080) and `echo` (UDP 53 → 5353). The agent runs on a1, where
//! the client is, attached to a1's pod veths and its uplink.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

use crate::{
    agent::{Agent, AgentConfig, PinnedDataplane, StoppedAgent},
    manifest::{Endpoint, EndpointSlice, Manifest, ManifestDir, Port, Protocol, ServiceImport},
    netns::Netns,
    servers::{HttpServer, Identity, UdpEchoServer},
    topology::{self, Topology, TopologyBuilder},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 10);
pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
pub const BACKEND_HTTP_PORT: u16 = 8080;
pub const BACKEND_UDP_PORT: u16 = 5353;
pub const SERVICE: &str = "web";
pub const NAMESPACE: &str = "demo";
pub const CLUSTER_A: &str = "cluster-a";
pub const CLUSTER_B: &str = "cluster-b";
/// The node the agent (and the client) runs on.
pub const CLIENT_NODE: &str = "a1";
pub const CLIENT: &str = "a-client";
/// The pod that runs servers but is in no EndpointSlice.
pub const UNLISTED: &str = "b-extra";
/// How long to wait for the agent to apply a manifest.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A pod that runs the web servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerPod {
    pub name: &'static str,
    pub cluster: &'static str,
    pub ip: Ipv4Addr,
}

impl ServerPod {
    pub fn identity(&self) -> Identity {
        Identity::new(self.name, self.cluster)
    }
}

/// The backends listed in the standard manifest.
pub const BACKENDS: [ServerPod; 3] = [
    ServerPod {
        name: "a-web1",
        cluster: CLUSTER_A,
        ip: Ipv4Addr::new(10, 101, 1, 10),
    },
    ServerPod {
        name: "b-web1",
        cluster: CLUSTER_B,
        ip: Ipv4Addr::new(10, 102, 1, 10),
    },
    ServerPod {
        name: "b-web2",
        cluster: CLUSTER_B,
        ip: Ipv4Addr::new(10, 102, 1, 11),
    },
];

/// Runs the same servers as the backends, but is in no EndpointSlice.
pub const UNLISTED_POD: ServerPod = ServerPod {
    name: UNLISTED,
    cluster: CLUSTER_B,
    ip: Ipv4Addr::new(10, 102, 1, 99),
};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 101, 1, 100);

/// The standard topology (see the module docs).
pub fn topology() -> TopologyBuilder {
    Topology::builder()
        .underlay("10.100.0.1/24")
        .cluster(CLUSTER_A, "10.101.0.0/16")
        .node(CLIENT_NODE, "10.100.0.11", "10.101.1.0/24")
        .pod(CLIENT, &CLIENT_IP.to_string())
        .pod(BACKENDS[0].name, &BACKENDS[0].ip.to_string())
        .cluster(CLUSTER_B, "10.102.0.0/16")
        .node("b1", "10.100.0.12", "10.102.1.0/24")
        .pod(BACKENDS[1].name, &BACKENDS[1].ip.to_string())
        .pod(BACKENDS[2].name, &BACKENDS[2].ip.to_string())
        .pod(UNLISTED_POD.name, &UNLISTED_POD.ip.to_string())
}

/// `ClusterSetIP:80`.
pub fn vip_http() -> SocketAddr {
    SocketAddrV4::new(VIP, HTTP_PORT).into()
}

/// `ClusterSetIP:53`.
pub fn vip_udp() -> SocketAddr {
    SocketAddrV4::new(VIP, UDP_PORT).into()
}

/// The ServiceImport and one EndpointSlice per cluster listing `endpoints`
/// (pod, ready). A cluster with no endpoint still gets an (empty) slice.
pub fn manifest(endpoints: &[(ServerPod, bool)]) -> Manifest {
    let service_ports = vec![
        Port::new("http", Protocol::Tcp, HTTP_PORT),
        Port::new("echo", Protocol::Udp, UDP_PORT),
    ];
    let backend_ports = vec![
        Port::new("http", Protocol::Tcp, BACKEND_HTTP_PORT),
        Port::new("echo", Protocol::Udp, BACKEND_UDP_PORT),
    ];
    let slices = [CLUSTER_A, CLUSTER_B]
        .into_iter()
        .map(|cluster| EndpointSlice {
            name: format!("{SERVICE}-{cluster}-1"),
            namespace: NAMESPACE.to_owned(),
            service: SERVICE.to_owned(),
            cluster: cluster.to_owned(),
            ports: backend_ports.clone(),
            endpoints: endpoints
                .iter()
                .filter(|(pod, _)| pod.cluster == cluster)
                .map(|&(pod, ready)| Endpoint {
                    addr: pod.ip,
                    ready,
                })
                .collect(),
        })
        .collect();
    Manifest {
        imports: vec![ServiceImport {
            name: SERVICE.to_owned(),
            namespace: NAMESPACE.to_owned(),
            ips: vec![VIP],
            ports: service_ports,
        }],
        slices,
    }
}

/// All [`BACKENDS`], ready.
pub fn all_backends_ready() -> Vec<(ServerPod, bool)> {
    BACKENDS.iter().map(|&pod| (pod, true)).collect()
}

/// The servers of one pod.
#[derive(Debug)]
pub struct PodServers {
    pub http: HttpServer,
    pub udp: UdpEchoServer,
}

/// The standard topology with servers running, a manifest directory and
/// (once started) the agent on [`CLIENT_NODE`]. Drops the agent first (so it
/// detaches while its interfaces exist), then the servers, then the
/// namespaces.
/// Which hooks the agent serves the client node's pods with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hooks {
    /// XDP on the node's pod veths and uplink (`--interface`).
    #[default]
    Xdp,
    /// tc on the pod interfaces it discovers (`--pod-interfaces v-*`), as
    /// the DaemonSet runs it; nothing on the uplink.
    Tc,
}

/// What the agent logs once its hooks are attached (pod interfaces last).
const ATTACHED_LOG: &str = "following link notifications";

/// The `--pod-interfaces` glob of the node-side pod veths (`v-<pod>`).
pub const POD_INTERFACES: &str = "v-*";

/// Whether both tc programs of the agent whose pins are under `bpffs_dir`
/// are attached to pod interface `iface` (their TCX links pinned).
pub fn tc_attached(bpffs_dir: &std::path::Path, iface: &str) -> bool {
    let dir = bpffs_dir.join("tc").join(iface);
    dir.join("ingress").exists() && dir.join("egress").exists()
}

#[derive(Debug)]
pub struct ClusterSet {
    agent: Option<Agent>,
    hooks: Hooks,
    /// The ClusterSetIP an agent start waits for.
    vip: Ipv4Addr,
    servers: BTreeMap<&'static str, PodServers>,
    manifest: ManifestDir,
    topology: Topology,
    /// `--source` override for the next agent start.
    source_arg: Option<String>,
}

impl ClusterSet {
    /// Builds the topology, starts the servers of every backend and of the
    /// unlisted pod, and writes `manifest` (not yet read by any agent).
    /// `progress` is told about each step.
    pub fn create(manifest_yaml: &str, progress: &dyn Fn(&str)) -> Result<Self> {
        progress(
            "creating router (underlay 10.100.0.0/24), cluster-a node a1 with pods a-client and \
             a-web1, cluster-b node b1 with pods b-web1, b-web2 and b-extra",
        );
        let topology = topology().build()?;
        let manifest = ManifestDir::new("clusterset.yaml", manifest_yaml)?;
        let mut set = Self {
            agent: None,
            hooks: Hooks::Xdp,
            vip: VIP,
            servers: BTreeMap::new(),
            manifest,
            topology,
            source_arg: None,
        };
        for pod in BACKENDS.iter().chain([&UNLISTED_POD]) {
            progress(&format!(
                "starting HTTP :{BACKEND_HTTP_PORT} and UDP echo :{BACKEND_UDP_PORT} in {} ({}, {})",
                pod.name, pod.cluster, pod.ip
            ));
            let ns = &set.topology.pod(pod.name)?.netns;
            let any = Ipv4Addr::UNSPECIFIED;
            let servers = PodServers {
                http: HttpServer::start(
                    ns,
                    SocketAddrV4::new(any, BACKEND_HTTP_PORT).into(),
                    pod.identity(),
                )?,
                udp: UdpEchoServer::start(
                    ns,
                    SocketAddrV4::new(any, BACKEND_UDP_PORT).into(),
                    pod.identity(),
                )?,
            };
            set.servers.insert(pod.name, servers);
        }
        Ok(set)
    }

    /// Waits for ClusterSetIP `vip` instead of [`VIP`] when an agent starts
    /// (a manifest with another address).
    pub fn use_vip(&mut self, vip: Ipv4Addr) {
        self.vip = vip;
    }

    /// Serves the client node with `hooks` from the next agent start on.
    pub fn use_hooks(&mut self, hooks: Hooks) {
        self.hooks = hooks;
    }

    /// Starts the agent on [`CLIENT_NODE`] (pod veths + uplink) reading the
    /// manifest directory, and waits until the dump shows both frontends of
    /// the service.
    pub fn start_agent(&mut self) -> Result<&mut Agent> {
        self.start_agent_with(&[])
    }

    /// [`start_agent`](Self::start_agent) with extra agent arguments (e.g.
    /// `--xdp-mode generic`).
    pub fn start_agent_with(&mut self, extra_args: &[&str]) -> Result<&mut Agent> {
        self.launch_agent(extra_args, None)
    }

    /// Starts the agent (and later ones) with `--source SOURCE` (e.g.
    /// `kube`) instead of the manifest directory.
    pub fn start_agent_from(&mut self, source: &str, extra_args: &[&str]) -> Result<&mut Agent> {
        self.source_arg = Some(source.to_owned());
        self.launch_agent(extra_args, None)
    }

    /// Stops the agent and keeps its dataplane serving (hitless restart).
    pub fn stop_agent_keeping_dataplane(&mut self) -> Result<StoppedAgent> {
        self.agent
            .take()
            .context("agent not started")?
            .stop_keeping_dataplane()
    }

    /// SIGKILLs the agent; its pinned dataplane keeps serving.
    pub fn kill_agent_keeping_dataplane(&mut self) -> Result<StoppedAgent> {
        self.agent
            .take()
            .context("agent not started")?
            .kill_keeping_dataplane()
    }

    /// Starts a new agent that adopts the dataplane a stopped one left.
    pub fn adopt_agent(
        &mut self,
        pinned: PinnedDataplane,
        extra_args: &[&str],
    ) -> Result<&mut Agent> {
        self.launch_agent(extra_args, Some(pinned))
    }

    fn launch_agent(
        &mut self,
        extra_args: &[&str],
        pinned: Option<PinnedDataplane>,
    ) -> Result<&mut Agent> {
        let node = self.topology.node(CLIENT_NODE)?;
        let interfaces = match self.hooks {
            Hooks::Xdp => self.topology.agent_ifaces(CLIENT_NODE)?,
            Hooks::Tc => Vec::new(),
        };
        let mut config = AgentConfig::new(self.manifest.dir(), interfaces);
        config.cluster_id = Some(CLUSTER_A.to_owned());
        if self.hooks == Hooks::Tc {
            config.extra_args = vec!["--pod-interfaces".to_owned(), POD_INTERFACES.to_owned()];
        }
        config
            .extra_args
            .extend(extra_args.iter().map(|&a| a.to_owned()));
        config.source_arg = self.source_arg.clone();
        let agent = match pinned {
            None => Agent::start(&node.netns, &config)?,
            Some(pinned) => Agent::adopt(&node.netns, &config, pinned)?,
        };
        let agent = self.agent.insert(agent);
        let vip = self.vip;
        agent.wait_until(APPLY_TIMEOUT, |dump| {
            dump.service(vip, HTTP_PORT, Protocol::Tcp).is_some()
                && dump.service(vip, UDP_PORT, Protocol::Udp).is_some()
        })?;
        // The maps can be programmed before the program is attached: wait
        // for XDP on every interface, or the first packets bypass it.
        let deadline = Instant::now() + APPLY_TIMEOUT;
        for dev in &config.interfaces {
            while !topology::xdp_attached(&node.netns, dev)? {
                agent.ensure_running()?;
                ensure!(
                    Instant::now() < deadline,
                    "XDP not attached to {dev} within {APPLY_TIMEOUT:?}; agent log:\n{}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.hooks == Hooks::Tc {
            // Pins of an adopted dataplane exist before the new agent is
            // done: wait for its own word that every hook is attached.
            while !agent.log().contains(ATTACHED_LOG) {
                agent.ensure_running()?;
                ensure!(
                    Instant::now() < deadline,
                    "the agent never attached its hooks within {APPLY_TIMEOUT:?}; log:\n{}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            for dev in self.topology.pod_ifaces(CLIENT_NODE) {
                while !(tc_attached(agent.bpffs_dir(), &dev)
                    || topology::clsact_attached(&node.netns, &dev)?)
                {
                    agent.ensure_running()?;
                    ensure!(
                        Instant::now() < deadline,
                        "tc not attached to {dev} within {APPLY_TIMEOUT:?}; agent log:\n{}",
                        agent.log()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(agent)
    }

    pub fn agent_ref(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    pub fn agent(&mut self) -> Result<&mut Agent> {
        self.agent.as_mut().context("agent not started")
    }

    /// Hands the agent over, e.g. to stop it and check how it exits.
    pub fn take_agent(&mut self) -> Option<Agent> {
        self.agent.take()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The topology, to add pods or recreate their links.
    pub fn topology_mut(&mut self) -> &mut Topology {
        &mut self.topology
    }

    pub fn manifest(&self) -> &ManifestDir {
        &self.manifest
    }

    /// The client pod's namespace.
    pub fn client(&self) -> Result<&Netns> {
        Ok(&self.topology.pod(CLIENT)?.netns)
    }

    /// The servers of pod `name`.
    pub fn servers(&self, name: &str) -> Result<&PodServers> {
        self.servers
            .get(name)
            .with_context(|| format!("no servers in pod {name}"))
    }

    /// HTTP requests served so far, by pod.
    pub fn http_requests(&self) -> BTreeMap<&'static str, u64> {
        self.servers
            .iter()
            .map(|(&name, s)| (name, s.http.stats().requests()))
            .collect()
    }

    /// UDP datagrams echoed so far, by pod.
    pub fn udp_requests(&self) -> BTreeMap<&'static str, u64> {
        self.servers
            .iter()
            .map(|(&name, s)| (name, s.udp.stats().requests()))
            .collect()
    }
}

impl Drop for ClusterSet {
    fn drop(&mut self) {
        // A failing test: show what the dataplane held (the agent prints its
        // own log when it is dropped right after this).
        if std::thread::panicking()
            && let Some(agent) = &self.agent
        {
            match agent.dump_text() {
                Ok(text) => eprintln!("----- mcs-agent dump -----\n{text}----- end of dump -----"),
                Err(e) => eprintln!("mcs-agent dump failed: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo ships `demo/clusterset.yaml`; it must describe exactly this
    /// topology, so the demo can use it unchanged.
    #[test]
    fn demo_manifest_matches_the_standard_layout() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/clusterset.yaml");
        let shipped = std::fs::read_to_string(path).unwrap();
        let significant = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            significant(&shipped),
            significant(&manifest(&all_backends_ready()).to_yaml()),
            "demo/clusterset.yaml differs from scenario::manifest(all_backends_ready())"
        );
    }
}
