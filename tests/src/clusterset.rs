//! Simulated cluster sets for the export controller (`mcs-agent
//! controller`): one local API server per cluster and one or more
//! controller processes per cluster, each reading every member and writing
//! only into its own cluster — the same wiring as in production, with
//! kubeconfigs pointing at the local servers.
//!
//! Objects are the conformance suite's: a `hello` Service (TCP and UDP port
//! 42, ClientIP affinity with a 10 s timeout), its ServiceExport and
//! EndpointSlice. Nothing here needs root; the traffic tests put the API
//! servers inside their topology's namespaces.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

use crate::{
    apiserver::{LocalApiServer, ResourceId},
    netns::Netns,
};

/// The namespace the conformance objects live in.
pub const NS: &str = "mcs-conformance";
/// The exported Service.
pub const HELLO: &str = "hello";
/// ClusterSetIP range every simulated cluster allocates from.
pub const CIDR_V4: &str = "10.240.0.0/16";
pub const CIDR_V6: &str = "fd00:240::/108";
/// How long a controller gets to make a change visible.
pub const SETTLE: Duration = Duration::from_secs(20);

pub fn services() -> ResourceId {
    ResourceId::new("v1", "services")
}
pub fn slices() -> ResourceId {
    ResourceId::new("discovery.k8s.io/v1", "endpointslices")
}
pub fn leases() -> ResourceId {
    ResourceId::new("coordination.k8s.io/v1", "leases")
}
pub fn namespaces() -> ResourceId {
    ResourceId::new("v1", "namespaces")
}
/// ServiceImports as served in `version` of multicluster.x-k8s.io.
pub fn imports(version: &str) -> ResourceId {
    ResourceId::new(
        &format!("multicluster.x-k8s.io/{version}"),
        "serviceimports",
    )
}
pub fn exports(version: &str) -> ResourceId {
    ResourceId::new(
        &format!("multicluster.x-k8s.io/{version}"),
        "serviceexports",
    )
}

/// One simulated cluster: its API server and a kubeconfig for it.
pub struct SimCluster {
    pub id: String,
    pub server: LocalApiServer,
    pub kubeconfig: PathBuf,
}

impl SimCluster {
    /// A cluster whose API server listens on 127.0.0.1.
    pub fn start(id: &str) -> Result<Self> {
        Self::with_server(id, LocalApiServer::start()?)
    }

    /// A cluster whose API server listens on `addr` (inside a topology).
    pub fn with_server(id: &str, server: LocalApiServer) -> Result<Self> {
        let kubeconfig = server.kubeconfig_file()?;
        let cluster = Self {
            id: id.to_owned(),
            server,
            kubeconfig,
        };
        cluster.apply(namespace(NS))?;
        cluster.apply(namespace("mcs-system"))?;
        Ok(cluster)
    }

    pub fn apply(&self, object: Value) -> Result<()> {
        self.server
            .apply(object)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.id))
    }

    pub fn get(&self, resource: &ResourceId, name: &str) -> Option<Value> {
        self.server.get(resource, NS, name)
    }

    pub fn delete(&self, resource: &ResourceId, name: &str) -> bool {
        self.server.delete(resource, NS, name)
    }

    /// The conformance namespace's MCS EndpointSlices (those carrying one
    /// of the `multicluster.kubernetes.io` labels, as the suite finds them).
    pub fn mcs_slices(&self) -> Vec<Value> {
        self.server
            .list(&slices(), Some(NS))
            .into_iter()
            .filter(|s| {
                let labels = &s["metadata"]["labels"];
                labels
                    .get("multicluster.kubernetes.io/service-name")
                    .is_some()
                    || labels
                        .get("multicluster.kubernetes.io/source-cluster")
                        .is_some()
            })
            .collect()
    }

    /// The `hello` import as served in v1alpha1 (what the suite reads).
    pub fn hello_import(&self) -> Option<Value> {
        self.get(&imports("v1alpha1"), HELLO)
    }

    /// A condition of the `hello` export.
    pub fn export_condition(&self, type_: &str) -> Option<Value> {
        let export = self.get(&exports("v1alpha1"), HELLO)?;
        export["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Exports `hello` created at `created` (RFC 3339), so that tests
    /// decide which export is the oldest.
    pub fn export_hello(&self, created: &str, spec: Value) -> Result<()> {
        self.apply(service_export(HELLO, created, spec))
    }

    pub fn unexport_hello(&self) -> bool {
        self.delete(&exports("v1alpha1"), HELLO)
    }
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The conformance suite's `hello` Service, with `patch` merged into its
/// spec (e.g. `{"clusterIP": "None"}`).
pub fn hello_service(patch: Value) -> Value {
    let mut spec = json!({
        "selector": {"app": "hello"},
        "ports": [{"name": "tcp", "port": 42, "protocol": "TCP"},
                  {"name": "udp", "port": 42, "protocol": "UDP"}],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
    });
    if let (Value::Object(spec), Value::Object(patch)) = (&mut spec, patch) {
        spec.extend(patch);
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": HELLO, "namespace": NS, "annotations": {"service-only": "x"},
                        "labels": {"service-only": "x"}},
           "spec": spec})
}

pub fn service_export(name: &str, created: &str, spec: Value) -> Value {
    json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
           "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
           "spec": spec})
}

/// An EndpointSlice of `hello` as the ordinary controller writes it.
pub fn hello_slice(name: &str, addresses: &[&str], port: u16) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"kubernetes.io/service-name": HELLO,
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
           "addressType": "IPv4",
           "ports": [{"name": "tcp", "port": port, "protocol": "TCP"},
                     {"name": "udp", "port": port, "protocol": "UDP"}],
           "endpoints": endpoints})
}

/// A running `mcs-agent controller`; SIGKILLed when dropped.
pub struct Controller {
    pub cluster: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

/// Leader election timings short enough for tests.
pub const FAST_LEASE: [&str; 6] = [
    "--lease-duration",
    "3",
    "--renew-deadline",
    "2",
    "--retry-period",
    "0.5",
];

impl Controller {
    /// Starts a controller for `own`, reading `members` (which may include
    /// `own`), with the test lease timings and `extra` arguments.
    pub fn start(own: &SimCluster, members: &[&SimCluster], extra: &[&str]) -> Result<Self> {
        Self::start_in(None, own, members, extra)
    }

    /// [`start`](Self::start) inside a network namespace (a node of a test
    /// topology).
    pub fn start_in(
        netns: Option<&Netns>,
        own: &SimCluster,
        members: &[&SimCluster],
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn(netns, own, members, extra, true)
    }

    /// A controller with the production defaults of every timing (debounce,
    /// Lease, member sync) and the `info` log level, rather than the tests'
    /// short timings and debug logs: what the benchmark measures.
    pub fn start_with_defaults(
        netns: Option<&Netns>,
        own: &SimCluster,
        members: &[&SimCluster],
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn(netns, own, members, extra, false)
    }

    fn spawn(
        netns: Option<&Netns>,
        own: &SimCluster,
        members: &[&SimCluster],
        extra: &[&str],
        test_timings: bool,
    ) -> Result<Self> {
        let mut command = match netns {
            Some(ns) => ns.command(crate::agent::binary())?,
            None => Command::new(crate::agent::binary()),
        };
        command
            .arg("controller")
            .args(["--cluster-id", &own.id])
            .arg("--kubeconfig")
            .arg(&own.kubeconfig)
            .args(["--clusterset-ip-cidr", CIDR_V4])
            .args(["--lease-namespace", "mcs-system"])
            .args(extra)
            .env(
                "RUST_LOG",
                if test_timings {
                    "info,mcs_agent=debug,kube=warn"
                } else {
                    "info,kube=warn"
                },
            )
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if test_timings {
            command.args(["--debounce", "0.05"]).args(FAST_LEASE);
            if !extra.contains(&"--member-sync-timeout") {
                command.args(["--member-sync-timeout", "5"]);
            }
        }
        for member in members {
            command
                .arg("--member")
                .arg(format!("{}={}", member.id, member.kubeconfig.display()));
        }
        let mut child = command.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build -p mcs-agent`)",
                crate::agent::binary().display()
            )
        })?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("stderr")?;
        let sink = log.clone();
        let cluster = own.id.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("MCS_TEST_LOG").is_some() {
                    eprintln!("[controller {cluster}] {line}");
                }
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Ok(Self {
            cluster: own.id.clone(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL: no chance to release the Lease or finish writes.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to 10 s for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        kill(pid, Signal::SIGTERM).context("SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "controller {} exited with {status}:\n{}",
                        self.cluster,
                        self.log()
                    );
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        bail!("controller {} did not stop within 10 s", self.cluster)
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "controller {} exited with {status}:\n{}",
                self.cluster,
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most
/// `timeout`; the error says what was awaited.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} s waiting for {what}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts `check` holds for the whole of `period` (polled every 200 ms).
pub fn holds_for(period: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if !check() {
            bail!("{what} stopped holding");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (for `--metrics-addr`).
pub fn free_local_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// GETs `http://addr/path` and returns the body (metrics, health).
pub fn http_get_text(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A kubeconfig for an address nothing listens on (a member that is down
/// from the start).
pub fn dead_kubeconfig(dir: &std::path::Path) -> Result<PathBuf> {
    let addr = free_local_addr()?;
    let path = dir.join("dead.kubeconfig");
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: dead\n  context:\n    cluster: dead\n    user: u\ncurrent-context: dead\n"
        ),
    )?;
    Ok(path)
}
