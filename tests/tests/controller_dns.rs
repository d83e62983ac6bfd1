//! The conformance suite's DNS cases through the export controller: three
//! simulated clusters ([`mcs_tests::clusterset_traffic`]), services
//! exported with ServiceExports only, and real DNS queries (UDP, from each
//! cluster's client pod) against the agent's `--dns-addr` on that
//! cluster's node, which answers from the imports and slices the
//! controller wrote. Named after the cases (23–27 of the checklist; 22 is
//! in `controller_traffic`).
//!
//! Needs root; run by `cargo xtask test`.

use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Result, ensure};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};
use mcs_tests::{
    clusterset::wait_for,
    clusterset_traffic::{
        CLUSTERS, NS, SETTLE, ThreeClusters, endpoint, export, pod_ip, run, service, source_slice,
    },
};

const ZONE: &str = "svc.clusterset.local";

fn a_records(response: &Message) -> BTreeSet<Ipv4Addr> {
    response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// `(port, target)` of every SRV answer, the target lower case with its
/// final dot.
fn srv_records(response: &Message) -> BTreeSet<(u16, String)> {
    response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.port, srv.target.to_ascii().to_lowercase())),
            _ => None,
        })
        .collect()
}

/// Queries `name` from cluster `i` until `check` holds for the response
/// (the controller and the agent take a moment); the last response or
/// error is in the failure.
fn answer(
    world: &ThreeClusters,
    i: usize,
    name: &str,
    record_type: RecordType,
    check: impl Fn(&Message) -> bool,
) -> Result<Message> {
    let mut last = String::new();
    wait_for(
        SETTLE,
        &format!("{name} {record_type} from {}", CLUSTERS[i].0),
        || match world.query(i, name, record_type) {
            Ok(response) if check(&response) => Some(response),
            Ok(response) => {
                last = format!("{response:?}");
                None
            }
            Err(error) => {
                last = format!("{error:#}");
                None
            }
        },
    )
    .map_err(|e| e.context(last))
}

fn noerror(response: &Message) -> bool {
    response.metadata.response_code == ResponseCode::NoError
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

/// `web` (ports `http` 80 and `metrics` 9090) exported from cluster-b.
fn export_web(world: &ThreeClusters) -> Result<()> {
    let cluster = &world.clusters[1];
    cluster.apply(service("web", &[("http", 80), ("metrics", 9090)], false))?;
    cluster.apply(source_slice(
        "web",
        "x1",
        &["http", "metrics"],
        vec![endpoint(pod_ip(1, 10), None, true)],
    ))?;
    cluster.apply(export("web", None))?;
    Ok(())
}

/// The headless `db` (port `sql` 5432) exported from cluster-a and
/// cluster-b. cluster-a: `db-0` ready, `db-1` not ready, one ready pod
/// without a hostname; cluster-b: `db-0` ready.
fn export_db(world: &ThreeClusters) -> Result<()> {
    let endpoints = [
        vec![
            endpoint(pod_ip(0, 21), Some("db-0"), true),
            endpoint(pod_ip(0, 22), Some("db-1"), false),
            endpoint(pod_ip(0, 23), None, true),
        ],
        vec![endpoint(pod_ip(1, 21), Some("db-0"), true)],
    ];
    for (cluster, endpoints) in world.clusters.iter().zip(endpoints) {
        cluster.apply(service("db", &[("sql", 5432)], true))?;
        cluster.apply(source_slice("db", "x1", &["sql"], endpoints))?;
        cluster.apply(export("db", None))?;
    }
    Ok(())
}

fn db() -> String {
    format!("db.{NS}.{ZONE}")
}

/// Case 23: SRV records of a ClusterSetIP service, one per named port
/// (`_PORT._PROTO.SVC.NS.svc.clusterset.local`), each pointing at the
/// service name, which resolves to the ClusterSetIP; the service name's own
/// SRV lists every port.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_dns_srv_query_of_a_cluster_ip_service_should_return_valid_srv_records() {
    run(|world| {
        export_web(world)?;
        let web = format!("web.{NS}.{ZONE}");
        let target = format!("{web}.");
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            let vip = world.routed(i, "web", 80, &["b-web1"])?;
            for (port, number) in [("http", 80), ("metrics", 9090)] {
                let response = answer(
                    world,
                    i,
                    &format!("_{port}._tcp.{web}"),
                    RecordType::SRV,
                    noerror,
                )?;
                let records = srv_records(&response);
                ensure!(
                    records == set(&[(number, target.clone())]),
                    "{}: _{port}._tcp: {records:?}",
                    cluster
                );
            }
            let all = srv_records(&answer(world, i, &web, RecordType::SRV, noerror)?);
            ensure!(
                all == set(&[(80, target.clone()), (9090, target.clone())]),
                "{}: {web} SRV: {all:?}",
                cluster
            );
            let resolved = a_records(&answer(world, i, &web, RecordType::A, noerror)?);
            ensure!(
                resolved == set(&[vip]),
                "{}: A {resolved:?}, ClusterSetIP {vip}",
                cluster
            );
            // A port the service does not have, or another protocol, is no name.
            for missing in [format!("_admin._tcp.{web}"), format!("_http._udp.{web}")] {
                let response = world.query(i, &missing, RecordType::SRV)?;
                ensure!(
                    response.metadata.response_code == ResponseCode::NXDomain,
                    "{}: {missing}: {response:?}",
                    cluster
                );
            }
        }
        Ok(())
    });
}

/// Case 24: `SVC.NS.svc.cluster.local` belongs to each cluster's own DNS
/// (its local Service); the clusterset responder answers only its zone, so
/// it refuses the name rather than answering it with the import.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn dns_lookups_of_the_cluster_local_domain_are_not_answered_by_the_clusterset_responder() {
    run(|world| {
        export_web(world)?;
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            world.routed(i, "web", 80, &["b-web1"])?;
            let clusterset = format!("web.{NS}.{ZONE}");
            answer(world, i, &clusterset, RecordType::A, |r| {
                !a_records(r).is_empty()
            })?;
            for record_type in [RecordType::A, RecordType::SRV] {
                let local = world.query(i, &format!("web.{NS}.svc.cluster.local"), record_type)?;
                ensure!(
                    local.metadata.response_code == ResponseCode::Refused
                        && local.answers.is_empty(),
                    "{}: cluster.local {record_type}: {local:?}",
                    cluster
                );
            }
        }
        Ok(())
    });
}

/// Case 25: a headless service's name resolves to the ready endpoints of
/// every exporting cluster (and not to the endpoint that is not ready).
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_dns_query_of_a_headless_service_should_return_the_ready_endpoint_addresses_of_all_exporting_clusters()
 {
    run(|world| {
        export_db(world)?;
        let ready = set(&[pod_ip(0, 21), pod_ip(0, 23), pod_ip(1, 21)]);
        for i in 0..CLUSTERS.len() {
            answer(world, i, &db(), RecordType::A, |r| a_records(r) == ready)?;
        }
        Ok(())
    });
}

/// Case 26: `HOSTNAME.CLUSTERID.SVC.NS.svc.clusterset.local` resolves to
/// that pod's address in its cluster; a pod without a hostname is named
/// by its address with dashes; a pod that is not ready has no name.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_dns_query_of_hostname_clusterid_service_of_a_headless_service_should_return_that_pods_address()
{
    run(|world| {
        export_db(world)?;
        let names = [
            ("db-0", "cluster-a", pod_ip(0, 21)),
            ("db-0", "cluster-b", pod_ip(1, 21)),
            ("10-101-1-23", "cluster-a", pod_ip(0, 23)),
        ];
        for (i, (cluster, ..)) in CLUSTERS.iter().enumerate() {
            for (host, cluster, addr) in names {
                let name = format!("{host}.{cluster}.{}", db());
                answer(world, i, &name, RecordType::A, |r| {
                    a_records(r) == set(&[addr])
                })?;
            }
            let not_ready = world.query(i, &format!("db-1.cluster-a.{}", db()), RecordType::A)?;
            ensure!(
                not_ready.metadata.response_code == ResponseCode::NXDomain,
                "{}: the pod that is not ready: {not_ready:?}",
                cluster
            );
        }
        Ok(())
    });
}

/// Case 27: SRV records of a headless service: one per ready pod, each
/// pointing at the pod's own name with the service port, for the named
/// port and for the service name.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn a_dns_srv_query_of_a_headless_service_should_return_a_record_per_pod() {
    run(|world| {
        export_db(world)?;
        let expected = set(&[
            (5432, format!("db-0.cluster-a.{}.", db())),
            (5432, format!("10-101-1-23.cluster-a.{}.", db())),
            (5432, format!("db-0.cluster-b.{}.", db())),
        ]);
        for i in 0..CLUSTERS.len() {
            for name in [format!("_sql._tcp.{}", db()), db()] {
                answer(world, i, &name, RecordType::SRV, |r| {
                    srv_records(r) == expected
                })?;
            }
        }
        Ok(())
    });
}
