//! When a conntrack entry (or a socket-LB reverse entry) has expired: a
//! pure function of the flow's flags and last-seen times, the time now and
//! the timeouts.
//!
//! A flow is its two entries (forward and reply), judged together: the
//! flow's state is what either direction saw, its idle time counts from the
//! later of the two timestamps, and both entries go at once. An entry whose
//! partner is gone (evicted) is judged alone.
//!
//! Classes and their default timeouts follow Cilium's conntrack GC
//! (`CT_SYN_TIMEOUT`, `CT_CONNECTION_LIFETIME_TCP`, `CT_CLOSE_TIMEOUT`,
//! `CT_CONNECTION_LIFETIME_NONTCP`), which are in turn close to the
//! kernel's nf_conntrack (`tcp_timeout_syn_sent` 120 s, `established` 5 d,
//! `close` 10 s, `udp_timeout` 30–120 s):
//!
//! | class | TCP flow that… | default |
//! |---|---|---|
//! | `syn` | saw only SYNs (no handshake completed) | 60 s |
//! | `established` | saw a packet without SYN, and is not closed | 6 h |
//! | `closed` | saw a RST (either way) or a FIN both ways | 10 s |
//! | `other` | UDP (no connection state) | 60 s |
//!
//! A half-closed TCP flow (a FIN one way) stays `established`: the other
//! side may still send. Socket-LB reverse entries know no TCP state: a TCP
//! socket's is `established`, a UDP socket's `other`.

use std::time::Duration;

use mcs_common::{
    CT_F_FIN, CT_F_RST, CT_F_SEEN_NON_SYN, CtValueOf, PROTO_TCP, SockRevValue, byte_order::NetAddr,
};

/// The timeout class of a flow (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Syn,
    Established,
    Closed,
    Other,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Syn, Class::Established, Class::Closed, Class::Other];

    /// The metric label and the name in logs and docs.
    pub const fn label(self) -> &'static str {
        match self {
            Class::Syn => "syn",
            Class::Established => "established",
            Class::Closed => "closed",
            Class::Other => "other",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

/// How long a flow of each class may stay idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub syn: Duration,
    pub established: Duration,
    pub closed: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn: Duration::from_secs(60),
            established: Duration::from_secs(6 * 3600),
            closed: Duration::from_secs(10),
            other: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    pub const fn of(&self, class: Class) -> Duration {
        match class {
            Class::Syn => self.syn,
            Class::Established => self.established,
            Class::Closed => self.closed,
            Class::Other => self.other,
        }
    }

    /// The shortest timeout: an entry idle for less cannot have expired,
    /// whatever its partner holds (the janitor skips it unread).
    pub fn shortest(&self) -> Duration {
        Class::ALL
            .iter()
            .map(|class| self.of(*class))
            .min()
            .unwrap_or_default()
    }
}

/// The class of a flow of protocol `proto` whose entries carry `flags` and
/// (when the other direction's entry exists) `partner_flags`.
pub fn class(proto: u8, flags: u32, partner_flags: Option<u32>) -> Class {
    if proto != PROTO_TCP {
        return Class::Other;
    }
    let either = flags | partner_flags.unwrap_or(0);
    let fin_both_ways = partner_flags.is_some_and(|partner| flags & partner & CT_F_FIN != 0);
    if either & CT_F_RST != 0 || fin_both_ways {
        Class::Closed
    } else if either & CT_F_SEEN_NON_SYN != 0 {
        Class::Established
    } else {
        Class::Syn
    }
}

/// What expiry decided about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub class: Class,
    pub expired: bool,
}

/// Nanoseconds from `last_seen_ns` to `now_ns` (zero if the stamp is
/// ahead of the clock, as it may be by a tick).
fn idle_ns(last_seen_ns: u64, now_ns: u64) -> u64 {
    now_ns.saturating_sub(last_seen_ns)
}

fn expired(class: Class, last_seen_ns: u64, now_ns: u64, timeouts: &Timeouts) -> bool {
    let timeout = u64::try_from(timeouts.of(class).as_nanos()).unwrap_or(u64::MAX);
    idle_ns(last_seen_ns, now_ns) > timeout
}

/// The verdict on the flow of conntrack entry `entry` (protocol `proto`)
/// and its other direction `partner`, if that exists, at coarse-clock time
/// `now_ns`. Symmetric: both directions get the same verdict.
pub fn flow<A: NetAddr>(
    proto: u8,
    entry: &CtValueOf<A>,
    partner: Option<&CtValueOf<A>>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Verdict {
    let class = class(proto, entry.flags, partner.map(|p| p.flags));
    let last_seen = partner.map_or(entry.last_seen_ns, |p| {
        p.last_seen_ns.max(entry.last_seen_ns)
    });
    Verdict {
        class,
        expired: expired(class, last_seen, now_ns, timeouts),
    }
}

/// The verdict on a socket-LB reverse entry at `now_ns`.
pub fn socket(entry: &SockRevValue, now_ns: u64, timeouts: &Timeouts) -> Verdict {
    let class = if entry.proto == PROTO_TCP {
        Class::Established
    } else {
        Class::Other
    };
    Verdict {
        class,
        expired: expired(class, entry.last_used_ns, now_ns, timeouts),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use mcs_common::{CT_F_REPLY, CT_F_SYN, CtValue, PROTO_UDP};
    use proptest::prelude::*;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn entry(flags: u32, last_seen_s: u64) -> CtValue {
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 80);
        CtValue {
            last_seen_ns: last_seen_s * SEC,
            ..CtValue::new(backend, flags, 1, backend, 1)
        }
    }

    #[test]
    fn classes_follow_the_tcp_state_of_both_directions() {
        let syn = CT_F_SYN;
        let acked = CT_F_SYN | CT_F_SEEN_NON_SYN;
        let reply = CT_F_REPLY;
        let cases = [
            // (proto, forward flags, reply flags, class)
            (PROTO_TCP, syn, None, Class::Syn),
            (PROTO_TCP, syn, Some(reply | syn), Class::Syn), // SYN, SYN-ACK
            (PROTO_TCP, acked, Some(reply | syn), Class::Established),
            (
                PROTO_TCP,
                syn,
                Some(reply | CT_F_SEEN_NON_SYN),
                Class::Established,
            ),
            (
                PROTO_TCP,
                acked | CT_F_FIN,
                Some(reply | acked),
                Class::Established,
            ),
            (PROTO_TCP, acked | CT_F_FIN, None, Class::Established), // half-closed
            (
                PROTO_TCP,
                acked | CT_F_FIN,
                Some(reply | acked | CT_F_FIN),
                Class::Closed,
            ),
            (PROTO_TCP, syn, Some(reply | CT_F_RST), Class::Closed), // refused
            (PROTO_TCP, acked | CT_F_RST, None, Class::Closed),
            (PROTO_UDP, CT_F_SEEN_NON_SYN | CT_F_RST, None, Class::Other),
        ];
        for (proto, flags, partner, expected) in cases {
            assert_eq!(
                class(proto, flags, partner),
                expected,
                "{proto} {flags:#x} {partner:?}"
            );
        }
    }

    #[test]
    fn each_class_expires_after_its_timeout() {
        let timeouts = Timeouts::default();
        for (flags, partner, timeout_s) in [
            (CT_F_SYN, CT_F_REPLY, 60),
            (CT_F_SEEN_NON_SYN, CT_F_REPLY, 6 * 3600),
            (CT_F_SEEN_NON_SYN | CT_F_RST, CT_F_REPLY, 10),
        ] {
            let forward = entry(flags, 100);
            let reply = entry(partner, 100);
            let at = |s: u64| flow(PROTO_TCP, &forward, Some(&reply), s * SEC, &timeouts);
            assert!(!at(100 + timeout_s).expired, "{flags:#x} at its timeout");
            assert!(at(100 + timeout_s + 1).expired, "{flags:#x} after it");
        }
        // The later direction counts: a one-way UDP stream keeps its reply
        // entry (replies may still come).
        let forward = entry(CT_F_SEEN_NON_SYN, 1000);
        let reply = entry(CT_F_REPLY | CT_F_SEEN_NON_SYN, 10);
        assert!(!flow(PROTO_UDP, &reply, Some(&forward), 1050 * SEC, &timeouts).expired);
        assert!(flow(PROTO_UDP, &reply, None, 1050 * SEC, &timeouts).expired);
        // A stamp ahead of the clock is not idle.
        assert!(!flow(PROTO_UDP, &forward, None, 0, &timeouts).expired);
    }

    #[test]
    fn socket_entries_age_by_protocol() {
        let timeouts = Timeouts::default();
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 53);
        let mut udp = SockRevValue::new(vip, PROTO_UDP, 1);
        udp.last_used_ns = 10 * SEC;
        assert!(!socket(&udp, 70 * SEC, &timeouts).expired);
        assert!(socket(&udp, 71 * SEC, &timeouts).expired);
        let tcp = SockRevValue {
            proto: PROTO_TCP,
            ..udp
        };
        let verdict = socket(&tcp, 71 * SEC, &timeouts);
        assert_eq!(
            (verdict.class, verdict.expired),
            (Class::Established, false)
        );
    }

    fn flags() -> impl Strategy<Value = u32> {
        (0u32..32).prop_map(|bits| bits << 1) // every combination of SYN..SEEN_NON_SYN
    }

    fn timeouts() -> impl Strategy<Value = Timeouts> {
        (1u64..100, 1u64..100_000, 1u64..100, 1u64..1000).prop_map(|(syn, est, closed, other)| {
            Timeouts {
                syn: Duration::from_secs(syn),
                established: Duration::from_secs(est),
                closed: Duration::from_secs(closed),
                other: Duration::from_secs(other),
            }
        })
    }

    proptest! {
        /// Both directions of a flow get the same verdict.
        #[test]
        fn both_directions_expire_together(
            proto in prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)],
            forward_flags in flags(), reply_flags in flags(),
            forward_seen in 0u64..1_000_000, reply_seen in 0u64..1_000_000,
            now in 0u64..2_000_000, timeouts in timeouts(),
        ) {
            let forward = entry(forward_flags, forward_seen);
            let reply = entry(reply_flags | CT_F_REPLY, reply_seen);
            prop_assert_eq!(
                flow(proto, &forward, Some(&reply), now * SEC, &timeouts),
                flow(proto, &reply, Some(&forward), now * SEC, &timeouts)
            );
        }

        /// Nothing expires before the shortest timeout nor before its own
        /// class's; once expired, a flow stays expired as time goes on.
        #[test]
        fn expiry_is_a_threshold_in_idle_time(
            proto in prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)],
            own in flags(), partner in proptest::option::of(flags()),
            seen in 0u64..1_000_000, idle in 0u64..200_000, later in 0u64..200_000,
            timeouts in timeouts(),
        ) {
            let value = entry(own, seen);
            let other = partner.map(|f| entry(f | CT_F_REPLY, seen));
            let now = (seen + idle) * SEC;
            let verdict = flow(proto, &value, other.as_ref(), now, &timeouts);
            let timeout = timeouts.of(verdict.class).as_secs();
            prop_assert_eq!(verdict.expired, idle > timeout);
            if idle <= timeouts.shortest().as_secs() {
                prop_assert!(!verdict.expired);
            }
            let after = flow(proto, &value, other.as_ref(), now + later * SEC, &timeouts);
            prop_assert_eq!(after.class, verdict.class);
            prop_assert!(after.expired || !verdict.expired);
        }

        /// A RST either way closes a TCP flow; UDP ignores TCP flags; the
        /// class does not depend on which direction is asked.
        #[test]
        fn rst_closes_tcp_and_udp_has_one_class(own in flags(), partner in proptest::option::of(flags())) {
            if (own | partner.unwrap_or(0)) & CT_F_RST != 0 {
                prop_assert_eq!(class(PROTO_TCP, own, partner), Class::Closed);
            }
            prop_assert_eq!(class(PROTO_UDP, own, partner), Class::Other);
            if let Some(partner) = partner {
                prop_assert_eq!(class(PROTO_TCP, own, Some(partner)), class(PROTO_TCP, partner, Some(own)));
            }
        }
    }
}
