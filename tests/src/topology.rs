//! Simulated clusters with flat pod routing, built from network namespaces.
//!
//! ```text
//!             router netns: bridge br0 10.100.0.1/24 (the underlay / VPC)
//!              |  routes 10.101.1.0/24 via a1, 10.102.1.0/24 via b1
//!      p-a1 ---+--- p-b1          (router-side veths, bridge ports)
//!        |             |
//!   a1 eth0 .11    b1 eth0 .12    (node uplinks; default via 10.100.0.1)
//!    |      |        |      |
//!  v-a-x  v-a-y    v-b-x  v-b-y   (node side of each pod veth; route pod/32)
//!    |      |        |      |
//!   eth0   eth0     eth0   eth0   (pod: IP/32, default via 169.254.1.1)
//! ```
//!
//! Pods have a single /32 address and reach everything through their node,
//! like Calico or Cilium pods: the node-side veth carries the gateway address
//! 169.254.1.1/32 (the same on every pod veth) and a `/32` route per pod, so
//! routing and XDP on the node see every packet a pod sends or receives.
//! Nodes send everything else to the router, which knows each node's pod
//! /24, so any pod reaches any pod in any cluster without NAT.
//!
//! All veths are created from inside a test namespace, so their names only
//! need to be unique within that namespace and nothing is ever created in,
//! or routed through, the root namespace. Dropping the [`Topology`] deletes
//! every namespace, which removes the veths with them.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    csum::{self, CsumCounters},
    netns::{self, Netns},
};

/// Gateway address every pod routes through (held by each node-side veth).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Name of a pod's interface and of a node's uplink.
pub const ETH0: &str = "eth0";
/// The router's bridge, which joins all node uplinks.
pub const ROUTER_BRIDGE: &str = "br0";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// An IPv4 prefix such as `10.101.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (addr, len) = s
            .split_once('/')
            .with_context(|| format!("{s:?} is not ADDR/LEN"))?;
        let net = Self {
            addr: addr.parse().with_context(|| format!("address in {s:?}"))?,
            len: len.parse().with_context(|| format!("length in {s:?}"))?,
        };
        ensure!(net.len <= 32, "prefix length in {s:?} is over 32");
        Ok(net)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Debug)]
struct PodSpec {
    name: String,
    ip: String,
}

#[derive(Clone, Debug)]
struct NodeSpec {
    name: String,
    underlay_ip: String,
    pod_cidr: String,
    pods: Vec<PodSpec>,
}

#[derive(Clone, Debug)]
struct ClusterSpec {
    name: String,
    pod_cidr: String,
    nodes: Vec<NodeSpec>,
}

/// Describes clusters, nodes and pods; [`TopologyBuilder::build`] creates
/// them. [`node`](Self::node) adds to the last cluster, [`pod`](Self::pod)
/// to the last node. Addresses are checked when building.
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    underlay: String,
    clusters: Vec<ClusterSpec>,
    misuse: Option<String>,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        Self {
            underlay: "10.100.0.1/24".to_owned(),
            clusters: Vec::new(),
            misuse: None,
        }
    }
}

impl TopologyBuilder {
    /// The router's underlay address and prefix (default `10.100.0.1/24`).
    pub fn underlay(mut self, router_cidr: &str) -> Self {
        router_cidr.clone_into(&mut self.underlay);
        self
    }

    /// A cluster whose pods are in `pod_cidr` (e.g. `10.101.0.0/16`).
    pub fn cluster(mut self, name: &str, pod_cidr: &str) -> Self {
        self.clusters.push(ClusterSpec {
            name: name.to_owned(),
            pod_cidr: pod_cidr.to_owned(),
            nodes: Vec::new(),
        });
        self
    }

    /// A node of the last cluster with its underlay address and the pod
    /// range it owns (e.g. `10.101.1.0/24`).
    pub fn node(mut self, name: &str, underlay_ip: &str, pod_cidr: &str) -> Self {
        let node = NodeSpec {
            name: name.to_owned(),
            underlay_ip: underlay_ip.to_owned(),
            pod_cidr: pod_cidr.to_owned(),
            pods: Vec::new(),
        };
        match self.clusters.last_mut() {
            Some(cluster) => cluster.nodes.push(node),
            None => self.misuse = Some(format!("node {name} added before any cluster")),
        }
        self
    }

    /// A pod on the last node.
    pub fn pod(mut self, name: &str, ip: &str) -> Self {
        let pod = PodSpec {
            name: name.to_owned(),
            ip: ip.to_owned(),
        };
        match self.clusters.last_mut().and_then(|c| c.nodes.last_mut()) {
            Some(node) => node.pods.push(pod),
            None => self.misuse = Some(format!("pod {name} added before any node")),
        }
        self
    }

    /// Creates the namespaces, links, addresses and routes. On error every
    /// namespace created so far is deleted again.
    pub fn build(self) -> Result<Topology> {
        if let Some(misuse) = self.misuse {
            bail!("topology: {misuse}");
        }
        // Leftovers of killed test processes would only pile up; removing
        // them is safe because their owner no longer runs.
        netns::reap_stale()?;
        let underlay: Ipv4Net = self.underlay.parse().context("underlay")?;
        let prefix = netns::unique_prefix();
        let mut topo = Topology {
            prefix,
            underlay,
            pods: Vec::new(),
            nodes: Vec::new(),
            router: None,
        };
        topo.build_router()?;
        for cluster in &self.clusters {
            let cluster_cidr: Ipv4Net = cluster
                .pod_cidr
                .parse()
                .with_context(|| format!("pod CIDR of {}", cluster.name))?;
            for node in &cluster.nodes {
                topo.build_node(&cluster.name, node)?;
                for pod in &node.pods {
                    let ip: Ipv4Addr = pod
                        .ip
                        .parse()
                        .with_context(|| format!("address of pod {}", pod.name))?;
                    ensure!(
                        cluster_cidr.contains(ip),
                        "pod {} ({ip}) is outside its cluster's {cluster_cidr}",
                        pod.name
                    );
                    topo.build_pod(&cluster.name, &node.name, &pod.name, ip)?;
                }
            }
        }
        Ok(topo)
    }
}

/// The router namespace: the shared underlay every node is attached to.
#[derive(Debug)]
pub struct Router {
    pub netns: Netns,
    pub ip: Ipv4Addr,
}

/// A node namespace.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub cluster: String,
    pub netns: Netns,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's interface towards the router (in the node namespace).
    pub uplink: String,
    /// The router-side end of the uplink (a port of the router's bridge).
    pub router_port: String,
}

/// A pod namespace.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub cluster: String,
    pub node: String,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    /// The pod's interface (in the pod namespace).
    pub iface: String,
    /// The node-side end of the pod's veth (in the node namespace).
    pub node_iface: String,
}

/// A built topology; dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    underlay: Ipv4Net,
    // Fields drop in declaration order: pods, then nodes, then the router.
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    router: Option<Router>,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// Start of the name of every namespace of this topology.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn router(&self) -> Result<&Router> {
        self.router.as_ref().context("topology has no router")
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name} in the topology"))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name} in the topology"))
    }

    /// The pod with this address.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// The node-side veths of the pods on `node`: with the node's uplink,
    /// the interfaces the agent attaches XDP to.
    pub fn pod_ifaces(&self, node: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.node_iface.clone())
            .collect()
    }

    /// Every interface of `node` that carries pod traffic: its pod veths and
    /// its uplink (where replies from remote backends arrive).
    pub fn agent_ifaces(&self, node: &str) -> Result<Vec<String>> {
        let mut ifaces = self.pod_ifaces(node);
        ifaces.push(self.node(node)?.uplink.clone());
        Ok(ifaces)
    }

    /// All namespaces: router, nodes, pods.
    pub fn all_netns(&self) -> Vec<&Netns> {
        self.router
            .iter()
            .map(|r| &r.netns)
            .chain(self.nodes.iter().map(|n| &n.netns))
            .chain(self.pods.iter().map(|p| &p.netns))
            .collect()
    }

    /// Namespaces with this topology's prefix that still exist (empty after
    /// the topology was dropped).
    pub fn leftovers(prefix: &str) -> Result<Vec<String>> {
        netns::list_with_prefix(&format!("{prefix}-"))
    }

    /// Sets transmit checksum offload on every interface of the router and
    /// the nodes. With it off, the kernel completes partial checksums in
    /// software before a packet leaves, so the next hop verifies them.
    pub fn set_infra_tx_checksum(&self, on: bool) -> Result<()> {
        let router = self.router()?;
        for ns in std::iter::once(&router.netns).chain(self.nodes.iter().map(|n| &n.netns)) {
            for dev in ns.interfaces()? {
                csum::set_tx_checksum(ns, &dev, on)?;
            }
        }
        Ok(())
    }

    /// Sets transmit checksum offload on every pod's interface. With it off,
    /// pods send full checksums (what a physical NIC or another node hands
    /// to XDP); with it on (the default) they send partial ones.
    pub fn set_pod_tx_checksum(&self, on: bool) -> Result<()> {
        for pod in &self.pods {
            csum::set_tx_checksum(&pod.netns, &pod.iface, on)?;
        }
        Ok(())
    }

    /// Checksum error counters of every namespace, by namespace name.
    pub fn csum_counters(&self) -> Result<BTreeMap<String, CsumCounters>> {
        self.all_netns()
            .into_iter()
            .map(|ns| Ok((ns.name().to_owned(), CsumCounters::read(ns)?)))
            .collect()
    }

    /// Fails, naming each namespace and counter, unless every checksum error
    /// counter in every namespace is zero.
    pub fn check_no_csum_errors(&self) -> Result<()> {
        let bad: Vec<String> = self
            .csum_counters()?
            .into_iter()
            .filter(|(_, c)| !c.is_zero())
            .map(|(ns, c)| format!("{ns}: {c}"))
            .collect();
        ensure!(bad.is_empty(), "checksum errors: {}", bad.join("; "));
        Ok(())
    }

    /// Test assertion: panics unless [`check_no_csum_errors`](Self::check_no_csum_errors)
    /// passes.
    #[track_caller]
    pub fn assert_no_csum_errors(&self) {
        if let Err(e) = self.check_no_csum_errors() {
            panic!("{e:#}");
        }
    }

    fn ns_name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn build_router(&mut self) -> Result<()> {
        let netns = Netns::create(&self.ns_name("router"))?;
        let router = self.router.insert(Router {
            netns,
            ip: self.underlay.addr,
        });
        let ns = &router.netns;
        host_sysctls(ns)?;
        // The router forwards between nodes on the same bridge; a redirect
        // would teach nodes to bypass it.
        ns.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        ns.sysctl("net.ipv4.conf.default.send_redirects", "0")?;
        ns.ip(&["link", "add", ROUTER_BRIDGE, "type", "bridge"])?;
        ns.ip(&[
            "addr",
            "add",
            &self.underlay.to_string(),
            "dev",
            ROUTER_BRIDGE,
        ])?;
        ns.ip(&["link", "set", ROUTER_BRIDGE, "up"])?;
        Ok(())
    }

    fn build_node(&mut self, cluster: &str, spec: &NodeSpec) -> Result<()> {
        let underlay_ip: Ipv4Addr = spec
            .underlay_ip
            .parse()
            .with_context(|| format!("underlay address of node {}", spec.name))?;
        ensure!(
            self.underlay.contains(underlay_ip),
            "node {} ({underlay_ip}) is outside the underlay {}",
            spec.name,
            self.underlay
        );
        let pod_cidr: Ipv4Net = spec
            .pod_cidr
            .parse()
            .with_context(|| format!("pod CIDR of node {}", spec.name))?;
        let router_port = checked_ifname(format!("p-{}", spec.name))?;
        let netns = Netns::create(&self.ns_name(&spec.name))?;
        self.nodes.push(Node {
            name: spec.name.clone(),
            cluster: cluster.to_owned(),
            netns,
            underlay_ip,
            pod_cidr,
            uplink: ETH0.to_owned(),
            router_port: router_port.clone(),
        });
        let router = self.router()?;
        let node = self.nodes.last().context("node just added")?;
        let ns = &node.netns;
        host_sysctls(ns)?;
        ns.sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
        ns.sysctl("net.ipv4.conf.default.accept_redirects", "0")?;

        let r = &router.netns;
        r.add_veth(&router_port, ns, ETH0)?;
        r.ip(&["link", "set", &router_port, "master", ROUTER_BRIDGE, "up"])?;
        let addr = format!("{underlay_ip}/{}", self.underlay.len);
        ns.ip(&["addr", "add", &addr, "dev", ETH0])?;
        ns.ip(&["link", "set", ETH0, "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &router.ip.to_string(),
            "dev",
            ETH0,
        ])?;
        r.ip(&[
            "route",
            "add",
            &pod_cidr.to_string(),
            "via",
            &underlay_ip.to_string(),
        ])?;
        Ok(())
    }

    fn build_pod(
        &mut self,
        cluster: &str,
        node_name: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> Result<()> {
        let node = self.node(node_name)?;
        ensure!(
            node.pod_cidr.contains(ip),
            "pod {name} ({ip}) is outside node {node_name}'s {}",
            node.pod_cidr
        );
        ensure!(
            self.pod_by_ip(ip).is_none(),
            "pod {name}: address {ip} is taken"
        );
        let node_iface = checked_ifname(format!("v-{name}"))?;
        ensure!(
            !self.pod_ifaces(node_name).contains(&node_iface),
            "pod {name}: interface {node_iface} already exists on {node_name}"
        );
        let netns = Netns::create(&self.ns_name(name))?;
        self.pods.push(Pod {
            name: name.to_owned(),
            cluster: cluster.to_owned(),
            node: node_name.to_owned(),
            netns,
            ip,
            iface: ETH0.to_owned(),
            node_iface: node_iface.clone(),
        });
        host_sysctls(&self.pods.last().context("pod just added")?.netns)?;
        self.link_pod(name)
    }

    /// Creates pod `name`'s veth pair and gives both ends their addresses
    /// and routes.
    fn link_pod(&self, name: &str) -> Result<()> {
        let pod = self.pod(name)?;
        let node = self.node(&pod.node)?;
        let (n, p) = (&node.netns, &pod.netns);
        let (ip, node_iface) = (pod.ip, &pod.node_iface);
        n.add_veth(node_iface, p, ETH0)?;
        let gateway = format!("{POD_GATEWAY}/32");
        let pod_addr = format!("{ip}/32");
        n.ip(&["addr", "add", &gateway, "dev", node_iface])?;
        n.ip(&["link", "set", node_iface, "up"])?;
        n.ip(&["route", "add", &pod_addr, "dev", node_iface])?;
        p.ip(&["addr", "add", &pod_addr, "dev", ETH0])?;
        p.ip(&["link", "set", ETH0, "up"])?;
        p.ip(&[
            "route",
            "add",
            &POD_GATEWAY.to_string(),
            "dev",
            ETH0,
            "scope",
            "link",
        ])?;
        p.ip(&[
            "route",
            "add",
            "default",
            "via",
            &POD_GATEWAY.to_string(),
            "dev",
            ETH0,
        ])?;
        Ok(())
    }

    /// Adds a pod to a built topology (a pod started after the agent): its
    /// namespace, veth pair, addresses and routes.
    pub fn add_pod(&mut self, cluster: &str, node: &str, name: &str, ip: Ipv4Addr) -> Result<()> {
        self.build_pod(cluster, node, name, ip)
    }

    /// Deletes pod `name`'s veth pair (its node-side interface vanishes) and
    /// creates it again under the same names, as a CNI does when a pod's
    /// sandbox is recreated.
    pub fn recreate_pod_link(&self, name: &str) -> Result<()> {
        let pod = self.pod(name)?;
        let node = self.node(&pod.node)?;
        node.netns.ip(&["link", "del", &pod.node_iface])?;
        self.link_pod(name)
    }
}

/// Whether an XDP program is attached to `dev` in `ns` (any mode), from
/// `ip -j -d link show dev DEV`.
pub fn xdp_attached(ns: &Netns, dev: &str) -> Result<bool> {
    let out = ns.ip(&["-j", "-d", "link", "show", "dev", dev])?;
    parse_xdp_attached(&out).with_context(|| format!("ip link output for {dev}: {out}"))
}

/// The clsact `bpf` filters on `dev` in `direction` (`ingress`/`egress`), as
/// `tc filter show` lists them (an agent run with `--tc-attach netlink`).
pub fn tc_filters(ns: &Netns, dev: &str, direction: &str) -> Result<String> {
    ns.exec("tc", &["filter", "show", "dev", dev, direction])
}

/// Whether mcs's tc programs are attached to `dev` as clsact filters in
/// both directions.
pub fn clsact_attached(ns: &Netns, dev: &str) -> Result<bool> {
    Ok(tc_filters(ns, dev, "ingress")?.contains("mcs_tc_ingress")
        && tc_filters(ns, dev, "egress")?.contains("mcs_tc_egress"))
}

fn parse_xdp_attached(json: &str) -> Result<bool> {
    let links: serde_json::Value = serde_json::from_str(json)?;
    let link = links.get(0).context("no link")?;
    // "xdp": {"mode": 1 (driver) | 2 (generic) | 3 (offload) | 4 (multi), ...}
    Ok(link
        .get("xdp")
        .and_then(|x| x.get("mode"))
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|mode| mode != 0))
}

/// Settings every namespace gets before its interfaces exist (the `default`
/// values are inherited by interfaces created later): forwarding on, strict
/// reverse-path filtering off (pods are reached through per-pod /32 routes
/// and replies of translated flows arrive asymmetrically), and no IPv6, whose
/// router solicitations and DAD would only add noise to captures and stats.
fn host_sysctls(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    Ok(())
}

fn checked_ifname(name: String) -> Result<String> {
    ensure!(
        name.len() <= IFNAME_MAX,
        "interface name {name:?} is longer than {IFNAME_MAX} characters: use a shorter node or pod name"
    );
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4net_parses_and_contains() {
        let net: Ipv4Net = "10.101.1.0/24".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 101, 1, 77)));
        assert!(!net.contains(Ipv4Addr::new(10, 101, 2, 1)));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        assert_eq!(net.to_string(), "10.101.1.0/24");
    }

    #[test]
    fn xdp_state_from_ip_json() {
        let none = r#"[{"ifindex":4,"ifname":"eth0","mtu":1500,"operstate":"UP"}]"#;
        assert!(!parse_xdp_attached(none).unwrap());
        let native = r#"[{"ifindex":4,"ifname":"eth0","xdp":{"mode":1,"prog":{"id":42}}}]"#;
        assert!(parse_xdp_attached(native).unwrap());
        let generic = r#"[{"ifindex":4,"ifname":"eth0","xdp":{"mode":2,"prog":{"id":42}}}]"#;
        assert!(parse_xdp_attached(generic).unwrap());
        assert!(parse_xdp_attached("[]").is_err());
    }

    #[test]
    fn long_interface_names_are_refused() {
        assert!(checked_ifname("v-a-client".into()).is_ok());
        assert!(checked_ifname("v-a-very-long-pod".into()).is_err());
    }

    #[test]
    fn misuse_is_reported_at_build() {
        let err = Topology::builder()
            .pod("p", "10.0.0.1")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("before any node"), "{err:#}");
    }
}
