//! Dual stack through the export controller, with kubectl v1.32 as the
//! client (issue 19): a dual-stack Service exported from two clusters is
//! imported with one ClusterSetIP per family and its IPv4 and IPv6 slices
//! from both; an IPv6-only Service gets one IPv6 address; a cluster that
//! drops IPv6 loses to the older dual-stack export (`IPFamilyConflict` on
//! the exports); a controller restarted without its IPv6 range keeps the
//! IPv4 addresses, releases the IPv6 ones and their slices and says so on
//! the imports, and given the range back restores the same addresses.
//!
//! kubectl is the machine image's `/usr/bin/kubectl` (or `$MCS_KUBECTL`);
//! without it the test fails, saying so. No root needed; the controller
//! binary must be built.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use ipnet::IpNet;
use mcs_tests::{
    clusterset::{CIDR_V4, CIDR_V6, Controller, SETTLE, SimCluster, wait_for},
    kubectl::Kubectl,
};
use serde_json::Value;

/// Service `NAME` in namespace `store` with `FAMILIES`, its slices (one per
/// `ADDRESSES` entry: addressType and address) and its ServiceExport.
fn exported(name: &str, families: &[&str], slices: &[(&str, &str)]) -> String {
    let policy = if families.len() == 2 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let mut yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: store}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: store}}\n\
         spec:\n  selector: {{app: {name}}}\n  ipFamilyPolicy: {policy}\n  ipFamilies: [{}]\n\
         \x20 ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n",
        families.join(", ")
    );
    for (i, (family, address)) in slices.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: {name}-{i}\n  namespace: store\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints:\n- addresses: [\"{address}\"]\n  conditions: {{ready: true}}\n"
        ));
    }
    yaml.push_str(&format!(
        "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n\
         metadata: {{name: {name}, namespace: store}}\n"
    ));
    yaml
}

fn import(kubectl: &Kubectl, name: &str) -> Option<Value> {
    kubectl
        .get_json(&[
            "get",
            "serviceimports.multicluster.x-k8s.io",
            name,
            "-n",
            "store",
        ])
        .ok()
}

fn ips(import: &Value) -> Vec<IpAddr> {
    import["spec"]["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .collect()
}

fn ready(import: &Value) -> Option<&Value> {
    import["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// (source cluster, addressType, first address) of `service`'s MCS slices.
fn slices(kubectl: &Kubectl, service: &str) -> Result<Vec<(String, String, String)>> {
    let list = kubectl.get_json(&[
        "get",
        "endpointslices",
        "-n",
        "store",
        "-l",
        &format!("multicluster.kubernetes.io/service-name={service}"),
    ])?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut out: Vec<_> = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|s| {
            (
                text(&s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]),
                text(&s["addressType"]),
                text(&s["endpoints"][0]["addresses"][0]),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

fn triples(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect()
}

/// The `Conflict` condition of `name`'s ServiceExport.
fn conflict(kubectl: &Kubectl, name: &str) -> Option<Value> {
    let export = kubectl
        .get_json(&[
            "get",
            "serviceexports.multicluster.x-k8s.io",
            name,
            "-n",
            "store",
        ])
        .ok()?;
    export["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Conflict")
        .cloned()
}

fn in_range(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<IpNet>().is_ok_and(|net| net.contains(&ip))
}

#[test]
fn dual_stack_imports_get_an_address_and_slices_per_family_and_survive_a_removed_range() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let v6 = ["--clusterset-ip-cidr", CIDR_V6];
    let mut controllers = [
        Controller::start(&a, &[&a, &b], &v6).unwrap(),
        Controller::start(&b, &[&a, &b], &v6).unwrap(),
    ];
    let result = (|| -> Result<()> {
        let (in_a, in_b) = (Kubectl::new(&a.kubeconfig)?, Kubectl::new(&b.kubeconfig)?);
        let dual = ["IPv4", "IPv6"];
        // cluster-a first: the oldest export (a tie goes to cluster-a too).
        in_a.apply(&exported(
            "web",
            &dual,
            &[("IPv4", "10.1.0.5"), ("IPv6", "fd00:1::5")],
        ))?;
        in_a.apply(&exported("api", &["IPv6"], &[("IPv6", "fd00:1::7")]))?;
        in_b.apply(&exported(
            "web",
            &dual,
            &[("IPv4", "10.2.0.5"), ("IPv6", "fd00:2::5")],
        ))?;

        let both_slices = triples(&[
            ("cluster-a", "IPv4", "10.1.0.5"),
            ("cluster-a", "IPv6", "fd00:1::5"),
            ("cluster-b", "IPv4", "10.2.0.5"),
            ("cluster-b", "IPv6", "fd00:2::5"),
        ]);
        let web = wait_for(SETTLE, "web imported in cluster-b from both", || {
            let web = import(&in_b, "web")?;
            let done = ips(&web).len() == 2
                && web["status"]["clusters"].as_array()?.len() == 2
                && slices(&in_b, "web").ok()? == both_slices;
            done.then_some(web)
        })?;
        ensure!(
            web["spec"]["ipFamilies"] == serde_json::json!(dual),
            "{web}"
        );
        let web_ips = ips(&web);
        ensure!(
            in_range(CIDR_V4, web_ips[0]) && in_range(CIDR_V6, web_ips[1]),
            "{web_ips:?}"
        );
        let api = wait_for(SETTLE, "api imported in cluster-b", || {
            import(&in_b, "api").filter(|i| !ips(i).is_empty())
        })?;
        let api_ips = ips(&api);
        ensure!(api_ips.len() == 1 && in_range(CIDR_V6, api_ips[0]), "{api}");
        ensure!(
            api["spec"]["ipFamilies"] == serde_json::json!(["IPv6"]),
            "{api}"
        );
        ensure!(
            slices(&in_b, "api")? == triples(&[("cluster-a", "IPv6", "fd00:1::7")]),
            "{:?}",
            slices(&in_b, "api")
        );

        // cluster-b drops IPv6 (and its IPv6 slice, as its EndpointSlice
        // controller would): cluster-a's older dual-stack export wins, both
        // exports say why.
        in_b.run(&["delete", "endpointslice", "web-1", "-n", "store"], None)?;
        in_b.apply(&exported("web", &["IPv4"], &[("IPv4", "10.2.0.5")]))?;
        for (kubectl, cluster) in [(&in_a, "cluster-a"), (&in_b, "cluster-b")] {
            let condition = wait_for(SETTLE, &format!("IPFamilyConflict in {cluster}"), || {
                conflict(kubectl, "web").filter(|c| c["status"] == "True")
            })?;
            ensure!(condition["reason"] == "IPFamilyConflict", "{condition}");
            ensure!(
                condition["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ipFamilies differs in cluster-b IPv4")),
                "{condition}"
            );
        }
        let web = import(&in_b, "web").context("web")?;
        ensure!(ips(&web) == web_ips, "the winner's families stay: {web}");

        // cluster-b's controller restarted without its IPv6 range.
        controllers[1].stop()?;
        controllers[1] = Controller::start(&b, &[&a, &b], &[])?;
        let web = wait_for(SETTLE, "web with IPv4 only in cluster-b", || {
            import(&in_b, "web").filter(|i| ips(i).len() == 1)
        })?;
        ensure!(ips(&web) == web_ips[..1], "the IPv4 address is kept: {web}");
        ensure!(
            web["spec"]["ipFamilies"] == serde_json::json!(["IPv4"]),
            "{web}"
        );
        let message = ready(&web)
            .and_then(|r| r["message"].as_str())
            .unwrap_or("");
        ensure!(
            message.contains("no --clusterset-ip-cidr for IPv6"),
            "{web}"
        );
        wait_for(SETTLE, "web's IPv6 slices deleted", || {
            let list = slices(&in_b, "web").ok()?;
            (list.iter().all(|(_, family, _)| family == "IPv4") && list.len() == 2).then_some(())
        })?;
        let api = wait_for(SETTLE, "api without an address", || {
            import(&in_b, "api").filter(|i| ips(i).is_empty())
        })?;
        let condition = ready(&api).context("api Ready")?;
        ensure!(
            condition["status"] == "False" && condition["reason"] == "IPFamilyNotSupported",
            "{api}"
        );
        wait_for(SETTLE, "api's slices deleted", || {
            slices(&in_b, "api").ok()?.is_empty().then_some(())
        })?;
        // cluster-a, with its range, is not affected.
        let api_in_a = import(&in_a, "api").context("api in cluster-a")?;
        ensure!(ips(&api_in_a).len() == 1, "{api_in_a}");

        // The range back: the same addresses (nobody took them meanwhile).
        controllers[1].stop()?;
        controllers[1] = Controller::start(&b, &[&a, &b], &v6)?;
        wait_for(SETTLE, "web's IPv6 address back", || {
            import(&in_b, "web").filter(|i| ips(i) == web_ips)
        })?;
        wait_for(SETTLE, "api's IPv6 address back", || {
            import(&in_b, "api").filter(|i| ips(i) == api_ips)
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
