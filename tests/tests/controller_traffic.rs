//! The export side end to end, with traffic: three simulated clusters
//! ([`mcs_tests::clusterset_traffic`]: network namespaces with flat pod
//! routing, a local API server, `mcs-agent controller` and the agent on a
//! node of each). Services are exported with ServiceExports only;
//! everything the agents route comes from the controllers. Named after the
//! conformance suite's connectivity and service-port cases.
//!
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, SocketAddrV4},
};

use anyhow::{Result, ensure};
use mcs_tests::{
    clusterset::{imports, wait_for},
    clusterset_traffic::{
        CLUSTERS, NS, SETTLE, ThreeClusters, endpoint, export, pod_ip, run, service, source_slice,
    },
};

const SERVICE: &str = "web";
const PORT: u16 = 80;

/// Every cluster has Service `web` (port `http` 80) with its `web1` pod in
/// a slice; `exported` clusters also export it.
fn web_everywhere(world: &ThreeClusters, exported: &[&str]) -> Result<()> {
    for (i, ((cluster_id, ..), cluster)) in CLUSTERS.iter().zip(&world.clusters).enumerate() {
        cluster.apply(service(SERVICE, &[("http", PORT)], false))?;
        cluster.apply(source_slice(
            SERVICE,
            "x1",
            &["http"],
            vec![endpoint(pod_ip(i, 10), None, true)],
        ))?;
        if exported.contains(cluster_id) {
            cluster.apply(export(SERVICE, None))?;
        } else {
            cluster.server.delete_object(&export(SERVICE, None));
        }
    }
    Ok(())
}

fn fqdn() -> String {
    format!("{SERVICE}.{NS}.svc.clusterset.local")
}

fn target(vip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddrV4::new(vip, port).into()
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_pod_in_cluster_a_reaches_the_exported_pods_of_clusters_b_and_c_through_the_clusterset_ip_and_the_dns_name()
 {
    run(|world| {
        web_everywhere(world, &["cluster-b", "cluster-c"])?;
        let vip = world.routed(0, SERVICE, PORT, &["b-web1", "c-web1"])?;
        let through_ip = world.answered(0, target(vip, PORT), 40)?;
        ensure!(
            through_ip == BTreeSet::from(["b-web1".to_owned(), "c-web1".to_owned()]),
            "{through_ip:?}"
        );
        let resolved = wait_for(SETTLE, "the clusterset name", || {
            world.resolve(0, &fqdn()).ok().filter(|ips| !ips.is_empty())
        })?;
        ensure!(
            resolved == [vip],
            "A record {resolved:?}, ClusterSetIP {vip}"
        );
        let through_name = world.answered(0, target(resolved[0], PORT), 40)?;
        ensure!(through_name == through_ip, "{through_name:?}");
        Ok(())
    });
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn an_exported_cluster_ip_service_should_be_accessible_through_dns_from_all_clusters() {
    run(|world| {
        web_everywhere(world, &["cluster-a"])?;
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            let vip = world.routed(i, SERVICE, PORT, &["a-web1"])?;
            let resolved = wait_for(SETTLE, "the clusterset name", || {
                world.resolve(i, &fqdn()).ok().filter(|ips| !ips.is_empty())
            })?;
            ensure!(
                resolved == [vip],
                "{cluster}: A record {resolved:?}, ClusterSetIP {vip}"
            );
            let answered = world.answered(i, target(resolved[0], PORT), 5)?;
            ensure!(
                answered == BTreeSet::from(["a-web1".to_owned()]),
                "{cluster}: {answered:?}"
            );
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_service_in_every_cluster_exported_from_one_is_answered_only_by_that_cluster_and_unexported_reaches_nothing()
 {
    run(|world| {
        web_everywhere(world, &["cluster-b"])?;
        let vip = world.routed(0, SERVICE, PORT, &["b-web1"])?;
        let answered = world.answered(0, target(vip, PORT), 30)?;
        ensure!(
            answered == BTreeSet::from(["b-web1".to_owned()]),
            "{answered:?}"
        );
        // Unexported everywhere: the name resolves to nothing and the
        // address answers nothing, from every cluster.
        web_everywhere(world, &[])?;
        for (i, cluster) in world.clusters.iter().enumerate() {
            wait_for(SETTLE, &format!("no import in {}", cluster.id), || {
                cluster
                    .server
                    .get(&imports("v1alpha1"), NS, SERVICE)
                    .is_none()
                    .then_some(())
            })?;
            wait_for(SETTLE, "the name gone", || {
                world.resolve(i, &fqdn()).ok().filter(Vec::is_empty)
            })?;
            for _ in 0..3 {
                let reply = world.answered(i, target(vip, PORT), 1);
                ensure!(
                    reply.is_err(),
                    "{}: answered by {reply:?} after unexport",
                    cluster.id
                );
            }
        }
        Ok(())
    });
}

/// Cluster `i` serves Service `web` with `ports` from its `web1` pod (the
/// slice names the same ports) and exports it, created at `created`.
fn export_web(world: &ThreeClusters, i: usize, ports: &[(&str, u16)], created: &str) -> Result<()> {
    let cluster = &world.clusters[i];
    let names: Vec<&str> = ports.iter().map(|(name, _)| *name).collect();
    cluster.apply(service(SERVICE, ports, false))?;
    cluster.apply(source_slice(
        SERVICE,
        "x1",
        &names,
        vec![endpoint(pod_ip(i, 10), None, true)],
    ))?;
    cluster.apply(export(SERVICE, Some(created)))?;
    Ok(())
}

/// Fails unless nothing answers on `target` from cluster `i`.
fn unanswered(world: &ThreeClusters, i: usize, target: SocketAddr) -> Result<()> {
    let reply = world.answered(i, target, 1);
    ensure!(
        reply.is_err(),
        "{}: {target} answered by {reply:?}",
        CLUSTERS[i].0
    );
    Ok(())
}

fn pods(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Case 19: the same port name with different numbers. cluster-a (oldest)
/// and cluster-c export `http` as port 80, cluster-b as port 81: the
/// import keeps 80 (cluster-b's port loses the conflict), and port 80
/// reaches only the clusters whose Service exposes it as 80; 81 is no port
/// of the import and reaches nothing.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_port_name_with_different_numbers_in_two_clusters_reaches_only_the_clusters_exposing_the_imported_port()
 {
    run(|world| {
        export_web(world, 0, &[("http", 80)], "2024-01-01T00:00:00Z")?;
        export_web(world, 1, &[("http", 81)], "2024-01-02T00:00:00Z")?;
        export_web(world, 2, &[("http", 80)], "2024-01-03T00:00:00Z")?;
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            let import = world.import(i, SERVICE, |import| {
                import["status"]["clusters"].as_array().map(Vec::len) == Some(3)
            })?;
            let ports: Vec<(String, u64)> = import["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["port"].as_u64()?)))
                .collect();
            ensure!(
                ports == [("http".to_owned(), 80)],
                "{}: ports {ports:?}",
                cluster
            );
            let vip = world.routed(i, SERVICE, 80, &["a-web1", "c-web1"])?;
            let answered = world.answered(i, target(vip, 80), 30)?;
            ensure!(
                answered == pods(&["a-web1", "c-web1"]),
                "{}: port 80 answered by {answered:?}",
                cluster
            );
            unanswered(world, i, target(vip, 81))?;
        }
        Ok(())
    });
}

/// Case 20: different port names. cluster-a exports `http` (80),
/// cluster-b `admin` (81): the import has both, and each port reaches only
/// the cluster that exposes it, from every cluster.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn different_port_names_in_two_clusters_each_reach_only_the_cluster_exposing_them() {
    run(|world| {
        export_web(world, 0, &[("http", 80)], "2024-01-01T00:00:00Z")?;
        export_web(world, 1, &[("admin", 81)], "2024-01-02T00:00:00Z")?;
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            let vip = world.routed(i, SERVICE, 80, &["a-web1"])?;
            ensure!(
                world.routed(i, SERVICE, 81, &["b-web1"])? == vip,
                "one ClusterSetIP"
            );
            for (port, pod) in [(80, "a-web1"), (81, "b-web1")] {
                let answered = world.answered(i, target(vip, port), 20)?;
                ensure!(
                    answered == pods(&[pod]),
                    "{}: port {port} answered by {answered:?}",
                    cluster
                );
            }
        }
        Ok(())
    });
}
