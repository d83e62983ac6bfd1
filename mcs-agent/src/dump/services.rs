//! The services part of a dump: every frontend of both families with its
//! backends (slot order, Maglev share) through one listing.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use mcs_common::{
    BACKEND_F_TERMINATING, BackendKey, FrontendStats, SVC_F_AFFINITY, SVC_F_VIP_MARKER,
    ServiceValue,
};

use super::{BackendDump, ServiceDump, Stats, name_of};
use crate::{dataplane::MapHandles, model::Protocol};

/// A slot as the listing reads it, of either family.
struct Slot {
    addr: IpAddr,
    port: u16,
    cluster_id: u32,
    flags: u32,
    backend_id: u32,
}

/// Distinct backends seen, by counter id: address, port, cluster.
pub(super) type Seen = BTreeMap<u32, (IpAddr, u16, String)>;

/// Every service (markers left out) of both service maps, sorted by
/// address, port and protocol; the backends seen (by counter id) go to
/// `seen`. Returns the services and the table chunks they point at.
pub(super) fn list(maps: &MapHandles, seen: &mut Seen) -> anyhow::Result<(Vec<ServiceDump>, u64)> {
    let mut entries: Vec<(IpAddr, u16, u8, ServiceValue)> = Vec::new();
    for entry in maps.services.iter() {
        let (key, value) = entry.context("iterate services")?;
        entries.push((key.addr().into(), key.port(), key.proto, value));
    }
    for entry in maps.services_v6.iter() {
        let (key, value) = entry.context("iterate IPv6 services")?;
        entries.push((key.addr().into(), key.port(), key.proto, value));
    }
    let mut services = Vec::new();
    let mut table_chunks = 0u64;
    for (vip, port, proto, value) in entries {
        if value.flags & SVC_F_VIP_MARKER != 0 {
            continue;
        }
        let place = value.maglev();
        table_chunks += place.map_or(0, |place| u64::from(place.chunks()));
        let slot = |key: &BackendKey| slot_of(maps, vip, key);
        services.push(service(maps, vip, port, proto, &value, slot, seen)?);
    }
    services.sort_by(|a, b| (a.vip, a.port, &a.protocol).cmp(&(b.vip, b.port, &b.protocol)));
    Ok((services, table_chunks))
}

/// Slot `key` of the slot map of `vip`'s family.
fn slot_of(maps: &MapHandles, vip: IpAddr, key: &BackendKey) -> Option<Slot> {
    match vip {
        IpAddr::V4(_) => maps.backends.get(key, 0).ok().map(|b| Slot {
            addr: b.addr().into(),
            port: b.port(),
            cluster_id: b.cluster_id,
            flags: b.flags,
            backend_id: b.backend_id,
        }),
        IpAddr::V6(_) => maps.backends_v6.get(key, 0).ok().map(|b| Slot {
            addr: b.addr().into(),
            port: b.port(),
            cluster_id: b.cluster_id,
            flags: b.flags,
            backend_id: b.backend_id,
        }),
    }
}

fn service(
    maps: &MapHandles,
    vip: IpAddr,
    port: u16,
    proto: u8,
    value: &ServiceValue,
    slot_of: impl Fn(&BackendKey) -> Option<Slot>,
    seen: &mut Seen,
) -> anyhow::Result<ServiceDump> {
    let mut owned = vec![0u32; value.backend_count as usize];
    let place = value.maglev();
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
        let Some(backend) = slot_of(&key) else {
            continue; // mid-update; the next dump shows it
        };
        let cluster = if backend.cluster_id == 0 {
            String::new()
        } else {
            name_of(maps.clusters.get(&backend.cluster_id, 0))
        };
        seen.entry(backend.backend_id)
            .or_insert_with(|| (backend.addr, backend.port, cluster.clone()));
        let state = if backend.flags & BACKEND_F_TERMINATING != 0 {
            "terminating"
        } else {
            "ready"
        };
        backends.push(BackendDump {
            slot,
            addr: backend.addr,
            port: backend.port,
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
    Ok(ServiceDump {
        socket_stats,
        frontend_id: value.frontend_id,
        name: name_of(maps.frontend_names.get(&value.frontend_id, 0)),
        vip,
        port,
        protocol: Protocol::from_number(proto)
            .map_or_else(|| proto.to_string(), |p| p.as_str().to_owned()),
        affinity_timeout_seconds: (value.flags & SVC_F_AFFINITY != 0)
            .then_some(value.affinity_timeout_s),
        maglev_table_size: place.map_or(0, |place| place.size as usize),
        backends,
        stats,
    })
}
