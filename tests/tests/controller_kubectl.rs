//! The seed's workflow with a real client: `kubectl apply` of a Service,
//! its EndpointSlice and a ServiceExport in cluster-a; the controllers of
//! both clusters import it; `kubectl get serviceimports` in cluster-b shows
//! the import with its ClusterSetIP, and `kubectl get serviceexport` in
//! cluster-a its conditions; `kubectl delete serviceexport` unexports.
//!
//! kubectl v1.32 is the machine image's `/usr/bin/kubectl` (or
//! `$MCS_KUBECTL`); without it the test fails, saying so. No root needed.

use anyhow::{Result, ensure};
use mcs_tests::{
    clusterset::{Controller, SETTLE, SimCluster, wait_for},
    kubectl::Kubectl,
};
use serde_json::Value;

const SEED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: store}
---
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: store}
spec:
  selector: {app: checkout}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: checkout-abc12
  namespace: store
  labels: {kubernetes.io/service-name: checkout}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: ["10.101.1.10"]
  conditions: {ready: true}
---
apiVersion: net.gke.io/v1
kind: ServiceExport
metadata: {name: checkout, namespace: store}
"#;

#[test]
fn the_seeds_workflow_with_kubectl_exports_in_one_cluster_and_imports_in_the_other() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    b.apply(mcs_tests::clusterset::namespace("store")).unwrap();
    let controllers = [
        Controller::start(&a, &[&a, &b], &[]).unwrap(),
        Controller::start(&b, &[&a, &b], &[]).unwrap(),
    ];
    let result = (|| -> Result<()> {
        let (in_a, in_b) = (Kubectl::new(&a.kubeconfig)?, Kubectl::new(&b.kubeconfig)?);
        let imports =
            || in_b.get_json(&["get", "serviceimports.multicluster.x-k8s.io", "-n", "store"]);
        // GKE's ServiceExport, as the seed writes it.
        in_a.apply(SEED)?;
        let import = wait_for(SETTLE, "kubectl get serviceimports in cluster-b", || {
            let list = imports().ok()?;
            list["items"]
                .as_array()?
                .iter()
                .find(|i| {
                    i["metadata"]["name"] == "checkout"
                        && i["spec"]["ips"][0].is_string()
                        && i["status"]["clusters"].is_array()
                })
                .cloned()
        })?;
        ensure!(import["spec"]["type"] == "ClusterSetIP", "{import}");
        ensure!(import["spec"]["ports"][0]["port"] == 80, "{import}");
        ensure!(
            import["status"]["clusters"][0]["cluster"] == "cluster-a",
            "{import}"
        );
        let slices = in_b.get_json(&[
            "get",
            "endpointslices",
            "-n",
            "store",
            "-l",
            "multicluster.kubernetes.io/service-name=checkout",
        ])?;
        ensure!(
            slices["items"][0]["endpoints"][0]["addresses"][0] == "10.101.1.10",
            "{slices}"
        );

        let export = wait_for(SETTLE, "the export's Ready condition", || {
            let export = in_a
                .get_json(&[
                    "get",
                    "serviceexports.net.gke.io",
                    "checkout",
                    "-n",
                    "store",
                ])
                .ok()?;
            export["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(export)
        })?;
        ensure!(
            export["status"]["conditions"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c["type"] == "Valid" && c["status"] == "True")),
            "{export}"
        );

        in_a.run(
            &[
                "delete",
                "serviceexports.net.gke.io",
                "checkout",
                "-n",
                "store",
            ],
            None,
        )?;
        wait_for(SETTLE, "the import gone from cluster-b", || {
            let list: Value = imports().ok()?;
            list["items"].as_array()?.is_empty().then_some(())
        })?;
        Ok(())
    })();
    if let Err(error) = result {
        let logs: String = controllers
            .iter()
            .map(|c| format!("--- controller {} ---\n{}", c.cluster, c.log()))
            .collect();
        panic!("{error:#}\n{logs}");
    }
}
