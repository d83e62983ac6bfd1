//! Hostile input corpus: bad objects of every kind the API server or a file
//! could hand the agent (CVE-2021-25737 class addresses, malformed ports and
//! protocols, huge lists and strings, garbage YAML, wrong kinds and types),
//! each placed in a manifest next to a well-formed sibling import and slice.
//!
//! For every case: the whole control path (`manifest::snapshot_from_yaml`,
//! i.e. parse and snapshot → `desired::compute` → `Reconciler::apply` into
//! `MemoryMaps`) runs under `catch_unwind`; the case must yield the *typed*
//! rejections it is expected to (matched on `Rejection::reason()`, i.e. the
//! `Problem` variant, never on message text), no forbidden address may reach
//! the desired state, every frontend has at most `MAX_BACKENDS_PER_FRONTEND`
//! backends, the maps must render consistently, and the sibling must still be
//! served with its backends. Peak heap use is measured with a counting global
//! allocator and must stay linear in the input size.
//!
//! The figures (inputs tried / rejected / panics, peak memory) are printed
//! and written to `target/figures/hostile_input.md` (`cargo xtask figures`
//! updates `docs/figures/`).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::atomic::{AtomicUsize, Ordering},
};

use mcs_agent::{
    desired::{self, DesiredState, Frontend},
    model::{
        Protocol,
        convert::forbidden_reason,
        manifest::{self, SyntaxError},
    },
    reconcile::{Reconciler, check, memory::MemoryMaps},
    sources::file::{FileSource, FileSourceError},
};
use mcs_common::MAX_BACKENDS_PER_FRONTEND;
use serde_json::{Value, json};

/// Counts live heap bytes and their high-water mark, so each case's peak
/// allocation can be measured (this test binary only).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let live = LIVE.fetch_add(grown, Ordering::Relaxed) + grown;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;
/// Allowed peak heap use per input byte, plus a fixed allowance. Parsing
/// holds a document's YAML events and then its value tree: linear in the
/// input, about 5× for ordinary manifests, 60–70× for huge endpoint lists,
/// and at worst ~180× for one event per input byte (`[[[[…`), which the
/// recursion limit refuses only after the events were read.
const BYTES_PER_INPUT_BYTE: usize = 200;
const FIXED_ALLOWANCE: usize = 16 * MIB;

const SIBLING_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 250, 1);
const SIBLING_BACKENDS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2)];

const SIBLING: &str = r#"apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: good, namespace: sibling}
spec: {type: ClusterSetIP, ips: ["10.96.250.1"], ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: good-a, namespace: sibling, labels: {multicluster.kubernetes.io/service-name: good, multicluster.kubernetes.io/source-cluster: a}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints: [{addresses: ["10.250.0.1"]}, {addresses: ["10.250.0.2"]}]
"#;

/// What a case must produce.
enum Expect {
    /// Every listed `Rejection::reason()` must occur.
    Reasons(Vec<&'static str>),
    /// Those reasons, and the closure's bound on the outcome.
    ReasonsAnd(Vec<&'static str>, fn(&DesiredState) -> Result<(), String>),
    /// The text is not YAML: a typed `SyntaxError` (the file source keeps
    /// the file's previous objects; other files keep working).
    Syntax,
    /// Accepted on purpose (merged, truncated or ignored); the closure says
    /// what bounded outcome is required.
    Bounded(fn(&DesiredState) -> Result<(), String>),
}

struct Case {
    category: &'static str,
    name: String,
    text: String,
    expect: Expect,
}

fn yaml(value: &Value) -> String {
    serde_yaml_ng::to_string(value).expect("serializable")
}

fn import_with(spec: Value) -> Value {
    json!({
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceImport",
        "metadata": {"name": "evil", "namespace": "evil"},
        "spec": spec,
    })
}

fn good_spec() -> Value {
    json!({"type": "ClusterSetIP", "ips": ["10.96.66.1"],
           "ports": [{"name": "http", "protocol": "TCP", "port": 80}]})
}

fn slice_with(
    name: &str,
    labels: Value,
    address_type: Value,
    ports: Value,
    endpoints: Value,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "evil", "labels": labels},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    })
}

fn labels(cluster: &str) -> Value {
    json!({"multicluster.kubernetes.io/service-name": "evil",
           "multicluster.kubernetes.io/source-cluster": cluster})
}

fn http_ports() -> Value {
    json!([{"name": "http", "protocol": "TCP", "port": 8080}])
}

fn endpoint_slice(endpoints: Value) -> Value {
    slice_with(
        "evil-a",
        labels("a"),
        json!("IPv4"),
        http_ports(),
        endpoints,
    )
}

/// The evil import plus a slice: the import itself is well-formed.
fn with_import(objects: &[Value]) -> String {
    let mut text = yaml(&import_with(good_spec()));
    for object in objects {
        text.push_str("---\n");
        text.push_str(&yaml(object));
    }
    text
}

fn huge(len: usize) -> String {
    "x".repeat(len)
}

fn evil_frontend() -> Frontend {
    Frontend {
        addr: IpAddr::V4(Ipv4Addr::new(10, 96, 66, 1)),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

/// The evil frontend exists with exactly `count` backends.
fn evil_backends(state: &DesiredState, count: usize) -> Result<(), String> {
    let spec = state
        .frontends
        .get(&evil_frontend())
        .ok_or("evil frontend missing")?;
    if spec.backends.len() == count {
        Ok(())
    } else {
        Err(format!(
            "{} backends, expected {count}",
            spec.backends.len()
        ))
    }
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |category: &'static str, name: String, text: String, expect: Expect| {
        cases.push(Case {
            category,
            name,
            text,
            expect,
        });
    };

    // Addresses: forbidden ones (CVE-2021-25737: endpoints pointing at the
    // node, link-local metadata services, multicast, broadcast) and
    // malformed ones, both as ClusterSetIP and as endpoint.
    let forbidden = [
        "0.0.0.0",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "169.254.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
    ];
    for address in forbidden {
        add(
            "forbidden address",
            format!("ClusterSetIP {address}"),
            yaml(&import_with(
                json!({"ips": [address], "ports": [{"name": "http", "port": 80}]}),
            )),
            Expect::Reasons(vec!["forbidden_ip"]),
        );
        add(
            "forbidden address",
            format!("endpoint {address}"),
            with_import(&[endpoint_slice(
                json!([{"addresses": [address]}, {"addresses": ["10.66.0.1"]}]),
            )]),
            Expect::Reasons(vec!["forbidden_ip"]),
        );
    }
    let one_mib = huge(MIB);
    let malformed = [
        "10.0.0.256",
        "10.0.0",
        "1.2.3.4.5",
        "10.0.0.1/24",
        " 10.0.0.1",
        "10.0.0.1 ",
        "0x0a000001",
        "010.000.000.001",
        "167772161",
        "",
        "10.0.0.1\u{0}",
        "١٠.0.0.1",
        "fe80::1%eth0",
        "[::1]",
        "10.0.0.-1",
        "gggg::1",
        one_mib.as_str(),
    ];
    for address in malformed {
        let shown: String = address.chars().take(24).collect();
        add(
            "malformed address",
            format!("ClusterSetIP {shown:?} ({} bytes)", address.len()),
            yaml(&import_with(
                json!({"ips": [address], "ports": [{"name": "http", "port": 80}]}),
            )),
            Expect::Reasons(vec!["malformed_ip"]),
        );
        add(
            "malformed address",
            format!("endpoint {shown:?} ({} bytes)", address.len()),
            with_import(&[endpoint_slice(
                json!([{"addresses": [address]}, {"addresses": ["10.66.0.1"]}]),
            )]),
            Expect::Reasons(vec!["malformed_ip"]),
        );
    }
    add(
        "too many addresses",
        "3 ClusterSetIPs".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1", "10.96.66.2", "fd00::1"], "ports": [{"name": "http", "port": 80}]}),
        )),
        Expect::Reasons(vec!["too_many_ips"]),
    );
    add(
        "too many addresses",
        "10^4 ClusterSetIPs".into(),
        yaml(&import_with(
            json!({"ips": (0..10_000).map(|i| format!("10.97.{}.{}", i / 250, i % 250 + 1)).collect::<Vec<_>>(), "ports": [{"name": "http", "port": 80}]}),
        )),
        Expect::Reasons(vec!["too_many_ips"]),
    );
    add(
        "too many addresses",
        "two IPv4 ClusterSetIPs".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1", "10.96.66.2"], "ports": [{"name": "http", "port": 80}]}),
        )),
        Expect::Reasons(vec!["same_family_ips"]),
    );
    add(
        "address type",
        "IPv6 address in an IPv4 slice".into(),
        with_import(&[endpoint_slice(json!([{"addresses": ["fd00::1"]}]))]),
        Expect::Reasons(vec!["address_type_mismatch"]),
    );
    add(
        "address type",
        "IPv4 address in an IPv6 slice".into(),
        with_import(&[slice_with(
            "evil-a",
            labels("a"),
            json!("IPv6"),
            http_ports(),
            json!([{"addresses": ["10.66.0.1"]}]),
        )]),
        Expect::Reasons(vec!["address_type_mismatch"]),
    );
    for (address_type, reason) in [
        (json!("FQDN"), "unsupported"),
        (json!("IPv5"), "unknown_address_type"),
        (json!(""), "unknown_address_type"),
        (json!(7), "unparsable"),
        (json!(null), "unknown_address_type"),
    ] {
        add(
            "address type",
            format!("addressType {address_type}"),
            with_import(&[slice_with(
                "evil-a",
                labels("a"),
                address_type,
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            Expect::Reasons(vec![reason]),
        );
    }
    add(
        "address type",
        "IPv6 ClusterSetIP exported only with IPv4 endpoints".into(),
        format!(
            "{}---\n{}",
            yaml(&import_with(
                json!({"ips": ["fd00::66"], "ports": [{"name": "http", "port": 80}]}),
            )),
            yaml(&endpoint_slice(json!([{"addresses": ["10.66.0.1"]}]))),
        ),
        Expect::Reasons(vec!["no_endpoints_of_family"]),
    );

    // Ports and protocols.
    for (port, reason) in [
        (json!(0), "port_out_of_range"),
        (json!(65_536), "port_out_of_range"),
        (json!(-1), "port_out_of_range"),
        (json!(-65_535), "port_out_of_range"),
        (json!(i64::MAX), "port_out_of_range"),
        (json!(null), "port_out_of_range"),
        (json!("80"), "unparsable"),
        (json!("http"), "unparsable"),
        (json!(80.5), "unparsable"),
        (json!(1e300), "unparsable"),
        (json!(true), "unparsable"),
        (json!([80]), "unparsable"),
    ] {
        add(
            "port",
            format!("service port {port}"),
            yaml(&import_with(
                json!({"ips": ["10.96.66.1"], "ports": [{"name": "http", "port": port}]}),
            )),
            Expect::Reasons(vec![reason]),
        );
        let slice_reason = match reason {
            // Slice ports are i32 in the Kubernetes type: out of i32 range
            // does not even deserialize.
            "port_out_of_range" if port.as_i64().is_some_and(|p| i32::try_from(p).is_err()) => {
                "unparsable"
            }
            other => other,
        };
        add(
            "port",
            format!("target port {port}"),
            with_import(&[slice_with(
                "evil-a",
                labels("a"),
                json!("IPv4"),
                json!([{"name": "http", "protocol": "TCP", "port": port}]),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            Expect::Reasons(vec![slice_reason]),
        );
    }
    for protocol in ["QUIC", "tcp", "", "ICMP", "TCP ", one_mib.as_str()] {
        let shown: String = protocol.chars().take(16).collect();
        add(
            "protocol",
            format!("service protocol {shown:?}"),
            yaml(&import_with(
                json!({"ips": ["10.96.66.1"], "ports": [{"name": "http", "protocol": protocol, "port": 80}]}),
            )),
            Expect::Reasons(vec!["unknown_protocol"]),
        );
        add(
            "protocol",
            format!("target protocol {shown:?}"),
            with_import(&[slice_with(
                "evil-a",
                labels("a"),
                json!("IPv4"),
                json!([{"name": "http", "protocol": protocol, "port": 8080}]),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            Expect::Reasons(vec!["unknown_protocol"]),
        );
    }
    add(
        "protocol",
        "SCTP service port".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1"], "ports": [{"name": "sctp", "protocol": "SCTP", "port": 80}]}),
        )),
        Expect::Reasons(vec!["unsupported"]),
    );
    add(
        "port",
        "duplicate service port names".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1"], "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}),
        )),
        Expect::Reasons(vec!["duplicate_port_name"]),
    );
    add(
        "port",
        "duplicate target port names".into(),
        with_import(&[slice_with(
            "evil-a",
            labels("a"),
            json!("IPv4"),
            json!([{"name": "http", "port": 8080}, {"name": "http", "port": 8081}]),
            json!([{"addresses": ["10.66.0.1"]}]),
        )]),
        Expect::Reasons(vec!["duplicate_port_name"]),
    );
    add(
        "port",
        "several unnamed service ports".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1"], "ports": [{"port": 80}, {"port": 81}]}),
        )),
        Expect::Reasons(vec!["duplicate_port_name"]),
    );
    add(
        "port",
        "10^4 service ports".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1"], "ports": (0..10_000).map(|i| json!({"name": format!("p{i}"), "port": i % 65_535 + 1})).collect::<Vec<_>>()}),
        )),
        Expect::Bounded(|state| {
            // Every port is a frontend; same number twice is a conflict.
            let count = state.service_frontends().count();
            // 10^4 ports plus the sibling's one.
            if count <= 10_001 {
                Ok(())
            } else {
                Err(format!("{count} frontends"))
            }
        }),
    );
    for timeout in [json!(0), json!(-1), json!(86_401), json!(i64::MAX)] {
        add(
            "affinity",
            format!("timeoutSeconds {timeout}"),
            yaml(&import_with(
                json!({"ips": ["10.96.66.1"], "ports": [{"name": "http", "port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}}}),
            )),
            Expect::Reasons(vec!["unsupported"]),
        );
    }
    add(
        "affinity",
        "sessionAffinity Cookie".into(),
        yaml(&import_with(
            json!({"ips": ["10.96.66.1"], "ports": [{"name": "http", "port": 80}], "sessionAffinity": "Cookie"}),
        )),
        Expect::Reasons(vec!["unsupported"]),
    );
    add(
        "import type",
        "spec.type LoadBalancer".into(),
        yaml(&import_with(
            json!({"type": "LoadBalancer", "ips": ["10.96.66.1"]}),
        )),
        Expect::Reasons(vec!["unknown_import_type"]),
    );

    // Huge endpoint lists: 10^5 endpoints in one import, in one slice and
    // split over 100 slices of two clusters; 10^5 addresses in one endpoint;
    // one address 10^5 times.
    let many = |count: usize, offset: usize| -> Value {
        Value::Array(
            (offset..offset + count)
                .map(|i| json!({"addresses": [format!("10.{}.{}.{}", 100 + i / 62_500, (i / 250) % 250, i % 250 + 1)]}))
                .collect(),
        )
    };
    let capped: fn(&DesiredState) -> Result<(), String> =
        |state| evil_backends(state, MAX_BACKENDS_PER_FRONTEND as usize);
    add(
        "huge list",
        "10^5 endpoints in one slice".into(),
        with_import(&[endpoint_slice(many(100_000, 0))]),
        Expect::ReasonsAnd(vec!["unsupported"], capped),
    );
    add(
        "huge list",
        "10^5 endpoints over 100 slices and 2 clusters".into(),
        with_import(
            &(0..100)
                .map(|s| {
                    slice_with(
                        &format!("evil-{s}"),
                        labels(if s % 2 == 0 { "a" } else { "b" }),
                        json!("IPv4"),
                        http_ports(),
                        many(1000, s * 1000),
                    )
                })
                .collect::<Vec<_>>(),
        ),
        Expect::ReasonsAnd(vec!["unsupported"], capped),
    );
    add(
        "huge list",
        "10^5 addresses in one endpoint".into(),
        with_import(&[endpoint_slice(
            json!([{"addresses": (0..100_000).map(|i| format!("10.{}.{}.{}", 100 + i / 62_500, (i / 250) % 250, i % 250 + 1)).collect::<Vec<_>>()}]),
        )]),
        Expect::ReasonsAnd(vec!["unsupported"], capped),
    );
    add(
        "huge list",
        "one address 10^5 times".into(),
        with_import(&[endpoint_slice(Value::Array(vec![
            json!({"addresses": ["10.66.0.1"]});
            100_000
        ]))]),
        Expect::Bounded(|state| evil_backends(state, 1)),
    );

    // Duplicates: the same endpoint in slices of two clusters is one backend
    // (first slice in name order names the cluster); the same object twice
    // is a conflict (first wins).
    add(
        "duplicates",
        "same endpoint in two clusters' slices".into(),
        with_import(&[
            slice_with(
                "evil-a",
                labels("a"),
                json!("IPv4"),
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}]),
            ),
            slice_with(
                "evil-b",
                labels("b"),
                json!("IPv4"),
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}, {"addresses": ["10.66.0.2"]}]),
            ),
        ]),
        Expect::Bounded(|state| {
            evil_backends(state, 2)?;
            let first = &state.frontends[&evil_frontend()].backends[0];
            if &*first.cluster == "a" {
                Ok(())
            } else {
                Err(format!("10.66.0.1 labelled {:?}", first.cluster))
            }
        }),
    );
    add(
        "duplicates",
        "same slice defined twice".into(),
        with_import(&[
            endpoint_slice(json!([{"addresses": ["10.66.0.1"]}])),
            endpoint_slice(json!([{"addresses": ["10.66.0.2"]}])),
        ]),
        Expect::Reasons(vec!["conflict"]),
    );
    add(
        "duplicates",
        "same import defined twice".into(),
        format!(
            "{}---\n{}",
            yaml(&import_with(good_spec())),
            yaml(&import_with(good_spec()))
        ),
        Expect::Reasons(vec!["conflict"]),
    );
    add(
        "duplicates",
        "two imports claim one ClusterSetIP:port".into(),
        format!(
            "{}---\n{}",
            yaml(&import_with(good_spec())),
            yaml(
                &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
                         "metadata": {"name": "thief", "namespace": "evil"}, "spec": good_spec()})
            )
        ),
        Expect::Reasons(vec!["conflict"]),
    );
    add(
        "duplicates",
        "the sibling's ClusterSetIP claimed by an earlier import".into(),
        yaml(
            &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
                     "metadata": {"name": "zz-thief", "namespace": "sibling"},
                     "spec": {"ips": ["10.96.250.1"], "ports": [{"name": "http", "port": 80}]}}),
        ),
        Expect::Reasons(vec!["conflict"]),
    );

    // Huge strings (1 MiB) in every name-like field.
    for (field, text, reason) in [
        (
            "metadata.name",
            yaml(
                &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": one_mib, "namespace": "evil"}, "spec": good_spec()}),
            ),
            "unparsable",
        ),
        (
            "metadata.namespace",
            yaml(
                &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": one_mib}, "spec": good_spec()}),
            ),
            "unparsable",
        ),
        (
            "slice metadata.name",
            with_import(&[slice_with(
                &one_mib,
                labels("a"),
                json!("IPv4"),
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            "unparsable",
        ),
        (
            "apiVersion",
            yaml(
                &json!({"apiVersion": one_mib, "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": "evil"}}),
            ),
            "unsupported_kind",
        ),
        (
            "kind",
            yaml(
                &json!({"apiVersion": "v1", "kind": one_mib, "metadata": {"name": "evil", "namespace": "evil"}}),
            ),
            "unsupported_kind",
        ),
        (
            "spec.type",
            yaml(&import_with(
                json!({"type": one_mib, "ips": ["10.96.66.1"]}),
            )),
            "unknown_import_type",
        ),
        (
            "sessionAffinity",
            yaml(&import_with(
                json!({"ips": ["10.96.66.1"], "ports": [{"name": "http", "port": 80}], "sessionAffinity": one_mib}),
            )),
            "unsupported",
        ),
        (
            "locality annotation",
            yaml(
                &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": "evil", "annotations": {"dataplane.mcs.dev/locality": one_mib}}, "spec": good_spec()}),
            ),
            "unsupported",
        ),
        (
            "addressType",
            with_import(&[slice_with(
                "evil-a",
                labels("a"),
                json!(one_mib),
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            "unknown_address_type",
        ),
        (
            "service-name label",
            with_import(&[slice_with(
                "evil-a",
                json!({"multicluster.kubernetes.io/service-name": one_mib}),
                json!("IPv4"),
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            "unparsable",
        ),
        (
            "source-cluster label",
            with_import(&[slice_with(
                "evil-a",
                labels(&one_mib),
                json!("IPv4"),
                http_ports(),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
            "unparsable",
        ),
    ] {
        add(
            "huge string",
            format!("1 MiB {field}"),
            text,
            Expect::Reasons(vec![reason]),
        );
    }
    for (field, text) in [
        (
            "service port name",
            yaml(&import_with(
                json!({"ips": ["10.96.66.1"], "ports": [{"name": one_mib, "port": 80}]}),
            )),
        ),
        (
            "target port name",
            with_import(&[slice_with(
                "evil-a",
                labels("a"),
                json!("IPv4"),
                json!([{"name": one_mib, "port": 8080}]),
                json!([{"addresses": ["10.66.0.1"]}]),
            )]),
        ),
        (
            "endpoint hostname",
            with_import(&[endpoint_slice(
                json!([{"addresses": ["10.66.0.1"], "hostname": one_mib}]),
            )]),
        ),
        (
            "status cluster name",
            yaml(
                &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": "evil"}, "spec": good_spec(), "status": {"clusters": [{"cluster": one_mib}]}}),
            ),
        ),
        (
            "derived-service annotation",
            yaml(
                &json!({"apiVersion": "net.gke.io/v1", "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": "evil", "annotations": {"net.gke.io/derived-service": one_mib}}, "spec": good_spec()}),
            ),
        ),
        (
            "unknown field",
            yaml(
                &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": "evil"}, "spec": good_spec(), "junk": one_mib}),
            ),
        ),
    ] {
        add(
            "huge string",
            format!("1 MiB {field} (kept truncated or ignored)"),
            text,
            Expect::Bounded(|state| {
                let longest = state
                    .frontends
                    .values()
                    .map(|s| s.name.len())
                    .max()
                    .unwrap_or(0);
                if longest <= 1024 {
                    Ok(())
                } else {
                    Err(format!("frontend name of {longest} bytes"))
                }
            }),
        );
    }

    // Wrong kinds.
    for object in [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "evil"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "evil"}, "spec": {"clusterIP": "127.0.0.1"}}),
        json!({"apiVersion": "v1", "kind": "ServiceImport", "metadata": {"name": "x", "namespace": "evil"}, "spec": good_spec()}),
        json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport", "metadata": {"name": "x", "namespace": "evil"}}),
        json!({"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice", "metadata": {"name": "x", "namespace": "evil"}}),
        json!({"kind": "ServiceImport", "metadata": {"name": "x", "namespace": "evil"}}),
        json!({"apiVersion": 1, "kind": ["ServiceImport"]}),
        json!("just a string"),
        json!(42),
        json!([1, 2, 3]),
        json!({}),
    ] {
        add(
            "wrong kind",
            truncated(&object.to_string()),
            yaml(&object),
            Expect::Reasons(vec!["unsupported_kind"]),
        );
    }
    // `kind: List` with garbage items (the good ones are still read).
    add(
        "list",
        "List with garbage items".into(),
        yaml(&json!({"apiVersion": "v1", "kind": "List", "items": [
            1, "x", null, [], {}, true,
            {"kind": "List", "items": "not a list"},
            {"apiVersion": "v1", "kind": "List", "items": [{"kind": "List", "items": [[]]}]},
            {"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport"},
            import_with(good_spec()),
        ]})),
        Expect::Reasons(vec!["unsupported_kind", "missing_metadata"]),
    );
    add(
        "list",
        "ServiceImportList".into(),
        yaml(
            &json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImportList", "items": [import_with(json!({"ips": ["127.0.0.1"]}))]}),
        ),
        Expect::Reasons(vec!["forbidden_ip"]),
    );
    // Built as text (JSON is YAML): a deep `Value` would overflow the test's
    // own stack when dropped.
    let nested = |depth: usize| -> String {
        let inner =
            serde_json::to_string(&import_with(json!({"ips": ["0.0.0.0"]}))).expect("serializable");
        format!(
            "{}{inner}{}",
            r#"{"apiVersion": "v1", "kind": "List", "items": ["#.repeat(depth),
            "]}".repeat(depth)
        )
    };
    add(
        "list",
        "List nested 30 deep".into(),
        nested(30),
        Expect::Reasons(vec!["forbidden_ip"]),
    );
    // Deeper than the parser's recursion limit: refused as a whole, before
    // the YAML parser sees it (its bookkeeping is quadratic in flow depth).
    add(
        "list",
        "List nested 10^4 deep".into(),
        nested(10_000),
        Expect::Syntax,
    );

    // Wrong field types.
    for (what, object, reason) in [
        ("spec a string", import_with(json!("nope")), "unparsable"),
        (
            "spec.ips a string",
            import_with(json!({"ips": "10.96.66.1"})),
            "unparsable",
        ),
        (
            "spec.ips of numbers",
            import_with(json!({"ips": [167772161]})),
            "unparsable",
        ),
        (
            "spec.ports a map",
            import_with(json!({"ports": {"http": 80}})),
            "unparsable",
        ),
        (
            "status a list",
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "evil", "namespace": "evil"}, "status": []}),
            "unparsable",
        ),
        (
            "metadata a list",
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": ["evil"]}),
            "missing_metadata",
        ),
        (
            "metadata.name a number",
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": 5, "namespace": "evil"}}),
            "missing_metadata",
        ),
        (
            "empty name",
            json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport", "metadata": {"name": "", "namespace": "evil"}}),
            "missing_metadata",
        ),
        (
            "slice labels a string",
            slice_with("evil-a", json!("x"), json!("IPv4"), http_ports(), json!([])),
            "unparsable",
        ),
        (
            "slice without labels",
            slice_with("evil-a", json!({}), json!("IPv4"), http_ports(), json!([])),
            "missing_label",
        ),
        (
            "endpoints a map",
            slice_with(
                "evil-a",
                labels("a"),
                json!("IPv4"),
                http_ports(),
                json!({"a": 1}),
            ),
            "unparsable",
        ),
        (
            "addresses a string",
            endpoint_slice(json!([{"addresses": "10.66.0.1"}])),
            "unparsable",
        ),
        (
            "conditions.ready a string",
            endpoint_slice(json!([{"addresses": ["10.66.0.1"], "conditions": {"ready": "yes"}}])),
            "unparsable",
        ),
        (
            "endpoints of strings",
            endpoint_slice(json!(["10.66.0.1"])),
            "unparsable",
        ),
        (
            "Endpoints subsets a string",
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "evil", "namespace": "evil"}, "subsets": "x"}),
            "unparsable",
        ),
        (
            "Endpoints with a loopback address",
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "evil", "namespace": "evil"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 80}]}]}),
            "forbidden_ip",
        ),
        (
            "Endpoints with port 0",
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "evil", "namespace": "evil"}, "subsets": [{"addresses": [{"ip": "10.66.0.1"}], "ports": [{"port": 0}]}]}),
            "port_out_of_range",
        ),
    ] {
        add(
            "wrong type",
            what.into(),
            yaml(&object),
            Expect::Reasons(vec![reason]),
        );
    }

    // Garbage that is not YAML (or not YAML the agent can take).
    let deep_seq = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_map = format!("{}1{}", "{a: ".repeat(100_000), "}".repeat(100_000));
    let deep_block: String = (0..1_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    for (name, text) in [
        ("unclosed flow sequence", "a: [unclosed".to_owned()),
        ("bad indentation", "key: value\n  - bad: [".to_owned()),
        ("tab indentation", "a:\n\t- b".to_owned()),
        ("10^5 nested sequences", deep_seq),
        ("10^5 nested maps", deep_map),
        ("10^3 nested block maps", deep_block),
        ("undefined alias", "a: *nothing".to_owned()),
        (
            "binary garbage",
            String::from_utf8_lossy(
                &(0..4096u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect::<Vec<_>>(),
            )
            .into_owned(),
        ),
        ("NUL bytes", "kind: \u{0}\u{0}\n\u{0}: [".to_owned()),
        ("directive garbage", "%YAML 9.9\n--- a\n".to_owned()),
    ] {
        add("garbage YAML", name.into(), text, Expect::Syntax);
    }
    // Alias bombs ("billion laughs"): must be refused, not expanded.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..10 {
        let previous = level - 1;
        let _ = writeln!(
            bomb,
            "a{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}]"
        );
    }
    add(
        "garbage YAML",
        "billion laughs (10^10 nodes)".into(),
        bomb,
        Expect::Syntax,
    );
    add(
        "garbage YAML",
        "tagged values".into(),
        "apiVersion: !!binary aGVsbG8=\nkind: !custom ServiceImport\nmetadata: {name: !!int 5}\n"
            .into(),
        Expect::Reasons(vec!["unsupported_kind"]),
    );
    // Valid YAML that JSON cannot hold: that document is rejected, the
    // rest of the file still served.
    add(
        "garbage YAML",
        "non-string map key".into(),
        "? [1, 2]\n: x\n".into(),
        Expect::Reasons(vec!["unparsable"]),
    );
    add(
        "garbage YAML",
        "duplicate keys".into(),
        "apiVersion: v1\napiVersion: v2\nkind: List\n".into(),
        Expect::Syntax,
    );
    add(
        "garbage YAML",
        "10 MiB scalar".into(),
        format!("junk: {}\n", huge(10 * MIB)),
        Expect::Reasons(vec!["unsupported_kind"]),
    );
    add(
        "garbage YAML",
        "special floats and huge integers".into(),
        "apiVersion: .nan\nkind: .inf\nmetadata: {name: 1e999, namespace: 123456789012345678901234567890}\n".into(),
        Expect::Syntax,
    );
    cases
}

fn truncated(text: &str) -> String {
    text.chars().take(60).collect()
}

/// What one case produced.
struct Outcome {
    reasons: BTreeSet<&'static str>,
    syntax_error: bool,
    state: Option<DesiredState>,
}

/// The sibling's frontend is served with exactly its backends.
fn sibling_served(state: &DesiredState, maps: &MemoryMaps) -> Result<(), String> {
    let frontend = Frontend {
        addr: IpAddr::V4(SIBLING_VIP),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let spec = state
        .frontends
        .get(&frontend)
        .ok_or("sibling frontend missing from the desired state")?;
    let addresses: Vec<IpAddr> = spec.backends.iter().map(|b| b.addr).collect();
    if addresses != SIBLING_BACKENDS.map(IpAddr::V4) {
        return Err(format!("sibling backends {addresses:?}"));
    }
    let rendered = check::render(maps).map_err(|e| format!("maps: {e}"))?;
    let served = rendered
        .get(&frontend)
        .ok_or("sibling frontend missing from the maps")?;
    if served.slots.len() != SIBLING_BACKENDS.len() {
        return Err(format!(
            "sibling has {} slots in the maps",
            served.slots.len()
        ));
    }
    Ok(())
}

/// Invariants of any desired state, whatever the input.
fn bounded_and_clean(state: &DesiredState) -> Result<(), String> {
    for (frontend, spec) in &state.frontends {
        if let Some(reason) = forbidden_reason(frontend.addr) {
            return Err(format!("{reason} ClusterSetIP {frontend}"));
        }
        if spec.backends.len() > MAX_BACKENDS_PER_FRONTEND as usize {
            return Err(format!("{frontend}: {} backends", spec.backends.len()));
        }
        if let Some(backend) = spec.backends.iter().find(|b| {
            forbidden_reason(b.addr).is_some()
                    || b.port == 0
                    // A client reaches the backends of its own family only.
                    || b.addr.is_ipv4() != frontend.addr.is_ipv4()
        }) {
            return Err(format!(
                "{frontend}: backend {}:{}",
                backend.addr, backend.port
            ));
        }
    }
    Ok(())
}

/// Runs one case through the control path; `Err` is a failed expectation.
fn run_case(case: &Case) -> Result<Outcome, String> {
    let text = format!("{}\n---\n{SIBLING}", case.text);
    match manifest::snapshot_from_yaml(&text) {
        Err(SyntaxError(_)) => {
            // The whole file is refused (typed); the file source keeps its
            // previous objects and every other file keeps working.
            sibling_in_another_file(&case.text)?;
            Ok(Outcome {
                reasons: BTreeSet::new(),
                syntax_error: true,
                state: None,
            })
        }
        Ok((snapshot, rejections)) => {
            let mut reasons: BTreeSet<&'static str> =
                rejections.iter().map(|r| r.reason()).collect();
            let (state, rejections) = desired::compute(&snapshot);
            reasons.extend(rejections.iter().map(|r| r.reason()));
            bounded_and_clean(&state)?;
            let mut maps = MemoryMaps::default();
            let mut reconciler = Reconciler::new();
            let report = reconciler.apply(&state, &mut maps);
            if !report.errors.is_empty() {
                return Err(format!("apply failed: {:?}", report.errors));
            }
            check::check_ids(&reconciler, &maps).map_err(|e| e.to_string())?;
            sibling_served(&state, &maps)?;
            Ok(Outcome {
                reasons,
                syntax_error: false,
                state: Some(state),
            })
        }
    }
}

/// A file that does not parse next to the sibling's file: the source
/// reports a typed syntax error for that file and serves the sibling.
fn sibling_in_another_file(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    fs::write(dir.path().join("evil.yaml"), text).map_err(|e| e.to_string())?;
    fs::write(dir.path().join("good.yaml"), SIBLING).map_err(|e| e.to_string())?;
    let mut source = FileSource::new(dir.path().to_owned());
    let errors = source.reload().map_err(|e| e.to_string())?;
    if !matches!(errors.as_slice(), [FileSourceError::Syntax { .. }]) {
        return Err(format!("expected one syntax error, got {errors:?}"));
    }
    let (state, _) = desired::compute(&source.update().snapshot);
    let mut maps = MemoryMaps::default();
    Reconciler::new().apply(&state, &mut maps);
    sibling_served(&state, &maps)
}

#[derive(Default)]
struct Tally {
    tried: usize,
    rejected: usize,
    accepted_bounded: usize,
    panics: usize,
    failures: usize,
    peak: usize,
    input: usize,
}

#[test]
fn hostile_inputs_are_rejected_typed_without_panic_in_bounded_memory() {
    let cases = corpus();
    let mut tallies: std::collections::BTreeMap<&str, Tally> = Default::default();
    let mut failures = Vec::new();
    let mut biggest = Vec::new();
    for case in &cases {
        let tally = tallies.entry(case.category).or_default();
        tally.tried += 1;
        let baseline = LIVE.load(Ordering::Relaxed);
        PEAK.store(baseline, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run_case(case)));
        if std::env::var_os("HOSTILE_TRACE").is_some() {
            eprintln!(
                "case [{}] {}: {:.2}s",
                case.category,
                case.name,
                started.elapsed().as_secs_f64()
            );
        }
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
        tally.peak = tally.peak.max(peak);
        tally.input = tally.input.max(case.text.len());
        if case.text.len() >= MIB {
            biggest.push((case.name.clone(), case.text.len(), peak));
        }
        let limit = BYTES_PER_INPUT_BYTE * (case.text.len() + SIBLING.len()) + FIXED_ALLOWANCE;
        let verdict = match result {
            Err(_) => {
                tally.panics += 1;
                Err("panicked".to_owned())
            }
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(outcome)) => check_expectation(&case.expect, &outcome),
        }
        .and_then(|()| {
            if peak <= limit {
                Ok(())
            } else {
                Err(format!(
                    "peak heap {peak} bytes for {} input bytes (limit {limit})",
                    case.text.len()
                ))
            }
        });
        match verdict {
            Ok(()) if matches!(case.expect, Expect::Bounded(_)) => tally.accepted_bounded += 1,
            Ok(()) => tally.rejected += 1,
            Err(failure) => {
                tally.failures += 1;
                failures.push(format!("[{}] {}: {failure}", case.category, case.name));
            }
        }
    }

    let mut table = String::from(
        "| category | inputs | rejected (typed) | accepted, bounded | panics | failed expectations | largest input | peak heap |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut total = Tally::default();
    for (category, tally) in &tallies {
        let _ = writeln!(
            table,
            "| {category} | {} | {} | {} | {} | {} | {} | {} |",
            tally.tried,
            tally.rejected,
            tally.accepted_bounded,
            tally.panics,
            tally.failures,
            size(tally.input),
            size(tally.peak)
        );
        total.tried += tally.tried;
        total.rejected += tally.rejected;
        total.accepted_bounded += tally.accepted_bounded;
        total.panics += tally.panics;
        total.failures += tally.failures;
        total.peak = total.peak.max(tally.peak);
        total.input = total.input.max(tally.input);
    }
    let _ = writeln!(
        table,
        "| **total** | **{}** | **{}** | **{}** | **{}** | **{}** | {} | {} |",
        total.tried,
        total.rejected,
        total.accepted_bounded,
        total.panics,
        total.failures,
        size(total.input),
        size(total.peak)
    );
    let mut big = String::from(
        "\n| input of 1 MiB or more | size | peak heap | ratio |\n|---|---:|---:|---:|\n",
    );
    for (name, len, peak) in &biggest {
        let _ = writeln!(
            big,
            "| {name} | {} | {} | {:.1}× |",
            size(*len),
            size(*peak),
            *peak as f64 / *len as f64
        );
    }
    println!("hostile input corpus:\n{table}{big}");
    let written = mcs_tests::figures::write(
        "hostile_input.md",
        &format!(
            "<!-- written by `cargo xtask figures` (the hostile_input test); do not edit -->\n{table}{big}"
        ),
    )
    .expect("write the figures");
    println!("figures: {}", written.display());
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_expectation(expect: &Expect, outcome: &Outcome) -> Result<(), String> {
    match expect {
        Expect::Syntax if outcome.syntax_error => Ok(()),
        Expect::Syntax => Err(format!(
            "parsed (reasons {:?}), expected a syntax error",
            outcome.reasons
        )),
        _ if outcome.syntax_error => Err("syntax error, expected objects".into()),
        Expect::ReasonsAnd(wanted, check) => {
            check_expectation(&Expect::Reasons(wanted.clone()), outcome)?;
            check(outcome.state.as_ref().ok_or("no state")?)
        }
        Expect::Reasons(wanted) => {
            let missing: Vec<_> = wanted
                .iter()
                .filter(|r| !outcome.reasons.contains(*r))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "missing rejection(s) {missing:?}; got {:?}",
                    outcome.reasons
                ))
            }
        }
        Expect::Bounded(check) => check(outcome.state.as_ref().ok_or("no state")?),
    }
}

fn size(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
