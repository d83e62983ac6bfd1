//! The service set of a benchmark scale and the same services rendered three
//! ways: an mcs manifest (ServiceImports + EndpointSlices), an
//! `iptables-restore` file shaped like kube-proxy's iptables mode, and `nft`
//! scripts shaped like kube-proxy's nftables mode.
//!
//! Service `count - 1` is the *target*: the one traffic is measured
//! against. Its ClusterSetIP is [`TARGET_VIP`] at every scale (a VIP that
//! changed with the scale would make new SYNs meet TIME_WAIT sockets whose
//! timestamps came from another address pair), its endpoints are the real
//! backends, and it comes last in `KUBE-SERVICES` (the iptables worst case).
//! The others point at addresses from a pool that never receives traffic.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use mcs_agent::dataplane::MapSizes;

/// The measured service's ClusterSetIP.
pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Its IPv6 ClusterSetIP (the end-to-end part's IPv6 modes).
pub const TARGET_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// Its TCP (HTTP) service port and the backends' target port.
pub const HTTP_PORT: u16 = 80;
pub const HTTP_TARGET_PORT: u16 = 8080;
/// Its UDP service port and the backends' target port.
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET_PORT: u16 = 5353;
/// Namespace of the target; the others are `bench-<i / SERVICES_PER_NAMESPACE>`.
pub const NAMESPACE: &str = "bench";
/// Services per namespace (a cluster's services are spread over namespaces;
/// the agent's desired-state computation scans a namespace's slices per
/// import, so one namespace holding 10k services would be its worst case).
pub const SERVICES_PER_NAMESPACE: usize = 100;
/// Source cluster label of every slice.
pub const CLUSTER: &str = "bench";
/// Pod addresses of the non-target services' endpoints: `POOL_BASE + k`,
/// `k < POOL_SIZE`. Each pod backs several services (as pods do), which
/// keeps the distinct endpoints of 10k × 10 under the agent's default
/// per-backend counter capacity (`MAX_BACKENDS` = 65 536). Service `i`
/// takes every `1 + i / POOL_SIZE`-th pod from pod `i % POOL_SIZE` on, so
/// no two services have the same endpoints (up to 100k services × 10): a
/// set of identical endpoint sets would let an implementation that shares
/// equal Maglev tables look better than real clusters make it.
pub const POOL_BASE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
pub const POOL_SIZE: u32 = 50_000;
/// Cluster CIDR kube-proxy would be given (no masquerade from inside it).
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";

/// A service of the generated set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    /// TCP service port → target port.
    pub tcp: (u16, u16),
    /// UDP service port → target port (the target, and every service of a
    /// three-port set).
    pub udp: Option<(u16, u16)>,
    /// A second TCP port → target port (three-port sets).
    pub https: Option<(u16, u16)>,
    pub endpoints: Vec<Ipv4Addr>,
}

/// The second TCP port of three-port services, and its target port.
pub const HTTPS_PORT: (u16, u16) = (443, 8443);

/// `count` services × `endpoints` endpoints; the last is the target with
/// `target_backends` as its endpoints.
#[derive(Clone, Debug)]
pub struct ServiceSet {
    pub services: Vec<Service>,
}

fn offset(base: Ipv4Addr, by: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(by))
}

impl ServiceSet {
    pub fn new(count: usize, endpoints: usize, target_backends: &[Ipv4Addr]) -> Self {
        Self::with_ports(count, endpoints, target_backends, false)
    }

    /// With `three_ports`, every service but the target has an HTTP and an
    /// HTTPS TCP port and a DNS UDP port (each its own frontend with its
    /// own target port).
    pub fn with_ports(
        count: usize,
        endpoints: usize,
        target_backends: &[Ipv4Addr],
        three_ports: bool,
    ) -> Self {
        let count = count.max(1);
        let mut services = Vec::with_capacity(count);
        for i in 0..count - 1 {
            let index = u64::try_from(i).unwrap_or(u64::MAX);
            let pool = u64::from(POOL_SIZE);
            let (start, stride) = (index % pool, 1 + index / pool);
            let endpoints = (0..endpoints as u64)
                .map(|j| {
                    let k = (start + j * stride) % pool;
                    offset(POOL_BASE, u32::try_from(k).unwrap_or(0))
                })
                .collect();
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            services.push(Service {
                namespace: format!("{NAMESPACE}-{}", i / SERVICES_PER_NAMESPACE),
                name: format!("svc-{i}"),
                // 10.97.0.1, 10.97.0.2, ...: never the target's 10.96.0.10.
                vip: offset(Ipv4Addr::new(10, 97, 0, 1), index),
                tcp: (HTTP_PORT, HTTP_TARGET_PORT),
                udp: three_ports.then_some((UDP_PORT, UDP_TARGET_PORT)),
                https: three_ports.then_some(HTTPS_PORT),
                endpoints,
            });
        }
        services.push(Service {
            namespace: NAMESPACE.to_owned(),
            name: "target".to_owned(),
            vip: TARGET_VIP,
            tcp: (HTTP_PORT, HTTP_TARGET_PORT),
            udp: Some((UDP_PORT, UDP_TARGET_PORT)),
            https: None,
            endpoints: target_backends.to_vec(),
        });
        Self { services }
    }

    /// Map sizes that hold this set (what an operator would give the agent
    /// for it, with a little room), with `conntrack` entries.
    pub fn map_sizes(&self, conntrack: u32) -> MapSizes {
        let room = |n: usize| u32::try_from(n + n / 20 + 1024).unwrap_or(u32::MAX);
        let slots: usize = self
            .services
            .iter()
            .map(|s| ports(s).len() * s.endpoints.len())
            .sum();
        let table_bytes: u64 = self
            .services
            .iter()
            .filter(|s| !s.endpoints.is_empty())
            .map(|s| {
                let size = mcs_agent::maglev::rule_size(s.endpoints.len());
                let wide = mcs_common::maglev_wide(u32::try_from(s.endpoints.len()).unwrap_or(0));
                ports(s).len() as u64 * u64::from(mcs_common::maglev_chunks(size, wide)) * 8
            })
            .sum();
        let mut backends = std::collections::BTreeSet::new();
        for service in &self.services {
            for port in ports(service) {
                for endpoint in &service.endpoints {
                    backends.insert((*endpoint, port.target));
                }
            }
        }
        let defaults = MapSizes::default();
        MapSizes {
            frontends: room(self.mcs_frontends()).max(defaults.frontends),
            backend_slots: room(slots).max(defaults.backend_slots),
            backends: room(backends.len()).max(defaults.backends),
            maglev_chunks: MapSizes::maglev_chunks_for(table_bytes + table_bytes / 20 + (1 << 20))
                .max(defaults.maglev_chunks),
            conntrack,
            ..defaults
        }
    }

    /// The `mcs-agent run` flags of [`ServiceSet::map_sizes`].
    pub fn map_size_flags(&self, conntrack: u32) -> Vec<String> {
        let sizes = self.map_sizes(conntrack);
        vec![
            format!("--frontends-max={}", sizes.frontends),
            format!("--backend-slots-max={}", sizes.backend_slots),
            format!("--backends-max={}", sizes.backends),
            format!("--maglev-bytes-max={}", u64::from(sizes.maglev_chunks) * 8),
            format!("--conntrack-max={}", sizes.conntrack),
        ]
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Service ports (each TCP/UDP port is one kube-proxy service chain).
    pub fn service_ports(&self) -> usize {
        self.services.iter().map(|s| ports(s).len()).sum()
    }

    /// Frontends the mcs agent programs: every service port plus a TCP and
    /// a UDP marker per ClusterSetIP.
    pub fn mcs_frontends(&self) -> usize {
        self.service_ports() + 2 * self.services.len()
    }
}

/// The manifest the mcs agent reads (`--source file:`): a ServiceImport and
/// one EndpointSlice per service.
pub fn manifest(set: &ServiceSet) -> String {
    let mut yaml = String::with_capacity(set.len() * 700);
    for service in &set.services {
        manifest_service(&mut yaml, service);
    }
    yaml
}

/// [`manifest`] with the target service dual-stack: IPv6 ClusterSetIP
/// [`TARGET_VIP6`] over `endpoints6`.
pub fn manifest_dual_stack_target(set: &ServiceSet, endpoints6: &[Ipv6Addr]) -> String {
    let mut yaml = String::with_capacity(set.len() * 700);
    for service in &set.services {
        let v6 = (service.vip == TARGET_VIP).then_some((TARGET_VIP6, endpoints6));
        manifest_service_v6(&mut yaml, service, v6);
    }
    yaml
}

/// The IPv6 frontends of [`manifest_dual_stack_target`]'s: one per port of
/// the target, and the ClusterSetIP's two markers (as in
/// [`ServiceSet::mcs_frontends`]).
pub fn mcs_frontends_v6(set: &ServiceSet) -> usize {
    set.services
        .iter()
        .filter(|s| s.vip == TARGET_VIP)
        .map(|s| ports(s).len() + 2)
        .sum()
}

/// The manifest documents of one service.
pub fn manifest_service(yaml: &mut String, service: &Service) {
    manifest_service_v6(yaml, service, None);
}

/// The manifest documents of one service, dual-stack with `v6` (an IPv6
/// ClusterSetIP and the IPv6 addresses of the same endpoints, in an
/// `addressType: IPv6` slice) when given.
pub fn manifest_service_v6(
    yaml: &mut String,
    service: &Service,
    v6: Option<(Ipv6Addr, &[Ipv6Addr])>,
) {
    let name = &service.name;
    let namespace = &service.namespace;
    let mut import_ports = String::new();
    let mut slice_ports = String::new();
    for (i, port) in ports(service).iter().enumerate() {
        let separator = if i == 0 { "" } else { ", " };
        let (name, proto) = (port.port_name, port.proto.to_uppercase());
        let _ = write!(
            import_ports,
            "{separator}{{name: {name}, protocol: {proto}, port: {}}}",
            port.port
        );
        let _ = write!(
            slice_ports,
            "{separator}{{name: {name}, protocol: {proto}, port: {}}}",
            port.target
        );
    }
    let ips = match v6 {
        Some((vip6, _)) => format!("\"{}\", \"{vip6}\"", service.vip),
        None => format!("\"{}\"", service.vip),
    };
    let _ = write!(
        yaml,
        "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{type: ClusterSetIP, ips: [{ips}], ports: [{import_ports}]}}\n"
    );
    let v4: Vec<String> = service.endpoints.iter().map(ToString::to_string).collect();
    let slice = |yaml: &mut String, suffix: &str, family: &str, addresses: &[String]| {
        let _ = write!(
            yaml,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-{CLUSTER}{suffix}, namespace: {namespace}, labels: {{multicluster.kubernetes.io/service-name: {name}, multicluster.kubernetes.io/source-cluster: {CLUSTER}}}}}\n\
             addressType: {family}\nports: [{slice_ports}]\nendpoints: ["
        );
        for (i, address) in addresses.iter().enumerate() {
            if i > 0 {
                yaml.push_str(", ");
            }
            let _ = write!(yaml, "{{addresses: [\"{address}\"]}}");
        }
        yaml.push_str("]\n");
    };
    slice(yaml, "", "IPv4", &v4);
    if let Some((_, endpoints)) = v6 {
        let v6: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        slice(yaml, "-v6", "IPv6", &v6);
    }
}

/// A kube-proxy-like chain name suffix: 16 characters of base32 of a hash
/// of `text` (kube-proxy hashes the service port name with SHA-256; any
/// stable hash gives the same shape).
pub fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // FNV-1a 64, twice with different seeds for 80 bits.
    let fnv = |seed: u64| {
        let mut h = seed;
        for byte in text.bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    (0..16)
        .map(|i| {
            let word = if i < 12 {
                a >> (i * 5)
            } else {
                b >> ((i - 12) * 5)
            };
            char::from(ALPHABET[(word & 31) as usize])
        })
        .collect()
}

/// kube-proxy's `%0.10f` probability of endpoint `i` of `n`: 1/(n-i).
pub fn probability(i: usize, n: usize) -> String {
    #[expect(clippy::cast_precision_loss, reason = "endpoint counts are small")]
    let p = 1.0 / (n - i) as f64;
    format!("{p:.10}")
}

struct Port {
    proto: &'static str,
    port_name: &'static str,
    port: u16,
    target: u16,
}

fn ports(service: &Service) -> Vec<Port> {
    let mut ports = vec![Port {
        proto: "tcp",
        port_name: "http",
        port: service.tcp.0,
        target: service.tcp.1,
    }];
    if let Some((port, target)) = service.https {
        ports.push(Port {
            proto: "tcp",
            port_name: "https",
            port,
            target,
        });
    }
    if let Some((port, target)) = service.udp {
        ports.push(Port {
            proto: "udp",
            port_name: "dns",
            port,
            target,
        });
    }
    ports
}

/// The whole ruleset for `iptables-restore` (nat and filter tables), shaped
/// like kube-proxy's iptables mode: `KUBE-SERVICES` → `KUBE-SVC-*` with
/// `-m statistic --mode random --probability 1/(n-i)` → `KUBE-SEP-*` DNAT,
/// masquerade marking as kube-proxy does it, the target service last.
pub fn iptables_restore(set: &ServiceSet) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut svc_rules = String::new();
    for service in &set.services {
        for port in ports(service) {
            let port_name = format!("{}/{}:{}", service.namespace, service.name, port.port_name);
            let svc_chain = format!(
                "KUBE-SVC-{}",
                chain_hash(&format!("{port_name}{}", port.proto))
            );
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                svc_rules,
                "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {svc_chain}",
                service.vip,
                port.port,
                p = port.proto
            );
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{port_name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
                service.vip,
                port.port,
                p = port.proto
            );
            let n = service.endpoints.len();
            let mut sep_rules = String::new();
            for (i, endpoint) in service.endpoints.iter().enumerate() {
                let sep_chain = format!(
                    "KUBE-SEP-{}",
                    chain_hash(&format!(
                        "{port_name}{}{endpoint}:{}",
                        port.proto, port.target
                    ))
                );
                let _ = writeln!(chains, ":{sep_chain} - [0:0]");
                let statistic = if i + 1 < n {
                    format!(
                        "-m statistic --mode random --probability {} ",
                        probability(i, n)
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{port_name} -> {endpoint}:{}\" {statistic}-j {sep_chain}",
                    port.target
                );
                let _ = writeln!(
                    sep_rules,
                    "-A {sep_chain} -m comment --comment {port_name} -s {endpoint}/32 -j KUBE-MARK-MASQ\n\
                     -A {sep_chain} -m comment --comment {port_name} -m {p} -p {p} -j DNAT --to-destination {endpoint}:{}",
                    port.target,
                    p = port.proto
                );
            }
            rules.push_str(&sep_rules);
        }
    }
    let mut out = String::with_capacity(chains.len() + rules.len() + svc_rules.len() + 2048);
    out.push_str(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n\
         *nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    out.push_str(&chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    out.push_str(&svc_rules);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// Name of the nftables table.
pub const NFT_TABLE: &str = "kube-proxy";

/// The fixed part of the nftables ruleset (table, verdict map, hooks),
/// shaped like kube-proxy's nftables mode.
pub fn nft_base() -> String {
    format!(
        "add table ip {t}\n\
         add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add chain ip {t} mark-for-masquerade\n\
         add rule ip {t} mark-for-masquerade mark set mark or 0x4000\n\
         add chain ip {t} masquerading {{ type nat hook postrouting priority srcnat ; }}\n\
         add rule ip {t} masquerading mark and 0x4000 == 0 return\n\
         add rule ip {t} masquerading mark set mark xor 0x4000\n\
         add rule ip {t} masquerading masquerade fully-random\n\
         add chain ip {t} services\n\
         add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain ip {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n\
         add rule ip {t} nat-prerouting jump services\n\
         add chain ip {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule ip {t} nat-output jump services\n\
         add chain ip {t} filter-forward {{ type filter hook forward priority -110 ; }}\n\
         add rule ip {t} filter-forward ct state invalid drop\n",
        t = NFT_TABLE
    )
}

/// The chains, rules and verdict-map elements of `services` (kube-proxy's
/// per-service chain with `numgen random mod N vmap` and one chain per
/// endpoint with its `dnat`), to add to a table made by [`nft_base`].
pub fn nft_services(services: &[Service]) -> String {
    let t = NFT_TABLE;
    let mut out = String::with_capacity(services.len() * 2400);
    for service in services {
        for port in ports(service) {
            let port_name = format!(
                "{}/{}/{}/{}",
                service.namespace, service.name, port.proto, port.port_name
            );
            let svc_chain = format!("service-{}-{port_name}", &chain_hash(&port_name)[..8]);
            let _ = writeln!(out, "add chain ip {t} {svc_chain}");
            let _ = writeln!(
                out,
                "add rule ip {t} {svc_chain} ip daddr {} {} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
                service.vip, port.proto, port.port
            );
            let mut vmap = String::new();
            for (i, endpoint) in service.endpoints.iter().enumerate() {
                let ep_chain = format!(
                    "endpoint-{}-{port_name}__{endpoint}/{}",
                    &chain_hash(&format!("{port_name}{endpoint}"))[..8],
                    port.target
                );
                let _ = writeln!(out, "add chain ip {t} {ep_chain}");
                let _ = writeln!(
                    out,
                    "add rule ip {t} {ep_chain} ip saddr {endpoint} jump mark-for-masquerade"
                );
                let _ = writeln!(
                    out,
                    "add rule ip {t} {ep_chain} meta l4proto {} dnat to {endpoint}:{}",
                    port.proto, port.target
                );
                if i > 0 {
                    vmap.push_str(", ");
                }
                let _ = write!(vmap, "{i} : goto {ep_chain}");
            }
            if !service.endpoints.is_empty() {
                let _ = writeln!(
                    out,
                    "add rule ip {t} {svc_chain} numgen random mod {} vmap {{ {vmap} }}",
                    service.endpoints.len()
                );
            }
            let _ = writeln!(
                out,
                "add element ip {t} service-ips {{ {} . {} . {} : goto {svc_chain} }}",
                service.vip, port.proto, port.port
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Ipv4Addr> {
        (10..20).map(|i| Ipv4Addr::new(10, 101, 1, i)).collect()
    }

    #[test]
    fn target_is_last_and_fixed() {
        for count in [1, 2, 1000] {
            let set = ServiceSet::new(count, 10, &backends());
            assert_eq!(set.len(), count);
            let target = set.services.last().unwrap();
            assert_eq!(target.vip, TARGET_VIP);
            assert_eq!(target.endpoints, backends());
            assert!(
                set.services[..count - 1]
                    .iter()
                    .all(|s| s.vip != TARGET_VIP)
            );
        }
        assert_eq!(ServiceSet::new(0, 10, &backends()).len(), 1);
    }

    #[test]
    fn pool_endpoints_are_distinct_per_service_and_bounded() {
        let set = ServiceSet::new(100_000, 10, &backends());
        let mut all = std::collections::BTreeSet::new();
        let mut sets = std::collections::BTreeSet::new();
        for service in &set.services[..set.len() - 1] {
            let distinct: std::collections::BTreeSet<_> = service.endpoints.iter().collect();
            assert_eq!(distinct.len(), 10);
            all.extend(service.endpoints.iter().copied());
            assert!(
                sets.insert(distinct),
                "{} repeats an endpoint set",
                service.name
            );
        }
        assert!(all.len() <= POOL_SIZE as usize);
        assert_eq!(set.service_ports(), 100_001);
        assert_eq!(set.mcs_frontends(), 100_001 + 200_000);
        let sizes = set.map_sizes(1 << 20);
        assert!(sizes.frontends as usize >= set.mcs_frontends());
        assert!(sizes.backend_slots as usize >= 100_001 * 10);
        // 1009 one-byte entries per service port: 127 chunks each.
        assert!(u64::from(sizes.maglev_chunks) >= 100_001 * 127);
    }

    #[test]
    fn three_port_sets_give_every_service_three_frontends() {
        let set = ServiceSet::with_ports(4, 3, &backends()[..3], true);
        assert_eq!(set.service_ports(), 3 * 3 + 2);
        let (snapshot, rejections) =
            mcs_agent::model::manifest::snapshot_from_yaml(&manifest(&set)).expect("valid YAML");
        assert!(rejections.is_empty(), "{rejections:?}");
        let (state, rejections) = mcs_agent::desired::compute(&snapshot);
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(state.frontends.len(), set.mcs_frontends());
        let sizes = set.map_sizes(4096);
        assert!(sizes.backend_slots as usize >= 3 * 3 * 3 + 2 * 3);
    }

    #[test]
    fn manifest_parses_into_the_expected_frontends() {
        let set = ServiceSet::new(3, 4, &backends());
        let yaml = manifest(&set);
        let (snapshot, rejections) =
            mcs_agent::model::manifest::snapshot_from_yaml(&yaml).expect("valid YAML");
        assert!(rejections.is_empty(), "{rejections:?}");
        let (state, rejections) = mcs_agent::desired::compute(&snapshot);
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(state.frontends.len(), set.mcs_frontends());
        let target = mcs_agent::desired::Frontend {
            addr: TARGET_VIP.into(),
            port: HTTP_PORT,
            protocol: mcs_agent::model::Protocol::Tcp,
        };
        assert_eq!(state.frontends[&target].backends.len(), 10);
    }

    #[test]
    fn dual_stack_target_adds_only_its_ipv6_frontends() {
        let set = ServiceSet::new(3, 4, &backends());
        let endpoints6: Vec<Ipv6Addr> = (1..=4)
            .map(|i| Ipv6Addr::new(0xfd00, 0x101, 1, 0, 0, 0, 0, i))
            .collect();
        let yaml = manifest_dual_stack_target(&set, &endpoints6);
        let (snapshot, rejections) =
            mcs_agent::model::manifest::snapshot_from_yaml(&yaml).expect("valid YAML");
        assert!(rejections.is_empty(), "{rejections:?}");
        let (state, rejections) = mcs_agent::desired::compute(&snapshot);
        assert!(rejections.is_empty(), "{rejections:?}");
        let v6 = state.frontends.keys().filter(|f| f.addr.is_ipv6()).count();
        assert_eq!(v6, mcs_frontends_v6(&set));
        assert_eq!(state.frontends.len() - v6, set.mcs_frontends());
        let target = mcs_agent::desired::Frontend {
            addr: TARGET_VIP6.into(),
            port: HTTP_PORT,
            protocol: mcs_agent::model::Protocol::Tcp,
        };
        assert_eq!(state.frontends[&target].backends.len(), 4);
    }

    #[test]
    fn iptables_rules_are_kube_proxy_shaped_with_the_target_last() {
        let set = ServiceSet::new(3, 3, &backends()[..3]);
        let rules = iptables_restore(&set);
        let services: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("cluster IP"))
            .collect();
        assert_eq!(services.len(), 4, "2 + target's TCP and UDP");
        assert!(services[2].contains("-d 10.96.0.10/32 --dport 80"));
        assert!(services[3].contains("-p udp -d 10.96.0.10/32 --dport 53"));
        // The nodeports jump stays after every service.
        let last_kube_services = rules
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last_kube_services.contains("KUBE-NODEPORTS"));
        assert!(rules.contains("--probability 0.3333333333"));
        assert!(rules.contains("--probability 0.5000000000"));
        assert!(rules.contains("-j DNAT --to-destination 10.101.1.12:8080"));
        assert!(rules.contains("-j DNAT --to-destination 10.101.1.12:5353"));
        // Every chain used is declared once.
        let declared: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .filter(|chain| chain.starts_with("KUBE-"))
            .collect();
        let unique: std::collections::BTreeSet<_> = declared.iter().collect();
        assert_eq!(unique.len(), declared.len());
        for jump in rules.lines().filter_map(|l| l.split(" -j ").nth(1)) {
            let target = jump.split(' ').next().unwrap();
            if target.starts_with("KUBE-") {
                assert!(unique.contains(&target), "{target} not declared");
            }
        }
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }

    #[test]
    fn nft_rules_use_a_verdict_map_and_numgen() {
        let set = ServiceSet::new(2, 3, &backends()[..3]);
        let script = format!("{}{}", nft_base(), nft_services(&set.services));
        assert!(script.contains("vmap @service-ips"));
        assert!(script.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(script.contains(
            "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-"
        ));
        assert!(script.contains(
            "add element ip kube-proxy service-ips { 10.96.0.10 . udp . 53 : goto service-"
        ));
        assert!(script.contains("meta l4proto tcp dnat to 10.101.1.10:8080"));
        assert!(script.contains("meta l4proto udp dnat to 10.101.1.10:5353"));
        // Chains are added before rules refer to them.
        for (n, line) in script.lines().enumerate() {
            if let Some(rest) = line.split("goto ").nth(1) {
                let chain = rest.split([' ', ',']).next().unwrap();
                let added = format!("add chain ip kube-proxy {chain}");
                let at = script
                    .lines()
                    .position(|l| l == added)
                    .expect("chain added");
                assert!(at < n, "{chain} used before it is added");
            }
        }
    }

    #[test]
    fn chain_hashes_are_stable_and_distinct() {
        assert_eq!(chain_hash("a").len(), 16);
        assert_eq!(chain_hash("bench/x:http"), chain_hash("bench/x:http"));
        assert_ne!(chain_hash("bench/x:http"), chain_hash("bench/y:http"));
        assert_eq!(probability(0, 10), "0.1000000000");
        assert_eq!(probability(8, 10), "0.5000000000");
    }
}
