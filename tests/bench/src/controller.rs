//! Part 4: the export controller (`mcs-agent controller`) end to end.
//!
//! Three simulated clusters, each a local API server with its own
//! controller reading all three (the production wiring, production
//! timings), and the agent (`--source kube`) on a node of cluster-a. All of
//! it runs in one network namespace, where the API servers listen on
//! loopback; the agent's XDP program sits on a veth there.
//!
//! * **export → import**: ServiceExports are created one after another at a
//!   fixed rate (open loop: a write never waits for an earlier one's
//!   import), spread round-robin over the three clusters, until the set
//!   holds `exports` of them. Per export, from the API server's answer to
//!   the create until a watch on every cluster has delivered its
//!   ServiceImport with a ClusterSetIP.
//! * **endpoint change → map**: with every export in place, one endpoint
//!   address of a service exported by cluster-b or cluster-c is replaced in
//!   its source EndpointSlice (a merge patch), again at a fixed rate. Per
//!   change, from the API server's answer to the patch until the agent's
//!   pinned maps on cluster-a's node hold the new address behind the
//!   service's ClusterSetIP (the path: controller of cluster-a watching
//!   the member → its MCS slice in cluster-a → the agent's watch →
//!   reconcile → maps).
//!
//! Objects the measurement does not time (Services, source slices) are put
//! into the stores directly before the controllers start.

mod measure;

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use mcs_tests::{
    agent::{Agent, AgentConfig},
    apiserver::{LocalApiServer, Options},
    clusterset::{Controller, SimCluster, free_local_addr, http_get_text, namespace},
    netns::{self, Netns},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::perpacket::progress;

/// The namespace every benchmark object lives in.
pub const NS: &str = "mcs-bench";
/// The exported Services' one port and their pods' target port.
pub const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
/// The simulated clusters; the agent runs on a node of the first.
pub const CLUSTERS: [&str; 3] = ["cluster-a", "cluster-b", "cluster-c"];
/// How long, after the last write, an import or endpoint may take to show
/// before it counts as not seen.
const GRACE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Config {
    /// ServiceExports in the set at the end (spread over the clusters).
    pub exports: usize,
    /// Endpoints per exported Service.
    pub endpoints: usize,
    /// ServiceExports created per second.
    pub export_rate: f64,
    /// Endpoint changes measured.
    pub changes: usize,
    /// Endpoint changes per second.
    pub change_rate: f64,
}

/// One controller's own view of its work, from its `/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReconcileStats {
    pub cluster: String,
    pub reconciles: u64,
    /// Mean duration of a reconcile (plan of every import and the writes), ms.
    pub mean_ms: f64,
    pub writes: u64,
    /// Peak resident memory (VmHWM), KiB.
    pub vm_hwm_kib: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerBench {
    pub clusters: usize,
    pub exports: usize,
    pub endpoints: usize,
    pub export_rate: f64,
    pub change_rate: f64,
    /// Per export: create acknowledged → its import with a ClusterSetIP
    /// seen in every cluster (ms).
    pub export_to_import_ms: Vec<f64>,
    /// Per export: the same, until the first cluster (ms).
    pub export_to_first_import_ms: Vec<f64>,
    /// Exports whose import was not seen everywhere within the grace time.
    pub exports_not_seen: usize,
    /// Per change: patch acknowledged → the new endpoint in the agent's
    /// maps on a node of another cluster (ms).
    pub endpoint_change_ms: Vec<f64>,
    /// Of each change: patch acknowledged → a watch on the agent's cluster
    /// delivers the MCS slice with the new address (the controller's part).
    pub change_controller_ms: Vec<f64>,
    /// Of each change: that slice delivered → the agent's maps hold it.
    pub change_agent_ms: Vec<f64>,
    pub changes_not_seen: usize,
    pub controllers: Vec<ReconcileStats>,
    pub agent_vm_hwm_kib: u64,
    pub notes: Vec<String>,
}

/// A Service of the benchmark: where it is exported from, and its pods.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// Index into [`CLUSTERS`].
    pub cluster: usize,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    fn slice_name(&self) -> String {
        format!("{}-x1", self.name)
    }
}

/// Pod address number `n` of cluster `cluster` (10.101.0.0/16 for
/// cluster-a, …); `fresh` ones (for changes) come from the upper half.
pub fn pod_address(cluster: usize, n: usize, fresh: bool) -> Ipv4Addr {
    let base = if fresh { 128 * 250 } else { 0 };
    let n = base + n;
    let octet = |v: usize| u8::try_from(v).unwrap_or(u8::MAX);
    Ipv4Addr::new(10, octet(101 + cluster), octet(n / 250), octet(n % 250 + 1))
}

fn services(config: &Config) -> Vec<Service> {
    let mut per_cluster = [0usize; CLUSTERS.len()];
    (0..config.exports)
        .map(|i| {
            let cluster = i % CLUSTERS.len();
            let first = per_cluster[cluster];
            per_cluster[cluster] += config.endpoints;
            Service {
                name: format!("svc-{i:05}"),
                cluster,
                endpoints: (first..first + config.endpoints)
                    .map(|n| pod_address(cluster, n, false))
                    .collect(),
            }
        })
        .collect()
}

fn service_object(service: &Service) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": service.name, "namespace": NS},
           "spec": {"selector": {"app": service.name},
                    "ports": [{"name": "http", "port": PORT, "protocol": "TCP",
                               "targetPort": TARGET_PORT}]}})
}

/// The endpoints of a source slice, all ready.
pub fn slice_endpoints(addresses: &[Ipv4Addr]) -> Value {
    addresses
        .iter()
        .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
        .collect()
}

fn slice_object(service: &Service) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": service.slice_name(), "namespace": NS,
                        "labels": {"kubernetes.io/service-name": service.name}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
           "endpoints": slice_endpoints(&service.endpoints)})
}

pub fn export_object(service: &Service) -> Value {
    json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
           "metadata": {"name": service.name, "namespace": NS}})
}

/// Everything the part runs; dropped in field order (the agent first,
/// while its veth exists; the namespace last).
struct World {
    agent: Agent,
    controllers: Vec<Controller>,
    metrics: Vec<SocketAddr>,
    clusters: Vec<SimCluster>,
    _source: tempfile::TempDir,
    ns: Netns,
}

impl World {
    fn build(services: &[Service]) -> Result<Self> {
        let ns = Netns::create(&format!("{}-ctl", netns::unique_prefix()))?;
        ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "a1"])?;
        ns.ip(&["link", "set", "a0", "up"])?;
        ns.ip(&["link", "set", "a1", "up"])?;
        let mut clusters = Vec::new();
        for id in CLUSTERS {
            // The server's socket belongs to the namespace it is bound in;
            // its thread may run anywhere. Requests are not recorded, so its
            // memory stays bounded.
            let server = ns.enter(|| {
                LocalApiServer::start_with(Options {
                    record: false,
                    ..Options::default()
                })
            })??;
            let cluster = SimCluster::with_server(id, server)?;
            cluster.apply(namespace(NS))?;
            clusters.push(cluster);
        }
        for service in services {
            let cluster = &clusters[service.cluster];
            cluster.apply(service_object(service))?;
            cluster.apply(slice_object(service))?;
        }
        let members: Vec<&SimCluster> = clusters.iter().collect();
        let mut controllers = Vec::new();
        let mut metrics = Vec::new();
        for cluster in &clusters {
            // A free port of the root namespace's loopback is as good as
            // any in this fresh namespace.
            let addr = free_local_addr()?;
            controllers.push(Controller::start_with_defaults(
                Some(&ns),
                cluster,
                &members,
                &["--metrics-addr", &addr.to_string()],
            )?);
            metrics.push(addr);
        }
        let source = tempfile::tempdir()?;
        let mut config = AgentConfig::new(source.path(), vec!["a0".to_owned()]);
        config.cluster_id = Some(CLUSTERS[0].to_owned());
        config.source_arg = Some("kube".to_owned());
        config.extra_args = vec![
            "--kubeconfig".into(),
            clusters[0].kubeconfig.display().to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        let agent = Agent::start(&ns, &config)?;
        Ok(Self {
            agent,
            controllers,
            metrics,
            clusters,
            _source: source,
            ns,
        })
    }

    /// Fails, with the logs, if a process has exited.
    fn check_running(&mut self) -> Result<()> {
        for controller in &mut self.controllers {
            controller.check_running()?;
        }
        self.agent.ensure_running()
    }

    /// Waits until every controller is ready (members read) and leads.
    fn wait_leading(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (addr, controller) in self.metrics.iter().zip(&self.controllers) {
            loop {
                let ready = self.ns.enter(|| {
                    let (ready, _) = http_get_text(*addr, "/readyz").ok()?;
                    let (_, metrics) = http_get_text(*addr, "/metrics").ok()?;
                    Some(ready == 200 && metric(&metrics, "mcs_controller_leader") == Some(1.0))
                })?;
                if ready == Some(true) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "controller {} not ready and leading within 60 s:\n{}",
                        controller.cluster,
                        controller.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn reconcile_stats(&self) -> Result<Vec<ReconcileStats>> {
        let mut stats = Vec::new();
        for (addr, controller) in self.metrics.iter().zip(&self.controllers) {
            let (_, text) = self
                .ns
                .enter(|| http_get_text(*addr, "/metrics"))?
                .with_context(|| format!("metrics of {}", controller.cluster))?;
            let count = metric(&text, "mcs_controller_reconcile_duration_seconds_count");
            let sum = metric(&text, "mcs_controller_reconcile_duration_seconds_sum");
            let writes: f64 = text
                .lines()
                .filter(|l| l.starts_with("mcs_controller_writes_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "counters"
            )]
            stats.push(ReconcileStats {
                cluster: controller.cluster.clone(),
                reconciles: count.unwrap_or(0.0) as u64,
                mean_ms: match (sum, count) {
                    (Some(sum), Some(count)) if count > 0.0 => sum / count * 1000.0,
                    _ => f64::NAN,
                },
                writes: writes as u64,
                vm_hwm_kib: controller
                    .pid()
                    .and_then(|pid| vm_hwm_kib(pid).ok())
                    .unwrap_or(0),
            });
        }
        Ok(stats)
    }

    fn logs(&self) -> String {
        let mut text: String = self
            .controllers
            .iter()
            .map(|c| format!("--- controller {} ---\n{}", c.cluster, tail(&c.log())))
            .collect();
        text.push_str(&format!("--- agent ---\n{}", tail(&self.agent.log())));
        text
    }
}

/// The last lines of a log (a failure's context, not megabytes).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n") + "\n"
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")
}

pub fn run(config: &Config) -> Result<ControllerBench> {
    let started = Instant::now();
    let services = services(config);
    progress(&format!(
        "  controller: {} exports across {} clusters ({} endpoints each), created at {}/s; then {} endpoint changes at {}/s",
        config.exports,
        CLUSTERS.len(),
        config.endpoints,
        config.export_rate,
        config.changes,
        config.change_rate
    ));
    let mut world = World::build(&services)?;
    world.wait_leading()?;
    world.check_running()?;
    let kubeconfigs: Vec<_> = world
        .clusters
        .iter()
        .map(|c| c.kubeconfig.clone())
        .collect();
    let bpffs = world.agent.bpffs_dir().to_owned();
    let measured = world.ns.enter(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("runtime")?;
        runtime.block_on(measure::measure(config, &services, &kubeconfigs, &bpffs))
    })?;
    let measured = match measured {
        Ok(measured) => measured,
        Err(error) => {
            let _ = world.check_running();
            return Err(error.context(world.logs()));
        }
    };
    world.check_running()?;
    let controllers = world.reconcile_stats()?;
    let agent_vm_hwm_kib = world
        .agent
        .pid()
        .and_then(|pid| vm_hwm_kib(pid).ok())
        .unwrap_or(0);
    let p = |v: &[f64], q| crate::stats::percentile(v, q).unwrap_or(f64::NAN);
    progress(&format!(
        "  controller: export → import p50 {:.0} ms, p99 {:.0} ms; endpoint change → map p50 {:.0} ms, p99 {:.0} ms ({:.0}s in total)",
        p(&measured.export_to_import_ms, 50.0),
        p(&measured.export_to_import_ms, 99.0),
        p(&measured.endpoint_change_ms, 50.0),
        p(&measured.endpoint_change_ms, 99.0),
        started.elapsed().as_secs_f64()
    ));
    Ok(ControllerBench {
        clusters: CLUSTERS.len(),
        exports: config.exports,
        endpoints: config.endpoints,
        export_rate: config.export_rate,
        change_rate: config.change_rate,
        export_to_import_ms: measured.export_to_import_ms,
        export_to_first_import_ms: measured.export_to_first_import_ms,
        exports_not_seen: measured.exports_not_seen,
        endpoint_change_ms: measured.endpoint_change_ms,
        change_controller_ms: measured.change_controller_ms,
        change_agent_ms: measured.change_agent_ms,
        changes_not_seen: measured.changes_not_seen,
        controllers,
        agent_vm_hwm_kib,
        notes: vec![
            format!(
                "Three simulated clusters, each a local API server (in-process, kube-rs and kubectl compatible) with its own `mcs-agent controller` reading all three, production timings (--debounce 0.1 s, Lease 15 s); the agent (--source kube) on a node of {}. All on loopback in one network namespace: no network latency between clusters.",
                CLUSTERS[0]
            ),
            format!(
                "Export → import: {} ServiceExports created at {}/s, round-robin over the clusters, open loop (a create never waits for an earlier import). Timed from the create's answer to the moment a watch on every cluster has delivered the ServiceImport with spec.ips.",
                config.exports, config.export_rate
            ),
            format!(
                "Endpoint change → map: with every export in place, one endpoint address of a service exported by cluster-b or cluster-c replaced in its source EndpointSlice (merge patch) at {}/s. Timed from the patch's answer until the agent's pinned maps on {}'s node hold the new address behind the service's ClusterSetIP (polled every millisecond).",
                config.change_rate, CLUSTERS[0]
            ),
        ],
    })
}
