//! Tests of the desired state's IP families: one ClusterSetIP per family
//! the oldest export has and a range serves, slices of the families the
//! import serves only, family conflicts, a full or removed range.

use std::net::IpAddr;

use super::*;
use crate::controller::allocate::AllocError;

const V4: &str = "10.240.0.0/16";
const V6: &str = "fd00:240::/108";

fn ranges(values: &[&str]) -> Allocator {
    let nets: Vec<ipnet::IpNet> = values.iter().map(|v| v.parse().unwrap()).collect();
    Allocator::new(&nets).unwrap()
}

fn dual() -> Value {
    json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"})
}

/// An IPv6 slice of `hello`, as the ordinary controller writes it.
fn hello_slice_v6(name: &str, addresses: &[&str]) -> Arc<EndpointSlice> {
    let mut slice = (*hello_slice(name, addresses)).clone();
    slice.address_type = "IPv6".to_owned();
    Arc::new(slice)
}

fn ips(import: &ImportWrite) -> Vec<IpAddr> {
    import.object["spec"]["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| ip.as_str().unwrap().parse().unwrap())
        .collect()
}

/// (source cluster, addressType) of every slice written.
fn slice_families(plan: &Plan) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = plan
        .slices
        .iter()
        .map(|s| {
            (
                s.object["metadata"]["labels"][LABEL_SOURCE_CLUSTER]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                s.object["addressType"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
        .collect()
}

#[test]
fn a_dual_stack_service_gets_an_address_and_slices_per_family_from_every_cluster() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(dual()),
        &[
            hello_slice("hello-a4", &["10.1.0.5"]),
            hello_slice_v6("hello-a6", &["fd00:1::5"]),
        ],
    );
    let b = exporting(
        "2025-01-01T00:00:01Z",
        hello_service(dual()),
        &[
            hello_slice("hello-b4", &["10.2.0.5"]),
            hello_slice_v6("hello-b6", &["fd00:2::5"]),
        ],
    );
    let plan = run(
        "a",
        &[("a", &a), ("b", &b)],
        &observed_with_namespaces(&["demo"]),
        &mut ranges(&[V4, V6]),
    );
    let import = &plan.imports[0];
    assert_eq!(import.object["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let ips = ips(import);
    assert_eq!(ips.len(), 2);
    assert!(V4.parse::<ipnet::IpNet>().unwrap().contains(&ips[0]));
    assert!(V6.parse::<ipnet::IpNet>().unwrap().contains(&ips[1]));
    assert_eq!(
        slice_families(&plan),
        pairs(&[("a", "IPv4"), ("a", "IPv6"), ("b", "IPv4"), ("b", "IPv6")])
    );
    let v6 = plan
        .slices
        .iter()
        .find(|s| {
            s.object["addressType"] == "IPv6"
                && s.object["endpoints"][0]["addresses"][0] == "fd00:2::5"
        })
        .unwrap();
    let labels = &v6.object["metadata"]["labels"];
    assert_eq!(labels[LABEL_MC_SERVICE_NAME], "hello");
    assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
    assert!(
        plan.exports
            .iter()
            .all(|e| condition(e, "Conflict").reason == "NoConflicts")
    );
}

#[test]
fn an_ipv6_only_service_gets_one_ipv6_address_and_only_its_ipv6_slices() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(json!({"ipFamilies": ["IPv6"]})),
        &[
            hello_slice_v6("hello-a6", &["fd00:1::5"]),
            // A stray IPv4 slice the Service's family does not serve.
            hello_slice("hello-a4", &["10.1.0.5"]),
        ],
    );
    let plan = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut ranges(&[V4, V6]),
    );
    let import = &plan.imports[0];
    assert_eq!(import.object["spec"]["ipFamilies"], json!(["IPv6"]));
    let ips = ips(import);
    assert!(matches!(ips.as_slice(), [IpAddr::V6(_)]), "{ips:?}");
    assert_eq!(slice_families(&plan), pairs(&[("a", "IPv6")]));

    // Without an IPv6 range it cannot be given an address: typed reason,
    // an Event naming the import, and no slice reaches a frontend.
    let plan = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut ranges(&[V4]),
    );
    let ready = &plan.imports[0].conditions[0];
    assert!(!ready.status);
    assert_eq!(ready.reason, "IPFamilyNotSupported");
    assert!(
        ready.message.contains("no --clusterset-ip-cidr for IPv6"),
        "{}",
        ready.message
    );
    let notice = plan
        .notices
        .iter()
        .find(|n| n.reason == "ClusterSetIPNotAllocated")
        .unwrap();
    assert!(
        notice.message.contains("ServiceImport demo/hello"),
        "{}",
        notice.message
    );
    assert!(plan.slices.is_empty());
}

#[test]
fn clusters_with_other_families_lose_to_the_oldest_export_with_a_conflict() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(dual()),
        &[
            hello_slice("hello-a4", &["10.1.0.5"]),
            hello_slice_v6("hello-a6", &["fd00:1::5"]),
        ],
    );
    let b = exporting(
        "2025-01-01T00:00:01Z",
        hello_service(json!({"ipFamilies": ["IPv4"]})),
        &[hello_slice("hello-b4", &["10.2.0.5"])],
    );
    // cluster-b's controller: its export gets the condition.
    let plan = run(
        "b",
        &[("a", &a), ("b", &b)],
        &observed_with_namespaces(&["demo"]),
        &mut ranges(&[V4, V6]),
    );
    assert_eq!(
        ips(&plan.imports[0]).len(),
        2,
        "the oldest export, dual stack, wins"
    );
    assert_eq!(
        slice_families(&plan),
        pairs(&[("a", "IPv4"), ("a", "IPv6"), ("b", "IPv4")])
    );
    let [export] = plan.exports.as_slice() else {
        panic!("{:?}", plan.exports)
    };
    let conflict = condition(export, "Conflict");
    assert!(conflict.status);
    assert_eq!(conflict.reason, "IPFamilyConflict");
    assert!(
        conflict.message.contains("ipFamilies differs in b IPv4"),
        "{}",
        conflict.message
    );
    assert!(plan.notices.iter().any(|n| n.reason == "Conflict"));

    // The other way round: IPv4 only is the oldest, cluster-a's IPv6
    // endpoints are not imported.
    let a_late = exporting(
        "2025-01-02T00:00:00Z",
        hello_service(dual()),
        &[
            hello_slice("hello-a4", &["10.1.0.5"]),
            hello_slice_v6("hello-a6", &["fd00:1::5"]),
        ],
    );
    let plan = run(
        "a",
        &[("a", &a_late), ("b", &b)],
        &observed_with_namespaces(&["demo"]),
        &mut ranges(&[V4, V6]),
    );
    assert_eq!(
        plan.imports[0].object["spec"]["ipFamilies"],
        json!(["IPv4"])
    );
    assert_eq!(
        slice_families(&plan),
        pairs(&[("a", "IPv4"), ("b", "IPv4")])
    );
    assert_eq!(
        condition(&plan.exports[0], "Conflict").reason,
        "IPFamilyConflict"
    );
}

#[test]
fn a_full_ipv6_range_is_reported_without_blocking_ipv4() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(dual()),
        &[
            hello_slice("hello-a4", &["10.1.0.5"]),
            hello_slice_v6("hello-a6", &["fd00:1::5"]),
        ],
    );
    let mut allocator = ranges(&[V4, "fd00:240::/126"]);
    // Three usable IPv6 addresses, all held by other imports.
    for name in ["x", "y", "z"] {
        let (held, errors) = allocator.ensure(&ObjectKey::new("demo", name), &[IpFamily::V6]);
        assert!(errors.is_empty() && held.len() == 1);
    }
    let plan = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator,
    );
    let import = &plan.imports[0];
    assert!(matches!(ips(import).as_slice(), [IpAddr::V4(_)]));
    assert_eq!(import.object["spec"]["ipFamilies"], json!(["IPv4"]));
    let ready = &import.conditions[0];
    assert!(ready.status, "IPv4 still serves");
    assert!(
        ready
            .message
            .contains("no IPv6 ClusterSetIP: every address of fd00:240::/126 is in use"),
        "{}",
        ready.message
    );
    let notice = plan
        .notices
        .iter()
        .find(|n| n.reason == "ClusterSetIPNotAllocated")
        .unwrap();
    assert!(
        notice.message.starts_with("ServiceImport demo/hello:"),
        "{}",
        notice.message
    );
    assert_eq!(slice_families(&plan), pairs(&[("a", "IPv4")]));
    assert_eq!(
        AllocError::Exhausted("fd00:240::/126".parse().unwrap()).family(),
        IpFamily::V6
    );
}

/// A restart: a fresh allocator over `values` reads the addresses back from
/// what the cluster holds, as the controller does on every new term.
fn restart(values: &[&str], observed: &Observed) -> Allocator {
    let mut allocator = ranges(values);
    for import in observed.imports.values().filter(|i| i.managed) {
        let _ = allocator.adopt(&import.key, &import.ips);
    }
    allocator
}

#[test]
fn removing_the_ipv6_range_releases_ipv6_and_adding_it_back_restores_the_address() {
    let a = exporting(
        "2025-01-01T00:00:00Z",
        hello_service(dual()),
        &[
            hello_slice("hello-a4", &["10.1.0.5"]),
            hello_slice_v6("hello-a6", &["fd00:1::5"]),
        ],
    );
    let mut allocator = ranges(&[V4, V6]);
    let first = run(
        "a",
        &[("a", &a)],
        &observed_with_namespaces(&["demo"]),
        &mut allocator,
    );
    let dual_ips = ips(&first.imports[0]);
    assert_eq!(dual_ips.len(), 2);
    let held = observe(&first, &["demo"]);

    // Restarted without the IPv6 range: IPv4 kept, IPv6 gone with its slice.
    let mut v4_only = restart(&[V4], &held);
    let plan = run("a", &[("a", &a)], &held, &mut v4_only);
    assert_eq!(ips(&plan.imports[0]), dual_ips[..1]);
    assert_eq!(slice_families(&plan), pairs(&[("a", "IPv4")]));
    let v6_slice = first
        .slices
        .iter()
        .find(|s| s.object["addressType"] == "IPv6")
        .unwrap();
    assert_eq!(plan.delete_slices, std::slice::from_ref(&v6_slice.key));
    let ready = &plan.imports[0].conditions[0];
    assert!(ready.status);
    assert!(
        ready.message.contains("no --clusterset-ip-cidr for IPv6"),
        "{}",
        ready.message
    );
    assert!(
        plan.notices
            .iter()
            .any(|n| n.reason == "ClusterSetIPNotAllocated")
    );

    // The range back: the search starts where it did, so an address nobody
    // took meanwhile comes back.
    let held = observe(&plan, &["demo"]);
    let mut both = restart(&[V4, V6], &held);
    let plan = run("a", &[("a", &a)], &held, &mut both);
    assert_eq!(ips(&plan.imports[0]), dual_ips);
    assert_eq!(
        slice_families(&plan),
        pairs(&[("a", "IPv4"), ("a", "IPv6")])
    );
}
