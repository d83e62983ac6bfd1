//! The demo's second part, the seed's workflow end to end: three simulated
//! clusters (see [`crate::clusterset_traffic`]), each with its local API
//! server, `mcs-agent controller` and the agent on its node. `kubectl apply`
//! of a Service, its EndpointSlice and a ServiceExport in cluster-a and in
//! cluster-b; the ServiceImport appears in cluster-c with its ClusterSetIP
//! (`kubectl get serviceimports`); `curl http://web.demo.svc.clusterset.local`
//! from cluster-c's client pod, resolved by the pod's own resolver through
//! the agent's DNS responder, is answered by the pods of both clusters.
//!
//! Needs root (namespaces, eBPF) and kubectl.

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    clusterset::{SETTLE, wait_for},
    clusterset_traffic::{CLUSTERS, NS, TARGET_PORT, ThreeClusters, backend_ip},
    kubectl::Kubectl,
    servers::Answer,
};

/// The exported Service.
pub const SERVICE: &str = "web";
/// The name a pod calls.
pub const NAME: &str = "web.demo.svc.clusterset.local";
const CURLS: usize = 12;
/// The importing cluster (index into [`CLUSTERS`]); 0 and 1 export.
const IMPORTER: usize = 2;

/// What a user applies in an exporting cluster: the Service, the
/// EndpointSlice its controller would write for pod `pod`, and GKE's
/// ServiceExport.
fn exported(pod: &str) -> Result<String> {
    let ip = backend_ip(pod)?;
    Ok(format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {SERVICE}, namespace: {NS}}}
spec:
  selector: {{app: {SERVICE}}}
  ports:
  - {{name: http, port: 80, targetPort: {TARGET_PORT}, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {SERVICE}-{pod}
  namespace: {NS}
  labels: {{kubernetes.io/service-name: {SERVICE}}}
addressType: IPv4
ports: [{{name: http, port: {TARGET_PORT}, protocol: TCP}}]
endpoints:
- addresses: [\"{ip}\"]
  conditions: {{ready: true}}
---
apiVersion: net.gke.io/v1
kind: ServiceExport
metadata: {{name: {SERVICE}, namespace: {NS}}}
"
    ))
}

/// `/etc/netns/NAME/resolv.conf`: what `ip netns exec NAME` shows a
/// process as `/etc/resolv.conf`. Removed on drop.
struct PodResolver {
    dir: PathBuf,
}

impl PodResolver {
    fn new(netns: &str, nameserver: &str) -> Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(netns);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let resolver = Self { dir };
        fs::write(
            resolver.dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        )
        .context("writing the pod's resolv.conf")?;
        Ok(resolver)
    }
}

impl Drop for PodResolver {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        // /etc/netns itself only when nothing else uses it.
        let _ = fs::remove_dir("/etc/netns");
    }
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the export workflow, printing each step with `step` and details
/// with `say`.
pub fn run(interrupted: &AtomicBool, step: &dyn Fn(&str), say: &dyn Fn(&str)) -> Result<()> {
    step(
        "export workflow: three clusters, each with a local API server, `mcs-agent controller` \
         and the agent on its node (DNS on port 53)",
    );
    let mut world = ThreeClusters::build_with_dns_port(53)?;
    let result = workflow(&mut world, interrupted, step, say);
    if result.is_err() {
        say(&world.logs());
    }
    result
}

fn workflow(
    world: &mut ThreeClusters,
    interrupted: &AtomicBool,
    step: &dyn Fn(&str),
    say: &dyn Fn(&str),
) -> Result<()> {
    // Each API server listens on its node's underlay address: kubectl runs
    // in that node's network namespace, as on a machine of the cluster.
    let kubectl: Vec<Kubectl> = world
        .clusters
        .iter()
        .zip(CLUSTERS)
        .map(|(cluster, (_, node, ..))| {
            Kubectl::in_netns(&cluster.kubeconfig, world.topology.node(node)?.netns.name())
        })
        .collect::<Result<_>>()?;
    for (i, pod) in [(0, "a-web1"), (1, "b-web1")] {
        check(interrupted)?;
        step(&format!(
            "{}: kubectl apply -f - (Service {NS}/{SERVICE}, its EndpointSlice with {pod}, \
             ServiceExport)",
            CLUSTERS[i].0
        ));
        say(kubectl[i].apply(&exported(pod)?)?.trim_end());
    }

    check(interrupted)?;
    let importer = CLUSTERS[IMPORTER].0;
    step(&format!("{importer}: kubectl get serviceimports -n {NS}"));
    let import = wait_for(SETTLE, &format!("the import in {importer}"), || {
        let import = kubectl[IMPORTER]
            .get_json(&[
                "get",
                "serviceimports.multicluster.x-k8s.io",
                SERVICE,
                "-n",
                NS,
            ])
            .ok()?;
        let clusters = import["status"]["clusters"].as_array()?.len();
        (import["spec"]["ips"][0].is_string() && clusters == 2).then_some(import)
    })?;
    say(kubectl[IMPORTER]
        .run(
            &[
                "get",
                "serviceimports.multicluster.x-k8s.io",
                "-n",
                NS,
                "-o",
                "custom-columns=NAME:.metadata.name,TYPE:.spec.type,IP:.spec.ips[0],\
                 CLUSTERS:.status.clusters[*].cluster",
            ],
            None,
        )?
        .trim_end());
    let vip = import["spec"]["ips"][0].as_str().context("ClusterSetIP")?;

    check(interrupted)?;
    step(&format!(
        "{importer}'s agent routes {vip}:80 to the pods of cluster-a and cluster-b"
    ));
    world.routed(IMPORTER, SERVICE, 80, &["a-web1", "b-web1"])?;
    let client = world.client(IMPORTER)?.name().to_owned();
    let _resolver = PodResolver::new(&client, CLUSTERS[IMPORTER].2)?;

    check(interrupted)?;
    step(&format!(
        "{importer}'s client pod: curl http://{NAME}/ ({CURLS} times; the pod's resolver asks \
         the agent's DNS on its node)"
    ));
    let mut answered = BTreeSet::new();
    for _ in 0..CURLS {
        check(interrupted)?;
        let output = Command::new("ip")
            .args(["netns", "exec", &client, "curl", "-sS", "--max-time", "5"])
            .arg(format!("http://{NAME}/"))
            .output()
            .context("running curl in the client pod")?;
        ensure!(
            output.status.success(),
            "curl http://{NAME}/ failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: Answer = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("curl printed {}", String::from_utf8_lossy(&output.stdout)))?;
        say(&format!(
            "  answered by {} (seen from {})",
            answer.identity, answer.peer
        ));
        answered.insert(answer.identity.cluster);
    }
    ensure!(
        answered.len() == 2,
        "{CURLS} requests to {NAME} were answered by the pods of {answered:?} only; both \
         exporting clusters were expected"
    );
    Ok(())
}
