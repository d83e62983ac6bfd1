//! `mcs-local-apiserver`: the tests' local Kubernetes API server as a
//! process, for the demo and for trying kubectl or the agent without a
//! cluster. Runs until SIGTERM or SIGINT.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use mcs_tests::apiserver::{LocalApiServer, Options, default_crd_dirs};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

/// A local Kubernetes API server (no cluster, no root): kubectl and
/// kube-rs clients work against it.
///
/// It serves Namespaces, Services, Endpoints, EndpointSlices, Events,
/// Leases, CustomResourceDefinitions and the resources of the CRDs it is
/// given, with create, get, list, watch, update, patch (merge, JSON,
/// strategic, server-side apply), delete and the status subresource.
/// Objects live in memory and are gone when it stops. There is no
/// authentication: anyone who reaches the address may change anything, so
/// keep it on a loopback address or inside a test network namespace.
///
/// Prints `listening on http://ADDR` once it answers.
#[derive(Debug, Parser)]
#[command(name = "mcs-local-apiserver", version)]
struct Args {
    /// Address to listen on (port 0: any free port; the one taken is
    /// printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Write a kubeconfig for this server to PATH (kubectl --kubeconfig
    /// PATH, or KUBECONFIG=PATH).
    #[arg(long, value_name = "PATH")]
    kubeconfig_out: Option<PathBuf>,

    /// Serve the CustomResourceDefinitions in the .yaml/.yml/.json files
    /// of DIR (repeatable). Default: the repository's deploy/crds and
    /// tests/fixtures/crds (GKE's net.gke.io kinds).
    #[arg(long = "crds", value_name = "DIR")]
    crd_dirs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcs-local-apiserver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let crd_dirs = if args.crd_dirs.is_empty() {
        default_crd_dirs()
    } else {
        args.crd_dirs
    };
    // Signals are caught before the server starts, so one sent as soon as
    // the address is printed still stops it cleanly.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    let server = LocalApiServer::start_with(Options {
        listen: args.listen,
        crd_dirs,
        record: false,
    })
    .map_err(|e| format!("cannot start on {}: {e}", args.listen))?;
    if let Some(path) = &args.kubeconfig_out {
        server
            .write_kubeconfig(path)
            .map_err(|e| format!("cannot write the kubeconfig {}: {e}", path.display()))?;
    }
    println!("listening on {}", server.url());
    if let Some(signal) = signals.forever().next() {
        eprintln!("mcs-local-apiserver: signal {signal}, stopping");
    }
    drop(server);
    Ok(())
}
