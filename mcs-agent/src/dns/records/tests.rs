use std::collections::BTreeSet;

use hickory_proto::rr::{LowerName, Name, RecordType};

use super::{DNS_SCHEMA_VERSION, Lookup, ZoneTable};
use crate::model::{Rejection, manifest};

const TTL: u32 = 7;

fn zone() -> Name {
    Name::from_ascii("clusterset.local.").expect("valid zone")
}

fn table_of(yaml: &str) -> (ZoneTable, Vec<Rejection>) {
    let (snapshot, rejections) = manifest::snapshot_from_yaml(yaml).expect("valid YAML");
    assert!(rejections.is_empty(), "{rejections:?}");
    ZoneTable::build(&snapshot, &zone(), TTL, 42)
}

fn lower(name: &str) -> LowerName {
    name.parse().expect("valid name")
}

/// Presentation form of the records of `name`/`record_type`; empty when
/// there are none (use [`ZoneTable::lookup`] to tell NODATA from NXDOMAIN).
fn rdata(table: &ZoneTable, name: &str, record_type: RecordType) -> BTreeSet<String> {
    match table.lookup(&lower(name), record_type) {
        Lookup::Answer(records) => {
            for record in &records {
                assert_eq!(record.ttl, TTL, "{record}");
            }
            records.iter().map(|r| r.data.to_string()).collect()
        }
        _ => BTreeSet::new(),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

const CLUSTERSET_IP: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec:
  type: ClusterSetIP
  ips: ["10.96.0.10", "fd00:96::10"]
  ports:
  - {name: http, protocol: TCP, port: 80}
  - {name: dns, protocol: UDP, port: 53}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: single, namespace: demo}
spec:
  ips: ["10.96.0.11"]
  ports: [{protocol: TCP, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.1.0.1"], hostname: pod-0}]
"#;

#[test]
fn clusterset_ip_a_aaaa_srv() {
    let (table, rejections) = table_of(CLUSTERSET_IP);
    assert!(rejections.is_empty(), "{rejections:?}");
    let service = "web.demo.svc.clusterset.local.";
    assert_eq!(rdata(&table, service, RecordType::A), set(&["10.96.0.10"]));
    assert_eq!(
        rdata(&table, service, RecordType::AAAA),
        set(&["fd00:96::10"])
    );
    let srv = set(&["0 100 80 web.demo.svc.clusterset.local."]);
    assert_eq!(
        rdata(
            &table,
            "_http._tcp.web.demo.svc.clusterset.local.",
            RecordType::SRV
        ),
        srv
    );
    assert_eq!(
        rdata(
            &table,
            "_dns._udp.web.demo.svc.clusterset.local.",
            RecordType::SRV
        ),
        set(&["0 100 53 web.demo.svc.clusterset.local."])
    );
    // The protocol is part of the name: no `_dns._tcp`.
    assert_eq!(
        table.lookup(
            &lower("_dns._tcp.web.demo.svc.clusterset.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
    // SRV at the service name itself, one per port (conformance suite).
    assert_eq!(
        rdata(&table, service, RecordType::SRV),
        set(&[
            "0 100 80 web.demo.svc.clusterset.local.",
            "0 100 53 web.demo.svc.clusterset.local."
        ])
    );
    // ANY: one RRset, the addresses (RFC 8482), not everything at the name.
    assert_eq!(
        rdata(&table, service, RecordType::ANY),
        rdata(&table, service, RecordType::A)
    );
    // A name without addresses answers ANY with its next type: SRV here.
    let port = "_http._tcp.web.demo.svc.clusterset.local.";
    assert_eq!(
        rdata(&table, port, RecordType::ANY),
        rdata(&table, port, RecordType::SRV)
    );
    // The apex: its SOA.
    assert!(matches!(
        table.lookup(&lower("clusterset.local."), RecordType::ANY),
        Lookup::Answer(records) if records.len() == 1 && records[0].record_type() == RecordType::SOA
    ));
}

#[test]
fn unnamed_ports_have_no_port_srv_name() {
    let (table, _) = table_of(CLUSTERSET_IP);
    let service = "single.demo.svc.clusterset.local.";
    assert_eq!(rdata(&table, service, RecordType::A), set(&["10.96.0.11"]));
    assert_eq!(
        rdata(&table, service, RecordType::SRV),
        set(&["0 100 8080 single.demo.svc.clusterset.local."])
    );
    let port_names: Vec<String> = table
        .names()
        .iter()
        .map(|(name, _)| name.to_string())
        .filter(|name| name.ends_with("single.demo.svc.clusterset.local.") && name.starts_with('_'))
        .collect();
    assert!(port_names.is_empty(), "{port_names:?}");
}

#[test]
fn schema_version_txt_and_apex_soa() {
    let (table, _) = table_of(CLUSTERSET_IP);
    assert_eq!(
        rdata(&table, "dns-version.clusterset.local.", RecordType::TXT),
        set(&[DNS_SCHEMA_VERSION])
    );
    assert_eq!(DNS_SCHEMA_VERSION, "1.0.0");
    let soa = rdata(&table, "clusterset.local.", RecordType::SOA);
    assert_eq!(
        soa,
        set(&["ns.dns.clusterset.local. hostmaster.clusterset.local. 42 7200 1800 86400 7"])
    );
    assert_eq!(table.soa().ttl, TTL);
    // An empty model still has the apex and the version.
    let (empty, _) = table_of("");
    assert_eq!(empty.record_count(), 2);
    assert_eq!(
        empty.lookup(&lower("web.demo.svc.clusterset.local."), RecordType::A),
        Lookup::NxDomain
    );
}

#[test]
fn nodata_nxdomain_and_not_in_zone() {
    let (table, _) = table_of(CLUSTERSET_IP);
    let nodata = [
        ("web.demo.svc.clusterset.local.", RecordType::MX),
        ("web.demo.svc.clusterset.local.", RecordType::TXT),
        ("dns-version.clusterset.local.", RecordType::A),
        ("clusterset.local.", RecordType::A),
        // Empty non-terminals exist (RFC 8020): NODATA, never NXDOMAIN.
        ("demo.svc.clusterset.local.", RecordType::A),
        ("svc.clusterset.local.", RecordType::A),
        ("_tcp.web.demo.svc.clusterset.local.", RecordType::SRV),
    ];
    for (name, record_type) in nodata {
        assert_eq!(
            table.lookup(&lower(name), record_type),
            Lookup::NoData,
            "{name} {record_type}"
        );
    }
    let nxdomain = [
        "nope.demo.svc.clusterset.local.",
        "web.other.svc.clusterset.local.",
        "x.web.demo.svc.clusterset.local.",
        "_https._tcp.web.demo.svc.clusterset.local.",
        "web.demo.clusterset.local.",
        "pod.clusterset.local.",
    ];
    for name in nxdomain {
        assert_eq!(
            table.lookup(&lower(name), RecordType::A),
            Lookup::NxDomain,
            "{name}"
        );
    }
    for name in ["web.demo.svc.cluster.local.", "local.", "example.com.", "."] {
        assert_eq!(
            table.lookup(&lower(name), RecordType::A),
            Lookup::NotInZone,
            "{name}"
        );
    }
}

#[test]
fn lookups_are_case_insensitive() {
    let (table, _) = table_of(CLUSTERSET_IP);
    assert_eq!(
        rdata(&table, "WEB.Demo.SVC.ClusterSet.Local.", RecordType::A),
        set(&["10.96.0.10"])
    );
}

#[test]
fn clusterset_ip_has_no_cluster_specific_names() {
    let (table, _) = table_of(CLUSTERSET_IP);
    // Spec 2.3.4: no `<clusterid>.<svc>...`, nor per-endpoint names, even
    // though the slice has a cluster and a hostname.
    for name in [
        "a.web.demo.svc.clusterset.local.",
        "pod-0.a.web.demo.svc.clusterset.local.",
    ] {
        assert_eq!(
            table.lookup(&lower(name), RecordType::ANY),
            Lookup::NxDomain,
            "{name}"
        );
    }
}

#[test]
fn clusterset_ip_without_ips_is_not_served() {
    let yaml = CLUSTERSET_IP.replace("ips: [\"10.96.0.11\"]", "ips: []");
    let (table, _) = table_of(&yaml);
    assert_eq!(
        table.lookup(&lower("single.demo.svc.clusterset.local."), RecordType::A),
        Lookup::NxDomain
    );
}

const HEADLESS: &str = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: db, namespace: demo}
spec:
  type: Headless
  ports:
  - {name: sql, protocol: TCP, port: 5432}
  - {name: metrics, protocol: TCP, port: 9187}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: cluster-a}}
addressType: IPv4
ports: [{name: sql, protocol: TCP, port: 15432}, {name: metrics, protocol: TCP, port: 9187}]
endpoints:
- {addresses: ["10.1.0.1"], hostname: db-0}
- {addresses: ["10.1.0.2"], hostname: db-1, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: ["10.1.0.3"]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a-v6, namespace: demo, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: cluster-a}}
addressType: IPv6
ports: [{name: sql, protocol: TCP, port: 15432}]
endpoints:
- {addresses: ["fd00:1::1"], hostname: db-0}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-b, namespace: demo, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: membership-b.us-east1}}
addressType: IPv4
ports: [{name: sql, protocol: TCP, port: 15432}]
endpoints:
- {addresses: ["10.2.0.1"], hostname: db-0}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: elsewhere, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: cluster-a}}
addressType: IPv4
endpoints: [{addresses: ["10.9.9.9"], hostname: db-9}]
"#;

#[test]
fn headless_addresses_of_ready_endpoints_of_all_clusters() {
    let (table, rejections) = table_of(HEADLESS);
    assert!(rejections.is_empty(), "{rejections:?}");
    let service = "db.demo.svc.clusterset.local.";
    // Ready only (db-1 is terminating), every cluster, other namespaces not.
    assert_eq!(
        rdata(&table, service, RecordType::A),
        set(&["10.1.0.1", "10.1.0.3", "10.2.0.1"])
    );
    assert_eq!(
        rdata(&table, service, RecordType::AAAA),
        set(&["fd00:1::1"])
    );
}

#[test]
fn headless_per_endpoint_names() {
    let (table, _) = table_of(HEADLESS);
    let host = |name: &str| format!("{name}.db.demo.svc.clusterset.local.");
    assert_eq!(
        rdata(&table, &host("db-0.cluster-a"), RecordType::A),
        set(&["10.1.0.1"])
    );
    assert_eq!(
        rdata(&table, &host("db-0.cluster-a"), RecordType::AAAA),
        set(&["fd00:1::1"])
    );
    // The same hostname in another cluster is another name; a two-label
    // (GKE `membership.location`) cluster id works as is.
    assert_eq!(
        rdata(&table, &host("db-0.membership-b.us-east1"), RecordType::A),
        set(&["10.2.0.1"])
    );
    // No hostname: the address with dashes.
    assert_eq!(
        rdata(&table, &host("10-1-0-3.cluster-a"), RecordType::A),
        set(&["10.1.0.3"])
    );
    // Not ready: no name.
    assert_eq!(
        table.lookup(&lower(&host("db-1.cluster-a")), RecordType::A),
        Lookup::NxDomain
    );
}

#[test]
fn headless_srv_per_port_and_ready_endpoint() {
    let (table, _) = table_of(HEADLESS);
    let target = |name: &str| format!("0 100 5432 {name}.db.demo.svc.clusterset.local.");
    let sql = rdata(
        &table,
        "_sql._tcp.db.demo.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(
        sql,
        [
            target("db-0.cluster-a"),
            target("10-1-0-3.cluster-a"),
            target("db-0.membership-b.us-east1"),
        ]
        .into_iter()
        .collect()
    );
    // Only cluster-a exposes `metrics`: cluster b gets no SRV for it.
    let metrics = rdata(
        &table,
        "_metrics._tcp.db.demo.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(
        metrics,
        set(&[
            "0 100 9187 db-0.cluster-a.db.demo.svc.clusterset.local.",
            "0 100 9187 10-1-0-3.cluster-a.db.demo.svc.clusterset.local."
        ])
    );
    // At the service name: every port × endpoint.
    assert_eq!(
        rdata(&table, "db.demo.svc.clusterset.local.", RecordType::SRV).len(),
        5
    );
}

#[test]
fn headless_has_no_cluster_level_records() {
    let (table, _) = table_of(HEADLESS);
    // Spec 2.4.4: `<clusterid>.<svc>...` has no records. It is an empty
    // non-terminal above the per-endpoint names, so it answers NODATA.
    for cluster in ["cluster-a", "membership-b.us-east1", "us-east1"] {
        let name = format!("{cluster}.db.demo.svc.clusterset.local.");
        assert_eq!(
            table.lookup(&lower(&name), RecordType::ANY),
            Lookup::NoData,
            "{name}"
        );
    }
    // And no record anywhere in the zone has such an owner.
    let forbidden: Vec<String> = table
        .names()
        .iter()
        .filter(|(_, records)| !records.is_empty())
        .map(|(name, _)| name.to_string())
        .filter(|name| {
            ["cluster-a.", "membership-b.us-east1.", "us-east1."]
                .iter()
                .any(|cluster| name == &format!("{cluster}db.demo.svc.clusterset.local."))
        })
        .collect();
    assert!(forbidden.is_empty(), "{forbidden:?}");
}

#[test]
fn headless_without_ready_endpoints_does_not_exist() {
    let none_ready = format!(
        "{}\n---\n{}",
        HEADLESS.split("---").next().unwrap_or_default(),
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, namespace: demo, labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
endpoints: [{addresses: ["10.1.0.1"], hostname: db-0, conditions: {ready: false}}]
"#
    );
    let (table, _) = table_of(&none_ready);
    for record_type in [RecordType::A, RecordType::SRV, RecordType::ANY] {
        assert_eq!(
            table.lookup(&lower("db.demo.svc.clusterset.local."), record_type),
            Lookup::NxDomain
        );
    }
    assert_eq!(
        table.lookup(
            &lower("_sql._tcp.db.demo.svc.clusterset.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
}

#[test]
fn gke_derived_service_slices_back_imports() {
    let yaml = r#"
apiVersion: net.gke.io/v1
kind: ServiceImport
metadata: {name: db, namespace: demo, annotations: {net.gke.io/derived-service: gke-mcs-x}}
spec: {type: Headless, ports: [{name: sql, protocol: TCP, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gke-mcs-x-abc, namespace: demo, labels: {kubernetes.io/service-name: gke-mcs-x, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}}
addressType: IPv4
ports: [{name: sql, protocol: TCP, port: 5432}]
endpoints: [{addresses: ["10.3.0.1"], hostname: db-0}]
"#;
    let (table, rejections) = table_of(yaml);
    assert_eq!(
        rdata(&table, "db.demo.svc.clusterset.local.", RecordType::A),
        set(&["10.3.0.1"])
    );
    // Without a source cluster there is no `<clusterid>` for per-endpoint
    // names: reported, and the service's own records are still there.
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(
        rejections[0]
            .to_string()
            .contains("no source-cluster label")
    );
    assert_eq!(
        table.lookup(
            &lower("_sql._tcp.db.demo.svc.clusterset.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
}

#[test]
fn names_that_are_not_dns_labels_are_rejected_not_served() {
    let yaml = HEADLESS
        .replacen(
            r#"["10.1.0.1"], hostname: db-0}"#,
            r#"["10.1.0.1"], hostname: "db_0"}"#,
            1,
        )
        .replace("membership-b.us-east1", "bad cluster");
    let (table, rejections) = table_of(&yaml);
    let lines: Vec<String> = rejections.iter().map(ToString::to_string).collect();
    assert!(lines.iter().any(|l| l.contains("\"db_0\"")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("bad cluster")), "{lines:?}");
    assert!(
        rejections
            .iter()
            .all(|r| !r.fatal && r.reason() == "unsupported")
    );
    // The service and the other endpoints are unaffected.
    assert_eq!(
        rdata(&table, "db.demo.svc.clusterset.local.", RecordType::A),
        set(&["10.1.0.1", "10.1.0.3", "10.2.0.1"])
    );
    assert_eq!(
        rdata(
            &table,
            "10-1-0-3.cluster-a.db.demo.svc.clusterset.local.",
            RecordType::A
        ),
        set(&["10.1.0.3"])
    );
    // Every served name is made of valid labels.
    for (name, _) in table.names() {
        let text = name.to_string();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "{text}"
        );
    }
}

#[test]
fn same_address_in_two_slices_is_answered_once() {
    let yaml = HEADLESS.replace("10.2.0.1", "10.1.0.1");
    let (table, _) = table_of(&yaml);
    match table.lookup(&lower("db.demo.svc.clusterset.local."), RecordType::A) {
        Lookup::Answer(records) => assert_eq!(records.len(), 2),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn other_zones() {
    let (snapshot, _) = manifest::snapshot_from_yaml(CLUSTERSET_IP).expect("valid YAML");
    let zone = Name::from_ascii("mcs.example.").expect("valid zone");
    let (table, _) = ZoneTable::build(&snapshot, &zone, TTL, 1);
    assert_eq!(
        rdata(&table, "web.demo.svc.mcs.example.", RecordType::A),
        set(&["10.96.0.10"])
    );
    assert_eq!(
        table.lookup(&lower("web.demo.svc.clusterset.local."), RecordType::A),
        Lookup::NotInZone
    );
}
