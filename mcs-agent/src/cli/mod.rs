//! Command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

mod sizes;

pub use self::sizes::{ConntrackExpiryArgs, MAGLEV_BYTES_PER_SLOT, MapSizeArgs};
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

    #[command(flatten)]
    pub sizes: MapSizeArgs,

    #[command(flatten)]
    pub expiry: ConntrackExpiryArgs,

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
        self.expiry.gc_config()
    }

    /// The operator-sized map capacities (see [`MapSizeArgs::map_sizes`]).
    pub fn map_sizes(&self) -> crate::dataplane::MapSizes {
        self.sizes.map_sizes()
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
