//! kubectl (v1.32, the machine image's `/usr/bin/kubectl`, or
//! `$MCS_KUBECTL`) as a real client of the local API server, through the
//! kubeconfig the server writes: the seed's workflow (`kubectl apply` of a
//! Service, its EndpointSlice and a ServiceExport in one cluster, `kubectl
//! get serviceimports` in the other), re-applies that take the strategic
//! merge patch path, server-side apply, merge patches, deletes, discovery.
//! No root needed. Without kubectl these tests fail, saying so.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use mcs_tests::apiserver::{LocalApiServer, Options, ResourceId};
use serde_json::{Value, json};

/// kubectl with its own kubeconfig and discovery cache (a reused port
/// must not find another server's cached discovery); the shared client,
/// panicking on failure as a test does.
struct Kubectl(mcs_tests::kubectl::Kubectl);

impl Kubectl {
    fn new(kubeconfig: &Path) -> Self {
        Self(mcs_tests::kubectl::Kubectl::new(kubeconfig).unwrap_or_else(|e| panic!("{e:#}")))
    }

    fn of(server: &LocalApiServer) -> Self {
        Self::new(&server.kubeconfig_file().expect("kubeconfig"))
    }

    /// Runs kubectl, which must succeed; returns its standard output.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.0.run(args, stdin).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs kubectl, which must fail; returns its standard error.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.0.output(args, stdin).expect("run kubectl");
        assert!(!output.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        self.0.get_json(args).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// The seed's objects in one cluster: a Service, its EndpointSlice and
/// its export (mcs-api and GKE flavours).
fn seed(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  selector:
    app: web
  ports:
  - name: http
    port: {port}
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: demo
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
- addresses: ["10.1.0.5"]
  conditions:
    ready: true
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: web
  namespace: demo
---
apiVersion: net.gke.io/v1
kind: ServiceExport
metadata:
  name: web
  namespace: demo
"#
    )
}

fn ports(service: &Value) -> Vec<u64> {
    service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["port"].as_u64().expect("port"))
        .collect()
}

fn services() -> ResourceId {
    ResourceId::new("v1", "services")
}

#[test]
fn the_seed_workflow_with_kubectl() {
    let cluster_a = LocalApiServer::start().expect("cluster A");
    let cluster_b = LocalApiServer::start().expect("cluster B");
    let a = Kubectl::of(&cluster_a);
    let b = Kubectl::of(&cluster_b);

    let created = a.ok(&["apply", "-f", "-"], Some(&seed(80)));
    for line in [
        "namespace/demo created",
        "service/web created",
        "endpointslice.discovery.k8s.io/web-abcde created",
        "serviceexport.multicluster.x-k8s.io/web created",
        "serviceexport.net.gke.io/web created",
    ] {
        assert!(created.contains(line), "{line:?} in {created}");
    }
    let service = cluster_a
        .get(&services(), "demo", "web")
        .expect("Service stored");
    assert!(
        service["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.96."))
    );

    let listed = a.json(&[
        "get",
        "serviceexports,services,endpointslices",
        "-n",
        "demo",
    ]);
    let kinds: Vec<(&str, &str)> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("ServiceExport", "web"),
            ("Service", "web"),
            ("EndpointSlice", "web-abcde")
        ],
        "`serviceexports` is the first group's (multicluster.x-k8s.io)"
    );

    // Someone else adds a port (a strategic merge patch merging by port).
    a.ok(
        &[
            "patch",
            "service",
            "web",
            "-n",
            "demo",
            "-p",
            r#"{"spec":{"ports":[{"name":"metrics","port":9090}]}}"#,
        ],
        None,
    );
    // Re-applying a changed port: kubectl sends a strategic merge patch
    // (a three-way diff against its last-applied annotation) that
    // replaces port 80 and leaves the port it never applied alone.
    let before = cluster_a.requests().len();
    let configured = a.ok(&["apply", "-f", "-"], Some(&seed(8080)));
    assert!(
        configured.contains("service/web configured"),
        "{configured}"
    );
    assert!(
        configured.contains("serviceexport.net.gke.io/web unchanged"),
        "{configured}"
    );
    let patched: Vec<_> = cluster_a.requests()[before..]
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path.clone())
        .collect();
    assert!(
        patched.contains(&"/api/v1/namespaces/demo/services/web".to_owned()),
        "{patched:?}"
    );
    let service = cluster_a.get(&services(), "demo", "web").expect("Service");
    assert_eq!(ports(&service), [8080, 9090], "80 became 8080, 9090 kept");
    let slice = a.json(&["get", "endpointslice", "web-abcde", "-n", "demo"]);
    assert_eq!(
        slice["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );

    // Server-side apply: created, then merged, under kubectl's manager.
    let export = "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata:\n  name: api\n  namespace: demo\n  labels:\n    team: payments\n";
    let applied = a.ok(&["apply", "--server-side", "-f", "-"], Some(export));
    assert!(
        applied.contains("serviceexport.multicluster.x-k8s.io/api serverside-applied"),
        "{applied}"
    );
    let relabelled = export.replace("payments", "billing");
    a.ok(&["apply", "--server-side", "-f", "-"], Some(&relabelled));
    let api = a.json(&[
        "get",
        "serviceexports.v1beta1.multicluster.x-k8s.io",
        "api",
        "-n",
        "demo",
    ]);
    assert_eq!(api["metadata"]["labels"], json!({"team": "billing"}));
    a.ok(&["apply", "--server-side", "-f", "-"], Some(&seed(8080)));

    // Merge patch.
    a.ok(
        &[
            "patch",
            "serviceexport.net.gke.io",
            "web",
            "-n",
            "demo",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"annotations":{"note":"patched"}}}"#,
        ],
        None,
    );
    let gke = a.json(&["get", "serviceexports.net.gke.io", "web", "-n", "demo"]);
    assert_eq!(gke["metadata"]["annotations"]["note"], "patched");

    // The other cluster: the import (as a controller writes it) is listed.
    let import = json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"type": "ClusterSetIP", "ips": ["10.96.100.10"], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    });
    cluster_b.apply(import).expect("import in cluster B");
    let table = b.ok(&["get", "serviceimports", "-A"], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "TYPE", "IP"]);
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row, ["demo", "web", "ClusterSetIP", r#"["10.96.100.10"]"#]);
    let imports = b.json(&["get", "serviceimports", "-A"]);
    assert_eq!(imports["items"][0]["spec"]["ips"], json!(["10.96.100.10"]));

    // Deletes.
    let deleted = a.ok(
        &[
            "delete",
            "serviceexport.net.gke.io/web",
            "service/web",
            "-n",
            "demo",
        ],
        None,
    );
    assert!(
        deleted.contains("serviceexport.net.gke.io \"web\" deleted"),
        "{deleted}"
    );
    assert!(cluster_a.get(&services(), "demo", "web").is_none());
    let missing = a.fails(&["get", "service", "web", "-n", "demo"], None);
    assert!(
        missing.contains(r#"Error from server (NotFound): services "web" not found"#),
        "{missing}"
    );

    a.ok(&["delete", "namespace", "demo"], None);
    let namespaces = a.ok(&["get", "ns"], None);
    let names: Vec<&str> = namespaces
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    assert!(
        namespaces.lines().skip(1).all(|l| l.contains("Active")),
        "{namespaces}"
    );
    assert!(
        cluster_a
            .list(
                &ResourceId::new("multicluster.x-k8s.io/v1beta1", "serviceexports"),
                None
            )
            .is_empty()
    );
}

#[test]
fn kubectl_sees_the_apiservers_errors_and_resources() {
    let server = LocalApiServer::start().expect("server");
    let kubectl = Kubectl::of(&server);
    let service =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    kubectl.ok(&["create", "-f", "-"], Some(service));
    let again = kubectl.fails(&["create", "-f", "-"], Some(service));
    assert!(again.contains("(AlreadyExists)"), "{again}");
    let elsewhere = kubectl.fails(&["create", "-n", "nowhere", "-f", "-"], Some(service));
    assert!(
        elsewhere.contains(r#"namespaces "nowhere" not found"#),
        "{elsewhere}"
    );

    // `kubectl create namespace` sends protobuf.
    kubectl.ok(&["create", "namespace", "team-a"], None);
    kubectl.ok(&["create", "-n", "team-a", "-f", "-"], Some(service));
    let labels = kubectl.json(&["get", "namespace", "team-a"]);
    assert_eq!(
        labels["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
    assert_eq!(labels["status"]["phase"], "Active");

    let resources = kubectl.ok(&["api-resources"], None);
    for (name, version) in [
        ("serviceexports", "multicluster.x-k8s.io/v1beta1"),
        ("serviceexports", "net.gke.io/v1"),
        ("serviceimports", "multicluster.x-k8s.io/v1beta1"),
        ("endpointslices", "discovery.k8s.io/v1"),
        ("leases", "coordination.k8s.io/v1"),
        ("services", "v1"),
    ] {
        assert!(
            resources.lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.first() == Some(&name) && fields.contains(&version)
            }),
            "{name} {version} in\n{resources}"
        );
    }
    // Short names resolve through discovery.
    let shorts = kubectl.ok(&["get", "svcex", "-A"], None);
    assert!(
        shorts.contains("No resources found") || shorts.is_empty(),
        "{shorts}"
    );
    let crds = kubectl.ok(&["get", "crd", "-o", "name"], None);
    assert!(
        crds.contains(
            "customresourcedefinition.apiextensions.k8s.io/serviceexports.multicluster.x-k8s.io"
        ),
        "{crds}"
    );
}

#[test]
fn the_binary_serves_kubectl_until_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcs-local-apiserver"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcs-local-apiserver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );
    let kubectl = Kubectl::new(&kubeconfig);
    kubectl.ok(&["apply", "-f", "-"], Some(&seed(80)));
    let exports = kubectl.ok(&["get", "serviceexports", "-n", "demo", "-o", "name"], None);
    assert_eq!(exports.trim(), "serviceexport.multicluster.x-k8s.io/web");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");

    // A CRD directory that does not exist is an error naming it.
    let output = Command::new(env!("CARGO_BIN_EXE_mcs-local-apiserver"))
        .args(["--crds", "/nonexistent/crds"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/crds"));
}

#[test]
fn crds_applied_with_kubectl_serve_their_kinds_until_deleted() {
    let server = LocalApiServer::start_with(Options {
        crd_dirs: Vec::new(),
        ..Options::default()
    })
    .expect("a server without CRDs");
    let kubectl = Kubectl::of(&server);
    let export = "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata:\n  name: web\nspec:\n  exportedLabels:\n    a: b\n";
    let unknown = kubectl.fails(&["apply", "-f", "-"], Some(export));
    assert!(
        unknown.contains("no matches for kind \"ServiceExport\""),
        "{unknown}"
    );

    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let crds = crds.to_str().expect("UTF-8 path");
    let installed = kubectl.ok(&["apply", "-f", crds], None);
    assert!(
        installed.contains("serviceexports.multicluster.x-k8s.io created"),
        "{installed}"
    );
    // kubectl caches discovery: a fresh cache sees the new kinds at once.
    let kubectl = Kubectl::of(&server);
    kubectl.ok(&["apply", "-f", "-"], Some(export));
    let bogus = export.replace("  exportedLabels:", "  bogus: 1\n  exportedLabels:");
    let strict = kubectl.fails(&["apply", "-f", "-"], Some(&bogus));
    assert!(
        strict.contains(r#"strict decoding error: unknown field "spec.bogus""#),
        "{strict}"
    );

    kubectl.ok(
        &["delete", "crd", "serviceexports.multicluster.x-k8s.io"],
        None,
    );
    let exports = ResourceId::new("multicluster.x-k8s.io/v1beta1", "serviceexports");
    assert!(
        server.list(&exports, None).is_empty(),
        "a CRD's objects go with it"
    );
    let gone = Kubectl::of(&server).fails(&["get", "serviceexports"], None);
    assert!(
        gone.contains("the server doesn't have a resource type"),
        "{gone}"
    );
}
