//! Every manifest in `deploy/` parses as its Kubernetes type, and the
//! security-relevant parts are what the docs promise: least privilege,
//! read-only RBAC (+ events), probes on the agent's endpoints; the
//! DaemonSet runs the agent for every pod of the node (socket LB at the
//! host's cgroup root, pod interfaces discovered, settings from the
//! ConfigMap and the downward API, DNS on a node-local address that the
//! CoreDNS snippet forwards to), with its map sizes stated and a memory
//! request and limit that hold the maps at those sizes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Default)]
struct Manifests {
    daemonsets: Vec<DaemonSet>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    service_accounts: Vec<ServiceAccount>,
    crds: Vec<CustomResourceDefinition>,
    namespaces: Vec<Namespace>,
    config_maps: Vec<ConfigMap>,
}

fn typed<T: for<'de> Deserialize<'de>>(value: Value, file: &str) -> T {
    T::deserialize(value).unwrap_or_else(|error| panic!("{file}: {error}"))
}

fn load() -> Manifests {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [root.clone(), root.join("crds")] {
        for entry in fs::read_dir(&dir).expect("deploy dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut manifests = Manifests::default();
    for path in files {
        let file = path.display().to_string();
        let text = fs::read_to_string(&path).expect("read manifest");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "DaemonSet" => manifests.daemonsets.push(typed(value, &file)),
                "ClusterRole" => manifests.cluster_roles.push(typed(value, &file)),
                "ClusterRoleBinding" => manifests.bindings.push(typed(value, &file)),
                "ServiceAccount" => manifests.service_accounts.push(typed(value, &file)),
                "CustomResourceDefinition" => manifests.crds.push(typed(value, &file)),
                "Namespace" => manifests.namespaces.push(typed(value, &file)),
                "ConfigMap" => manifests.config_maps.push(typed(value, &file)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    manifests
}

fn probe_path(probe: Option<&Probe>) -> Option<String> {
    probe
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
}

#[test]
fn daemonset_runs_with_least_privilege_and_probes() {
    let manifests = load();
    let [daemonset] = manifests.daemonsets.as_slice() else {
        panic!("exactly one DaemonSet expected");
    };
    let spec = daemonset.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("mcs-agent"));
    let [container] = pod.containers.as_slice() else {
        panic!("one container expected");
    };
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    // Each one is shown necessary by tests/tests/privileges.rs.
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));

    assert_eq!(
        probe_path(container.liveness_probe.as_ref()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(container.readiness_probe.as_ref()).as_deref(),
        Some("/readyz")
    );
    let args = container.args.clone().unwrap_or_default();
    // Metrics and probes on the node's own address, not on every interface.
    assert!(
        args.iter().any(|a| a == "--metrics-addr=$(POD_IP):9464"),
        "{args:?}"
    );
    // Events name the agent (pod and node) from the downward API.
    let downward: BTreeMap<&str, &str> = container
        .env
        .iter()
        .flatten()
        .filter_map(|var| {
            let field = var.value_from.as_ref()?.field_ref.as_ref()?;
            Some((var.name.as_str(), field.field_path.as_str()))
        })
        .collect();
    assert_eq!(
        downward,
        BTreeMap::from([
            ("NODE_NAME", "spec.nodeName"),
            ("POD_IP", "status.podIP"),
            ("POD_NAME", "metadata.name"),
        ])
    );

    let host_paths: BTreeSet<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert!(host_paths.contains("/sys/fs/bpf"));
    // The host's whole cgroup tree (v2-only and hybrid layouts alike).
    assert!(host_paths.contains("/sys/fs/cgroup"), "{host_paths:?}");
    let seccomp = pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .expect("a seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
}

/// The agent container of the DaemonSet and the agent ConfigMap's data.
fn agent_container_and_config() -> (
    k8s_openapi::api::core::v1::Container,
    std::collections::BTreeMap<String, String>,
) {
    let manifests = load();
    let [daemonset] = manifests.daemonsets.as_slice() else {
        panic!("exactly one DaemonSet expected");
    };
    let pod = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let [container] = pod.containers.as_slice() else {
        panic!("one container expected");
    };
    let config = manifests
        .config_maps
        .iter()
        .find(|c| {
            c.metadata.name.as_deref() == Some("mcs-agent")
                && c.metadata.namespace.as_deref() == Some("mcs-system")
        })
        .and_then(|c| c.data.clone())
        .expect("the mcs-agent ConfigMap");
    (container.clone(), config)
}

/// The `run` flag whose environment variable is `env`.
fn flag_of_env(env: &str) -> Option<String> {
    use clap::CommandFactory;
    let cli = mcs_agent::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    run.get_arguments()
        .find(|arg| arg.get_env().is_some_and(|e| e == env))
        .and_then(|arg| arg.get_long().map(str::to_owned))
}

#[test]
fn daemonset_serves_every_pod_from_configured_settings() {
    use clap::Parser;

    let (container, config) = agent_container_and_config();
    let args = container.args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--socket-lb".to_owned()),
        "socket LB on: {args:?}"
    );
    for absent in [
        "--cgroup",
        "--interface",
        "-i",
        "--cluster-id",
        "--socket-lb-host-only",
    ] {
        assert!(
            !args
                .iter()
                .any(|a| a == absent || a.starts_with(&format!("{absent}="))),
            "{absent} in {args:?}: the cgroup root is found, pod interfaces are discovered, \
             the cluster id comes from the ConfigMap"
        );
    }
    // Settings: the downward API or the ConfigMap, never a literal value.
    let mut argv = vec!["mcs-agent".to_owned()];
    // The kubelet expands `$(POD_IP)` from the downward API.
    argv.extend(args.iter().map(|a| a.replace("$(POD_IP)", "192.0.2.10")));
    let mut from_config = BTreeSet::new();
    for env in container.env.iter().flatten() {
        assert!(env.value.is_none(), "{} has a literal value", env.name);
        let source = env.value_from.as_ref().expect("valueFrom");
        if let Some(field) = &source.field_ref {
            let expected = match env.name.as_str() {
                "POD_NAME" => "metadata.name",
                "NODE_NAME" => "spec.nodeName",
                "POD_IP" => "status.podIP",
                other => panic!("unexpected downward API variable {other}"),
            };
            assert_eq!(field.field_path, expected);
            continue;
        }
        let key = source.config_map_key_ref.as_ref().expect("a ConfigMap key");
        assert_eq!(key.name, "mcs-agent");
        let flag = flag_of_env(&env.name).unwrap_or_else(|| {
            panic!("{} is no environment variable of `mcs-agent run`", env.name)
        });
        from_config.insert(env.name.as_str());
        match config.get(&key.key) {
            Some(value) => argv.push(format!("--{flag}={value}")),
            None => assert_eq!(
                key.optional,
                Some(true),
                "{} missing from the ConfigMap",
                key.key
            ),
        }
    }
    let names: BTreeSet<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    for needed in [
        "POD_NAME",
        "NODE_NAME",
        "MCS_CLUSTER_ID",
        "MCS_DNS_ZONE",
        "MCS_DNS_ADDR",
        "MCS_DNS_LINK",
        "MCS_POD_INTERFACES",
        // Metrics and probes bind to the node's address (`$(POD_IP)`).
        "POD_IP",
    ] {
        assert!(names.contains(needed), "{needed} not set: {names:?}");
    }
    assert!(
        !config.contains_key("cluster-id"),
        "the cluster id is set per cluster, not shipped"
    );
    // What the agent would run with parses, and is what the docs promise.
    let cli =
        mcs_agent::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let mcs_agent::cli::Command::Run(run) = cli.command else {
        panic!("not the run subcommand");
    };
    assert!(run.socket_lb && run.cgroup.is_none());
    assert!(!run.pod_interfaces.is_empty());
    let dns = run.dns_addr.expect("the DNS responder is on");
    let std::net::IpAddr::V4(dns_ip) = dns.ip() else {
        panic!("an IPv4 DNS address");
    };
    assert!(
        dns_ip.is_link_local(),
        "{dns}: a node-local (link-local) address"
    );
    assert!(
        run.dns_link.is_some(),
        "the agent holds the DNS address on its own link"
    );
    let metrics = run.metrics_addr.expect("metrics on");
    assert!(
        !metrics.ip().is_unspecified(),
        "metrics bound to the node's address, not every interface: {metrics}"
    );
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let port = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| h.port.clone())
            .expect("an HTTP probe");
        assert_eq!(
            port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(metrics.port().into()),
            "probes on the metrics port"
        );
    }

    // The CoreDNS snippet forwards exactly the agent's zone to its address.
    let text = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/coredns-clusterset.yaml"),
    )
    .expect("CoreDNS snippet");
    let snippet: ConfigMap = serde_yaml_ng::from_str(&text).expect("a ConfigMap");
    let server = snippet
        .data
        .as_ref()
        .and_then(|d| d.values().find(|v| v.contains("forward")).cloned())
        .expect("a server block");
    assert!(
        server
            .trim_start()
            .starts_with(&format!("{}:53 {{", run.dns_zone)),
        "the block serves {}: {server}",
        run.dns_zone
    );
    assert!(server.contains(&format!("forward . {dns}")), "{server}");
}

/// The possible CPUs and service ports the DaemonSet's memory limit is
/// sized for (its comment says so): per-CPU counters grow with the CPUs,
/// the agent's own memory with the service ports.
const SIZED_FOR_CPUS: u32 = 64;
const SIZED_FOR_SERVICE_PORTS: u64 = 10_000;
/// The fewest possible CPUs of a node the request is sized for.
const SMALLEST_NODE_CPUS: u32 = 2;

/// `NNNMi` or `NGi` as bytes.
fn quantity_bytes(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(quantity.len() - 2);
    let number: u64 = number.parse().unwrap_or_else(|e| panic!("{quantity}: {e}"));
    match unit {
        "Mi" => number << 20,
        "Gi" => number << 30,
        _ => panic!("{quantity}: Mi or Gi expected"),
    }
}

/// The DaemonSet's map sizes (from its arguments) and its memory request
/// and limit, in bytes.
fn daemonset_memory() -> (mcs_agent::dataplane::MapSizes, u64, u64) {
    use clap::Parser;

    let (container, _) = agent_container_and_config();
    // The kubelet expands `$(VAR)` from the container's env (the downward
    // API for POD_IP).
    let args = container
        .args
        .iter()
        .flatten()
        .map(|a| a.replace("$(POD_IP)", "192.0.2.10"));
    let cli =
        mcs_agent::cli::Cli::try_parse_from(std::iter::once("mcs-agent".to_owned()).chain(args))
            .unwrap_or_else(|e| panic!("daemonset args: {e}"));
    let mcs_agent::cli::Command::Run(run) = cli.command else {
        panic!("not the run subcommand");
    };
    let resources = container.resources.as_ref().expect("resources");
    let memory = |quantities: Option<&std::collections::BTreeMap<String, _>>, what| {
        quantities
            .and_then(|q| q.get("memory"))
            .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| quantity_bytes(&q.0))
            .unwrap_or_else(|| panic!("a memory {what}"))
    };
    (
        run.map_sizes(),
        memory(resources.requests.as_ref(), "request"),
        memory(resources.limits.as_ref(), "limit"),
    )
}

/// BPF maps are charged to the agent's cgroup and preallocated when
/// created: every node pays for them at its CPU count from the start, so
/// the request covers them on the smallest node with the agent's own base.
#[test]
fn daemonset_memory_request_covers_the_bpf_maps() {
    use mcs_agent::dataplane::memory;

    let (sizes, request, limit) = daemonset_memory();
    let maps = memory::total(&sizes, SMALLEST_NODE_CPUS);
    let needed = maps + memory::AGENT_BASE_BYTES;
    assert!(
        request >= needed,
        "request {request} below {needed} bytes (maps {maps}) at {SMALLEST_NODE_CPUS} CPUs"
    );
    assert!(request <= limit, "request {request} above limit {limit}");
}

#[test]
fn daemonset_memory_limit_holds_the_maps_at_its_sizes() {
    use mcs_agent::dataplane::memory;

    let (sizes, _, limit) = daemonset_memory();
    assert_ne!(
        sizes,
        mcs_agent::dataplane::MapSizes::default(),
        "the DaemonSet states its map sizes"
    );
    // The formula of docs/operations.md ("Memory"): every map at its
    // capacity, and the agent at the service ports the sizes are for (one
    // port per ClusterSetIP: three frontends each, with its two markers).
    assert!(u64::from(sizes.frontends) >= 3 * SIZED_FOR_SERVICE_PORTS);
    assert!(u64::from(sizes.backend_slots) >= 10 * SIZED_FOR_SERVICE_PORTS);
    let maps = memory::total(&sizes, SIZED_FOR_CPUS);
    let agent = memory::agent_bytes(SIZED_FOR_SERVICE_PORTS);
    let needed = maps + agent;
    assert!(
        limit >= needed,
        "limit {limit} below {needed} bytes (maps {maps}, agent {agent}) at {SIZED_FOR_CPUS} CPUs"
    );
    // And not a limit that would hide a model gone wrong.
    assert!(
        limit <= needed + needed / 4,
        "limit {limit} far above {needed} bytes (maps {maps}, agent {agent}) at {SIZED_FOR_CPUS} CPUs"
    );
}

#[test]
fn rbac_is_read_only_plus_events() {
    let manifests = load();
    let [role] = manifests.cluster_roles.as_slice() else {
        panic!("exactly one ClusterRole expected");
    };
    let mut resources = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        for resource in rule.resources.iter().flatten() {
            resources.insert(resource.as_str());
            if resource == "events" {
                assert!(
                    verbs.is_subset(&BTreeSet::from(["create", "get", "patch"])),
                    "{verbs:?}"
                );
            } else {
                assert!(
                    verbs.is_subset(&BTreeSet::from(["get", "list", "watch"])),
                    "{resource}: {verbs:?} is not read-only"
                );
            }
        }
    }
    for needed in ["serviceimports", "endpointslices", "endpoints", "events"] {
        assert!(
            resources.contains(needed),
            "{needed} missing from {resources:?}"
        );
    }
    let [binding] = manifests.bindings.as_slice() else {
        panic!("exactly one ClusterRoleBinding expected");
    };
    assert_eq!(
        Some(binding.role_ref.name.clone()),
        role.metadata.name.clone()
    );
    assert!(
        manifests
            .service_accounts
            .iter()
            .any(|sa| sa.metadata.name.as_deref() == Some("mcs-agent"))
    );
    assert_eq!(manifests.namespaces.len(), 1);
}

#[test]
fn crds_serve_both_mcs_api_versions_and_store_v1beta1() {
    let manifests = load();
    let crd = manifests
        .crds
        .iter()
        .find(|crd| crd.spec.group == "multicluster.x-k8s.io")
        .expect("ServiceImport CRD");
    assert_eq!(crd.spec.names.kind, "ServiceImport");
    let versions: Vec<(&str, bool, bool)> = crd
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(
        versions,
        [("v1alpha1", true, false), ("v1beta1", true, true)]
    );
}

/// The controller's manifests (`deploy/controller/`), typed.
#[derive(Default)]
struct ControllerManifests {
    deployments: Vec<k8s_openapi::api::apps::v1::Deployment>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    roles: Vec<k8s_openapi::api::rbac::v1::Role>,
    role_bindings: Vec<k8s_openapi::api::rbac::v1::RoleBinding>,
    service_accounts: Vec<ServiceAccount>,
    policies: Vec<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>,
    policy_bindings:
        Vec<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>,
}

fn load_controller() -> ControllerManifests {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller");
    let mut manifests = ControllerManifests::default();
    for entry in fs::read_dir(&dir).expect("deploy/controller") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let file = path.display().to_string();
        let text = fs::read_to_string(&path).expect("read manifest");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            match value["kind"].as_str().unwrap_or_default() {
                "Deployment" => manifests.deployments.push(typed(value, &file)),
                "ClusterRole" => manifests.cluster_roles.push(typed(value, &file)),
                "ClusterRoleBinding" => manifests.bindings.push(typed(value, &file)),
                "Role" => manifests.roles.push(typed(value, &file)),
                "RoleBinding" => manifests.role_bindings.push(typed(value, &file)),
                "ServiceAccount" => manifests.service_accounts.push(typed(value, &file)),
                "ValidatingAdmissionPolicy" => manifests.policies.push(typed(value, &file)),
                "ValidatingAdmissionPolicyBinding" => {
                    manifests.policy_bindings.push(typed(value, &file))
                }
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    manifests
}

/// (resource, verb) pairs a role grants.
fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for rule in rules {
        for resource in rule.resources.iter().flatten() {
            for verb in &rule.verbs {
                pairs.insert((resource.clone(), verb.clone()));
            }
        }
    }
    pairs
}

#[test]
fn controller_deployment_is_unprivileged_and_its_arguments_parse() {
    use clap::Parser;

    let manifests = load_controller();
    let [deployment] = manifests.deployments.as_slice() else {
        panic!("exactly one Deployment expected");
    };
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas: one leads, one waits");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("mcs-controller"));
    assert_ne!(pod.host_network, Some(true));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let [container] = pod.containers.as_slice() else {
        panic!("one container expected");
    };
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(
        capabilities.add.is_none(),
        "the controller needs no capability"
    );
    assert_eq!(
        probe_path(container.liveness_probe.as_ref()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(container.readiness_probe.as_ref()).as_deref(),
        Some("/readyz")
    );
    // The Lease identity and namespace come from the downward API.
    let env: BTreeSet<&str> = container
        .env
        .iter()
        .flatten()
        .filter(|e| e.value_from.as_ref().is_some_and(|v| v.field_ref.is_some()))
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, BTreeSet::from(["POD_NAME", "POD_NAMESPACE"]));

    // The arguments are a valid command line of this very binary.
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| a.replace("$(MCS_CLUSTER_ID)", "cluster-a"))
        .collect();
    let cli =
        mcs_agent::cli::Cli::try_parse_from(std::iter::once("mcs-agent".to_owned()).chain(args))
            .unwrap_or_else(|e| panic!("deployment args: {e}"));
    let mcs_agent::cli::Command::Controller(parsed) = cli.command else {
        panic!("not the controller subcommand");
    };
    parsed.validate().expect("valid combination");
    assert!(
        parsed.kubeconfig.is_none(),
        "in-cluster config for the own cluster"
    );
    assert!(parsed.metrics_addr.is_some());
    let mounts: Vec<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    for member in &parsed.members {
        assert!(
            mounts.iter().any(|m| member.kubeconfig.starts_with(m)),
            "{} not mounted",
            member.kubeconfig.display()
        );
    }
}

#[test]
fn controller_writes_only_imports_slices_export_status_leases_and_events() {
    let manifests = load_controller();
    let role = manifests
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("mcs-controller"))
        .expect("ClusterRole mcs-controller");
    let read = BTreeSet::from(["get", "list", "watch"]);
    let writable = BTreeSet::from([
        "serviceimports",
        "serviceimports/status",
        "serviceexports/status",
        "endpointslices",
        "events",
    ]);
    let granted = grants(role.rules.as_deref().unwrap_or_default());
    for (resource, verb) in &granted {
        assert!(
            read.contains(verb.as_str()) || writable.contains(resource.as_str()),
            "{resource}: {verb} is a write outside what the controller owns"
        );
        assert!(verb != "*" && resource != "*", "no wildcards");
    }
    for needed in [
        ("serviceexports", "watch"),
        ("services", "watch"),
        ("endpointslices", "watch"),
        ("namespaces", "watch"),
        ("serviceimports", "watch"),
        ("serviceimports", "patch"),
        ("serviceimports", "delete"),
        ("serviceimports/status", "patch"),
        ("serviceexports/status", "patch"),
        ("endpointslices", "patch"),
        ("endpointslices", "delete"),
        ("events", "create"),
    ] {
        assert!(
            granted.contains(&(needed.0.to_owned(), needed.1.to_owned())),
            "{needed:?} missing"
        );
    }
    assert!(
        !granted.contains(&("serviceexports".to_owned(), "patch".to_owned())),
        "the controller never changes what users export"
    );

    // Members: read only.
    let reader = manifests
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("mcs-controller-member-reader"))
        .expect("member reader role");
    let granted = grants(reader.rules.as_deref().unwrap_or_default());
    assert!(
        granted.iter().all(|(_, verb)| read.contains(verb.as_str())),
        "{granted:?}"
    );
    for resource in ["serviceexports", "services", "endpointslices"] {
        assert!(granted.contains(&(resource.to_owned(), "watch".to_owned())));
    }

    // The Lease: in its namespace, update only of its own Lease.
    let [lease] = manifests.roles.as_slice() else {
        panic!("one Role (the Lease) expected");
    };
    for rule in lease.rules.iter().flatten() {
        assert_eq!(rule.resources.as_deref(), Some(&["leases".to_owned()][..]));
        if rule.verbs.iter().any(|v| v == "update" || v == "get") {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["mcs-controller".to_owned()][..])
            );
        }
    }
    let [lease_binding] = manifests.role_bindings.as_slice() else {
        panic!("one RoleBinding expected");
    };
    assert_eq!(
        Some(lease_binding.role_ref.name.clone()),
        lease.metadata.name.clone()
    );
    for binding in &manifests.bindings {
        assert!(
            manifests
                .cluster_roles
                .iter()
                .any(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())),
            "binding to a missing role"
        );
    }

    // Writes by the controller are limited to objects labelled as its own.
    let [policy] = manifests.policies.as_slice() else {
        panic!("one ValidatingAdmissionPolicy expected");
    };
    let spec = policy.spec.as_ref().expect("policy spec");
    let resources: BTreeSet<&str> = spec
        .match_constraints
        .as_ref()
        .and_then(|m| m.resource_rules.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.resources.iter().flatten().map(String::as_str))
        .collect();
    assert_eq!(
        resources,
        BTreeSet::from(["endpointslices", "serviceimports"])
    );
    let text = serde_json::to_string(spec).expect("json");
    assert!(text.contains("mcs-controller.dataplane.mcs.dev"));
    assert!(text.contains("system:serviceaccount:mcs-system:mcs-controller"));
    let [binding] = manifests.policy_bindings.as_slice() else {
        panic!("one policy binding expected");
    };
    let binding_spec = binding.spec.as_ref().expect("binding spec");
    assert_eq!(
        binding_spec.policy_name.as_deref(),
        policy.metadata.name.as_deref()
    );
    assert_eq!(
        binding_spec.validation_actions.as_deref(),
        Some(&["Deny".to_owned()][..])
    );
}
