//! The conntrack part of a dump: both families' maps through one listing.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap, MapData};
use mcs_common::{
    CT_F_FIN, CT_F_REPLY, CT_F_RST, CT_F_SEEN_NON_SYN, CT_F_SYN, CtKeyOf, CtValueOf,
    byte_order::NetAddr,
};

use super::{ConntrackDump, ConntrackFilter};
use crate::model::Protocol;

/// A conntrack entry of either family, read as socket addresses.
pub(super) trait FlowEntry {
    fn proto(&self) -> u8;
    /// Source, destination, translation and backend.
    fn endpoints(&self) -> (SocketAddr, SocketAddr, SocketAddr, SocketAddr);
}

impl<A: NetAddr> FlowEntry for (CtKeyOf<A>, CtValueOf<A>)
where
    A::Endpoint: Into<SocketAddr>,
{
    fn proto(&self) -> u8 {
        self.0.proto
    }
    fn endpoints(&self) -> (SocketAddr, SocketAddr, SocketAddr, SocketAddr) {
        let (key, value) = self;
        (
            key.src().into(),
            key.dst().into(),
            value.nat().into(),
            value.backend().into(),
        )
    }
}

/// Counts the entries of one conntrack map and, when the filter asks for a
/// listing, appends those it selects to `listed` (up to its limit over
/// both maps). Returns the entry count.
pub(super) fn list<A: NetAddr>(
    map: &HashMap<MapData, CtKeyOf<A>, CtValueOf<A>>,
    filter: &ConntrackFilter,
    now: u64,
    listed: &mut Vec<ConntrackDump>,
) -> usize
where
    CtKeyOf<A>: aya::Pod,
    CtValueOf<A>: aya::Pod,
    (CtKeyOf<A>, CtValueOf<A>): FlowEntry,
{
    if !filter.list {
        // Only the fill: keys alone, one syscall per entry instead of two.
        return map.keys().filter(Result::is_ok).count();
    }
    let mut entries = 0;
    for entry in map.iter() {
        let Ok(entry) = entry else { continue };
        entries += 1;
        if listed.len() >= filter.limit.max(1) {
            continue;
        }
        let (src, dst, nat, backend) = entry.endpoints();
        let value = &entry.1;
        let (client, vip) = if value.is_reply() {
            (dst, nat)
        } else {
            (src, dst)
        };
        if !selected(filter.vip, vip.ip()) || !selected(filter.client, client.ip()) {
            continue;
        }
        listed.push(ConntrackDump::of(
            (src, dst, nat, backend),
            entry.proto(),
            value,
            now,
        ));
    }
    entries
}

/// Whether `addr` passes a filter on `wanted` (none: everything).
fn selected(wanted: Option<IpAddr>, addr: IpAddr) -> bool {
    wanted.is_none_or(|wanted| wanted == addr)
}

impl ConntrackDump {
    /// One entry of either family: its key's source and destination, its
    /// translation and backend (`Display` puts an IPv6 address in
    /// brackets before the port).
    pub(super) fn of<A, E: std::fmt::Display>(
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
