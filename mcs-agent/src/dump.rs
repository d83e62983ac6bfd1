//! `mcs-agent dump`: services, backends and counters read from the live
//! (pinned) maps of a running agent. IPv6 flows are listed with the
//! conntrack entries and the `_V6` maps' fill shown; IPv6 frontends are not
//! listed yet (the agent does not program them yet).

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use anyhow::Context as _;
use aya::maps::{IterableMap as _, MapError};
use mcs_common::{
    BACKEND_F_TERMINATING, BackendKey, CT_F_FIN, CT_F_REPLY, CT_F_RST, CT_F_SEEN_NON_SYN, CT_F_SYN,
    CtValueOf, DropReason, FrontendStats, MAX_AFFINITY, MAX_AFFINITY_V6, MAX_BACKEND_SLOTS,
    MAX_BACKEND_SLOTS_V6, MAX_BACKENDS, MAX_CONNTRACK, MAX_CONNTRACK_V6, MAX_FRONTENDS,
    MAX_FRONTENDS_V6, MAX_SOCK_REVNAT, MAX_SOCK_REVNAT_V6, NameValue, SVC_F_AFFINITY,
    SVC_F_VIP_MARKER, names,
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
    /// Socket LB: `new_flows` = sockets/datagrams sent to a backend,
    /// `no_backend` = refused with ECONNREFUSED.
    #[serde(default)]
    pub socket_stats: Stats,
}

/// Counters of one backend endpoint, over every frontend it backs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatsDump {
    pub addr: Ipv4Addr,
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

impl ConntrackDump {
    /// One entry of either family: its key's source and destination, its
    /// translation and backend (`Display` puts an IPv6 address in
    /// brackets before the port).
    fn of<A, E: std::fmt::Display>(
        (src, dst, nat, backend): (E, E, E, E),
        proto: u8,
        value: &CtValueOf<A>,
        now: u64,
    ) -> Self {
        let tcp_flags = [
            (CT_F_SYN, "SYN"),
            (CT_F_SEEN_NON_SYN, "ACK"),
            (CT_F_FIN, "FIN"),
            (CT_F_RST, "RST"),
        ]
        .iter()
        .filter(|(bit, _)| value.flags & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect();
        Self {
            direction: if value.flags & CT_F_REPLY != 0 {
                "reply"
            } else {
                "forward"
            }
            .to_owned(),
            protocol: Protocol::from_number(proto)
                .map_or_else(|| proto.to_string(), |p| p.as_str().to_owned()),
            src: src.to_string(),
            dst: dst.to_string(),
            nat: nat.to_string(),
            backend: backend.to_string(),
            frontend_id: value.frontend_id,
            tcp_flags,
            idle_seconds: now.saturating_sub(value.last_seen_ns) as f64 / 1e9,
        }
    }
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
    /// Conntrack entries (both directions of each flow).
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
    /// Only flows of this ClusterSetIP.
    pub vip: Option<Ipv4Addr>,
    /// Only flows of this client address.
    pub client: Option<Ipv4Addr>,
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
    let mut backend_seen: BTreeMap<u32, (Ipv4Addr, u16, String)> = BTreeMap::new();
    let mut services = Vec::new();
    let mut table_chunks = 0u64;
    for entry in maps.services.iter() {
        let (key, value) = entry.context("iterate services")?;
        if value.flags & SVC_F_VIP_MARKER != 0 {
            continue;
        }
        let mut owned = vec![0u32; value.backend_count as usize];
        let place = value.maglev();
        table_chunks += place.map_or(0, |place| u64::from(place.chunks()));
        // Unreadable (mid-update): shown without shares; the next dump has it.
        let table = place.and_then(|place| maps.maglev.read(place).ok());
        if let Some(table) = &table {
            for slot in table {
                if let Some(count) = owned.get_mut(usize::from(*slot)) {
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
            backend_seen
                .entry(backend.backend_id)
                .or_insert_with(|| (backend.addr(), backend.port(), cluster.clone()));
            let state = if backend.flags & BACKEND_F_TERMINATING != 0 {
                "terminating"
            } else {
                "ready"
            };
            backends.push(BackendDump {
                slot,
                addr: backend.addr(),
                port: backend.port(),
                cluster,
                state: state.to_owned(),
                table_entries: owned.get(slot as usize).copied().unwrap_or(0),
            });
        }
        let per_cpu = maps
            .frontend_stats
            .get(&value.frontend_id, 0)
            .context("read frontend counters")?;
        let stats = per_cpu
            .iter()
            .fold(Stats::default(), |sum, cpu: &FrontendStats| Stats {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
                new_flows: sum.new_flows + cpu.new_flows,
                no_backend: sum.no_backend + cpu.no_backend,
            });
        let mut socket_stats = Stats::default();
        socket_stats.add(
            &maps
                .sock_stats
                .get(&value.frontend_id, 0)
                .context("read socket-LB counters")?,
        );
        services.push(ServiceDump {
            socket_stats,
            frontend_id: value.frontend_id,
            name: name_of(maps.frontend_names.get(&value.frontend_id, 0)),
            vip: key.addr(),
            port: key.port(),
            protocol: Protocol::from_number(key.proto)
                .map_or_else(|| key.proto.to_string(), |p| p.as_str().to_owned()),
            affinity_timeout_seconds: (value.flags & SVC_F_AFFINITY != 0)
                .then_some(value.affinity_timeout_s),
            maglev_table_size: place.map_or(0, |place| place.size as usize),
            backends,
            stats,
        });
    }
    services.sort_by(|a, b| (a.vip, a.port, &a.protocol).cmp(&(b.vip, b.port, &b.protocol)));

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
    let mut conntrack_entries = 0;
    let mut conntrack = Vec::new();
    if !filter.list {
        // Only the fill: keys alone, one syscall per entry instead of two.
        conntrack_entries = maps.conntrack.keys().filter(Result::is_ok).count();
    }
    for entry in maps.conntrack.iter().take_while(|_| filter.list) {
        let Ok((key, value)) = entry else { continue };
        conntrack_entries += 1;
        if conntrack.len() >= filter.limit.max(1) {
            continue;
        }
        let reply = value.is_reply();
        let (client, vip) = if reply {
            (key.dst(), value.nat())
        } else {
            (key.src(), key.dst())
        };
        if filter.vip.is_some_and(|wanted| wanted != *vip.ip())
            || filter.client.is_some_and(|wanted| wanted != *client.ip())
        {
            continue;
        }
        conntrack.push(ConntrackDump::of(
            (key.src(), key.dst(), value.nat(), value.backend()),
            key.proto,
            &value,
            now,
        ));
    }
    // IPv6 flows: listed unless the filter names an (IPv4) address.
    let mut conntrack_v6_entries = 0;
    let list_v6 = filter.list && filter.vip.is_none() && filter.client.is_none();
    for entry in maps.conntrack_v6.iter() {
        let Ok((key, value)) = entry else { continue };
        conntrack_v6_entries += 1;
        if list_v6 && conntrack.len() < filter.limit.max(1) {
            conntrack.push(ConntrackDump::of(
                (key.src(), key.dst(), value.nat(), value.backend()),
                key.proto,
                &value,
                now,
            ));
        }
    }

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
            entries: conntrack_v6_entries,
            capacity: capacity(maps.conntrack_v6.map(), MAX_CONNTRACK_V6),
        },
        MapFill {
            name: names::AFFINITY_V6.into(),
            entries: count(maps.affinity_v6.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.affinity_v6.map(), MAX_AFFINITY_V6),
        },
        MapFill {
            name: names::SOCK_REVNAT_V6.into(),
            entries: count(maps.sock_revnat_v6.keys().filter(Result::is_ok).count()),
            capacity: capacity(maps.sock_revnat_v6.map(), MAX_SOCK_REVNAT_V6),
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

/// Human-readable form.
pub fn render_text(report: &DumpReport) -> String {
    let mut out = String::new();
    if report.services.is_empty() {
        out.push_str("no services\n");
    }
    for service in &report.services {
        let _ = writeln!(
            out,
            "{vip}:{port}/{proto}  {name}  (frontend {id}, {n} backends, maglev table {m}, affinity {a})\n    per packet (tc, XDP): packets {p}  bytes {b}  new flows {f}  refused (no backend) {d}\n    socket LB: connections {sc}  refused {sr}",
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
            sc = service.socket_stats.new_flows,
            sr = service.socket_stats.no_backend,
        );
        for backend in &service.backends {
            let cluster = if backend.cluster.is_empty() {
                "-"
            } else {
                &backend.cluster
            };
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
    if !report.clusters.is_empty() {
        out.push_str("per source cluster:\n");
        for (cluster, stats) in &report.clusters {
            let name = if cluster.is_empty() { "-" } else { cluster };
            let _ = writeln!(
                out,
                "    {name}  packets {}  bytes {}  new flows {}",
                stats.packets, stats.bytes, stats.new_flows
            );
        }
    }
    if !report.backends.is_empty() {
        out.push_str("per backend:\n");
        for backend in &report.backends {
            let _ = writeln!(
                out,
                "    {}:{}  packets {}  bytes {}  new flows {}",
                backend.addr,
                backend.port,
                backend.stats.packets,
                backend.stats.bytes,
                backend.stats.new_flows
            );
        }
    }
    let _ = writeln!(out, "conntrack entries: {}", report.conntrack_entries);
    for flow in &report.conntrack {
        let _ = writeln!(
            out,
            "    {dir:7} {proto} {src} -> {dst}  nat {nat}  backend {backend}  [{flags}]  idle {idle:.1}s",
            dir = flow.direction,
            proto = flow.protocol,
            src = flow.src,
            dst = flow.dst,
            nat = flow.nat,
            backend = flow.backend,
            flags = flow.tcp_flags.join(","),
            idle = flow.idle_seconds,
        );
    }
    let fill: Vec<String> = report
        .maps
        .iter()
        .map(|m| format!("{}={}/{}", m.name, m.entries, m.capacity))
        .collect();
    let _ = writeln!(out, "maps: {}", fill.join(" "));
    let drops: Vec<String> = report
        .drops
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
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
