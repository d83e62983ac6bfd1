//! `mcs-agent dump`: services, backends and counters read from the live
//! (pinned) maps of a running agent, IPv4 and IPv6 alike.
//!
//! * `mod.rs` — the report's types, [`collect_with`] assembling it (drops,
//!   per-backend and per-cluster counters, map fill) and [`dump`];
//! * `services.rs` — the frontends of both service maps with their slots;
//! * `conntrack.rs` — the flows of both conntrack maps;
//! * `text.rs` — the human-readable form.

mod conntrack;
mod services;
mod text;

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use aya::maps::{IterableMap as _, MapError};
use mcs_common::{
    DropReason, FrontendStats, MAX_AFFINITY, MAX_AFFINITY_V6, MAX_BACKEND_SLOTS,
    MAX_BACKEND_SLOTS_V6, MAX_BACKENDS, MAX_CONNTRACK, MAX_CONNTRACK_V6, MAX_FRONTENDS,
    MAX_FRONTENDS_V6, MAX_SOCK_REVNAT, NameValue, names,
};
use serde::{Deserialize, Serialize};

pub use self::text::render_text;
use crate::{
    cli::{DumpArgs, OutputFormat},
    dataplane::{MapHandles, PinnedMaps},
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
    pub addr: IpAddr,
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
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// ClientIP session affinity timeout in seconds, if enabled.
    pub affinity_timeout_seconds: Option<u32>,
    /// Entries of the Maglev table (0 when there is no backend).
    pub maglev_table_size: usize,
    pub backends: Vec<BackendDump>,
    pub stats: Stats,
    /// Socket LB: `new_flows` = sockets/datagrams sent to a backend,
    /// `no_backend` = refused with ECONNREFUSED.
    #[serde(default)]
    pub socket_stats: Stats,
}

/// Counters of one backend endpoint, over every frontend it backs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatsDump {
    pub addr: IpAddr,
    pub port: u16,
    pub cluster: String,
    pub stats: Stats,
}

/// One direction of a translated flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConntrackDump {
    /// `forward` (client → ClusterSetIP, DNAT) or `reply` (backend → client).
    pub direction: String,
    pub protocol: String,
    pub src: String,
    pub dst: String,
    /// What the packet's destination (forward) or source (reply) becomes.
    pub nat: String,
    pub backend: String,
    pub frontend_id: u32,
    /// TCP flags seen (`SYN`, `FIN`, `RST`; `ACK`: a packet without SYN,
    /// i.e. the handshake completed).
    pub tcp_flags: Vec<String>,
    pub idle_seconds: f64,
}

/// How full a map is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DumpReport {
    pub services: Vec<ServiceDump>,
    /// Per backend endpoint (address and port), over all frontends.
    pub backends: Vec<BackendStatsDump>,
    /// Per source cluster, summed over its backends.
    pub clusters: BTreeMap<String, Stats>,
    /// Drops by reason, summed over CPUs.
    pub drops: BTreeMap<String, u64>,
    /// IPv4 conntrack entries (both directions of each flow); the IPv6
    /// ones are in `maps` (`MCS_CT_V6`).
    pub conntrack_entries: usize,
    /// Conntrack entries matching the filter, when asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conntrack: Vec<ConntrackDump>,
    pub maps: Vec<MapFill>,
}

/// Which conntrack entries to list.
#[derive(Clone, Debug, Default)]
pub struct ConntrackFilter {
    pub list: bool,
    /// Only flows of this ClusterSetIP (either family).
    pub vip: Option<IpAddr>,
    /// Only flows of this client address.
    pub client: Option<IpAddr>,
    /// At most this many entries.
    pub limit: usize,
}

impl Stats {
    fn add(&mut self, other: &FrontendStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        self.no_backend += other.no_backend;
    }
}

fn name_of(value: Result<NameValue, MapError>) -> String {
    value
        .map(|name| name.as_str().to_owned())
        .unwrap_or_default()
}

/// Reads everything from the maps (without listing conntrack entries).
pub fn collect(maps: &MapHandles) -> anyhow::Result<DumpReport> {
    collect_with(maps, &ConntrackFilter::default())
}

/// Reads everything from the maps.
pub fn collect_with(maps: &MapHandles, filter: &ConntrackFilter) -> anyhow::Result<DumpReport> {
    let mut backend_seen = services::Seen::new();
    let (services, table_chunks) = services::list(maps, &mut backend_seen)?;

    let mut drops = BTreeMap::new();
    for reason in DropReason::ALL {
        let per_cpu = maps
            .drops
            .get(&(reason as u32), 0)
            .context("read drop counters")?;
        drops.insert(reason.name().to_owned(), per_cpu.iter().sum());
    }
    let mut backends = Vec::new();
    let mut clusters: BTreeMap<String, Stats> = BTreeMap::new();
    for (backend_id, (addr, port, cluster)) in backend_seen {
        let mut stats = Stats::default();
        for cpu in maps
            .backend_stats
            .get(&backend_id, 0)
            .context("read backend counters")?
            .iter()
        {
            stats.add(cpu);
        }
        let per_cluster = clusters.entry(cluster.clone()).or_default();
        per_cluster.packets += stats.packets;
        per_cluster.bytes += stats.bytes;
        per_cluster.new_flows += stats.new_flows;
        backends.push(BackendStatsDump {
            addr,
            port,
            cluster,
            stats,
        });
    }

    // The clock entry timestamps follow (`dataplane::clock`); unreadable,
    // it yields idle times of 0 rather than failing the dump.
    let now = crate::dataplane::clock::coarse_now().unwrap_or(0);
    let mut conntrack = Vec::new();
    let conntrack_entries = conntrack::list(&maps.conntrack, filter, now, &mut conntrack);
    let conntrack_v6_entries = conntrack::list(&maps.conntrack_v6, filter, now, &mut conntrack);

    let count = |keys: usize| keys as u64;
    // The real capacity (conntrack and backend counters are sized by the
    // agent's flags), the object's default if the kernel will not say.
    let capacity = |map: &aya::maps::MapData, default: u32| {
        u64::from(map.info().map_or(default, |info| info.max_entries()))
    };
    let maps_fill = vec![
        MapFill {
            name: names::SERVICES.into(),
            entries: count(maps.services.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.services.map(), MAX_FRONTENDS),
        },
        MapFill {
            name: names::BACKENDS.into(),
            entries: count(maps.backends.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.backends.map(), MAX_BACKEND_SLOTS),
        },
        MapFill {
            // Chunks of the table array the service entries point at.
            name: names::MAGLEV.into(),
            entries: table_chunks,
            capacity: maps.maglev.capacity(),
        },
        MapFill {
            name: names::CONNTRACK.into(),
            entries: conntrack_entries as u64,
            capacity: capacity(maps.conntrack.map(), MAX_CONNTRACK),
        },
        MapFill {
            name: names::AFFINITY.into(),
            entries: count(maps.affinity.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.affinity.map(), MAX_AFFINITY),
        },
        MapFill {
            name: names::SOCK_REVNAT.into(),
            entries: count(maps.sock_revnat.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.sock_revnat.map(), MAX_SOCK_REVNAT),
        },
        MapFill {
            name: names::SERVICES_V6.into(),
            entries: count(maps.services_v6.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.services_v6.map(), MAX_FRONTENDS_V6),
        },
        MapFill {
            name: names::BACKENDS_V6.into(),
            entries: count(maps.backends_v6.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.backends_v6.map(), MAX_BACKEND_SLOTS_V6),
        },
        MapFill {
            name: names::CONNTRACK_V6.into(),
            entries: conntrack_v6_entries as u64,
            capacity: capacity(maps.conntrack_v6.map(), MAX_CONNTRACK_V6),
        },
        MapFill {
            name: names::AFFINITY_V6.into(),
            entries: count(maps.affinity_v6.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.affinity_v6.map(), MAX_AFFINITY_V6),
        },
        MapFill {
            name: names::BACKEND_STATS.into(),
            entries: backends.len() as u64,
            capacity: capacity(maps.backend_stats.map(), MAX_BACKENDS),
        },
    ];
    Ok(DumpReport {
        services,
        backends,
        clusters,
        drops,
        conntrack_entries,
        conntrack,
        maps: maps_fill,
    })
}

pub fn dump(args: &DumpArgs) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(&args.bpffs_dir).with_context(|| {
        format!(
            "open the maps pinned under {} (is an agent running with this --bpffs-dir?)",
            args.bpffs_dir.display()
        )
    })?;
    let filter = ConntrackFilter {
        list: args.conntrack || args.vip.is_some() || args.client.is_some(),
        vip: args.vip,
        client: args.client,
        limit: args.limit,
    };
    let report = collect_with(&maps.0, &filter)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print!("{}", render_text(&report)),
    }
    Ok(())
}
