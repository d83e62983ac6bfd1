//! Every manifest in `deploy/` parses as its Kubernetes type, and the
//! security-relevant parts are what the docs promise: least privilege,
//! read-only RBAC (+ events), probes on the agent's endpoints.

use std::{collections::BTreeSet, fs, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, Probe, ServiceAccount},
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
    assert!(
        args.iter().any(|a| a.starts_with("--metrics-addr=")),
        "{args:?}"
    );

    let host_paths: BTreeSet<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert!(host_paths.contains("/sys/fs/bpf"));
    assert!(host_paths.contains("/sys/fs/cgroup/unified"));
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
                    verbs.is_subset(&BTreeSet::from(["create", "patch"])),
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
