//! The export controller under faults and life-cycle changes, against
//! simulated clusters (local API servers, real controller processes):
//! SIGKILL and restart keep every ClusterSetIP; a member API server down
//! for 60 s deletes nothing; a leader change loses no update; unexport,
//! Service and namespace deletion, and a member removed from the set are
//! followed within seconds; three clusters; dual stack; metrics; Events.
//!
//! No root needed; the controller binary must be built.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use mcs_tests::clusterset::{
    CIDR_V6, Controller, HELLO, NS, SETTLE, SimCluster, dead_kubeconfig, exports, free_local_addr,
    hello_service, hello_slice, holds_for, http_get_text, imports, leases, namespaces, services,
    slices, wait_for,
};
use serde_json::{Value, json};

const OLDER: &str = "2025-01-01T00:00:00Z";

fn named(mut object: Value, name: &str) -> Value {
    object["metadata"]["name"] = json!(name);
    object
}

/// Exports Service `name` from `cluster` with one endpoint `address`.
fn export(cluster: &SimCluster, name: &str, address: &str) -> Result<()> {
    cluster.apply(named(hello_service(json!({})), name))?;
    let mut slice = hello_slice(&format!("{name}-{}", cluster.id), &[address], 42);
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
    cluster.apply(slice)?;
    cluster.apply(
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                         "metadata": {"name": name, "namespace": NS, "creationTimestamp": OLDER}}),
    )
}

fn import(cluster: &SimCluster, name: &str) -> Option<Value> {
    cluster.get(&imports("v1alpha1"), name)
}

fn ips_of(import: &Value) -> Vec<String> {
    import["spec"]["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str().map(str::to_owned))
        .collect()
}

/// Every import's ClusterSetIPs in `cluster`, once all of `names` have one.
fn all_ips(cluster: &SimCluster, names: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
    wait_for(
        SETTLE,
        &format!("ClusterSetIPs of {names:?} in {}", cluster.id),
        || {
            let ips: BTreeMap<String, Vec<String>> = names
                .iter()
                .filter_map(|n| import(cluster, n).map(|i| (n.clone(), ips_of(&i))))
                .filter(|(_, ips)| !ips.is_empty())
                .collect();
            (ips.len() == names.len()).then_some(ips)
        },
    )
}

/// The MCS slices in `cluster` whose endpoints come from `source`.
fn slices_from(cluster: &SimCluster, source: &str) -> Vec<Value> {
    cluster
        .mcs_slices()
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"] == source)
        .collect()
}

fn with_logs<T>(controllers: &[&Controller], result: Result<T>) -> T {
    result.unwrap_or_else(|error| {
        let logs: String = controllers
            .iter()
            .map(|c| format!("--- controller {} ---\n{}", c.cluster, c.log()))
            .collect();
        panic!("{error:#}\n{logs}")
    })
}

#[test]
fn a_controller_sigkilled_and_restarted_keeps_the_same_clusterset_ips() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let mut controller = Controller::start(&a, &[&a, &b], &[]).unwrap();
    let result = (|| -> Result<()> {
        let names: Vec<String> = (0..6).map(|i| format!("svc-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            export(&b, name, &format!("10.2.0.{}", i + 10))?;
        }
        let before = all_ips(&a, &names)?;
        controller.kill();
        // Meanwhile one service goes and one comes.
        assert!(b.delete(&exports("v1alpha1"), "svc-0"));
        export(&b, "svc-new", "10.2.0.99")?;
        controller = Controller::start(&a, &[&a, &b], &[])?;
        let mut after_names: Vec<String> = names[1..].to_vec();
        after_names.push("svc-new".into());
        let after = all_ips(&a, &after_names)?;
        for name in &names[1..] {
            ensure!(
                after[name] == before[name],
                "{name}: {:?} became {:?}",
                before[name],
                after[name]
            );
        }
        wait_for(SETTLE, "svc-0's import deleted", || {
            import(&a, "svc-0").is_none().then_some(())
        })?;
        let held: BTreeSet<&String> = after.values().flatten().collect();
        ensure!(
            held.len() == after.len(),
            "an address held twice: {after:?}"
        );
        // Stable across another restart with nothing changed, too.
        controller.kill();
        controller = Controller::start(&a, &[&a, &b], &[])?;
        holds_for(
            Duration::from_secs(3),
            "addresses unchanged after a second restart",
            || all_ips(&a, &after_names).is_ok_and(|now| now == after),
        )?;
        Ok(())
    })();
    with_logs(&[&controller], result);
}

#[test]
fn a_member_api_server_down_for_60_s_deletes_nothing_and_is_caught_up_after() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let metrics = free_local_addr().unwrap();
    let metrics_arg = metrics.to_string();
    let controller = Controller::start(&a, &[&b], &["--metrics-addr", &metrics_arg]).unwrap();
    let result = (|| -> Result<()> {
        export(&b, HELLO, "10.2.0.5")?;
        let slice = wait_for(SETTLE, "cluster-b's slice in cluster-a", || {
            slices_from(&a, "cluster-b").pop()
        })?;
        let name = slice["metadata"]["name"]
            .as_str()
            .context("name")?
            .to_owned();
        let ip = ips_of(&import(&a, HELLO).context("import")?);

        b.server.set_available(false);
        let down = Instant::now();
        // Marked within seconds: its slice annotated, the metric at 0.
        wait_for(Duration::from_secs(15), "the unreachable mark", || {
            a.get(&slices(), &name).filter(|s| {
                s["metadata"]["annotations"]["dataplane.mcs.dev/source-unreachable-since"]
                    .is_string()
            })
        })?;
        let (_, text) = http_get_text(metrics, "/metrics")?;
        ensure!(
            text.contains("mcs_controller_member_up{cluster=\"cluster-b\"} 0"),
            "{text}"
        );
        let message =
            import(&a, HELLO).context("import")?["status"]["conditions"][0]["message"].clone();
        ensure!(
            message
                .as_str()
                .is_some_and(|m| m.contains("cluster-b unreachable since")),
            "{message}"
        );
        // A change behind the outage: a second endpoint.
        b.apply(hello_slice(
            &format!("{HELLO}-cluster-b"),
            &["10.2.0.5", "10.2.0.6"],
            42,
        ))?;
        holds_for(
            Duration::from_secs(60).saturating_sub(down.elapsed()),
            "import and slice kept",
            || {
                import(&a, HELLO).is_some_and(|i| ips_of(&i) == ip)
                    && a.get(&slices(), &name).is_some()
            },
        )?;
        b.server.set_available(true);
        let back = Instant::now();
        let caught_up = wait_for(
            Duration::from_secs(30),
            "the change made during the outage",
            || {
                a.get(&slices(), &name).filter(|s| {
                    s["endpoints"].as_array().map(Vec::len) == Some(2)
                        && s["metadata"]["annotations"]
                            .get("dataplane.mcs.dev/source-unreachable-since")
                            .is_none()
                })
            },
        );
        caught_up?;
        eprintln!(
            "caught up {:.1} s after the member answered again",
            back.elapsed().as_secs_f64()
        );
        Ok(())
    })();
    with_logs(&[&controller], result);
}

#[test]
fn a_leader_change_loses_no_update() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let mut first = Controller::start(&a, &[&a, &b], &["--identity", "replica-1"]).unwrap();
    let holder = || {
        a.server
            .get(&leases(), "mcs-system", "mcs-controller")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let result = (|| -> Result<Controller> {
        wait_for(SETTLE, "replica-1 leading", || {
            holder().filter(|h| h == "replica-1")
        })?;
        let second = Controller::start(&a, &[&a, &b], &["--identity", "replica-2"])?;
        export(&b, HELLO, "10.2.0.5")?;
        let ip = ips_of(&wait_for(SETTLE, "import", || import(&a, HELLO))?);
        holds_for(Duration::from_secs(2), "replica-1 keeps the Lease", || {
            holder().as_deref() == Some("replica-1")
        })?;
        ensure!(
            !second.log().contains("wrote changes"),
            "the standby wrote:\n{}",
            second.log()
        );

        first.kill();
        // Changed while nobody leads.
        let mut service = hello_service(json!({}));
        service["spec"]["ports"]
            .as_array_mut()
            .context("ports")?
            .push(json!({"name": "extra", "port": 8080, "protocol": "TCP"}));
        b.apply(service)?;
        wait_for(SETTLE, "replica-2 leading", || {
            holder().filter(|h| h == "replica-2")
        })?;
        let updated = wait_for(SETTLE, "the change applied by the new leader", || {
            import(&a, HELLO)
                .filter(|i| i["spec"]["ports"].as_array().is_some_and(|p| p.len() == 3))
        })?;
        ensure!(
            ips_of(&updated) == ip,
            "the ClusterSetIP moved with the leader"
        );
        Ok(second)
    })();
    let second = with_logs(&[&first], result);
    drop(second);
}

#[test]
fn unexport_service_deletion_and_namespace_deletion_are_followed_within_seconds() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let controllers = [
        Controller::start(&a, &[&a, &b], &[]).unwrap(),
        Controller::start(&b, &[&a, &b], &[]).unwrap(),
    ];
    let result = (|| -> Result<()> {
        let within = Duration::from_secs(5);
        export(&b, HELLO, "10.2.0.5")?;
        wait_for(SETTLE, "import", || import(&a, HELLO))?;
        // The Service goes, its export stays: invalid, nothing imported.
        let started = Instant::now();
        assert!(b.delete(&services(), HELLO));
        wait_for(within, "import gone after the Service", || {
            import(&a, HELLO).is_none().then_some(())
        })?;
        ensure!(slices_from(&a, "cluster-b").is_empty());
        let valid = wait_for(within, "Valid=False", || {
            b.export_condition("Valid")
                .filter(|c| c["status"] == "False")
        })?;
        ensure!(valid["reason"] == "NoService", "{valid}");
        eprintln!(
            "Service deletion followed in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        // Back, then the whole namespace in cluster-b goes.
        export(&b, HELLO, "10.2.0.5")?;
        wait_for(SETTLE, "import again", || import(&a, HELLO))?;
        let started = Instant::now();
        assert!(b.server.delete(&namespaces(), "", NS));
        wait_for(within, "import gone after the namespace", || {
            import(&a, HELLO).is_none().then_some(())
        })?;
        eprintln!(
            "namespace deletion followed in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        // The importing cluster's namespace goes and comes back: the
        // import is written again there.
        export(&b, HELLO, "10.2.0.5")?;
        wait_for(SETTLE, "import again", || import(&a, HELLO))?;
        assert!(a.server.delete(&namespaces(), "", NS));
        a.apply(mcs_tests::clusterset::namespace(NS))?;
        wait_for(SETTLE, "import rewritten into the new namespace", || {
            import(&a, HELLO)
        })?;
        Ok(())
    })();
    with_logs(&controllers.iter().collect::<Vec<_>>(), result);
}

#[test]
fn a_member_removed_from_the_set_loses_what_it_contributed_and_one_down_at_start_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let mut controller = Controller::start(&a, &[&a, &b], &[]).unwrap();
    let result = (|| -> Result<()> {
        export(&b, HELLO, "10.2.0.5")?;
        wait_for(SETTLE, "cluster-b's slice", || {
            slices_from(&a, "cluster-b").pop()
        })?;
        let ip = ips_of(&import(&a, HELLO).context("import")?);

        // Restarted with cluster-b down from the start: after the sync
        // timeout it writes, and keeps what cluster-b contributed.
        controller.kill();
        let dead = dead_kubeconfig(dir.path())?;
        let member = format!("cluster-b={}", dead.display());
        controller = Controller::start(
            &a,
            &[&a],
            &["--member", &member, "--member-sync-timeout", "1"],
        )?;
        wait_for(SETTLE, "the controller writing", || {
            controller
                .log()
                .contains("members not read within --member-sync-timeout")
                .then_some(())
        })?;
        holds_for(
            Duration::from_secs(4),
            "cluster-b's import and slice kept",
            || {
                import(&a, HELLO).is_some_and(|i| ips_of(&i) == ip)
                    && !slices_from(&a, "cluster-b").is_empty()
            },
        )?;

        // Restarted without cluster-b: removed from the set.
        controller.kill();
        controller = Controller::start(&a, &[&a], &[])?;
        wait_for(SETTLE, "cluster-b's contribution removed", || {
            (import(&a, HELLO).is_none() && slices_from(&a, "cluster-b").is_empty()).then_some(())
        })?;
        Ok(())
    })();
    with_logs(&[&controller], result);
}

#[test]
fn three_clusters_import_each_others_endpoints_and_settle() {
    let clusters: Vec<SimCluster> = ["cluster-a", "cluster-b", "cluster-c"]
        .iter()
        .map(|id| SimCluster::start(id).unwrap())
        .collect();
    let members: Vec<&SimCluster> = clusters.iter().collect();
    let metrics = free_local_addr().unwrap();
    let metrics_arg = metrics.to_string();
    let controllers: Vec<Controller> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let extra: &[&str] = if i == 0 {
                &["--metrics-addr", &metrics_arg]
            } else {
                &[]
            };
            Controller::start(c, &members, extra).unwrap()
        })
        .collect();
    let result = (|| -> Result<()> {
        for (i, cluster) in clusters.iter().enumerate() {
            export(cluster, HELLO, &format!("10.{}.0.5", i + 1))?;
        }
        for cluster in &clusters {
            wait_for(SETTLE, &format!("three slices in {}", cluster.id), || {
                let sources: BTreeSet<String> = cluster
                    .mcs_slices()
                    .iter()
                    .filter_map(|s| {
                        s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .collect();
                (sources.len() == 3).then_some(())
            })?;
        }
        // Every cluster computed the same import, apart from its own address.
        let specs: Vec<Value> = clusters
            .iter()
            .map(|c| {
                let mut spec = import(c, HELLO)
                    .map(|i| i["spec"].clone())
                    .unwrap_or_default();
                spec.as_object_mut().map(|s| s.remove("ips"));
                spec
            })
            .collect();
        ensure!(specs.windows(2).all(|w| w[0] == w[1]), "{specs:#?}");

        // Settled: writes stop, and the metrics say what was done.
        let writes = |text: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("mcs_controller_writes_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let scrape = || {
            http_get_text(metrics, "/metrics")
                .map(|(_, text)| text)
                .unwrap_or_default()
        };
        let mut last = writes(&scrape());
        wait_for(SETTLE, "writes to stop", || {
            std::thread::sleep(Duration::from_secs(1));
            let now = writes(&scrape());
            let settled = now == last && now > 0;
            last = now;
            settled.then_some(())
        })?;
        holds_for(Duration::from_secs(3), "no further writes", || {
            writes(&scrape()) == last
        })?;
        let (status, after) = http_get_text(metrics, "/metrics")?;
        ensure!(status == 200);
        for line in [
            "mcs_controller_imports 1",
            "mcs_controller_slices 3",
            "mcs_controller_leader 1",
            "mcs_controller_exports{state=\"valid\"} 3",
        ] {
            ensure!(after.contains(line), "{line} missing:\n{after}");
        }
        ensure!(after.contains("mcs_controller_export_to_import_seconds_count"));
        let (ready, _) = http_get_text(metrics, "/readyz")?;
        ensure!(ready == 200);
        Ok(())
    })();
    with_logs(&controllers.iter().collect::<Vec<_>>(), result);
}

#[test]
fn dual_stack_services_get_one_clusterset_ip_per_family_of_the_oldest_export() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let controller = Controller::start(&a, &[&a, &b], &["--clusterset-ip-cidr", CIDR_V6]).unwrap();
    let result = (|| -> Result<()> {
        for cluster in [&a, &b] {
            export(cluster, HELLO, "10.1.0.5")?;
            cluster.apply(hello_service(
                json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
            ))?;
        }
        let import = wait_for(SETTLE, "two addresses", || {
            import(&a, HELLO).filter(|i| ips_of(i).len() == 2)
        })?;
        ensure!(
            import["spec"]["ipFamilies"] == json!(["IPv4", "IPv6"]),
            "{import}"
        );
        ensure!(ips_of(&import)[1].contains(':'));
        // cluster-b drops IPv6: cluster-a's export (a tie on time, won by
        // name) keeps dual stack, and the conflict is on its export.
        b.apply(hello_service(json!({"ipFamilies": ["IPv4"]})))?;
        let conflict = wait_for(SETTLE, "IPFamilyConflict on cluster-a's export", || {
            a.export_condition("Conflict")
                .filter(|c| c["reason"] == "IPFamilyConflict")
        })?;
        ensure!(conflict["status"] == "True", "{conflict}");
        ensure!(ips_of(&self::import(&a, HELLO).context("import")?).len() == 2);
        // cluster-a drops it too: IPv6 is released.
        a.apply(hello_service(json!({"ipFamilies": ["IPv4"]})))?;
        let import = wait_for(SETTLE, "one address", || {
            self::import(&a, HELLO).filter(|i| ips_of(i).len() == 1)
        })?;
        ensure!(!ips_of(&import)[0].contains(':'));
        Ok(())
    })();
    with_logs(&[&controller], result);
}

#[test]
fn conflicts_are_published_as_events_and_foreign_imports_are_left_alone() {
    let (a, b) = (
        SimCluster::start("cluster-a").unwrap(),
        SimCluster::start("cluster-b").unwrap(),
    );
    let controllers = [
        Controller::start(&a, &[&a, &b], &[]).unwrap(),
        Controller::start(&b, &[&a, &b], &[]).unwrap(),
    ];
    let result = (|| -> Result<()> {
        export(&a, HELLO, "10.1.0.5")?;
        export(&b, HELLO, "10.2.0.5")?;
        b.apply(hello_service(json!({"clusterIP": "None"})))?;
        let event = wait_for(SETTLE, "a Conflict Event on cluster-b's export", || {
            b.server
                .events()
                .into_iter()
                .find(|e| e["reason"] == "Conflict")
        })?;
        ensure!(event["type"] == "Warning", "{event}");
        ensure!(event["regarding"]["kind"] == "ServiceExport", "{event}");
        ensure!(event["reportingController"] == "mcs-controller", "{event}");

        // An import written by someone else is never taken over.
        let foreign = json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"name": "other", "namespace": NS},
            "spec": {"type": "ClusterSetIP", "ips": ["10.240.9.9"], "ports": [{"port": 1, "protocol": "TCP"}]}});
        a.apply(foreign.clone())?;
        export(&b, "other", "10.2.0.7")?;
        wait_for(SETTLE, "the controller noticing", || {
            controllers[0]
                .log()
                .contains("ImportNotManaged")
                .then_some(())
        })?;
        holds_for(
            Duration::from_secs(2),
            "the foreign import unchanged",
            || import(&a, "other").is_some_and(|i| i["spec"]["ports"] == foreign["spec"]["ports"]),
        )?;
        ensure!(
            import(&b, "other").is_some(),
            "cluster-b has no foreign import: written there"
        );
        Ok(())
    })();
    with_logs(&controllers.iter().collect::<Vec<_>>(), result);
}
