//! `cargo xtask demo`: two simulated clusters in network namespaces, the
//! mcs agent on node a1, and client pods calling the ClusterSetIP.
//!
//! Builds the topology described in `demo/clusterset.yaml`, starts web and
//! UDP echo servers in the backend pods, runs `mcs-agent` on a1 with that
//! manifest the way the DaemonSet runs it (pod interfaces discovered by
//! glob, no interface listed by hand), sends HTTP and UDP requests to
//! 10.96.100.10 and prints who answered, then starts a new pod on a1 and
//! shows it balanced as soon as its interface appears, prints the agent's
//! `dump`, and tears everything down: also on Ctrl-C (SIGINT), SIGTERM or
//! any failure. Then the export workflow ([`mcs_tests::export_demo`]):
//! `kubectl apply` of a ServiceExport in two clusters, the import in a
//! third, `curl` of its clusterset name.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use mcs_tests::{
    client::{UdpClient, http_get},
    scenario::{
        self, BACKENDS, CLIENT, CLIENT_NODE, CLUSTER_A, ClusterSet, Hooks, POD_INTERFACES,
        UNLISTED_POD, tc_attached,
    },
    topology::Topology,
};

/// The shipped manifest; its addresses are the demo topology's.
const MANIFEST: &str = include_str!("../../../demo/clusterset.yaml");
const HTTP_REQUESTS: usize = 12;
const UDP_REQUESTS: usize = 4;
/// The pod started after the agent.
const LATE_POD: &str = "a-late";
const LATE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 101, 1, 101);
const LATE_REQUESTS: usize = 30;

const USAGE: &str = "\
usage: mcs-demo [--manifest PATH] [--agent-log]

Runs the mcs two-cluster demo (as root): network namespaces for cluster-a
and cluster-b, mcs-agent on node a1, requests to the ClusterSetIP.

  --manifest PATH   use this manifest instead of the shipped
                    demo/clusterset.yaml (it must use the demo's addresses)
  --agent-log       print the agent's log after it stopped

The agent binary is $MCS_AGENT_BIN, else target/debug/mcs-agent.";

fn say(line: &str) {
    println!("{line}");
}

fn step(line: &str) {
    say(&format!("==> {line}"));
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(options)) => options,
        Ok(None) => {
            say(USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mcs-demo: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !mcs_tests::is_root() {
        eprintln!(
            "mcs-demo: must run as root (it creates network namespaces and loads eBPF programs)"
        );
        return ExitCode::FAILURE;
    }
    // SIGINT/SIGTERM only set a flag: the demo checks it between steps and
    // returns, so every Drop guard runs and tears the namespaces down.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&interrupted)) {
            eprintln!("mcs-demo: cannot install the signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(&options, &interrupted) {
        Ok(()) => {
            say("demo finished");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcs-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    manifest: String,
    agent_log: bool,
}

/// The options, or `None` for `--help`.
fn parse_args() -> Result<Option<Options>> {
    let mut manifest = None;
    let mut agent_log = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => return Ok(None),
            Some("--agent-log") => agent_log = true,
            Some("--manifest") => {
                let path = PathBuf::from(args.next().context("--manifest needs a PATH")?);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                manifest = Some(text);
            }
            _ => bail!("unknown argument {arg:?}"),
        }
    }
    Ok(Some(Options {
        manifest: manifest.unwrap_or_else(|| MANIFEST.to_owned()),
        agent_log,
    }))
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted by a signal; everything was torn down");
    }
    Ok(())
}

fn run(options: &Options, interrupted: &AtomicBool) -> Result<()> {
    let set = ClusterSet::create(&options.manifest, &step)?;
    let prefix = set.topology().prefix().to_owned();
    let result = demo(set, options, interrupted);
    // The ClusterSet was dropped inside `demo` (also on error): check.
    let left = Topology::leftovers(&prefix)?;
    if left.is_empty() {
        say(&format!(
            "removed every network namespace ({prefix}-*) and the agent's pinned maps"
        ));
    } else {
        eprintln!("mcs-demo: namespaces left behind: {left:?}");
    }
    result?;
    check(interrupted)?;
    // The seed's workflow: ServiceExports applied with kubectl, imported by
    // the controllers, called by name from a pod of a third cluster.
    mcs_tests::export_demo::run(interrupted, &step, &say)
}

fn demo(mut set: ClusterSet, options: &Options, interrupted: &AtomicBool) -> Result<()> {
    check(interrupted)?;
    set.use_hooks(Hooks::Tc);
    step(&format!(
        "starting mcs-agent on node {CLIENT_NODE} (cluster-a) as the DaemonSet runs it: \
         --pod-interfaces '{POD_INTERFACES}', no interface listed by hand"
    ));
    set.start_agent()?;
    say(&format!(
        "  tc attached to the pod interfaces it found: {}",
        set.topology().pod_ifaces(CLIENT_NODE).join(", ")
    ));
    step("waiting until the agent has programmed demo/web");
    set.agent()?
        .wait_until(scenario::APPLY_TIMEOUT, |dump| {
            dump.services
                .iter()
                .all(|s| s.backends.len() == BACKENDS.len())
        })
        .context("the agent did not program all three backends")?;

    let client = set.client()?;
    step(&format!(
        "{HTTP_REQUESTS} HTTP requests from pod {CLIENT} ({}) to http://{}/",
        scenario::CLIENT_IP,
        scenario::vip_http()
    ));
    for i in 1..=HTTP_REQUESTS {
        check(interrupted)?;
        let reply =
            http_get(client, scenario::vip_http()).with_context(|| format!("HTTP request {i}"))?;
        say(&format!(
            "  #{i:<2} answered by {:<9} in {:<9} ({}:{})  client saw peer {}, backend saw client {}",
            reply.backend.pod,
            reply.backend.cluster,
            pod_ip(&reply.backend.pod),
            scenario::BACKEND_HTTP_PORT,
            reply.peer,
            reply.seen_by_backend,
        ));
    }

    step(&format!(
        "{UDP_REQUESTS} UDP requests from pod {CLIENT} to {}",
        scenario::vip_udp()
    ));
    for i in 1..=UDP_REQUESTS {
        check(interrupted)?;
        let udp = UdpClient::bind(client, 0)?;
        let reply = udp
            .request(scenario::vip_udp(), &format!("hello {i}"))
            .with_context(|| format!("UDP request {i}"))?;
        say(&format!(
            "  #{i:<2} answered by {:<9} in {:<9} ({}:{})  reply came from {}",
            reply.backend.pod,
            reply.backend.cluster,
            pod_ip(&reply.backend.pod),
            scenario::BACKEND_UDP_PORT,
            reply.from,
        ));
    }
    check(interrupted)?;
    late_pod(&mut set)?;
    let unlisted = set.servers(UNLISTED_POD.name)?;
    say(&format!(
        "  pod {} (not in any EndpointSlice) served {} HTTP and {} UDP requests",
        UNLISTED_POD.name,
        unlisted.http.stats().requests(),
        unlisted.udp.stats().requests()
    ));

    check(interrupted)?;
    step("mcs-agent dump");
    for line in set.agent()?.dump_text()?.lines() {
        say(&format!("  {line}"));
    }

    step("stopping mcs-agent (SIGTERM): its pinned dataplane keeps serving");
    let stopped = set.stop_agent_keeping_dataplane()?;
    say(&format!("  mcs-agent exited: {}", stopped.status));
    if options.agent_log {
        step("mcs-agent log");
        for line in stopped.log.lines() {
            say(&format!("  {line}"));
        }
    }
    check(interrupted)?;
    let reply = http_get(set.client()?, scenario::vip_http())
        .context("HTTP request with the agent stopped")?;
    say(&format!(
        "  with no agent running, http://{}/ is still answered by {} in {}",
        scenario::vip_http(),
        reply.backend.pod,
        reply.backend.cluster
    ));
    step("mcs-agent cleanup: detaching tc and removing the pinned maps");
    stopped.dataplane.cleanup()?;
    step("tearing down: deleting the namespaces");
    drop(set);
    Ok(())
}

/// Starts a pod after the agent and shows it balanced once the agent saw
/// its interface appear.
fn late_pod(set: &mut ClusterSet) -> Result<()> {
    step(&format!(
        "starting pod {LATE_POD} ({LATE_POD_IP}) on {CLIENT_NODE}, after the agent"
    ));
    let created = Instant::now();
    set.topology_mut()
        .add_pod(CLUSTER_A, CLIENT_NODE, LATE_POD, LATE_POD_IP)?;
    let iface = set.topology().pod(LATE_POD)?.node_iface.clone();
    let bpffs = set.agent()?.bpffs_dir().to_path_buf();
    while !tc_attached(&bpffs, &iface) {
        if created.elapsed() > scenario::APPLY_TIMEOUT {
            bail!("the agent never attached tc to {iface}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    say(&format!(
        "  the agent attached tc to {iface} {:?} after the interface appeared",
        created.elapsed()
    ));
    let ns = &set.topology().pod(LATE_POD)?.netns;
    let mut answered = BTreeMap::<String, usize>::new();
    for i in 1..=LATE_REQUESTS {
        let reply = http_get(ns, scenario::vip_http())
            .with_context(|| format!("HTTP request {i} from {LATE_POD}"))?;
        *answered
            .entry(format!("{} ({})", reply.backend.pod, reply.backend.cluster))
            .or_default() += 1;
    }
    let spread: Vec<String> = answered
        .iter()
        .map(|(backend, n)| format!("{backend}: {n}"))
        .collect();
    say(&format!(
        "  {LATE_REQUESTS} HTTP requests from {LATE_POD} to http://{}/ balanced over {}",
        scenario::vip_http(),
        spread.join(", ")
    ));
    if answered.len() < BACKENDS.len() {
        bail!("the late pod reached only {spread:?}");
    }
    Ok(())
}

fn pod_ip(name: &str) -> Ipv4Addr {
    BACKENDS
        .iter()
        .chain([&UNLISTED_POD])
        .find(|p| p.name == name)
        .map_or(Ipv4Addr::UNSPECIFIED, |p| p.ip)
}
