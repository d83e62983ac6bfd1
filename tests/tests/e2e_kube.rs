//! The agent with `--source kube` against a local API server that speaks
//! the list/watch protocol (kube-rs's own client and watcher run), in the
//! two-cluster netns topology with real traffic: the maps equal those of
//! the file source for the same objects, traffic follows changes, and an
//! API outage loses no request while changes made meanwhile apply after.
//! Rejections the agent's policy makes (`--cluster-cidrs`) become Events.
//!
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use mcs_tests::{
    agent::{Agent, AgentConfig, Dump},
    client::http_get,
    fake_apiserver::FakeApiServer,
    load::{BackgroundLoad, LoadPattern},
    manifest::Protocol,
    netns::{Netns, unique_prefix},
    scenario::{self, APPLY_TIMEOUT, BACKENDS, CLIENT_NODE, ClusterSet, HTTP_PORT, ServerPod, VIP},
};
use serde::Deserialize;
use serde_json::{Value, json};

fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// Services and backends as the maps hold them (ids aside).
fn programmed(dump: &Dump) -> BTreeSet<String> {
    dump.services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(move |b| {
                format!(
                    "{}:{}/{} {} -> {}:{} ({})",
                    s.vip, s.port, s.protocol, s.name, b.addr, b.port, b.cluster
                )
            })
        })
        .collect()
}

fn wait_for(set: &mut ClusterSet, pods: &[ServerPod]) -> Dump {
    wait_for_within(set, pods, APPLY_TIMEOUT)
}

fn wait_for_within(set: &mut ClusterSet, pods: &[ServerPod], timeout: Duration) -> Dump {
    let mut want: Vec<_> = pods.iter().map(|p| p.ip).collect();
    want.sort();
    set.agent()
        .expect("agent")
        .wait_until(timeout, |dump| {
            dump.service(VIP, HTTP_PORT, Protocol::Tcp)
                .is_some_and(|s| s.backend_addrs() == want)
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn reached(set: &ClusterSet, n: usize) -> BTreeSet<String> {
    let client = set.client().expect("client");
    (0..n)
        .map(|_| {
            http_get(client, scenario::vip_http())
                .expect("request")
                .backend
                .pod
        })
        .collect()
}

#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn kube_source_programs_what_the_file_source_does_and_rides_out_an_outage() {
    mcs_tests::require_root();
    let all = scenario::manifest(&scenario::all_backends_ready());
    let mut set = ClusterSet::create(&all.to_yaml(), &|_| {}).expect("ClusterSet");

    // The file source's maps for these objects.
    set.start_agent().expect("file-source agent");
    let from_file = programmed(&wait_for(&mut set, &BACKENDS));
    set.take_agent().expect("agent").stop().expect("stop");

    // The API server lives in the client node's namespace, where the agent runs.
    let node_ns = &set.topology().node(CLIENT_NODE).expect("node").netns;
    let server = node_ns
        .enter(FakeApiServer::start)
        .expect("enter")
        .expect("fake API server");
    server
        .apply_all(objects(&all.to_yaml()))
        .expect("load objects");
    let kubeconfig = server.kubeconfig_file().expect("kubeconfig");
    let kubeconfig = kubeconfig.display().to_string();
    set.start_agent_from("kube", &["--kubeconfig", &kubeconfig])
        .expect("kube-source agent");
    let from_kube = programmed(&wait_for(&mut set, &BACKENDS));
    assert_eq!(
        from_kube, from_file,
        "kube and file sources program the same maps"
    );
    let names: BTreeSet<String> = BACKENDS.iter().map(|p| p.name.to_owned()).collect();
    assert_eq!(reached(&set, 40), names);

    // Traffic follows a change made through the API: b-web2 leaves.
    let [a_web1, b_web1, b_web2] = BACKENDS;
    let without = scenario::manifest(&[(a_web1, true), (b_web1, true)]);
    server
        .apply_all(objects(&without.to_yaml()))
        .expect("apply change");
    wait_for(&mut set, &[a_web1, b_web1]);
    assert!(!reached(&set, 30).contains(b_web2.name));

    // The API server stops answering; requests keep flowing; b-web2 comes
    // back meanwhile and is applied once the server answers again.
    let outage = mcs_tests::load::outage_duration();
    let load = BackgroundLoad::start(
        mcs_tests::netns::path_of(set.client().expect("client").name()),
        scenario::vip_http(),
        LoadPattern::NewConnections {
            pause: Duration::from_millis(20),
        },
    );
    server.set_available(false);
    let started = Instant::now();
    std::thread::sleep(outage / 2);
    server
        .apply_all(objects(&all.to_yaml()))
        .expect("change during the outage");
    while started.elapsed() < outage {
        std::thread::sleep(Duration::from_millis(200));
    }
    server.set_available(true);
    let back = Instant::now();
    // kube-runtime's watcher backs off while the server is down: the delay
    // grows to 30 s and jitter adds up to as much again, so an attempt that
    // failed just before the server came back is followed by the next one
    // up to 60 s later (a 60 s wait here once missed it by a second).
    wait_for_within(&mut set, &BACKENDS, Duration::from_secs(90));
    let caught_up = back.elapsed();
    let totals = load.stop().expect("load");
    totals.assert_all_answered(51, "API outage");
    let (total, failed) = (totals.sent, totals.failed);
    assert_eq!(reached(&set, 40), names, "b-web2 back after the outage");
    eprintln!(
        "API outage: {:.0} s, {total} requests, {failed} failed, change applied {:.2} s after the server answered again",
        outage.as_secs_f64(),
        caught_up.as_secs_f64()
    );
    drop(set);
    drop(server);
}

/// `--cluster-cidrs` is the agent's policy, which no source knows: the
/// endpoint it refuses must still become an Event on its EndpointSlice,
/// once, while the endpoints it allows are programmed.
#[test]
#[ignore = "needs root: run by cargo xtask test"]
fn an_endpoint_outside_its_cluster_cidrs_becomes_an_event() {
    mcs_tests::require_root();
    let netns = Netns::create(&format!("{}cidr", unique_prefix())).expect("netns");
    netns
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        .expect("veth");
    netns.ip(&["link", "set", "v0", "up"]).expect("up");
    let server = netns
        .enter(FakeApiServer::start)
        .expect("enter")
        .expect("fake API server");
    server
        .apply_all([
            json!({
                "apiVersion": "multicluster.x-k8s.io/v1beta1",
                "kind": "ServiceImport",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"type": "ClusterSetIP", "ips": ["10.96.100.10"],
                         "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
            }),
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "web-a", "namespace": "demo", "labels": {
                    "multicluster.kubernetes.io/service-name": "web",
                    "multicluster.kubernetes.io/source-cluster": "cluster-a"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                // 10.102.1.10 lies in cluster-b's range.
                "endpoints": [{"addresses": ["10.101.1.10"]}, {"addresses": ["10.102.1.10"]}],
            }),
        ])
        .expect("load objects");
    let kubeconfig = server.kubeconfig_file().expect("kubeconfig");
    let mut config = AgentConfig::new("", vec!["v0".to_owned()]);
    config.source_arg = Some("kube".to_owned());
    config.extra_args = [
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--cluster-cidrs",
        "cluster-a=10.101.0.0/16,cluster-b=10.102.0.0/16",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut agent = Agent::start(&netns, &config).expect("agent");
    let allowed = vec![Ipv4Addr::new(10, 101, 1, 10)];
    agent
        .wait_until(APPLY_TIMEOUT, |dump| {
            dump.service(Ipv4Addr::new(10, 96, 100, 10), 80, Protocol::Tcp)
                .is_some_and(|s| s.backend_addrs() == allowed)
        })
        .unwrap_or_else(|e| panic!("{e:#}"));

    let outside = |server: &FakeApiServer| -> Vec<Value> {
        server
            .events()
            .into_iter()
            .filter(|e| e["reason"] == "OutsideClusterCidr")
            .collect()
    };
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while outside(&server).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no OutsideClusterCidr Event; events {:?}\nagent log:\n{}",
            server.events(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let event = &outside(&server)[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reportingController"], "mcs-agent");
    assert_eq!(event["regarding"]["kind"], "EndpointSlice");
    assert_eq!(event["regarding"]["name"], "web-a");
    assert_eq!(event["metadata"]["namespace"], "demo");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("10.102.1.10") && note.contains("cluster-a"),
        "{note}"
    );
    // Reported once: the agent keeps running with the same objects.
    std::thread::sleep(Duration::from_millis(500));
    agent.ensure_running().expect("agent running");
    assert_eq!(outside(&server).len(), 1, "{:?}", server.events());
    drop(agent);
    drop(server);
}
