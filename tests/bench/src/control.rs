//! Part 3: the control plane.
//!
//! * cold sync: `Reconciler::apply` of N services × 10 endpoints into fresh
//!   maps through `MapHandles` (the agent's own code and maps), interleaved
//!   with a cold `iptables-restore` of the same services (kube-proxy-shaped)
//!   into a fresh network namespace;
//! * one endpoint change with everything loaded: the agent's path for an
//!   update (the changed set from the update's journal, the incremental
//!   desired state of the affected imports, `Reconciler::apply_changed`),
//!   until a map lookup sees the new endpoint;
//! * map writes one `bpf(BPF_MAP_UPDATE_ELEM)` at a time (aya) against
//!   `BPF_MAP_UPDATE_BATCH` (aya 0.14 has no batch operations: raw `bpf(2)`);
//! * the agent binary on the same manifest: peak RSS (`VmHWM`) and the
//!   memory of its BPF maps (`bpftool map show` → `bytes_memlock`).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{EbpfLoader, maps::IterableMap as _};
use mcs_agent::{
    dataplane::{EBPF_OBJECT, MapHandles, MapSizes, PinnedMaps},
    model::{Snapshot, manifest},
    reconcile::Reconciler,
};
use mcs_common::{BACKEND_F_READY, BackendKey, BackendValue, names};
use mcs_tests::{
    agent::{Agent, AgentConfig},
    netns::{self, Netns},
};
use serde::{Deserialize, Serialize};

use crate::{
    bpfsys, change,
    perpacket::{progress, target_backends},
    rules::{self, ServiceSet},
    stats,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub services: usize,
    pub endpoints: usize,
    pub reps: usize,
    pub changes: usize,
    pub batch_entries: usize,
    /// DNS queries timed against the responder holding these services.
    pub dns_queries: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentMemory {
    /// Agent start → its maps hold every frontend (s).
    pub start_to_synced_s: f64,
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    pub bpf_memlock_bytes: u64,
    pub bpf_maps: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Control {
    pub services: usize,
    pub endpoints: usize,
    pub frontends: usize,
    pub cold_map_writes: usize,
    /// `Reconciler::apply` into fresh maps (s), per repetition.
    pub cold_sync_s: Vec<f64>,
    /// Manifest parse + desired state (s), once (not part of the sync).
    pub parse_and_compute_s: f64,
    /// Of the sync: building every frontend's Maglev table in userspace (s),
    /// timed alone, once.
    pub maglev_build_s: f64,
    /// Cold `iptables-restore` of the same services (s), per repetition.
    pub iptables_restore_s: Vec<f64>,
    pub iptables_rules: usize,
    pub change: change::ChangeTimes,
    pub batch_entries: usize,
    /// Backend-map updates per second, one syscall each.
    pub single_updates_per_s: Vec<f64>,
    /// The same with `BPF_MAP_UPDATE_BATCH` (4096 per call).
    pub batch_updates_per_s: Vec<f64>,
    pub agent: AgentMemory,
    /// The DNS responder's UDP throughput with these services.
    pub dns: Option<crate::dns::DnsLoad>,
    pub notes: Vec<String>,
}

/// Fresh maps of `sizes` (no program loaded; conntrack kept small, it is
/// not written).
pub fn fresh_maps(sizes: &MapSizes) -> Result<(aya::Ebpf, MapHandles)> {
    ensure!(
        !EBPF_OBJECT.is_empty(),
        "mcs-agent was built without its eBPF object"
    );
    let mut loader = EbpfLoader::new();
    for (name, entries) in sizes.overrides() {
        loader.map_max_entries(name, entries);
    }
    let mut ebpf = loader
        .map_max_entries(names::CONNTRACK, 1024)
        .load(EBPF_OBJECT)
        .context("load the eBPF object")?;
    let maps = MapHandles::take(&mut ebpf).context("take the maps")?;
    Ok((ebpf, maps))
}

pub fn snapshot_of(set: &ServiceSet) -> Result<Snapshot> {
    let (snapshot, rejections) =
        manifest::snapshot_from_yaml(&rules::manifest(set)).context("generated manifest")?;
    ensure!(
        rejections.is_empty(),
        "manifest rejected: {:?}",
        rejections.first()
    );
    Ok(snapshot)
}

fn cold_iptables_restore(rules_path: &Path) -> Result<f64> {
    let ns = Netns::create(&format!("{}-ipt", netns::unique_prefix()))?;
    let start = Instant::now();
    netns::run(
        ns.command("iptables-restore")?
            .stdin(fs::File::open(rules_path)?),
    )
    .context("iptables-restore")?;
    Ok(start.elapsed().as_secs_f64())
}

/// `(busy, total)` jiffies of all CPUs from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Waits (at most 5 s) until at least one CPU's worth is idle over 200 ms:
/// the kernel tears a network namespace with 320k rules down, and frees
/// maps, in the background after the step that used them returned, and
/// that work must not land in the next timed step.
pub fn settle() {
    let deadline = Instant::now() + Duration::from_secs(5);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    while Instant::now() < deadline {
        let Some((busy, total)) = cpu_jiffies() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(200));
        let Some((busy_after, total_after)) = cpu_jiffies() else {
            return;
        };
        let window = total_after.saturating_sub(total).max(1);
        #[expect(clippy::cast_precision_loss, reason = "jiffies")]
        let idle_cpus =
            (1.0 - busy_after.saturating_sub(busy) as f64 / window as f64) * cpus as f64;
        if idle_cpus >= 1.0 {
            return;
        }
    }
}

fn update_rates(entries: usize) -> Result<(f64, f64)> {
    let keys: Vec<BackendKey> = (0..entries)
        .map(|i| BackendKey {
            frontend_id: u32::try_from(i / 10).unwrap_or(0),
            slot: u32::try_from(i % 10).unwrap_or(0),
        })
        .collect();
    let values: Vec<BackendValue> = (0..entries)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::try_from(i).unwrap_or(0));
            BackendValue::new(SocketAddrV4::new(addr, 8080), 1, BACKEND_F_READY, 0)
        })
        .collect();
    let (_ebpf, mut maps) = fresh_maps(&MapSizes::default())?;
    let start = Instant::now();
    for (key, value) in keys.iter().zip(&values) {
        maps.backends
            .insert(key, value, 0)
            .context("single update")?;
    }
    let single = start.elapsed().as_secs_f64();
    drop(maps);
    let (_ebpf2, maps) = fresh_maps(&MapSizes::default())?;
    let fd = maps.backends.map().fd().as_fd().as_raw_fd();
    let start = Instant::now();
    bpfsys::update_batch(fd, &keys, &values, 4096).context("batch update")?;
    let batch = start.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    Ok((entries as f64 / single, entries as f64 / batch))
}

fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc/PID/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} missing from /proc/{pid}/status"))
}

/// `bytes_memlock` of every map pinned under `bpffs_dir/maps`.
fn bpf_map_memory(bpffs_dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut maps = Vec::new();
    let dir = mcs_agent::dataplane::map_pin_dir(bpffs_dir);
    for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        let output = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output()
            .context("run bpftool")?;
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("bpftool output for {}", path.display()))?;
        let bytes = json
            .get("bytes_memlock")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        maps.push((name, bytes));
    }
    maps.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok(maps)
}

/// The agent on `set`'s manifest with `flags` (map sizes): time to sync,
/// peak memory and its maps' memory.
pub fn agent_memory(set: &ServiceSet, flags: &[String]) -> Result<AgentMemory> {
    let ns = Netns::create(&format!("{}-agent", netns::unique_prefix()))?;
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "a1"])?;
    ns.ip(&["link", "set", "a0", "up"])?;
    ns.ip(&["link", "set", "a1", "up"])?;
    let dir = tempfile::Builder::new()
        .prefix("mcs-bench-agent-")
        .tempdir()?;
    fs::write(dir.path().join("services.yaml"), rules::manifest(set))?;
    let mut config = AgentConfig::new(dir.path(), vec!["a0".to_owned()]);
    config.extra_args = vec!["--log-level".to_owned(), "warn".to_owned()];
    config.extra_args.extend(flags.iter().cloned());
    let start = Instant::now();
    let mut agent = Agent::start(&ns, &config)?;
    let frontends = set.mcs_frontends();
    loop {
        agent.ensure_running()?;
        let count = PinnedMaps::open(agent.bpffs_dir())
            .ok()
            .map(|m| m.0.services.iter().count());
        if count == Some(frontends) {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "agent did not sync {frontends} frontends (has {count:?}); log:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let start_to_synced_s = start.elapsed().as_secs_f64();
    // Let it settle (metrics, watchers) before reading the peak.
    std::thread::sleep(Duration::from_millis(500));
    let pid = agent.pid().context("agent pid")?;
    let vm_hwm_kib = proc_status_kib(pid, "VmHWM:")?;
    let vm_rss_kib = proc_status_kib(pid, "VmRSS:")?;
    let bpf_maps = bpf_map_memory(agent.bpffs_dir())?;
    let bpf_memlock_bytes = bpf_maps.iter().map(|(_, b)| b).sum();
    agent.stop()?;
    drop(agent);
    Ok(AgentMemory {
        start_to_synced_s,
        vm_hwm_kib,
        vm_rss_kib,
        bpf_memlock_bytes,
        bpf_maps,
    })
}

pub fn run(config: &Config) -> Result<Control> {
    let started = Instant::now();
    let set = ServiceSet::new(config.services, config.endpoints, &target_backends());
    let parse_start = Instant::now();
    let mut followed = change::Followed::new(snapshot_of(&set)?)?;
    let rejections = followed.follower.engine().rejections();
    ensure!(
        rejections.is_empty(),
        "desired state rejected: {:?}",
        rejections.first()
    );
    let parse_and_compute_s = parse_start.elapsed().as_secs_f64();
    let desired_state = followed.follower.engine().state();
    let maglev_start = Instant::now();
    for (_, spec) in desired_state.service_frontends() {
        let size = mcs_agent::maglev::rule_size(spec.backends.len());
        std::hint::black_box(mcs_agent::reconcile::maglev_table(&spec.backends, size));
    }
    let maglev_build_s = maglev_start.elapsed().as_secs_f64();
    let rules_file = tempfile::Builder::new()
        .prefix("mcs-bench-iptables-")
        .tempfile()?;
    let iptables_text = rules::iptables_restore(&set);
    fs::write(rules_file.path(), &iptables_text)?;
    let iptables_rules = iptables_text
        .lines()
        .filter(|l| l.starts_with("-A "))
        .count();
    progress(&format!(
        "  control: {} services × {} endpoints ({} frontends, {iptables_rules} iptables rules)",
        config.services,
        config.endpoints,
        desired_state.frontends.len()
    ));

    let mut result = Control {
        services: config.services,
        endpoints: config.endpoints,
        frontends: desired_state.frontends.len(),
        parse_and_compute_s,
        maglev_build_s,
        iptables_rules,
        batch_entries: config.batch_entries,
        ..Control::default()
    };
    // Warm-up (discarded), then interleaved repetitions.
    for rep in 0..=config.reps {
        let (_ebpf, mut maps) = fresh_maps(&MapSizes::default())?;
        // As the agent on maps it created (zero counters).
        let mut reconciler = Reconciler::new().with_fresh_stats(true, true);
        settle();
        let start = Instant::now();
        let report = reconciler.apply(desired_state, &mut maps);
        let cold = start.elapsed().as_secs_f64();
        if let Some((frontend, error)) = report.errors.first() {
            bail!("cold sync failed on {frontend}: {error}");
        }
        result.cold_map_writes = report.map_writes;
        settle();
        let restore = cold_iptables_restore(rules_file.path())?;
        settle();
        let (single, batch) = update_rates(config.batch_entries)?;
        if rep > 0 {
            result.cold_sync_s.push(cold);
            result.iptables_restore_s.push(restore);
            result.single_updates_per_s.push(single);
            result.batch_updates_per_s.push(batch);
            progress(&format!(
                "  control rep {rep}/{}: cold sync {cold:.3}s, iptables-restore {restore:.2}s, updates/s single {single:.0} batch {batch:.0}",
                config.reps
            ));
        }
    }

    let (_ebpf, mut maps) = fresh_maps(&MapSizes::default())?;
    let mut reconciler = Reconciler::new().with_fresh_stats(true, true);
    let report = reconciler.apply(desired_state, &mut maps);
    ensure!(
        report.errors.is_empty(),
        "sync before the change test failed"
    );
    result.change = change::change_latency(
        &set,
        &mut followed,
        &mut maps,
        &mut reconciler,
        config.changes,
    )?;
    let p = |v: &[f64], q| stats::percentile(v, q).unwrap_or(f64::NAN);
    progress(&format!(
        "  control: endpoint change → map p50 {:.2} ms, p99 {:.2} ms (compute p50 {:.2} ms, apply p50 {:.3} ms)",
        p(&result.change.total_ms, 50.0),
        p(&result.change.total_ms, 99.0),
        p(&result.change.compute_ms, 50.0),
        p(&result.change.apply_ms, 50.0)
    ));
    drop(maps);
    drop(followed);

    let name = format!("target.{}.svc.clusterset.local.", rules::NAMESPACE);
    let dns = crate::dns::run(
        snapshot_of(&set)?,
        config.services,
        &name,
        config.dns_queries,
    )?;
    progress(&format!(
        "  control: DNS responder {:.0} UDP queries/s ({} lost of {})",
        dns.queries_per_s, dns.lost, dns.queries
    ));
    result.dns = Some(dns);

    result.agent = agent_memory(&set, &[])?;
    progress(&format!(
        "  control: agent synced in {:.1}s, VmHWM {:.1} MiB, BPF maps {:.1} MiB ({:.0}s in total)",
        result.agent.start_to_synced_s,
        result.agent.vm_hwm_kib as f64 / 1024.0,
        result.agent.bpf_memlock_bytes as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    ));
    result.notes = vec![
        "Cold sync: Reconciler::apply of the whole desired state into freshly created maps (the agent's first sync; stats counters of fresh maps are zero, so they are not reset), interleaved with a cold iptables-restore of the same services into a fresh network namespace; one warm-up repetition discarded. Before each timed step the bench waits (at most 5 s) until a CPU is idle, so the kernel's background teardown of the previous step (a namespace with 320k rules, freed maps) does not land in it.".to_owned(),
        "Endpoint change: one endpoint address of one service replaced in the model and published as the sources publish (sources::Publisher journals what changed; timed apart as the source's side); then timed through the agent's per-update path (run/context.rs): the changed set from the update's journal (desired::Follower::changes: the entries after the version last applied, no snapshot diff), the incremental desired state of the affected imports (Follower::apply) and Reconciler::apply_changed of the touched frontends, until a map lookup returns the new backend. The file source's debounce and YAML parsing, and the source's journaling, are not included.".to_owned(),
        "DNS: the agent's responder (mcs_agent::dns::serve, rate limiting off, two worker threads) on loopback holding these services, A queries for the measured service's name from one client with 64 in flight, on the same runtime; a warm-up of a tenth as many first.".to_owned(),
        "Single vs batch: backend-slot inserts into an empty (preallocated) map, one bpf(BPF_MAP_UPDATE_ELEM) per entry (aya) vs BPF_MAP_UPDATE_BATCH of 4096 (aya 0.14 has no batch operations; called through bpf(2) directly). The agent's cold sync writes in batches like this; later changes write one entry per syscall (a change is a few entries).".to_owned(),
    ];
    Ok(result)
}
