//! `mcs-agent dump`: services, backends and counters read from the live
//! (pinned) maps of a running agent.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use anyhow::Context as _;
use aya::maps::MapError;
use mcs_common::{
    BACKEND_F_TERMINATING, BackendKey, DropReason, FrontendStats, MAGLEV_TABLE_SIZE, NameValue,
    SVC_F_AFFINITY, SVC_F_VIP_MARKER,
};
use serde::{Deserialize, Serialize};

use crate::{
    cli::{DumpArgs, OutputFormat},
    dataplane::{MapHandles, PinnedMaps},
    model::Protocol,
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendDump {
    pub slot: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Source cluster ("" when unknown).
    pub cluster: String,
    /// `ready`, or `terminating` (serving while no endpoint is ready).
    pub state: String,
    /// Maglev table entries owned (its share of new flows: entries / size).
    pub table_entries: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDump {
    pub frontend_id: u32,
    /// `namespace/name:port-name`.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// ClientIP session affinity timeout in seconds, if enabled.
    pub affinity_timeout_seconds: Option<u32>,
    /// Entries of the Maglev table (0 when there is no backend).
    pub maglev_table_size: usize,
    pub backends: Vec<BackendDump>,
    pub stats: Stats,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpReport {
    pub services: Vec<ServiceDump>,
    /// Drops by reason, summed over CPUs.
    pub drops: BTreeMap<String, u64>,
    /// Conntrack entries (both directions of each flow).
    pub conntrack_entries: usize,
}

fn name_of(value: Result<NameValue, MapError>) -> String {
    value.map(|name| name.as_str().to_owned()).unwrap_or_default()
}

/// Reads everything from the maps.
pub fn collect(maps: &MapHandles) -> anyhow::Result<DumpReport> {
    let mut services = Vec::new();
    for entry in maps.services.iter() {
        let (key, value) = entry.context("iterate services")?;
        if value.flags & SVC_F_VIP_MARKER != 0 {
            continue;
        }
        let mut owned = vec![0u32; value.backend_count as usize];
        let table = maps.maglev.get(&value.frontend_id, 0).ok();
        if let Some(table) = &table {
            for slot in table.slots {
                if let Some(count) = owned.get_mut(usize::from(slot)) {
                    *count += 1;
                }
            }
        }
        let mut backends = Vec::with_capacity(value.backend_count as usize);
        for slot in 0..value.backend_count {
            let key = BackendKey {
                frontend_id: value.frontend_id,
                slot,
            };
            let Ok(backend) = maps.backends.get(&key, 0) else {
                continue; // mid-update; the next dump shows it
            };
            let cluster = if backend.cluster_id == 0 {
                String::new()
            } else {
                name_of(maps.clusters.get(&backend.cluster_id, 0))
            };
            let state = if backend.flags & BACKEND_F_TERMINATING != 0 {
                "terminating"
            } else {
                "ready"
            };
            backends.push(BackendDump {
                slot,
                addr: Ipv4Addr::from(backend.addr.to_ne_bytes()),
                port: u16::from_be(backend.port),
                cluster,
                state: state.to_owned(),
                table_entries: owned.get(slot as usize).copied().unwrap_or(0),
            });
        }
        let per_cpu = maps
            .frontend_stats
            .get(&value.frontend_id, 0)
            .context("read frontend counters")?;
        let stats = per_cpu.iter().fold(Stats::default(), |sum, cpu: &FrontendStats| Stats {
            packets: sum.packets + cpu.packets,
            bytes: sum.bytes + cpu.bytes,
            new_flows: sum.new_flows + cpu.new_flows,
            no_backend: sum.no_backend + cpu.no_backend,
        });
        services.push(ServiceDump {
            frontend_id: value.frontend_id,
            name: name_of(maps.frontend_names.get(&value.frontend_id, 0)),
            vip: Ipv4Addr::from(key.addr.to_ne_bytes()),
            port: u16::from_be(key.port),
            protocol: Protocol::from_number(key.proto)
                .map_or_else(|| key.proto.to_string(), |p| p.as_str().to_owned()),
            affinity_timeout_seconds: (value.flags & SVC_F_AFFINITY != 0)
                .then_some(value.affinity_timeout_s),
            maglev_table_size: if table.is_some() { MAGLEV_TABLE_SIZE } else { 0 },
            backends,
            stats,
        });
    }
    services.sort_by(|a, b| (a.vip, a.port, &a.protocol).cmp(&(b.vip, b.port, &b.protocol)));

    let mut drops = BTreeMap::new();
    for reason in DropReason::ALL {
        let per_cpu = maps.drops.get(&(reason as u32), 0).context("read drop counters")?;
        drops.insert(reason.name().to_owned(), per_cpu.iter().sum());
    }
    let conntrack_entries = maps.conntrack.keys().filter(Result::is_ok).count();
    Ok(DumpReport {
        services,
        drops,
        conntrack_entries,
    })
}

/// Human-readable form.
pub fn render_text(report: &DumpReport) -> String {
    let mut out = String::new();
    if report.services.is_empty() {
        out.push_str("no services\n");
    }
    for service in &report.services {
        let _ = writeln!(
            out,
            "{vip}:{port}/{proto}  {name}  (frontend {id}, {n} backends, maglev table {m}, affinity {a})\n    packets {p}  bytes {b}  new flows {f}  refused (no backend) {d}",
            vip = service.vip,
            port = service.port,
            proto = service.protocol,
            name = service.name,
            id = service.frontend_id,
            n = service.backends.len(),
            m = service.maglev_table_size,
            a = service
                .affinity_timeout_seconds
                .map_or_else(|| "none".to_owned(), |t| format!("ClientIP {t}s")),
            p = service.stats.packets,
            b = service.stats.bytes,
            f = service.stats.new_flows,
            d = service.stats.no_backend,
        );
        for backend in &service.backends {
            let cluster = if backend.cluster.is_empty() { "-" } else { &backend.cluster };
            let _ = writeln!(
                out,
                "    [{slot}] {addr}:{port}  cluster {cluster}  {state}  table entries {entries}",
                slot = backend.slot,
                addr = backend.addr,
                port = backend.port,
                state = backend.state,
                entries = backend.table_entries,
            );
        }
    }
    let _ = writeln!(out, "conntrack entries: {}", report.conntrack_entries);
    let drops: Vec<String> = report.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "drops: {}", drops.join(" "));
    out
}

pub fn dump(args: &DumpArgs) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(&args.bpffs_dir).with_context(|| {
        format!(
            "open the maps pinned under {} (is an agent running with this --bpffs-dir?)",
            args.bpffs_dir.display()
        )
    })?;
    let report = collect(&maps.0)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print!("{}", render_text(&report)),
    }
    Ok(())
}
