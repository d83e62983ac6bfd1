//! Part 3b: the control plane at 100k services (× 10 endpoints, one port;
//! and a set with three ports per service), with the maps sized for the
//! set as an operator would size them (`ServiceSet::map_sizes`) and 1M
//! conntrack entries:
//!
//! * cold sync: `Reconciler::apply` into fresh maps of those sizes;
//! * Maglev tables: how many frontends share an identical table (what
//!   sharing tables between frontends would save);
//! * one endpoint change with everything loaded (the agent's per-update
//!   path, as in part 3);
//! * the agent on the set's manifest with those sizes: peak RSS and the
//!   kernel's accounting of its maps, against the memory model
//!   (`dataplane::memory`).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mcs_agent::{dataplane::memory, desired::DesiredState, maglev, reconcile::Reconciler};
use mcs_common::{MAPS, maglev_chunks, maglev_wide, names};
use serde::{Deserialize, Serialize};

use crate::{
    change::{self, ChangeTimes, Followed},
    control::{self, AgentMemory},
    perpacket::{progress, target_backends},
    rules::ServiceSet,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub services: usize,
    pub endpoints: usize,
    pub three_ports: bool,
    pub reps: usize,
    pub changes: usize,
    pub conntrack: u32,
}

/// Frontends with backends and their distinct Maglev tables (identical
/// member lists in slot order give identical tables).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TableSharing {
    pub frontends_with_backends: usize,
    pub distinct_tables: usize,
    pub table_bytes: u64,
    pub distinct_table_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScalePoint {
    pub services: usize,
    pub endpoints: usize,
    pub ports_per_service: usize,
    pub service_ports: usize,
    pub frontends: usize,
    /// The agent's map-size flags for the set.
    pub flags: Vec<String>,
    pub cpus: u32,
    /// Manifest parse + desired state (s), once (not part of the sync).
    pub parse_and_compute_s: f64,
    /// Every frontend's Maglev table built alone, on one CPU (s).
    pub maglev_build_s: f64,
    pub cold_sync_s: Vec<f64>,
    pub cold_map_writes: usize,
    pub tables: TableSharing,
    pub change: ChangeTimes,
    pub agent: AgentMemory,
    /// The memory model's figure for each map (names: one per service
    /// port), and the agent's.
    pub model_bpf_maps: Vec<(String, u64)>,
    pub model_agent_bytes: u64,
}

impl ScalePoint {
    pub fn model_bpf_bytes(&self) -> u64 {
        self.model_bpf_maps.iter().map(|(_, bytes)| bytes).sum()
    }
}

fn table_sharing(state: &DesiredState) -> TableSharing {
    let mut sharing = TableSharing::default();
    let mut seen: HashMap<Vec<(IpAddr, u16, u32)>, ()> = HashMap::new();
    for (_, spec) in state.service_frontends() {
        if spec.backends.is_empty() {
            continue;
        }
        let n = spec.backends.len();
        let size = maglev::rule_size(n);
        let bytes = u64::from(maglev_chunks(size, maglev_wide(n as u32))) * 8;
        sharing.frontends_with_backends += 1;
        sharing.table_bytes += bytes;
        let members = spec
            .backends
            .iter()
            .map(|b| (b.addr, b.port, b.weight))
            .collect();
        if seen.insert(members, ()).is_none() {
            sharing.distinct_tables += 1;
            sharing.distinct_table_bytes += bytes;
        }
    }
    sharing
}

fn point(config: &Config) -> Result<ScalePoint> {
    let started = Instant::now();
    let set = ServiceSet::with_ports(
        config.services,
        config.endpoints,
        &target_backends(),
        config.three_ports,
    );
    let sizes = set.map_sizes(config.conntrack);
    let flags = set.map_size_flags(config.conntrack);
    let cpus = memory::possible_cpus().context("possible CPUs")?;
    let parse_start = Instant::now();
    let mut followed = Followed::new(control::snapshot_of(&set)?)?;
    let rejections = followed.follower.engine().rejections();
    ensure!(
        rejections.is_empty(),
        "desired state rejected: {:?}",
        rejections.first()
    );
    let parse_and_compute_s = parse_start.elapsed().as_secs_f64();
    let state = followed.follower.engine().state();
    let maglev_start = Instant::now();
    for (_, spec) in state.service_frontends() {
        let size = maglev::rule_size(spec.backends.len());
        std::hint::black_box(mcs_agent::reconcile::maglev_table(&spec.backends, size));
    }
    let maglev_build_s = maglev_start.elapsed().as_secs_f64();
    let ports = if config.three_ports { 3 } else { 1 };
    progress(&format!(
        "  scale: {} services × {} endpoints × {ports} ports ({} frontends), parsed in {parse_and_compute_s:.1}s",
        config.services,
        config.endpoints,
        state.frontends.len()
    ));
    let mut result = ScalePoint {
        services: config.services,
        endpoints: config.endpoints,
        ports_per_service: ports,
        service_ports: set.service_ports(),
        frontends: state.frontends.len(),
        flags: flags.clone(),
        cpus,
        parse_and_compute_s,
        maglev_build_s,
        tables: table_sharing(state),
        ..ScalePoint::default()
    };
    for rep in 0..=config.reps {
        let (_ebpf, mut maps) = control::fresh_maps(&sizes)?;
        let mut reconciler =
            Reconciler::with_capacities(sizes.capacities()).with_fresh_stats(true, true);
        control::settle();
        let start = Instant::now();
        let report = reconciler.apply(state, &mut maps);
        let cold = start.elapsed().as_secs_f64();
        if let Some((frontend, error)) = report.errors.first() {
            bail!("cold sync failed on {frontend}: {error}");
        }
        result.cold_map_writes = report.map_writes;
        if rep > 0 {
            result.cold_sync_s.push(cold);
            progress(&format!(
                "  scale rep {rep}/{}: cold sync {cold:.3}s",
                config.reps
            ));
        }
    }
    let (_ebpf, mut maps) = control::fresh_maps(&sizes)?;
    let mut reconciler = Reconciler::with_capacities(sizes.capacities());
    ensure!(
        reconciler.apply(state, &mut maps).errors.is_empty(),
        "sync before the change test failed"
    );
    result.change = change::change_latency(
        &set,
        &mut followed,
        &mut maps,
        &mut reconciler,
        config.changes,
    )?;
    drop((maps, reconciler, followed));

    result.agent = control::agent_memory(&set, &flags)?;
    let service_ports = u32::try_from(result.service_ports).unwrap_or(u32::MAX);
    result.model_bpf_maps = MAPS
        .iter()
        .map(|def| {
            let entries = sizes.entries(def.capacity, def.max_entries);
            let present = (def.name == names::FRONTEND_META).then_some(service_ports);
            (
                def.name.to_owned(),
                memory::map_bytes(def, entries, cpus, present),
            )
        })
        .collect();
    result.model_agent_bytes = memory::agent_bytes(result.service_ports as u64);
    progress(&format!(
        "  scale: agent synced in {:.1}s, VmHWM {:.1} MiB, BPF maps {:.1} MiB (model {:.1} MiB), {:.0}s in total",
        result.agent.start_to_synced_s,
        result.agent.vm_hwm_kib as f64 / 1024.0,
        result.agent.bpf_memlock_bytes as f64 / 1_048_576.0,
        result.model_bpf_bytes() as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    ));
    Ok(result)
}

/// Every configured point, one after the other (each frees its state
/// before the next).
pub fn run(configs: &[Config]) -> Result<Vec<ScalePoint>> {
    let mut points = Vec::with_capacity(configs.len());
    for config in configs {
        points.push(point(config).with_context(|| {
            format!(
                "scale point {} services × {} endpoints",
                config.services, config.endpoints
            )
        })?);
        // The kernel frees the maps of the last point in the background.
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(points)
}
