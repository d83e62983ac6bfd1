//! UDP flows of retired backends, and the prefilter members conntrack
//! still needs: one full scan, asked for by the reconcile that retired them
//! (see the policy in [`super`]).

use std::{
    collections::{BTreeSet, HashSet},
    hash::Hash,
    net::SocketAddr,
    time::Instant,
};

use aya::maps::{HashMap, MapData, MapError};
use mcs_common::{CtKey, CtKeyOf, CtValue, CtValueOf, CtValueV6, PROTO_UDP, byte_order::NetAddr};

use crate::{dataplane::prefilter::Member, reconcile::Retired};
/// A frontend and one of its backends.
type BackendRef = (u32, SocketAddr);

/// A conntrack value of either family, as the scan reads it.
pub trait FlowValue {
    /// The backend the flow was translated to.
    fn backend_endpoint(&self) -> SocketAddr;
}

impl FlowValue for CtValue {
    fn backend_endpoint(&self) -> SocketAddr {
        SocketAddr::V4(self.backend())
    }
}

impl FlowValue for CtValueV6 {
    fn backend_endpoint(&self) -> SocketAddr {
        SocketAddr::V6(self.backend())
    }
}

fn retired_udp(retired: &[Retired]) -> BTreeSet<BackendRef> {
    retired
        .iter()
        .filter(|r| r.protocol == crate::model::Protocol::Udp)
        .map(|r| (r.frontend_id, SocketAddr::new(r.addr, r.port)))
        .collect()
}

/// The conntrack keys (of either family's map) to delete for `retired`
/// backends (pure; both flow directions carry the frontend and backend).
pub fn stale_keys<A: NetAddr>(
    entries: impl IntoIterator<Item = (CtKeyOf<A>, CtValueOf<A>)>,
    retired: &[Retired],
) -> Vec<CtKeyOf<A>>
where
    CtValueOf<A>: FlowValue,
{
    let wanted = retired_udp(retired);
    if wanted.is_empty() {
        return Vec::new();
    }
    entries
        .into_iter()
        .filter(|(key, value)| {
            key.proto == PROTO_UDP
                && wanted.contains(&(value.frontend_id, value.backend_endpoint()))
        })
        .map(|(key, _)| key)
        .collect()
}

/// What one conntrack scan did.
#[derive(Debug, Default)]
pub struct Scan {
    /// UDP entries of retired backends deleted (both families).
    pub removed: usize,
    /// When a sweep was asked for: the prefilter members conntrack still
    /// needs, and when the scan started (for [`crate::dataplane::prefilter::Prefilter::sweep`]).
    pub live: Option<(HashSet<Member>, Instant)>,
}

/// Scans both conntrack maps once: deletes the UDP flows of `retired`
/// backends and, if `sweep`, collects the prefilter members the remaining
/// entries of either family need.
pub fn scan(
    conntrack: &mut HashMap<MapData, CtKey, CtValue>,
    conntrack_v6: Option<&mut HashMap<MapData, mcs_common::CtKeyV6, CtValueV6>>,
    retired: &[Retired],
    sweep: bool,
) -> Result<Scan, MapError> {
    let scan_started = Instant::now();
    if retired_udp(retired).is_empty() && !sweep {
        return Ok(Scan::default());
    }
    let mut live = HashSet::new();
    let mut removed = scan_map(conntrack, retired, sweep.then_some(&mut live))?;
    if let Some(conntrack_v6) = conntrack_v6 {
        removed += scan_map(conntrack_v6, retired, sweep.then_some(&mut live))?;
    }
    Ok(Scan {
        removed,
        live: sweep.then_some((live, scan_started)),
    })
}

/// One map's part of [`scan`]: deletes its stale UDP entries, adds the
/// members the others need to `live` (when sweeping).
fn scan_map<A: NetAddr>(
    conntrack: &mut HashMap<MapData, CtKeyOf<A>, CtValueOf<A>>,
    retired: &[Retired],
    live: Option<&mut HashSet<Member>>,
) -> Result<usize, MapError>
where
    CtKeyOf<A>: aya::Pod + Hash + Eq,
    CtValueOf<A>: aya::Pod + FlowValue,
{
    let entries: Vec<(CtKeyOf<A>, CtValueOf<A>)> =
        conntrack.iter().filter_map(Result::ok).collect();
    let stale = stale_keys(entries.iter().copied(), retired);
    if let Some(live) = live {
        let gone: HashSet<&CtKeyOf<A>> = stale.iter().collect();
        live.extend(
            entries
                .iter()
                .filter(|(key, _)| !gone.contains(key))
                .map(|(key, value)| Member::of_flow(key, value)),
        );
    }
    let mut removed = 0;
    for key in &stale {
        match conntrack.remove(key) {
            Ok(()) => removed += 1,
            // Evicted or expired meanwhile: already gone.
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use mcs_common::{CT_F_REPLY, PROTO_TCP};

    use super::*;
    use crate::model::Protocol;

    fn entry(proto: u8, frontend_id: u32, backend: [u8; 4], reply: bool) -> (CtKey, CtValue) {
        let backend = SocketAddrV4::new(Ipv4Addr::from(backend), 5353);
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 40000);
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
        let (key, flags, nat) = if reply {
            (CtKey::new(backend, client, proto), CT_F_REPLY, vip)
        } else {
            (CtKey::new(client, vip, proto), 0, backend)
        };
        (key, CtValue::new(nat, flags, frontend_id, backend, 0))
    }

    #[test]
    fn only_udp_flows_of_retired_ipv6_backends_go() {
        use std::net::{Ipv6Addr, SocketAddrV6};

        use mcs_common::{CtKeyV6, CtValueV6};
        let v6 = |host: u16, port: u16| {
            SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, host), port, 0, 0)
        };
        let client = v6(0x99, 40000);
        let vip = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10), 53, 0, 0);
        let entry = |proto, frontend_id, backend: SocketAddrV6| {
            let key = CtKeyV6::new(client, vip, proto);
            (key, CtValueV6::new(backend, 0, frontend_id, backend, 0))
        };
        let retired = [Retired {
            frontend_id: 3,
            addr: std::net::IpAddr::V6(*v6(1, 0).ip()),
            port: 5353,
            protocol: Protocol::Udp,
        }];
        let entries = vec![
            entry(PROTO_UDP, 3, v6(1, 5353)),
            entry(PROTO_UDP, 3, v6(2, 5353)), // another backend
            entry(PROTO_TCP, 3, v6(1, 5353)), // TCP is kept
        ];
        assert_eq!(stale_keys(entries.clone(), &retired), vec![entries[0].0]);
        // An IPv4 retirement never matches an IPv6 flow.
        let v4 = [Retired {
            addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            ..retired[0]
        }];
        assert!(stale_keys(entries, &v4).is_empty());
    }

    #[test]
    fn only_udp_flows_of_retired_backends_go() {
        let retired = [Retired {
            frontend_id: 3,
            addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            port: 5353,
            protocol: Protocol::Udp,
        }];
        let entries = vec![
            entry(PROTO_UDP, 3, [10, 1, 0, 1], false),
            entry(PROTO_UDP, 3, [10, 1, 0, 1], true),
            entry(PROTO_UDP, 3, [10, 1, 0, 2], false), // another backend
            entry(PROTO_UDP, 4, [10, 1, 0, 1], false), // another frontend
            entry(PROTO_TCP, 3, [10, 1, 0, 1], false), // TCP is kept
        ];
        let stale = stale_keys(entries.clone(), &retired);
        assert_eq!(stale, vec![entries[0].0, entries[1].0]);
        let tcp_only = [Retired {
            protocol: Protocol::Tcp,
            ..retired[0]
        }];
        assert!(stale_keys(entries, &tcp_only).is_empty());
    }
}
