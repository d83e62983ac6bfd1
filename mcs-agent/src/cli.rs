//! Command line.

use std::{path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand};

use crate::{dataplane::AttachMode, telemetry::LogFormat};

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
    /// The Kubernetes API server (in-cluster, or `--kubeconfig`).
    Kube,
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            None if value == "kube" => Ok(Self::Kube),
            _ => Err(format!(
                "unknown source {value:?}; expected `kube` (the API server) or `file:PATH` (a YAML \
                 file or directory)"
            )),
        }
    }
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
        assert_eq!("kube".parse::<SourceSpec>(), Ok(SourceSpec::Kube));
        assert!("file:".parse::<SourceSpec>().is_err());
        assert!("kube:x".parse::<SourceSpec>().is_err());
        assert!("http://x".parse::<SourceSpec>().is_err());
    }
}
