//! The timed phases of the controller benchmark, on a runtime inside the
//! benchmark's network namespace: kube-rs clients and watchers against the
//! three API servers (as any client of a cluster sees it), and the agent's
//! pinned maps (as the dataplane sees them).

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use mcs_agent::{
    controller::{
        CONTROLLER_NAME,
        exports::{export_resource, import_resource},
    },
    dataplane::{MapHandles, PinnedMaps},
    model::{Flavour, Protocol, convert::LABEL_MANAGED_BY},
};
use mcs_common::BackendKey;
use serde_json::json;
use tokio::task::JoinSet;

use super::{
    CLUSTERS, Config as BenchConfig, GRACE, NS, PORT, Service, export_object, pod_address,
    slice_endpoints,
};
use crate::perpacket::progress;

/// What the timed phases measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub export_to_import_ms: Vec<f64>,
    pub export_to_first_import_ms: Vec<f64>,
    pub exports_not_seen: usize,
    pub endpoint_change_ms: Vec<f64>,
    /// Of each change: patch answered → the MCS slice with the new address
    /// delivered by a watch on the agent's cluster (the controller's part).
    pub change_controller_ms: Vec<f64>,
    /// Of each change: that slice delivered → the agent's maps hold it.
    pub change_agent_ms: Vec<f64>,
    pub changes_not_seen: usize,
}

/// When each cluster's watch first delivered an import with a ClusterSetIP
/// (by import name), and that IP.
type Seen = HashMap<String, [Option<(Instant, Ipv4Addr)>; CLUSTERS.len()]>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn connect(kubeconfig: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).context("kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("client configuration")?;
    Client::try_from(config).context("client")
}

fn slices_resource() -> ApiResource {
    ApiResource {
        group: "discovery.k8s.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "discovery.k8s.io/v1".to_owned(),
        kind: "EndpointSlice".to_owned(),
        plural: "endpointslices".to_owned(),
    }
}

/// The first ClusterSetIP (IPv4) of an import.
fn cluster_set_ip(import: &DynamicObject) -> Option<Ipv4Addr> {
    import.data["spec"]["ips"]
        .as_array()?
        .iter()
        .find_map(|ip| ip.as_str()?.parse().ok())
}

/// Watches cluster `index`'s ServiceImports and records in `seen` when each
/// first has an IP; `synced` is set once the initial list is through.
async fn watch_imports(
    client: Client,
    index: usize,
    seen: Arc<Mutex<Seen>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, NS, &import_resource(Flavour::McsV1alpha1));
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let object = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => object,
            Ok(watcher::Event::InitDone) => {
                synced.store(true, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            Ok(_) | Err(_) => continue,
        };
        let (Some(name), Some(ip)) = (object.metadata.name.as_ref(), cluster_set_ip(&object))
        else {
            continue;
        };
        let mut seen = lock(&seen);
        let entry = seen.entry(name.clone()).or_default();
        if entry[index].is_none() {
            entry[index] = Some((now, ip));
        }
    }
}

/// Watches the MCS EndpointSlices in cluster `client`'s namespace and
/// records when each endpoint address first appears in one.
async fn watch_slice_addresses(client: Client, seen: Arc<Mutex<HashMap<Ipv4Addr, Instant>>>) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, NS, &slices_resource());
    let config =
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let now = Instant::now();
        let Ok(watcher::Event::Apply(slice) | watcher::Event::InitApply(slice)) = event else {
            continue;
        };
        let addresses = slice.data["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok());
        let mut seen = lock(&seen);
        for address in addresses {
            seen.entry(address).or_insert(now);
        }
    }
}

/// Whether the maps hold `addr` among the backends of `vip`:[`PORT`]/TCP.
fn map_holds(maps: &MapHandles, vip: Ipv4Addr, addr: Ipv4Addr) -> bool {
    let key = mcs_common::ServiceKey::new(vip, PORT, Protocol::Tcp.number());
    let Ok(value) = maps.services.get(&key, 0) else {
        return false;
    };
    (0..value.backend_count).any(|slot| {
        maps.backends
            .get(
                &BackendKey {
                    frontend_id: value.frontend_id,
                    slot,
                },
                0,
            )
            .is_ok_and(|b| b.addr() == addr)
    })
}

pub async fn measure(
    config: &BenchConfig,
    services: &[Service],
    kubeconfigs: &[PathBuf],
    bpffs: &Path,
) -> Result<Measured> {
    let mut clients = Vec::new();
    for kubeconfig in kubeconfigs {
        clients.push(connect(kubeconfig).await?);
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut watchers = JoinSet::new();
    let mut synced = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        synced.push(flag.clone());
        watchers.spawn(watch_imports(client.clone(), index, seen.clone(), flag));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !synced
        .iter()
        .all(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    {
        ensure!(Instant::now() < deadline, "import watches did not sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addresses: Arc<Mutex<HashMap<Ipv4Addr, Instant>>> = Arc::default();
    watchers.spawn(watch_slice_addresses(clients[0].clone(), addresses.clone()));
    let mut measured = Measured::default();
    exports(config, services, &clients, &seen, &mut measured).await?;
    let maps = agent_caught_up(services, &seen, bpffs).await?;
    let observed = Observed {
        maps: &maps,
        addresses: &addresses,
    };
    changes(config, services, &clients, &seen, &observed, &mut measured).await?;
    watchers.abort_all();
    Ok(measured)
}

/// Phase 1: the ServiceExports, paced; then their imports awaited.
async fn exports(
    config: &BenchConfig,
    services: &[Service],
    clients: &[Client],
    seen: &Mutex<Seen>,
    measured: &mut Measured,
) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / config.export_rate);
    let acks: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; services.len()]));
    let mut writes = JoinSet::new();
    let start = Instant::now();
    for (i, service) in services.iter().enumerate() {
        let due = start + interval * u32::try_from(i).context("export count")?;
        tokio::time::sleep_until(due.into()).await;
        let api: Api<DynamicObject> = Api::namespaced_with(
            clients[service.cluster].clone(),
            NS,
            &export_resource(Flavour::McsV1alpha1),
        );
        let object: DynamicObject = serde_json::from_value(export_object(service))?;
        let acks = acks.clone();
        let name = service.name.clone();
        writes.spawn(async move {
            api.create(&PostParams::default(), &object)
                .await
                .with_context(|| format!("create ServiceExport {name}"))?;
            lock(&acks)[i] = Some(Instant::now());
            anyhow::Ok(())
        });
        while let Some(done) = writes.try_join_next() {
            done??;
        }
        if (i + 1) % 250 == 0 {
            progress(&format!("  controller: {} exports written", i + 1));
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    let acks = lock(&acks).clone();
    let complete = |seen: &Seen| {
        services.iter().all(|s| {
            seen.get(&s.name)
                .is_some_and(|clusters| clusters.iter().all(Option::is_some))
        })
    };
    let deadline = Instant::now() + GRACE;
    while !complete(&lock(seen)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = lock(seen);
    for (service, ack) in services.iter().zip(acks) {
        let ack = ack.context("an export without its answer")?;
        let times: Vec<Instant> = seen
            .get(&service.name)
            .into_iter()
            .flatten()
            .filter_map(|s| s.map(|(at, _)| at))
            .collect();
        if let Some(first) = times.iter().min() {
            measured
                .export_to_first_import_ms
                .push(ms(first.saturating_duration_since(ack)));
        }
        match times.iter().max() {
            Some(last) if times.len() == CLUSTERS.len() => measured
                .export_to_import_ms
                .push(ms(last.saturating_duration_since(ack))),
            _ => measured.exports_not_seen += 1,
        }
    }
    Ok(())
}

/// Waits until the agent's maps hold every service's frontend in its
/// cluster (the changes need them); returns the maps.
async fn agent_caught_up(
    services: &[Service],
    seen: &Mutex<Seen>,
    bpffs: &Path,
) -> Result<MapHandles> {
    let deadline = Instant::now() + GRACE;
    let maps = loop {
        match PinnedMaps::open(bpffs) {
            Ok(maps) => break maps.0,
            Err(error) if Instant::now() > deadline => {
                return Err(error).context("the agent's pinned maps");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let frontends: Vec<(Ipv4Addr, Ipv4Addr)> = {
        let seen = lock(seen);
        services
            .iter()
            .filter_map(|s| Some((seen.get(&s.name)?[0]?.1, *s.endpoints.first()?)))
            .collect()
    };
    loop {
        let count = maps.services.iter().count();
        if count >= frontends.len()
            && frontends
                .iter()
                .all(|(vip, endpoint)| map_holds(&maps, *vip, *endpoint))
        {
            return Ok(maps);
        }
        if Instant::now() > deadline {
            bail!(
                "the agent's maps hold {count} of {} frontends after the exports",
                frontends.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a change shows: the agent's maps, and the addresses of the MCS
/// slices in the agent's cluster.
struct Observed<'a> {
    maps: &'a MapHandles,
    addresses: &'a Mutex<HashMap<Ipv4Addr, Instant>>,
}

/// A change whose patch was answered, waiting for the map.
struct Pending {
    vip: Ipv4Addr,
    addr: Ipv4Addr,
    acked: Instant,
}

/// Phase 2: endpoint changes in cluster-b and cluster-c, paced; each timed
/// until the agent's maps on cluster-a's node hold the new address.
async fn changes(
    config: &BenchConfig,
    services: &[Service],
    clients: &[Client],
    seen: &Mutex<Seen>,
    observed: &Observed<'_>,
    measured: &mut Measured,
) -> Result<()> {
    let vips: HashMap<&str, Ipv4Addr> = {
        let seen = lock(seen);
        services
            .iter()
            .filter_map(|s| Some((s.name.as_str(), seen.get(&s.name)?[0]?.1)))
            .collect()
    };
    let mut candidates: Vec<Service> = services
        .iter()
        .filter(|s| s.cluster != 0 && !s.endpoints.is_empty())
        .cloned()
        .collect();
    ensure!(
        !candidates.is_empty(),
        "no service exported from another cluster than the agent's"
    );
    let interval = Duration::from_secs_f64(1.0 / config.change_rate);
    let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
    let mut writes = JoinSet::new();
    let start = Instant::now();
    let mut last_due = start;
    for k in 0..config.changes {
        let due = start + interval * u32::try_from(k).context("change count")?;
        last_due = due;
        while Instant::now() < due {
            resolve(observed, &pending, measured);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let count = candidates.len();
        let service = &mut candidates[k % count];
        let slot = (k / count) % service.endpoints.len();
        let fresh = pod_address(service.cluster, k, true);
        service.endpoints[slot] = fresh;
        let vip = *vips
            .get(service.name.as_str())
            .with_context(|| format!("no ClusterSetIP of {} in {}", service.name, CLUSTERS[0]))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(clients[service.cluster].clone(), NS, &slices_resource());
        let patch = json!({"endpoints": slice_endpoints(&service.endpoints)});
        let name = service.slice_name();
        let pending = pending.clone();
        writes.spawn(async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("patch EndpointSlice {name}"))?;
            lock(&pending).push(Pending {
                vip,
                addr: fresh,
                acked: Instant::now(),
            });
            anyhow::Ok(())
        });
        while let Some(done) = writes.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    let deadline = last_due.max(Instant::now()) + GRACE;
    while !lock(&pending).is_empty() && Instant::now() < deadline {
        resolve(observed, &pending, measured);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    measured.changes_not_seen = lock(&pending).len();
    Ok(())
}

/// Takes every pending change the maps now hold, with its latency and
/// where the time went.
fn resolve(observed: &Observed<'_>, pending: &Mutex<Vec<Pending>>, measured: &mut Measured) {
    let mut pending = lock(pending);
    pending.retain(|p| {
        if !map_holds(observed.maps, p.vip, p.addr) {
            return true;
        }
        let now = Instant::now();
        measured
            .endpoint_change_ms
            .push(ms(now.saturating_duration_since(p.acked)));
        // The slice's watch event is normally in by now; if the map was
        // faster than this process's watch, the split is not known.
        if let Some(slice) = lock(observed.addresses).get(&p.addr).copied() {
            let slice = slice.min(now);
            measured
                .change_controller_ms
                .push(ms(slice.saturating_duration_since(p.acked)));
            measured
                .change_agent_ms
                .push(ms(now.saturating_duration_since(slice)));
        }
        false
    });
}
