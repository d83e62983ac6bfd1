//! Conntrack hygiene: flows of backends that stopped serving.
//!
//! Policy (see docs/reliability.md):
//! * **UDP**: entries pointing at a retired backend are deleted as soon as
//!   the reconcile that retired it has run, both directions. UDP has no
//!   connection end, so a client on a fixed source port would otherwise keep
//!   sending to a dead backend (kubernetes#19029); its next datagram is a
//!   new flow, balanced over the current backends.
//! * **TCP**: entries are kept, as kube-proxy does. A terminating pod
//!   finishes its connections; a pod that is really gone answers nothing
//!   (or its node answers RST), the client reconnects and the new connection
//!   is balanced anew. Idle entries age out of the LRU.
//!
//! The same conntrack scan releases prefilter members that only lingered
//! for flows that are gone (`dataplane/prefilter.rs`). Scans run on the
//! [`Janitor`]'s thread, off the reconcile path.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddrV4,
    time::Instant,
};

use std::os::fd::AsFd as _;

use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError};
use mcs_common::{CtKey, CtValue, PROTO_UDP};

use crate::{dataplane::prefilter::Member, reconcile::Retired};

/// A frontend and one of its backends.
type BackendRef = (u32, SocketAddrV4);

fn retired_udp(retired: &[Retired]) -> BTreeSet<BackendRef> {
    retired
        .iter()
        .filter(|r| r.protocol == crate::model::Protocol::Udp)
        .map(|r| (r.frontend_id, SocketAddrV4::new(r.addr, r.port)))
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

/// Work for the janitor: merged when several queue up during a scan.
#[derive(Debug, Default)]
struct Job {
    retired: Vec<Retired>,
    sweep: bool,
}

/// What the janitor reports back after a scan.
#[derive(Debug)]
pub struct JanitorReport {
    /// Backends whose UDP flows the scan looked for.
    pub retired_backends: usize,
    pub scan: Result<Scan, MapError>,
}

/// Conntrack scans on their own thread. A scan reads every entry (about a
/// second per million), so on the reconcile path it would hold up the next
/// change; here a change's writes never wait for one. The thread has its
/// own handle to the conntrack map; what the prefilter sweep needs comes
/// back in a [`JanitorReport`] for the owner of the prefilter to apply
/// (sound later too: a sweep releases only members that lingered since
/// before the scan started).
pub struct Janitor {
    jobs: std::sync::mpsc::Sender<Job>,
    reports: tokio::sync::mpsc::UnboundedReceiver<JanitorReport>,
}

impl Janitor {
    /// Starts the thread on a second handle to `conntrack`.
    pub fn start(conntrack: &HashMap<MapData, CtKey, CtValue>) -> Result<Self, MapError> {
        let fd = conntrack
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| {
                MapError::from(aya::sys::SyscallError {
                    call: "dup",
                    io_error,
                })
            })?;
        let mut own: HashMap<MapData, CtKey, CtValue> =
            HashMap::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)?;
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (outbox, reports) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("conntrack-janitor".into())
            .spawn(move || {
                // Ends when the agent drops the `Janitor`.
                while let Ok(mut job) = inbox.recv() {
                    for more in inbox.try_iter() {
                        job.retired.extend(more.retired);
                        job.sweep |= more.sweep;
                    }
                    let report = JanitorReport {
                        retired_backends: job.retired.len(),
                        scan: scan(&mut own, &job.retired, job.sweep),
                    };
                    if outbox.send(report).is_err() {
                        break;
                    }
                }
            })
            .map_err(|io_error| {
                MapError::from(aya::sys::SyscallError {
                    call: "spawn the conntrack janitor thread",
                    io_error,
                })
            })?;
        Ok(Self { jobs, reports })
    }

    /// Queues a scan for `retired` backends, with a prefilter sweep.
    pub fn submit(&self, retired: Vec<Retired>, sweep: bool) {
        // The thread only stops when this handle is dropped.
        let _ = self.jobs.send(Job { retired, sweep });
    }

    /// The next finished scan.
    pub async fn report(&mut self) -> Option<JanitorReport> {
        self.reports.recv().await
    }
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
            addr: Ipv4Addr::new(10, 1, 0, 1),
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
