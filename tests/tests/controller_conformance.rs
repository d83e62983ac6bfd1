//! The API cases of the upstream mcs-api conformance suite
//! (`conformance/*.go` in kubernetes-sigs/mcs-api; list in the shared docs'
//! mcs-conformance.md), written as our own tests against simulated
//! clusters: one local API server and one `mcs-agent controller` per
//! cluster, each reading every member and writing only into its own.
//! Each test is named after its case and checks what the suite checks.
//!
//! No root needed; the controller binary must be built (`cargo build -p
//! mcs-agent`, done by `cargo xtask test`).

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::Result;
use mcs_tests::clusterset::{
    Controller, HELLO, NS, SETTLE, SimCluster, hello_service, hello_slice, holds_for, imports,
    slices, wait_for,
};
use serde_json::{Value, json};

/// Times of the two exports: cluster-a's is the oldest.
const OLDER: &str = "2025-01-01T00:00:00Z";
const NEWER: &str = "2025-01-01T00:01:00Z";

/// `n` clusters (cluster-a, cluster-b, ...) with a controller each; every
/// controller lists every cluster, its own included, as a member.
struct Set {
    clusters: Vec<SimCluster>,
    controllers: Vec<Controller>,
}

impl Set {
    fn start(n: usize) -> Result<Self> {
        let clusters: Vec<SimCluster> = (0..n)
            .map(|i| SimCluster::start(&format!("cluster-{}", char::from(b'a' + i as u8))))
            .collect::<Result<_>>()?;
        let members: Vec<&SimCluster> = clusters.iter().collect();
        let controllers = clusters
            .iter()
            .map(|c| Controller::start(c, &members, &[]))
            .collect::<Result<_>>()?;
        Ok(Self {
            clusters,
            controllers,
        })
    }

    fn a(&self) -> &SimCluster {
        &self.clusters[0]
    }

    fn b(&self) -> &SimCluster {
        &self.clusters[1]
    }

    /// On failure, the controllers' logs help more than the assertion.
    fn logs(&self) -> String {
        self.controllers
            .iter()
            .map(|c| format!("--- controller {} ---\n{}", c.cluster, c.log()))
            .collect()
    }
}

fn import_in(cluster: &SimCluster) -> Result<Value> {
    wait_for(
        SETTLE,
        &format!("ServiceImport {NS}/{HELLO} in {}", cluster.id),
        || cluster.hello_import(),
    )
}

fn no_import_in(cluster: &SimCluster) -> Result<()> {
    wait_for(
        SETTLE,
        &format!("no ServiceImport in {}", cluster.id),
        || cluster.hello_import().is_none().then_some(()),
    )
}

/// Waits until the import satisfies `check`.
fn import_where(cluster: &SimCluster, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    wait_for(SETTLE, &format!("{what} in {}", cluster.id), || {
        cluster.hello_import().filter(|i| check(i))
    })
}

fn condition_is(cluster: &SimCluster, type_: &str, status: &str) -> Result<Value> {
    wait_for(
        SETTLE,
        &format!("{type_}={status} on {}'s export", cluster.id),
        || {
            cluster
                .export_condition(type_)
                .filter(|c| c["status"] == status)
        },
    )
}

fn clusters_of(import: &Value) -> Vec<String> {
    import["status"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"].as_str().map(str::to_owned))
        .collect()
}

/// The ports as the suite compares them: sorted (name, protocol, port,
/// appProtocol).
fn ports(value: &Value) -> BTreeSet<(String, String, i64, String)> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                p["port"].as_i64().unwrap_or_default(),
                p["appProtocol"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn exported(cluster: &SimCluster, created: &str, service_patch: Value) -> Result<()> {
    cluster.apply(hello_service(service_patch))?;
    cluster.apply(hello_slice(
        &format!("{HELLO}-{}", cluster.id),
        &["10.1.0.5"],
        42,
    ))?;
    cluster.export_hello(created, json!({}))
}

fn run(case: impl FnOnce(&Set) -> Result<()>, n: usize) {
    let set = Set::start(n).expect("cluster set");
    if let Err(error) = case(&set) {
        panic!("{error:#}\n{}", set.logs());
    }
}

#[test]
fn a_service_import_should_only_exist_as_long_as_there_is_at_least_one_exporting_cluster() {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            import_in(set.a())?;
            exported(set.b(), NEWER, json!({}))?;
            import_where(set.a(), "import from both clusters", |i| {
                clusters_of(i) == ["cluster-a", "cluster-b"]
            })?;
            assert!(set.a().unexport_hello());
            import_where(set.a(), "import from cluster-b only", |i| {
                clusters_of(i) == ["cluster-b"]
            })?;
            holds_for(
                Duration::from_secs(2),
                "import while cluster-b exports",
                || set.a().hello_import().is_some(),
            )?;
            assert!(set.b().unexport_hello());
            no_import_in(set.a())
        },
        2,
    );
}

#[test]
fn only_labels_and_annotations_specified_as_exported_should_be_propagated() {
    run(
        |set| {
            set.a().apply(hello_service(json!({})))?;
            set.a().export_hello(
                OLDER,
                json!({"exportedAnnotations": {"dummy-annotation": "true"},
                       "exportedLabels": {"dummy-label": "true"}}),
            )?;
            for cluster in &set.clusters {
                let import = import_where(cluster, "exported labels", |i| {
                    i["metadata"]["labels"]["dummy-label"] == "true"
                })?;
                assert_eq!(
                    import["metadata"]["annotations"]["dummy-annotation"],
                    "true"
                );
                // The Service's own labels and annotations stay behind.
                assert!(import["metadata"]["labels"].get("service-only").is_none());
                assert!(
                    import["metadata"]["annotations"]
                        .get("service-only")
                        .is_none()
                );
            }
            // Exported no more: gone from the import.
            set.a()
                .export_hello(OLDER, json!({"exportedLabels": {"dummy-label": "true"}}))?;
            import_where(set.a(), "annotation removed", |i| {
                i["metadata"]["annotations"]
                    .get("dummy-annotation")
                    .is_none()
            })?;
            Ok(())
        },
        2,
    );
}

#[test]
fn conflicting_exported_labels_and_annotations_apply_the_conflict_policy_and_report_conflict_on_each_export()
 {
    run(
        |set| {
            set.a().apply(hello_service(json!({})))?;
            set.b().apply(hello_service(json!({})))?;
            set.a().export_hello(
                OLDER,
                json!({"exportedAnnotations": {"dummy-annotation": "true"},
                       "exportedLabels": {"dummy-label": "true"}}),
            )?;
            set.b().export_hello(
                NEWER,
                json!({"exportedAnnotations": {"dummy-annotation2": "true"},
                       "exportedLabels": {"dummy-label2": "true"}}),
            )?;
            for cluster in &set.clusters {
                let conflict = condition_is(cluster, "Conflict", "True")?;
                let reason = conflict["reason"].as_str().unwrap_or_default();
                assert!(
                    reason.contains("LabelsConflict") && reason.contains("AnnotationsConflict"),
                    "{conflict}"
                );
            }
            let import = import_where(set.a(), "the oldest export's labels", |i| {
                i["metadata"]["labels"]["dummy-label"] == "true"
            })?;
            assert_eq!(
                import["metadata"]["annotations"]["dummy-annotation"],
                "true"
            );
            assert!(import["metadata"]["labels"].get("dummy-label2").is_none());
            assert!(
                import["metadata"]["annotations"]
                    .get("dummy-annotation2")
                    .is_none()
            );
            Ok(())
        },
        2,
    );
}

#[test]
fn exporting_a_cluster_ip_service_creates_a_cluster_set_ip_import_in_each_cluster_and_unexporting_deletes_it()
 {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            for cluster in &set.clusters {
                let import = import_in(cluster)?;
                assert_eq!(import["spec"]["type"], "ClusterSetIP", "in {}", cluster.id);
            }
            assert!(set.a().unexport_hello());
            for cluster in &set.clusters {
                no_import_in(cluster)?;
            }
            Ok(())
        },
        2,
    );
}

#[test]
fn the_session_affinity_of_a_cluster_set_ip_import_should_match_the_exported_service() {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            let import = import_in(set.a())?;
            assert_eq!(import["spec"]["sessionAffinity"], "ClientIP");
            assert_eq!(
                import["spec"]["sessionAffinityConfig"],
                json!({"clientIP": {"timeoutSeconds": 10}})
            );
            // Changing the Service changes the import.
            set.a().apply(hello_service(
                json!({"sessionAffinity": "None", "sessionAffinityConfig": null}),
            ))?;
            let import = import_where(set.a(), "affinity None", |i| {
                i["spec"]["sessionAffinity"] == "None"
            })?;
            assert!(
                import["spec"]
                    .get("sessionAffinityConfig")
                    .is_none_or(Value::is_null)
            );
            Ok(())
        },
        1,
    );
}

#[test]
fn the_internal_traffic_policy_of_an_import_should_match_the_exported_service() {
    run(
        |set| {
            exported(set.a(), OLDER, json!({"internalTrafficPolicy": "Local"}))?;
            let import = wait_for(SETTLE, "v1beta1 import", || {
                set.a().get(&imports("v1beta1"), HELLO)
            })?;
            assert_eq!(import["spec"]["internalTrafficPolicy"], "Local");
            Ok(())
        },
        1,
    );
}

#[test]
fn the_traffic_distribution_of_an_import_should_match_the_exported_service() {
    run(
        |set| {
            exported(
                set.a(),
                OLDER,
                json!({"trafficDistribution": "PreferClose"}),
            )?;
            let import = wait_for(SETTLE, "v1beta1 import", || {
                set.a().get(&imports("v1beta1"), HELLO)
            })?;
            assert_eq!(import["spec"]["trafficDistribution"], "PreferClose");
            Ok(())
        },
        1,
    );
}

#[test]
fn an_ip_should_be_allocated_for_a_cluster_set_ip_import() {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            for cluster in &set.clusters {
                let import = import_where(cluster, "an allocated IP", |i| {
                    i["spec"]["ips"][0].is_string()
                })?;
                let ip: IpAddr = import["spec"]["ips"][0]
                    .as_str()
                    .unwrap_or_default()
                    .parse()?;
                assert!(
                    mcs_tests::clusterset::CIDR_V4
                        .parse::<ipnet::IpNet>()?
                        .contains(&ip),
                    "{ip}"
                );
                assert_eq!(
                    import["spec"]["ips"].as_array().map(Vec::len),
                    Some(1),
                    "one per family"
                );
            }
            Ok(())
        },
        2,
    );
}

#[test]
fn the_ports_of_a_cluster_set_ip_import_should_match_those_of_the_exported_service() {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            let import = import_in(set.a())?;
            assert_eq!(
                ports(&import["spec"]["ports"]),
                ports(&hello_service(json!({}))["spec"]["ports"])
            );
            Ok(())
        },
        1,
    );
}

#[test]
fn a_cluster_ip_service_exported_on_two_clusters_should_expose_the_union_of_the_constituent_service_ports()
 {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            exported(
                set.b(),
                NEWER,
                json!({"ports": [{"name": "tcp", "port": 42, "protocol": "TCP"},
                                 {"name": "stcp", "port": 142, "protocol": "SCTP"}]}),
            )?;
            let mut want = ports(&hello_service(json!({}))["spec"]["ports"]);
            want.insert(("stcp".into(), "SCTP".into(), 142, String::new()));
            for cluster in &set.clusters {
                import_where(cluster, "the union of ports", |i| {
                    ports(&i["spec"]["ports"]) == want
                })?;
            }
            // No conflict: the ports merely differ.
            let valid = condition_is(set.b(), "Conflict", "False")?;
            assert_eq!(valid["reason"], "NoConflicts");
            Ok(())
        },
        2,
    );
}

#[test]
fn a_cluster_ip_service_exported_on_two_clusters_with_conflicting_ports_should_apply_the_conflict_resolution_policy_and_report_a_conflict_condition_on_each_export()
 {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            exported(
                set.b(),
                NEWER,
                json!({"ports": [{"name": "tcp", "port": 43, "protocol": "TCP"}]}),
            )?;
            for cluster in &set.clusters {
                let conflict = condition_is(cluster, "Conflict", "True")?;
                assert_eq!(conflict["reason"], "PortConflict", "{conflict}");
                let message = conflict["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("cluster-a has the oldest export"),
                    "{message}"
                );
            }
            let want = ports(&hello_service(json!({}))["spec"]["ports"]);
            for cluster in &set.clusters {
                import_where(cluster, "the oldest export's ports", |i| {
                    ports(&i["spec"]["ports"]) == want
                })?;
            }
            Ok(())
        },
        2,
    );
}

#[test]
fn exporting_a_headless_service_creates_a_headless_import_in_each_cluster_and_unexporting_deletes_it()
 {
    run(
        |set| {
            exported(set.a(), OLDER, json!({"clusterIP": "None"}))?;
            for cluster in &set.clusters {
                let import = import_in(cluster)?;
                assert_eq!(import["spec"]["type"], "Headless", "in {}", cluster.id);
            }
            assert!(set.a().unexport_hello());
            for cluster in &set.clusters {
                no_import_in(cluster)?;
            }
            Ok(())
        },
        2,
    );
}

#[test]
fn no_clusterset_ip_should_be_allocated_for_a_headless_import() {
    run(
        |set| {
            exported(set.a(), OLDER, json!({"clusterIP": "None"}))?;
            import_in(set.a())?;
            holds_for(
                Duration::from_secs(5),
                "no IPs on the headless import",
                || {
                    set.a()
                        .hello_import()
                        .is_some_and(|i| i["spec"]["ips"].as_array().is_none_or(Vec::is_empty))
                },
            )
        },
        1,
    );
}

#[test]
fn exporting_an_external_name_service_should_set_the_export_valid_condition_to_false() {
    run(
        |set| {
            exported(
                set.a(),
                OLDER,
                json!({"type": "ExternalName", "externalName": "example.com"}),
            )?;
            let valid = condition_is(set.a(), "Valid", "False")?;
            assert_eq!(valid["reason"], "InvalidServiceType");
            holds_for(
                Duration::from_secs(3),
                "no import for an ExternalName Service",
                || set.a().hello_import().is_none(),
            )
        },
        1,
    );
}

#[test]
fn a_service_exported_on_two_clusters_with_conflicting_headlessness_should_apply_the_conflict_resolution_policy_and_report_a_conflict_condition()
 {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            exported(set.b(), NEWER, json!({"clusterIP": "None"}))?;
            for cluster in &set.clusters {
                let conflict = condition_is(cluster, "Conflict", "True")?;
                assert_eq!(conflict["reason"], "TypeConflict", "{conflict}");
            }
            for cluster in &set.clusters {
                let import = import_in(cluster)?;
                assert_eq!(import["spec"]["type"], "ClusterSetIP", "in {}", cluster.id);
            }
            Ok(())
        },
        2,
    );
}

#[test]
fn exporting_a_service_should_create_an_mcs_endpoint_slice_in_each_cluster_with_the_required_labels_and_unexporting_should_delete_it()
 {
    run(
        |set| {
            exported(set.a(), OLDER, json!({}))?;
            let mut names = Vec::new();
            for cluster in &set.clusters {
                let slice = wait_for(
                    SETTLE,
                    &format!("an MCS EndpointSlice in {}", cluster.id),
                    || cluster.mcs_slices().into_iter().next(),
                )?;
                let labels = &slice["metadata"]["labels"];
                assert_eq!(labels["multicluster.kubernetes.io/service-name"], HELLO);
                assert_eq!(
                    labels["multicluster.kubernetes.io/source-cluster"],
                    "cluster-a"
                );
                let managed_by = labels["endpointslice.kubernetes.io/managed-by"]
                    .as_str()
                    .unwrap_or_default();
                assert!(!managed_by.is_empty());
                assert_ne!(managed_by, "endpointslice-controller.k8s.io");
                // Endpoints and their conditions carried over.
                assert_eq!(slice["endpoints"][0]["addresses"], json!(["10.1.0.5"]));
                assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
                names.push((
                    cluster,
                    slice["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
            }
            assert!(set.a().unexport_hello());
            for (cluster, name) in names {
                wait_for(
                    SETTLE,
                    &format!("slice {name} deleted in {}", cluster.id),
                    || {
                        cluster
                            .server
                            .get(&slices(), NS, &name)
                            .is_none()
                            .then_some(())
                    },
                )?;
            }
            // The ordinary controller's slice is never touched.
            assert!(
                set.a()
                    .get(&slices(), &format!("{HELLO}-cluster-a"))
                    .is_some()
            );
            Ok(())
        },
        2,
    );
}
