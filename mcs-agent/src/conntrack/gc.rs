//! Collection of expired entries ([`super::expiry`]) from conntrack and
//! the socket-LB reverse map, in bounded steps: each [`Collector::step`]
//! reads at most [`GcConfig::batch`] entries of each map
//! (`BPF_MAP_LOOKUP_BATCH`, resuming at the kernel's bucket cursor), looks
//! up the other direction of each idle flow, and deletes the expired ones
//! (both directions) in one `BPF_MAP_DELETE_BATCH`. A pass over the whole
//! map is a series of steps; the janitor spaces steps and passes
//! ([`GcConfig::step_pause`], [`GcConfig::interval`]).
//!
//! A flow whose packet arrives between the read and the delete loses its
//! entries (as in Cilium's GC): its next packet is balanced again, to the
//! same backend while the backend set is unchanged. Only flows idle for
//! their whole timeout are exposed to that.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    hash::Hash,
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use mcs_common::{
    CtKey, CtKeyOf, CtKeyV6, CtValue, CtValueOf, CtValueV6, SockRevKey, SockRevValue,
    byte_order::NetAddr,
};

use super::expiry::{self, Class, Timeouts};
use crate::dataplane::batch::{self, Cursor};

/// How the janitor collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcConfig {
    pub timeouts: Timeouts,
    /// Entries read per map and step.
    pub batch: usize,
    /// Pause between the steps of a pass.
    pub step_pause: Duration,
    /// Least time from the start of a pass to the start of the next.
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            // 4096 entries every 100 ms: about 40 000 entries a second, a
            // pass over a full default conntrack (524 288) in 13 s, for a
            // few milliseconds of CPU per step.
            batch: 4096,
            step_pause: Duration::from_millis(100),
            interval: Duration::from_secs(1),
        }
    }
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Conntrack entries read (IPv4 and IPv6 maps).
    pub scanned: usize,
    /// Flows expired, by class ([`Class::index`]).
    pub expired: [usize; 4],
    /// Conntrack entries deleted (both directions of those flows).
    pub deleted: usize,
    /// Socket-LB reverse entries read and deleted.
    pub sockets_scanned: usize,
    pub sockets_expired: usize,
    /// The conntrack pass (over both maps) this step ended, with its
    /// duration.
    pub pass_finished: Option<Duration>,
}

/// Why a step failed (the pass goes on at the next step).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("read a batch of {map}")]
    Lookup {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("delete expired entries of {map}")]
    Delete {
        map: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The expired flows among `entries` (one batch): for each, its key, its
/// partner's key when the partner exists, and its class. `partner` finds
/// the other direction of an entry outside the batch. Entries idle for less
/// than the shortest timeout are skipped unread (they cannot have
/// expired); a flow is listed once even when both its entries are in the
/// batch. Pure, apart from what `partner` does.
pub fn expired_flows<A: NetAddr>(
    entries: &[(CtKeyOf<A>, CtValueOf<A>)],
    mut partner: impl FnMut(&CtKeyOf<A>) -> Option<CtValueOf<A>>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Vec<(CtKeyOf<A>, Option<CtKeyOf<A>>, Class)>
where
    CtKeyOf<A>: Copy + Hash + Eq,
    CtValueOf<A>: Copy,
{
    let shortest = u64::try_from(timeouts.shortest().as_nanos()).unwrap_or(u64::MAX);
    let in_batch: StdHashMap<CtKeyOf<A>, CtValueOf<A>> = entries.iter().copied().collect();
    let mut listed: HashSet<CtKeyOf<A>> = HashSet::new();
    let mut flows = Vec::new();
    for (key, value) in entries {
        if now_ns.saturating_sub(value.last_seen_ns) <= shortest || listed.contains(key) {
            continue;
        }
        let partner_key = value.partner_key(key);
        let other = in_batch
            .get(&partner_key)
            .copied()
            .or_else(|| partner(&partner_key))
            .filter(|other| value.pairs_with(other));
        let verdict = expiry::flow(key.proto, value, other.as_ref(), now_ns, timeouts);
        if verdict.expired {
            listed.insert(*key);
            let partner_key = other.map(|_| partner_key);
            if let Some(partner_key) = partner_key {
                listed.insert(partner_key);
            }
            flows.push((*key, partner_key, verdict.class));
        }
    }
    flows
}

/// A pass in progress over conntrack (both families) and the socket-LB
/// reverse map.
#[derive(Debug)]
pub struct Collector {
    config: GcConfig,
    /// Where each family's conntrack pass stands; `None`: that map's pass
    /// is done, waiting for the other's.
    conntrack: [Option<Cursor>; 2],
    sockets: Cursor,
    pass_started: Option<Instant>,
}

fn raw_fd<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> RawFd {
    map.map().fd().as_fd().as_raw_fd()
}

impl Collector {
    pub fn new(config: GcConfig) -> Self {
        Self {
            config,
            conntrack: [Some(Cursor::START); 2],
            sockets: Cursor::START,
            pass_started: None,
        }
    }

    pub fn config(&self) -> &GcConfig {
        &self.config
    }

    /// One step at coarse-clock time `now_ns` over `conntrack`, when
    /// given `conntrack_v6` (by the same classes and batch size), and, when
    /// given, the socket-LB reverse map. A pass ends when both conntrack
    /// maps have been read through.
    pub fn step(
        &mut self,
        conntrack: &HashMap<MapData, CtKey, CtValue>,
        conntrack_v6: Option<&HashMap<MapData, CtKeyV6, CtValueV6>>,
        sockets: Option<&HashMap<MapData, SockRevKey, SockRevValue>>,
        now_ns: u64,
    ) -> Result<Collected, GcError> {
        let mut collected = Collected::default();
        if self.pass_started.is_none() {
            self.pass_started = Some(Instant::now());
        }
        if conntrack_v6.is_none() {
            self.conntrack[1] = None;
        }
        if let Some(cursor) = self.conntrack[0] {
            let map = mcs_common::names::CONNTRACK;
            self.conntrack[0] = self.step_map(conntrack, map, cursor, now_ns, &mut collected)?;
        }
        if let (Some(cursor), Some(conntrack_v6)) = (self.conntrack[1], conntrack_v6) {
            let map = mcs_common::names::CONNTRACK_V6;
            self.conntrack[1] = self.step_map(conntrack_v6, map, cursor, now_ns, &mut collected)?;
        }
        if self.conntrack.iter().all(Option::is_none) {
            collected.pass_finished = self.pass_started.take().map(|started| started.elapsed());
            self.conntrack = [Some(Cursor::START); 2];
        }
        if let Some(sockets) = sockets {
            self.step_sockets(sockets, now_ns, &mut collected)?;
        }
        Ok(collected)
    }

    /// One batch of one conntrack map from `cursor`: expired flows deleted
    /// and counted into `collected`. Returns where the next batch starts
    /// (`None`: this map's pass is done).
    fn step_map<A: NetAddr>(
        &self,
        conntrack: &HashMap<MapData, CtKeyOf<A>, CtValueOf<A>>,
        map: &'static str,
        cursor: Cursor,
        now_ns: u64,
        collected: &mut Collected,
    ) -> Result<Option<Cursor>, GcError>
    where
        CtKeyOf<A>: aya::Pod + Hash + Eq,
        CtValueOf<A>: aya::Pod,
    {
        let fd = raw_fd(conntrack);
        let read = batch::lookup_batch::<CtKeyOf<A>, CtValueOf<A>>(fd, cursor, self.config.batch)
            .map_err(|source| GcError::Lookup { map, source })?;
        collected.scanned += read.entries.len();
        let flows = expired_flows(
            &read.entries,
            |key| conntrack.get(key, 0).ok(),
            now_ns,
            &self.config.timeouts,
        );
        let mut keys = Vec::with_capacity(flows.len() * 2);
        for (key, partner, class) in &flows {
            collected.expired[class.index()] += 1;
            keys.push(*key);
            keys.extend(partner);
        }
        collected.deleted +=
            batch::delete_batch(fd, &keys).map_err(|source| GcError::Delete { map, source })?;
        Ok(read.next)
    }

    fn step_sockets(
        &mut self,
        sockets: &HashMap<MapData, SockRevKey, SockRevValue>,
        now_ns: u64,
        collected: &mut Collected,
    ) -> Result<(), GcError> {
        let fd = raw_fd(sockets);
        let map = mcs_common::names::SOCK_REVNAT;
        let read =
            batch::lookup_batch::<SockRevKey, SockRevValue>(fd, self.sockets, self.config.batch)
                .map_err(|source| GcError::Lookup { map, source })?;
        collected.sockets_scanned = read.entries.len();
        let expired: Vec<SockRevKey> = read
            .entries
            .iter()
            .filter(|(_, value)| expiry::socket(value, now_ns, &self.config.timeouts).expired)
            .map(|(key, _)| *key)
            .collect();
        collected.sockets_expired =
            batch::delete_batch(fd, &expired).map_err(|source| GcError::Delete { map, source })?;
        self.sockets = read.next.unwrap_or(Cursor::START);
        Ok(())
    }

    /// When the next step is due after one that ended at `now`.
    pub fn next_step(&self, collected: &Collected, now: Instant) -> Instant {
        match collected.pass_finished {
            // A pass starts at most every interval.
            Some(took) => now + self.config.interval.saturating_sub(took),
            None => now + self.config.step_pause,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use mcs_common::{CT_F_FIN, CT_F_REPLY, CT_F_SEEN_NON_SYN, CT_F_SYN, PROTO_TCP, PROTO_UDP};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// Both entries of a flow from client port `sport` to backend `b`.
    fn flow(proto: u8, sport: u16, b: u8, flags: (u32, u32), seen_s: u64) -> [(CtKey, CtValue); 2] {
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), sport);
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, b), 8080);
        let forward = CtValue {
            last_seen_ns: seen_s * SEC,
            ..CtValue::new(backend, flags.0, 7, backend, 1)
        };
        let reply = CtValue {
            last_seen_ns: seen_s * SEC,
            ..CtValue::new(vip, flags.1 | CT_F_REPLY, 7, backend, 1)
        };
        [
            (CtKey::new(client, vip, proto), forward),
            (CtKey::new(backend, client, proto), reply),
        ]
    }

    #[test]
    fn expired_flows_go_whole_and_once() {
        let timeouts = Timeouts::default();
        let established = CT_F_SYN | CT_F_SEEN_NON_SYN;
        let closed = (established | CT_F_FIN, established | CT_F_FIN);
        let open = flow(PROTO_TCP, 1000, 1, (established, established), 0);
        let finished = flow(PROTO_TCP, 1001, 1, closed, 0);
        let fresh_finished = flow(PROTO_TCP, 1002, 1, closed, 95);
        let syn_only = flow(PROTO_TCP, 1003, 2, (CT_F_SYN, CT_F_SYN), 0);
        let udp = flow(PROTO_UDP, 1004, 2, (CT_F_SEEN_NON_SYN, 0), 0);
        let now = 100 * SEC;

        // Everything in one batch: each expired flow listed once, with its
        // partner.
        let all: Vec<_> = [open, finished, fresh_finished, syn_only, udp].concat();
        let mut found = expired_flows(&all, |_| None, now, &timeouts);
        found.sort_by_key(|(_, _, class)| *class);
        assert_eq!(
            found,
            vec![
                (syn_only[0].0, Some(syn_only[1].0), Class::Syn),
                (finished[0].0, Some(finished[1].0), Class::Closed),
                (udp[0].0, Some(udp[1].0), Class::Other),
            ]
        );

        // The reply entry alone in the batch: the forward one is looked
        // up, and both go.
        let mut asked = Vec::new();
        let found = expired_flows(
            &finished[1..],
            |key| {
                asked.push(*key);
                (*key == finished[0].0).then_some(finished[0].1)
            },
            now,
            &timeouts,
        );
        assert_eq!(asked, vec![finished[0].0]);
        assert_eq!(
            found,
            vec![(finished[1].0, Some(finished[0].0), Class::Closed)]
        );

        // A partner that names another flow (its key reused) is not this
        // flow's: judged alone (one FIN is not closed).
        let mut other = finished[0].1;
        other.frontend_id += 1;
        let found = expired_flows(&finished[1..], |_| Some(other), now, &timeouts);
        assert!(found.is_empty(), "{found:?}");

        // Entries seen within the shortest timeout are not even looked at.
        let found = expired_flows(
            &fresh_finished,
            |_| panic!("no lookup for a fresh entry"),
            now,
            &timeouts,
        );
        assert!(found.is_empty());
    }
}
