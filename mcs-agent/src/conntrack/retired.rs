//! UDP flows of retired backends, and the prefilter members conntrack
//! still needs: one full scan, asked for by the reconcile that retired them
//! (see the policy in [`super`]).

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddrV4,
    time::Instant,
};

use aya::maps::{HashMap, MapData, MapError};
use mcs_common::{CtKey, CtValue, PROTO_UDP};

use crate::{dataplane::prefilter::Member, reconcile::Retired};
/// A frontend and one of its backends.
type BackendRef = (u32, SocketAddrV4);

fn retired_udp(retired: &[Retired]) -> BTreeSet<BackendRef> {
    retired
        .iter()
        .filter(|r| r.protocol == crate::model::Protocol::Udp)
        .filter_map(|r| match r.addr {
            std::net::IpAddr::V4(addr) => Some((r.frontend_id, SocketAddrV4::new(addr, r.port))),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

/// The conntrack keys to delete for `retired` backends (pure; both flow
/// directions carry the frontend and backend).
pub fn stale_keys(
    entries: impl IntoIterator<Item = (CtKey, CtValue)>,
    retired: &[Retired],
) -> Vec<CtKey> {
    let wanted = retired_udp(retired);
    if wanted.is_empty() {
        return Vec::new();
    }
    entries
        .into_iter()
        .filter(|(key, value)| {
            key.proto == PROTO_UDP && wanted.contains(&(value.frontend_id, value.backend()))
        })
        .map(|(key, _)| key)
        .collect()
}

/// What one conntrack scan did.
#[derive(Debug, Default)]
pub struct Scan {
    /// UDP entries of retired backends deleted.
    pub removed: usize,
    /// When a sweep was asked for: the prefilter members conntrack still
    /// needs, and when the scan started (for [`crate::dataplane::prefilter::Prefilter::sweep`]).
    pub live: Option<(HashSet<Member>, Instant)>,
}

/// Scans conntrack once: deletes the UDP flows of `retired` backends and,
/// if `sweep`, collects the prefilter members the remaining entries need.
pub fn scan(
    conntrack: &mut HashMap<MapData, CtKey, CtValue>,
    retired: &[Retired],
    sweep: bool,
) -> Result<Scan, MapError> {
    let scan_started = Instant::now();
    if retired_udp(retired).is_empty() && !sweep {
        return Ok(Scan::default());
    }
    let entries: Vec<(CtKey, CtValue)> = conntrack.iter().filter_map(Result::ok).collect();
    let stale = stale_keys(entries.iter().copied(), retired);
    let live = sweep.then(|| {
        let gone: HashSet<&CtKey> = stale.iter().collect();
        let live: HashSet<Member> = entries
            .iter()
            .filter(|(key, _)| !gone.contains(key))
            .map(|(key, value)| Member::of_flow(key, value))
            .collect();
        (live, scan_started)
    });
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
    Ok(Scan { removed, live })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
