//! Command line of `mcs-agent controller`.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Args;
use ipnet::IpNet;

use super::{allocate, merge::IpFamily};

/// `--member ID=KUBECONFIG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    pub id: String,
    pub kubeconfig: PathBuf,
}

impl FromStr for MemberSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let Some((id, path)) = value.split_once('=') else {
            return Err(format!(
                "{value:?}: expected ID=KUBECONFIG, e.g. cluster-b=/etc/mcs/cluster-b.kubeconfig"
            ));
        };
        if path.is_empty() {
            return Err(format!("{value:?}: no kubeconfig path after '='"));
        }
        Ok(Self {
            id: parse_cluster_id(id)?,
            kubeconfig: PathBuf::from(path),
        })
    }
}

/// A cluster ID is an RFC 1123 DNS label (as KEP-2149's `cluster.clusterset.k8s.io`
/// and the `multicluster.kubernetes.io/source-cluster` label value need).
pub fn parse_cluster_id(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a cluster ID: 1-63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// Which ServiceImport API the controller writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportApi {
    /// The first one the cluster serves: multicluster.x-k8s.io v1beta1,
    /// v1alpha1, then net.gke.io v1.
    #[default]
    Auto,
    /// multicluster.x-k8s.io/v1beta1
    V1beta1,
    /// multicluster.x-k8s.io/v1alpha1
    V1alpha1,
    /// net.gke.io/v1
    Gke,
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{value} s is outside 0..=86400"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// This cluster's ID in the cluster set: the
    /// `multicluster.kubernetes.io/source-cluster` of its endpoints, and
    /// what breaks a tie between equally old exports in conflicts. Every
    /// controller of the set must use the same ID for a cluster.
    #[arg(long, value_name = "ID", value_parser = parse_cluster_id)]
    pub cluster_id: String,

    /// kubeconfig of this cluster (its current context): where
    /// ServiceImports, EndpointSlices, export status, the Lease and Events
    /// are written. Without it the in-cluster service account is used.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// A member cluster, read only (repeatable): its ServiceExports,
    /// Services and EndpointSlices are imported here. This cluster is
    /// always a member; listing it too is allowed (it is read through
    /// --kubeconfig either way). Removing a member from the list removes
    /// what it contributed at the next start.
    #[arg(long = "member", value_name = "ID=KUBECONFIG")]
    pub members: Vec<MemberSpec>,

    /// Range ClusterSetIPs are allocated from (repeatable or
    /// comma-separated, at most one per IP family: an IPv4 and an IPv6
    /// range for dual stack). An import gets one address per family of the
    /// oldest export's Service (`spec.ipFamilies`) that has a range here;
    /// its slices of other families are not written. Addresses are stable
    /// (read back from the imports on every start) and released on
    /// unexport; dropping a family's range releases that family's addresses
    /// at the next start. `--clusterset-ip-cidrs`, the agent's spelling, is
    /// accepted too.
    #[arg(long = "clusterset-ip-cidr", visible_alias = "clusterset-ip-cidrs",
          value_name = "CIDR", required = true, value_delimiter = ',',
          value_parser = allocate::parse_range)]
    pub clusterset_ip_cidrs: Vec<IpNet>,

    /// ServiceImport API to write (`auto`: the first one the cluster
    /// serves). The agent reads all of them.
    #[arg(long, value_enum, default_value_t = ImportApi::Auto)]
    pub import_api: ImportApi,

    /// Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`;
    /// `/readyz`: ready once every member has been read or given up on)
    /// on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// How long to wait at start for every member's first list. After it,
    /// the controller writes with the members that answered; what the
    /// others contributed earlier is kept untouched until they answer.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub member_sync_timeout: Duration,

    /// Coalesce changes arriving within this many seconds into one
    /// reconcile.
    #[arg(long, value_name = "SECONDS", default_value = "0.1", value_parser = parse_seconds)]
    pub debounce: Duration,

    /// Reconcile everything this often even without changes (repairs
    /// objects edited by hand, refreshes unreachable-member marks).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub resync_interval: Duration,

    /// Name of the Lease the replicas of this controller elect a leader
    /// with; only the leader writes.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "mcs-controller",
        help_heading = "Leader election"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (in a pod: its own namespace, from the
    /// downward API's POD_NAMESPACE).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "mcs-system",
        help_heading = "Leader election"
    )]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (default: POD_NAME, else host
    /// name and process id).
    #[arg(long, value_name = "NAME", help_heading = "Leader election")]
    pub identity: Option<String>,

    /// Seconds a Lease is valid after its last renewal: how long the
    /// replicas wait for a leader that stopped renewing.
    #[arg(long, value_name = "SECONDS", default_value = "15", value_parser = parse_seconds,
          help_heading = "Leader election")]
    pub lease_duration: Duration,

    /// Seconds the leader keeps trying to renew before it stops writing
    /// (must be shorter than --lease-duration, so a leader that cannot
    /// renew stops before another may start).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds,
          help_heading = "Leader election")]
    pub renew_deadline: Duration,

    /// Seconds between attempts to acquire or renew the Lease.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds,
          help_heading = "Leader election")]
    pub retry_period: Duration,

    /// Write without a Lease: only for a single replica.
    #[arg(long, help_heading = "Leader election")]
    pub no_leader_election: bool,
}

impl ControllerArgs {
    /// Checks what clap cannot: combinations of flags.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for member in &self.members {
            if !seen.insert(&member.id) {
                return Err(format!("--member {} is given twice", member.id));
            }
        }
        for (i, first) in self.clusterset_ip_cidrs.iter().enumerate() {
            let family = IpFamily::of(first.addr());
            let same = |other: &&IpNet| IpFamily::of(other.addr()) == family;
            if let Some(second) = self.clusterset_ip_cidrs[i + 1..].iter().find(same) {
                return Err(format!(
                    "--clusterset-ip-cidr {first} and {second} are both {}: \
                     at most one range per IP family (one IPv4, one IPv6)",
                    family.as_str()
                ));
            }
        }
        if self.resync_interval < Duration::from_secs(1) {
            return Err("--resync-interval must be at least 1 second".to_owned());
        }
        if !self.no_leader_election {
            if self.renew_deadline >= self.lease_duration {
                return Err("--renew-deadline must be shorter than --lease-duration".to_owned());
            }
            if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
                return Err(
                    "--retry-period must be above 0 and shorter than --renew-deadline".to_owned(),
                );
            }
        }
        Ok(())
    }

    /// This replica's Lease identity.
    pub fn identity(&self) -> String {
        if let Some(identity) = self.identity.clone().filter(|i| !i.is_empty()) {
            return identity;
        }
        if let Ok(pod) = std::env::var("POD_NAME")
            && !pod.is_empty()
        {
            return pod;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "mcs-controller".to_owned());
        format!("{host}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(extra: &[&str]) -> Result<ControllerArgs, String> {
        let base = ["mcs-agent", "controller", "--cluster-id", "a"];
        match Cli::try_parse_from(base.iter().chain(extra)) {
            Ok(Cli {
                command: Command::Controller(args),
                ..
            }) => args.validate().map(|()| *args),
            Ok(_) => panic!("not the controller command"),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn the_documented_command_line_parses() {
        let args = parse(&[
            "--kubeconfig",
            "/k/a",
            "--member",
            "a=/k/a",
            "--member",
            "b=/k/b",
            "--clusterset-ip-cidr",
            "10.240.0.0/16",
            "--clusterset-ip-cidr",
            "fd00:240::/108",
        ])
        .unwrap();
        assert_eq!(args.cluster_id, "a");
        assert_eq!(
            args.members[1],
            MemberSpec {
                id: "b".into(),
                kubeconfig: "/k/b".into()
            }
        );
        assert_eq!(args.clusterset_ip_cidrs.len(), 2);
        assert_eq!(args.import_api, ImportApi::Auto);
        // The agent's spelling, comma-separated, means the same.
        let agent_spelling =
            parse(&["--clusterset-ip-cidrs", "10.240.0.0/16,fd00:240::/108"]).unwrap();
        assert_eq!(agent_spelling.clusterset_ip_cidrs, args.clusterset_ip_cidrs);
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert_eq!(args.debounce, Duration::from_millis(100));
    }

    #[test]
    fn meaningless_command_lines_are_refused() {
        for (extra, why) in [
            (&["--member", "b=/k"][..], "--clusterset-ip-cidr"),
            (
                &["--clusterset-ip-cidr", "10.0.0.0/24", "--member", "B=/k"],
                "not a cluster ID",
            ),
            (
                &["--clusterset-ip-cidr", "10.0.0.0/24", "--member", "b"],
                "ID=KUBECONFIG",
            ),
            (
                &["--clusterset-ip-cidr", "10.0.0.0/24", "--member", "b="],
                "no kubeconfig",
            ),
            (
                &[
                    "--clusterset-ip-cidr",
                    "10.0.0.0/24",
                    "--member",
                    "b=/x",
                    "--member",
                    "b=/y",
                ],
                "twice",
            ),
            (
                &[
                    "--clusterset-ip-cidr",
                    "10.0.0.0/24",
                    "--clusterset-ip-cidr",
                    "10.1.0.0/24",
                ],
                "--clusterset-ip-cidr 10.0.0.0/24 and 10.1.0.0/24 are both IPv4",
            ),
            (
                &[
                    "--clusterset-ip-cidr",
                    "fd00::/108,10.0.0.0/24",
                    "--clusterset-ip-cidr",
                    "fd01::/108",
                ],
                "fd00::/108 and fd01::/108 are both IPv6",
            ),
            (&["--clusterset-ip-cidr", "127.0.0.0/8"], "loopback"),
            (
                &[
                    "--clusterset-ip-cidr",
                    "10.0.0.0/24",
                    "--renew-deadline",
                    "20",
                ],
                "shorter than --lease-duration",
            ),
            (
                &["--clusterset-ip-cidr", "10.0.0.0/24", "--retry-period", "0"],
                "--retry-period",
            ),
            (
                &[
                    "--clusterset-ip-cidr",
                    "10.0.0.0/24",
                    "--resync-interval",
                    "0",
                ],
                "--resync-interval",
            ),
            (
                &[
                    "--clusterset-ip-cidr",
                    "10.0.0.0/24",
                    "--debounce",
                    "100000",
                ],
                "outside",
            ),
        ] {
            let error = parse(extra).unwrap_err();
            assert!(error.contains(why), "{extra:?}: {error}");
        }
        assert!(
            parse(&[
                "--clusterset-ip-cidr",
                "10.0.0.0/24",
                "--no-leader-election",
                "--renew-deadline",
                "20"
            ])
            .is_ok()
        );
        for bad in ["", "-a", "a-", "A", &"a".repeat(64)] {
            assert!(parse_cluster_id(bad).is_err(), "{bad:?}");
        }
    }
}
