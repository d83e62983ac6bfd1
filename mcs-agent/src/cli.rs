//! Command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    dataplane::{AttachMode, TcAttach},
    desired::{ClusterCidrs, ClustersetIpCidrs, Locality},
    dns,
    interfaces::{DEFAULT_POD_INTERFACES, PodInterfaces},
    sources::SourceSpec,
    telemetry::LogFormat,
};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/mcs";

/// mcs node agent: balances traffic sent to Kubernetes multi-cluster
/// ClusterSetIPs across pod endpoints in every cluster of the set, in an
/// eBPF dataplane (socket LB, tc on pod interfaces, XDP on NICs) kept in
/// sync with ServiceImports and EndpointSlices.
#[derive(Debug, Parser)]
#[command(name = "mcs-agent", version, propagate_version = true)]
pub struct Cli {
    /// Log line format (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Default log filter (`RUST_LOG` overrides it), e.g. `info` or
    /// `mcs_agent=debug`.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the dataplane (adopting the pinned one of an earlier agent),
    /// attach it to interfaces and keep it in sync with a source of
    /// ServiceImports and EndpointSlices until SIGTERM/SIGINT. On exit the
    /// pinned dataplane keeps serving (restart/upgrade) unless
    /// --detach-on-exit is given.
    Run(Box<RunArgs>),
    /// Print services, backends, conntrack and counters from the live
    /// (pinned) maps.
    Dump(DumpArgs),
    /// Remove everything mcs pinned (XDP links, maps) under --bpffs-dir:
    /// the dataplane stops. Run it after stopping the agent for good (it
    /// refuses while an agent runs on the directory).
    Cleanup(CleanupArgs),
    /// The export side (one per cluster of the set): read the
    /// ServiceExports, Services and EndpointSlices of every member cluster
    /// and write into this cluster the ServiceImports (with ClusterSetIPs),
    /// their EndpointSlices and the status of its own exports (KEP-1645
    /// merge and conflict rules). Replicas elect a leader with a Lease;
    /// only the leader writes. See docs/controller.md.
    Controller(Box<crate::controller::args::ControllerArgs>),
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// bpffs directory of the agent.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, value_name = "DIR")]
    pub bpffs_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Object source: `kube` watches ServiceImports (multicluster.x-k8s.io
    /// v1alpha1/v1beta1, net.gke.io/v1), EndpointSlices and Endpoints on the
    /// API server; `file:PATH` reads a YAML file or a directory of YAML
    /// files (multi-document, as `kubectl get -o yaml` prints them). Every
    /// change is applied as a diff.
    #[arg(long, value_name = "SOURCE")]
    pub source: SourceSpec,

    /// kubeconfig file for `--source kube` (its current context); without
    /// it the in-cluster service account is used.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Pod interfaces (the host side of each pod's veth) that get the tc
    /// programs: names matching any of these globs, comma-separated, and
    /// only virtual Ethernet devices (never a physical NIC, the loopback or
    /// the agent's own devices). The agent attaches to every matching
    /// interface at start and to each one that appears later (netlink link
    /// notifications); interfaces that vanish are forgotten. `''` turns
    /// discovery off.
    #[arg(long, value_name = "GLOB[,GLOB...]", env = "MCS_POD_INTERFACES",
          default_value = DEFAULT_POD_INTERFACES, help_heading = "Attachment")]
    pub pod_interfaces: PodInterfaces,

    /// How the tc programs are attached: `tcx` links (kernel 6.6+, pinned
    /// like the XDP links), `netlink` clsact filters, or `auto` (TCX where
    /// the kernel has it).
    #[arg(long, value_enum, default_value_t = TcAttach::Auto, help_heading = "Attachment")]
    pub tc_attach: TcAttach,

    /// Physical NIC to attach XDP to (repeatable): balances traffic to
    /// ClusterSetIPs that enters the node from outside (the node as a
    /// gateway) and reverse-translates replies of remote backends early.
    /// A virtual device may be given too (XDP then tells partial checksums
    /// apart by value); on veths tc is cheaper.
    #[arg(
        long = "interface",
        short = 'i',
        value_name = "IFACE",
        help_heading = "Attachment"
    )]
    pub interfaces: Vec<String>,

    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, help_heading = "Attachment")]
    pub xdp_mode: AttachMode,

    /// Balance local sockets at connect()/sendmsg() time (cgroup socket LB):
    /// with the default --cgroup, every socket of the node, pods included.
    #[arg(long, help_heading = "Attachment")]
    pub socket_lb: bool,

    /// cgroup v2 directory whose sockets socket LB serves. Default: the
    /// node's cgroup v2 root, found among the mounts (in a container, mount
    /// the host's /sys/fs/cgroup: the container's own cgroup mount covers
    /// only the container).
    #[arg(
        long,
        value_name = "PATH",
        requires = "socket_lb",
        help_heading = "Attachment"
    )]
    pub cgroup: Option<PathBuf>,

    /// Socket LB only for sockets of the agent's network namespace (the
    /// node's: host-network pods and daemons); pods behind a service-mesh
    /// sidecar keep the ClusterSetIP for their sidecar, and the per-packet
    /// path (tc) balances what the sidecar sends.
    #[arg(long, requires = "socket_lb", help_heading = "Attachment")]
    pub socket_lb_host_only: bool,

    /// bpffs directory for the agent's pinned maps and links (created
    /// 0700). Compatible pins left by an earlier agent are adopted.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, value_name = "DIR")]
    pub bpffs_dir: PathBuf,

    /// Frontends: every ClusterSetIP × port × protocol, plus two port-0
    /// markers per ClusterSetIP. Sizes the service map, the frontend names
    /// and the per-frontend counters (per CPU: 32 bytes × this × possible
    /// CPUs). A frontend beyond it is not programmed (an error names it and
    /// this flag; retried every second); the others are unaffected.
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_FRONTENDS,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 24)), help_heading = "Map sizes")]
    pub frontends_max: u32,

    /// Backend slots over all frontends (a frontend with 10 endpoints takes
    /// 10). About 100 bytes each, preallocated. A frontend whose slots do
    /// not fit is not updated (an error names it and this flag).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_BACKEND_SLOTS,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub backend_slots_max: u32,

    /// Distinct backends (pod address and port) across all imports, each
    /// with its own packet counters. A frontend that needs one more is not
    /// updated (an error names it, retried every second). The counters are
    /// per CPU: 32 bytes × this × possible CPUs.
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_BACKENDS,
          value_parser = clap::value_parser!(u32).range(16..=(1 << 24)), help_heading = "Map sizes")]
    pub backends_max: u32,

    /// Bytes of Maglev tables (one array, preallocated). A frontend with N
    /// backends takes the smallest prime ≥ 100 × N entries (at most 16 381),
    /// one byte each up to 256 backends, two above: about 100 bytes per
    /// backend slot, up to twice that after its backend count halved.
    /// [default: 160 × --backend-slots-max]
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 34)), help_heading = "Map sizes")]
    pub maglev_bytes_max: Option<u64>,

    /// Conntrack capacity in entries (an LRU map: two entries per
    /// translated flow, the least recently used evicted when full; about
    /// 100 bytes each).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_CONNTRACK,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub conntrack_max: u32,

    /// ClientIP session-affinity bindings (an LRU map: one per client and
    /// frontend with affinity, the least recently used evicted when full;
    /// the client then keeps its backend through the Maglev hash).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_AFFINITY,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub affinity_max: u32,

    /// Socket-LB reverse translations (an LRU map: one per socket and
    /// backend; an evicted socket sees the backend in getpeername).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_SOCK_REVNAT,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub sock_revnat_max: u32,

    /// IPv6 frontends (entries of the IPv6 service map; their ids and
    /// counters count against --frontends-max too). Small by default so a
    /// node without IPv6 services pays little; raise it with IPv6 or
    /// dual-stack imports. A frontend beyond it is not programmed (an error
    /// names it and this flag).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_FRONTENDS_V6,
          value_parser = clap::value_parser!(u32).range(16..=(1 << 24)), help_heading = "Map sizes")]
    pub frontends_v6_max: u32,

    /// Backend slots of the IPv6 frontends (about 112 bytes each,
    /// preallocated; their Maglev tables share --maglev-bytes-max).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_BACKEND_SLOTS_V6,
          value_parser = clap::value_parser!(u32).range(16..=(1 << 26)), help_heading = "Map sizes")]
    pub backend_slots_v6_max: u32,

    /// IPv6 conntrack entries (an LRU map like --conntrack-max; about 170
    /// bytes each).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_CONNTRACK_V6,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub conntrack_v6_max: u32,

    /// IPv6 ClientIP session-affinity bindings (an LRU map like
    /// --affinity-max).
    #[arg(long, value_name = "ENTRIES", default_value_t = mcs_common::MAX_AFFINITY_V6,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 26)), help_heading = "Map sizes")]
    pub affinity_v6_max: u32,

    /// Idle time after which a TCP flow that never completed its handshake
    /// (only SYNs seen) expires from conntrack, in seconds (Cilium's
    /// CT_SYN_TIMEOUT).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_syn: u32,

    /// Idle time after which an established TCP flow expires, in seconds
    /// (Cilium's CT_CONNECTION_LIFETIME_TCP, 6 h).
    #[arg(long, value_name = "SECONDS", default_value_t = 21600,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_established: u32,

    /// Idle time after which a closed TCP flow (RST either way, or FIN both
    /// ways) expires, in seconds (Cilium's CT_CLOSE_TIMEOUT).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_closed: u32,

    /// Idle time after which a UDP flow expires, in seconds (Cilium's
    /// CT_CONNECTION_LIFETIME_NONTCP). Socket-LB reverse translations of
    /// UDP sockets age the same; those of TCP sockets like established
    /// flows.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Conntrack expiry")]
    pub conntrack_timeout_other: u32,

    /// Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`,
    /// `/readyz`: ready after the first full sync) on this address.
    #[arg(long, value_name = "ADDR:PORT", env = "MCS_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// On SIGTERM/SIGINT, detach XDP and remove the pinned maps instead of
    /// leaving the dataplane serving for the next agent.
    #[arg(long)]
    pub detach_on_exit: bool,

    /// Name of the cluster this node belongs to, as endpoints' slices name
    /// it in `multicluster.kubernetes.io/source-cluster` (for locality).
    #[arg(long, value_name = "NAME", env = "MCS_CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// How new flows are spread over clusters: `none` (all endpoints
    /// alike), `local-first` (the local cluster's endpoints while it has
    /// any, else all; needs --cluster-id) or `weighted:CLUSTER=W,...` (each
    /// cluster gets its weight's share). An import's annotation
    /// `dataplane.mcs.dev/locality` overrides it.
    #[arg(
        long,
        default_value = "none",
        value_name = "POLICY",
        env = "MCS_LOCALITY"
    )]
    pub locality: Locality,

    /// Address ranges each source cluster may publish endpoints in, e.g.
    /// `cluster-a=10.101.0.0/16,cluster-a=fd00:101::/64,cluster-b=10.102.0.0/16`
    /// (IPv4 and IPv6 ranges; a cluster may repeat). When given, an
    /// endpoint outside its cluster's ranges (or of an unlisted cluster) is
    /// rejected, so one cluster cannot hijack traffic meant for another.
    #[arg(long, value_name = "CLUSTER=CIDR,...", default_value = "")]
    pub cluster_cidrs: ClusterCidrs,

    /// The ranges ClusterSetIPs are allocated from (IPv4 and IPv6), e.g.
    /// `10.96.100.0/24,fd00:96::/108` (what `mcs-agent controller
    /// --clusterset-ip-cidr` allocates from). When given, an import claiming
    /// an address outside them (a node's or the API server's, say) is not
    /// served at that address and is rejected (log, metric, Event), so no
    /// import can capture traffic meant for something else. Without it
    /// every ClusterSetIP an import claims is served.
    #[arg(long, value_name = "CIDR,...", default_value = "")]
    pub clusterset_ip_cidrs: ClustersetIpCidrs,

    /// Serve the clusterset DNS zone (KEP-1645: `SVC.NS.svc.ZONE` and the
    /// rest, see docs/dns.md) on this UDP and TCP address, e.g.
    /// `127.0.0.1:5353`, or `0.0.0.0:53` (needs CAP_NET_BIND_SERVICE). Off
    /// when absent.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        env = "MCS_DNS_ADDR",
        help_heading = "DNS"
    )]
    pub dns_addr: Option<SocketAddr>,

    /// Put the --dns-addr address on a dummy link of this name (created if
    /// missing, kept on exit): a node-local address every pod and CoreDNS
    /// instance on the node reaches, e.g. `--dns-link mcs-dns --dns-addr
    /// 169.254.20.53:5353` (see deploy/coredns-clusterset.yaml).
    #[arg(
        long,
        value_name = "NAME",
        requires = "dns_addr",
        env = "MCS_DNS_LINK",
        help_heading = "DNS"
    )]
    pub dns_link: Option<String>,

    /// Zone the DNS server answers for.
    #[arg(
        long,
        value_name = "ZONE",
        default_value = dns::DEFAULT_ZONE,
        env = "MCS_DNS_ZONE",
        value_parser = parse_dns_zone,
        help_heading = "DNS"
    )]
    pub dns_zone: String,

    /// TTL of DNS records and of negative answers, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = dns::DEFAULT_TTL,
        help_heading = "DNS"
    )]
    pub dns_ttl: u32,

    /// UDP responses per second per client network (and as many at once),
    /// 0 for no limit. Over it a network's queries get nothing, except every
    /// --dns-rate-limit-slip-th, which gets an empty truncated answer so a
    /// real client retries over TCP (never limited). Keeps a flood with a
    /// spoofed source from turning the server against that source.
    #[arg(
        long,
        value_name = "PER_SECOND",
        default_value_t = dns::rate_limit::DEFAULT_RATE,
        requires = "dns_addr",
        help_heading = "DNS"
    )]
    pub dns_rate_limit: u32,

    /// Every N-th rate-limited query gets a truncated answer (TC=1) instead
    /// of none; 0 drops them all, 1 truncates them all.
    #[arg(
        long,
        value_name = "N",
        default_value_t = dns::rate_limit::DEFAULT_SLIP,
        requires = "dns_addr",
        help_heading = "DNS"
    )]
    pub dns_rate_limit_slip: u32,

    /// Prefix length of the IPv4 client networks limited together.
    #[arg(
        long,
        value_name = "BITS",
        default_value_t = dns::rate_limit::DEFAULT_IPV4_PREFIX,
        value_parser = clap::value_parser!(u8).range(8..=32),
        requires = "dns_addr",
        help_heading = "DNS"
    )]
    pub dns_rate_limit_ipv4_prefix: u8,

    /// Prefix length of the IPv6 client networks limited together.
    #[arg(
        long,
        value_name = "BITS",
        default_value_t = dns::rate_limit::DEFAULT_IPV6_PREFIX,
        value_parser = clap::value_parser!(u8).range(16..=128),
        requires = "dns_addr",
        help_heading = "DNS"
    )]
    pub dns_rate_limit_ipv6_prefix: u8,
}

/// Checks the zone when the command line is parsed, not at startup.
fn parse_dns_zone(value: &str) -> Result<String, String> {
    dns::parse_zone(value)
        .map(|_| value.to_owned())
        .map_err(|error| crate::telemetry::chain(&error))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// bpffs directory of the running agent.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, value_name = "DIR")]
    pub bpffs_dir: PathBuf,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// List conntrack entries (both directions of each flow).
    #[arg(long)]
    pub conntrack: bool,

    /// Only conntrack entries of flows to this ClusterSetIP, IPv4 or IPv6
    /// (implies --conntrack).
    #[arg(long, value_name = "IP")]
    pub vip: Option<std::net::IpAddr>,

    /// Only conntrack entries of this client address (implies --conntrack).
    #[arg(long, value_name = "IP")]
    pub client: Option<std::net::IpAddr>,

    /// Most conntrack entries listed.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// Default bytes of Maglev tables per backend slot.
pub const MAGLEV_BYTES_PER_SLOT: u64 = 160;

impl RunArgs {
    /// The DNS server's configuration (`--dns-*`), if it is on.
    pub fn dns_config(&self) -> Option<dns::DnsConfig> {
        Some(dns::DnsConfig {
            addr: self.dns_addr?,
            zone: self.dns_zone.clone(),
            ttl: self.dns_ttl,
            clusterset_ip_cidrs: self.clusterset_ip_cidrs.clone(),
            rate_limit: dns::RateLimitConfig {
                per_second: std::num::NonZeroU32::new(self.dns_rate_limit),
                slip: self.dns_rate_limit_slip,
                ipv4_prefix: self.dns_rate_limit_ipv4_prefix,
                ipv6_prefix: self.dns_rate_limit_ipv6_prefix,
            },
        })
    }

    /// How the conntrack janitor collects expired entries.
    pub fn gc_config(&self) -> crate::conntrack::gc::GcConfig {
        use std::time::Duration;
        let seconds = |s: u32| Duration::from_secs(u64::from(s));
        crate::conntrack::gc::GcConfig {
            timeouts: crate::conntrack::expiry::Timeouts {
                syn: seconds(self.conntrack_timeout_syn),
                established: seconds(self.conntrack_timeout_established),
                closed: seconds(self.conntrack_timeout_closed),
                other: seconds(self.conntrack_timeout_other),
            },
            ..Default::default()
        }
    }

    /// The operator-sized map capacities. A pinned map of another size is
    /// recreated at start (logged with what that loses).
    pub fn map_sizes(&self) -> crate::dataplane::MapSizes {
        use crate::dataplane::MapSizes;
        let maglev_bytes = self
            .maglev_bytes_max
            .unwrap_or(u64::from(self.backend_slots_max) * MAGLEV_BYTES_PER_SLOT);
        MapSizes {
            frontends: self.frontends_max,
            backend_slots: self.backend_slots_max,
            backends: self.backends_max,
            maglev_chunks: MapSizes::maglev_chunks_for(maglev_bytes),
            conntrack: self.conntrack_max,
            affinity: self.affinity_max,
            sock_revnat: self.sock_revnat_max,
            frontends_v6: self.frontends_v6_max,
            backend_slots_v6: self.backend_slots_v6_max,
            conntrack_v6: self.conntrack_v6_max,
            affinity_v6: self.affinity_v6_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn map_sizes_follow_the_flags_and_default_to_the_object() {
        let parse = |extra: &[&str]| {
            let base = ["mcs-agent", "run", "--source", "file:/x", "-i", "eth0"];
            match Cli::try_parse_from(base.iter().chain(extra)) {
                Ok(Cli {
                    command: Command::Run(args),
                    ..
                }) => Ok(args.map_sizes()),
                Ok(_) => panic!("not a run command"),
                Err(error) => Err(error),
            }
        };
        assert_eq!(
            parse(&[]).expect("defaults"),
            crate::dataplane::MapSizes::default()
        );
        let sizes = parse(&[
            "--frontends-max=300000",
            "--backend-slots-max=1048576",
            "--backends-max=65536",
            "--conntrack-max=1048576",
            "--affinity-max=4096",
            "--sock-revnat-max=8192",
            "--frontends-v6-max=30000",
            "--backend-slots-v6-max=131072",
            "--conntrack-v6-max=262144",
            "--affinity-v6-max=2048",
        ])
        .expect("valid");
        assert_eq!(
            (
                sizes.frontends_v6,
                sizes.backend_slots_v6,
                sizes.conntrack_v6,
                sizes.affinity_v6
            ),
            (30_000, 1 << 17, 1 << 18, 2048)
        );
        assert_eq!(sizes.frontends, 300_000);
        assert_eq!(sizes.backend_slots, 1 << 20);
        // 160 bytes per slot unless given.
        assert_eq!(u64::from(sizes.maglev_chunks) * 8, 160 << 20);
        assert_eq!(
            (sizes.conntrack, sizes.affinity, sizes.sock_revnat),
            (1 << 20, 4096, 8192)
        );
        let sizes = parse(&["--maglev-bytes-max=100000001"]).expect("valid");
        assert_eq!(sizes.maglev_chunks, 12_500_001);
        assert!(parse(&["--frontends-max=10"]).is_err());
        assert!(parse(&["--backend-slots-max=0"]).is_err());
        assert!(parse(&["--maglev-bytes-max=100"]).is_err());
    }

    #[test]
    fn dns_is_off_by_default_and_configurable() {
        let parse = |extra: &[&str]| {
            let base = ["mcs-agent", "run", "--source", "file:/x"];
            match Cli::try_parse_from(base.iter().chain(extra)) {
                Ok(Cli {
                    command: Command::Run(args),
                    ..
                }) => Ok(args),
                Ok(_) => panic!("not a run command"),
                Err(error) => Err(error),
            }
        };
        let args = parse(&[]).expect("valid");
        assert_eq!(args.dns_addr, None);
        assert_eq!(args.dns_zone, "clusterset.local");
        assert_eq!(args.dns_ttl, 5);
        let args = parse(&[
            "--dns-addr",
            "127.0.0.1:5353",
            "--dns-zone",
            "mcs.example",
            "--dns-ttl",
            "30",
        ])
        .expect("valid");
        assert_eq!(args.dns_addr, Some("127.0.0.1:5353".parse().expect("addr")));
        assert_eq!(args.dns_zone, "mcs.example");
        assert_eq!(args.dns_ttl, 30);
        assert!(parse(&["--dns-addr", "localhost"]).is_err());
        assert!(parse(&["--dns-zone", "."]).is_err());
        assert!(parse(&["--dns-zone", "a..b"]).is_err());
        assert!(
            parse(&["--dns-link", "mcs-dns"]).is_err(),
            "a DNS link without --dns-addr"
        );
    }

    fn parse_run(args: &[&str]) -> Result<Box<RunArgs>, clap::Error> {
        let base = ["mcs-agent", "run", "--source", "file:/x"];
        match Cli::try_parse_from(base.iter().chain(args)) {
            Ok(Cli {
                command: Command::Run(args),
                ..
            }) => Ok(args),
            Ok(_) => panic!("not a run command"),
            Err(error) => Err(error),
        }
    }

    #[test]
    fn attachment_defaults_and_combinations() {
        let args = parse_run(&[]).expect("valid without any interface");
        assert_eq!(args.pod_interfaces.to_string(), DEFAULT_POD_INTERFACES);
        assert!(args.interfaces.is_empty());
        assert_eq!(args.tc_attach, TcAttach::Auto);
        assert!(!args.socket_lb);
        let args = parse_run(&[
            "--pod-interfaces",
            "v-*",
            "-i",
            "eth0",
            "--tc-attach",
            "netlink",
        ])
        .expect("valid");
        assert_eq!(args.pod_interfaces.to_string(), "v-*");
        assert_eq!(args.interfaces, ["eth0"]);
        assert_eq!(args.tc_attach, TcAttach::Netlink);
        assert!(
            parse_run(&["--pod-interfaces", ""])
                .expect("off")
                .pod_interfaces
                .is_empty()
        );
        assert!(parse_run(&["--pod-interfaces", "veth["]).is_err());
        // Socket-LB options mean nothing without socket LB.
        assert!(parse_run(&["--socket-lb-host-only"]).is_err());
        assert!(parse_run(&["--cgroup", "/sys/fs/cgroup"]).is_err());
        assert!(parse_run(&["--socket-lb", "--socket-lb-host-only"]).is_ok());
    }
}
