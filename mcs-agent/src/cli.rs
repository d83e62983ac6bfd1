//! Command line.

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand};

use crate::{dataplane::AttachMode, dns, telemetry::LogFormat};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/mcs";

/// mcs node agent: balances traffic sent to Kubernetes multi-cluster
/// ClusterSetIPs across pod endpoints in every cluster of the set, in an
/// eBPF/XDP dataplane kept in sync with ServiceImports and EndpointSlices.
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
    /// Load the dataplane, attach it to interfaces and keep it in sync with
    /// a source of ServiceImports and EndpointSlices until SIGTERM/SIGINT
    /// (then detach and remove the pinned maps).
    Run(RunArgs),
    /// Print services, backends and counters from the live (pinned) maps.
    Dump(DumpArgs),
}

/// Where ServiceImports and EndpointSlices come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// A YAML/JSON file or a directory of them, watched for changes.
    File(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            _ => Err(format!(
                "unknown source {value:?}; expected `file:PATH` (a YAML file or directory)"
            )),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Object source: `file:PATH` reads a YAML file or a directory of YAML
    /// files (multi-document, as `kubectl get -o yaml` prints them) and
    /// applies every change to it as a diff.
    #[arg(long, value_name = "SOURCE")]
    pub source: SourceSpec,

    /// Interface to attach the XDP program to (repeatable): the node side of
    /// every pod veth whose traffic to ClusterSetIPs must be balanced, and
    /// the interfaces replies from remote backends arrive on.
    #[arg(long = "interface", short = 'i', value_name = "IFACE", required = true)]
    pub interfaces: Vec<String>,

    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,

    /// bpffs directory for the agent's pinned maps (created 0700).
    #[arg(long, default_value = DEFAULT_BPFFS_DIR, value_name = "DIR")]
    pub bpffs_dir: PathBuf,

    /// Name of the cluster this node belongs to (for logs and locality).
    #[arg(long, value_name = "NAME")]
    pub cluster_id: Option<String>,

    /// Serve the clusterset DNS zone (KEP-1645: `SVC.NS.svc.ZONE` and the
    /// rest, see docs/dns.md) on this UDP and TCP address, e.g.
    /// `127.0.0.1:5353`, or `0.0.0.0:53` (needs CAP_NET_BIND_SERVICE). Off
    /// when absent.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "DNS")]
    pub dns_addr: Option<SocketAddr>,

    /// Zone the DNS server answers for.
    #[arg(
        long,
        value_name = "ZONE",
        default_value = dns::DEFAULT_ZONE,
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
    fn source_specs() {
        assert_eq!(
            "file:/etc/mcs".parse::<SourceSpec>(),
            Ok(SourceSpec::File("/etc/mcs".into()))
        );
        assert!("file:".parse::<SourceSpec>().is_err());
        assert!("http://x".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn dns_is_off_by_default_and_configurable() {
        let parse = |extra: &[&str]| {
            let base = ["mcs-agent", "run", "--source", "file:/x", "-i", "eth0"];
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
    }
}
