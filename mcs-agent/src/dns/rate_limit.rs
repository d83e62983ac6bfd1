//! Response rate limiting (RRL-like) for UDP answers: a token bucket per
//! client prefix (`/24` for IPv4, `/56` for IPv6 by default), so a flood of
//! queries with a spoofed source cannot turn the server into an amplifier
//! against that source, and one busy client network cannot take every
//! answer. Over its rate a prefix gets nothing, except every `slip`-th
//! limited query, which gets an empty truncated answer (TC=1): a real
//! client retries over TCP, which is never limited (a TCP client cannot
//! spoof its address).
//!
//! The buckets are governor's (GCRA). Their table is bounded: idle prefixes
//! are swept every second, and while [`MAX_PREFIXES`] are tracked (a flood
//! from many spoofed networks) every UDP answer shares one bucket of the
//! same rate instead, until the sweep frees room.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed, keyed::HashMapStateStore},
};

/// Default responses per second per client prefix.
pub const DEFAULT_RATE: u32 = 1000;
/// Default slip: every second limited query gets a truncated answer.
pub const DEFAULT_SLIP: u32 = 2;
/// Default IPv4 client prefix length.
pub const DEFAULT_IPV4_PREFIX: u8 = 24;
/// Default IPv6 client prefix length.
pub const DEFAULT_IPV6_PREFIX: u8 = 56;
/// Most client prefixes tracked at once.
pub const MAX_PREFIXES: usize = 65_536;
/// How often idle prefixes are dropped from the table.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// `--dns-rate-limit*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Responses per second (and burst) per client prefix; `None` turns
    /// limiting off.
    pub per_second: Option<NonZeroU32>,
    /// Every `slip`-th limited query gets a truncated answer; 0 drops all.
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(DEFAULT_RATE),
            slip: DEFAULT_SLIP,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// An empty answer with TC=1: retry over TCP.
    Truncate,
    Drop,
}

type Keyed<C> =
    RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The buckets of every client prefix.
pub struct ResponseLimiter<C: Clock = DefaultClock> {
    config: RateLimitConfig,
    per_prefix: Keyed<C>,
    /// Shared by everyone while the table is full.
    overflow: Direct<C>,
    limited: AtomicU64,
}

impl ResponseLimiter {
    /// `None` when limiting is off.
    pub fn new(config: RateLimitConfig) -> Option<Self> {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> ResponseLimiter<C> {
    pub fn with_clock(config: RateLimitConfig, clock: C) -> Option<Self> {
        let quota = Quota::per_second(config.per_second?);
        Some(Self {
            config,
            per_prefix: RateLimiter::hashmap_with_clock(quota, clock.clone()),
            overflow: RateLimiter::direct_with_clock(quota, clock),
            limited: AtomicU64::new(0),
        })
    }

    /// Takes a token for a response to `client` (UDP only: TCP is never
    /// limited).
    pub fn check(&self, client: IpAddr) -> Verdict {
        let allowed = if self.per_prefix.len() >= MAX_PREFIXES {
            self.overflow.check().is_ok()
        } else {
            self.per_prefix.check_key(&self.prefix(client)).is_ok()
        };
        if allowed {
            return Verdict::Answer;
        }
        let limited = self.limited.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.slip > 0 && limited.is_multiple_of(u64::from(self.config.slip)) {
            Verdict::Truncate
        } else {
            Verdict::Drop
        }
    }

    /// Forgets prefixes whose bucket is full again (idle ones).
    pub fn sweep(&self) {
        self.per_prefix.retain_recent();
        self.per_prefix.shrink_to_fit();
    }

    /// Prefixes tracked now.
    pub fn tracked(&self) -> usize {
        self.per_prefix.len()
    }

    /// Responses limited (dropped or truncated) so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// The client's network: the key of its bucket.
    fn prefix(&self, client: IpAddr) -> IpAddr {
        let (length, client) = match client.to_canonical() {
            IpAddr::V4(v4) => (self.config.ipv4_prefix, IpAddr::V4(v4)),
            IpAddr::V6(v6) => (self.config.ipv6_prefix, IpAddr::V6(v6)),
        };
        ipnet::IpNet::new(client, length).map_or(client, |net| net.network())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(
        per_second: u32,
        slip: u32,
    ) -> (ResponseLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig {
            per_second: NonZeroU32::new(per_second),
            slip,
            ..RateLimitConfig::default()
        };
        let limiter = ResponseLimiter::with_clock(config, clock.clone()).expect("on");
        (limiter, clock)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_prefix_gets_its_rate_then_slips_and_refills() {
        let (limiter, clock) = limiter(10, 2);
        // The burst is one second's worth, shared by the whole /24.
        for i in 0..10 {
            assert_eq!(limiter.check(ip(&format!("192.0.2.{i}"))), Verdict::Answer);
        }
        let over: Vec<Verdict> = (0..4).map(|_| limiter.check(ip("192.0.2.200"))).collect();
        assert_eq!(
            over,
            [
                Verdict::Drop,
                Verdict::Truncate,
                Verdict::Drop,
                Verdict::Truncate
            ]
        );
        assert_eq!(limiter.limited(), 4);
        // Other networks are not affected.
        assert_eq!(limiter.check(ip("192.0.3.1")), Verdict::Answer);
        assert_eq!(limiter.check(ip("2001:db8:0:1::1")), Verdict::Answer);
        // A tenth of a second refills one token.
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.check(ip("192.0.2.1")), Verdict::Answer);
        assert_ne!(limiter.check(ip("192.0.2.1")), Verdict::Answer);
    }

    #[test]
    fn ipv6_clients_share_a_slash_56_and_mapped_ipv4_is_ipv4() {
        let (limiter, _clock) = limiter(1, 0);
        assert_eq!(limiter.check(ip("2001:db8:0:1::1")), Verdict::Answer);
        assert_eq!(limiter.check(ip("2001:db8:0:ff::2")), Verdict::Drop);
        assert_eq!(limiter.check(ip("2001:db8:0:100::1")), Verdict::Answer);
        assert_eq!(limiter.check(ip("192.0.2.1")), Verdict::Answer);
        assert_eq!(limiter.check(ip("::ffff:192.0.2.9")), Verdict::Drop);
    }

    #[test]
    fn slip_zero_drops_and_slip_one_truncates_every_limited_answer() {
        let (drops, _c) = limiter(1, 0);
        let (truncates, _d) = limiter(1, 1);
        drops.check(ip("192.0.2.1"));
        truncates.check(ip("192.0.2.1"));
        for _ in 0..3 {
            assert_eq!(drops.check(ip("192.0.2.1")), Verdict::Drop);
            assert_eq!(truncates.check(ip("192.0.2.1")), Verdict::Truncate);
        }
    }

    #[test]
    fn the_table_is_bounded_and_swept() {
        let (limiter, clock) = limiter(5, 0);
        for i in 0..MAX_PREFIXES as u32 {
            let [_, _, high, low] = i.to_be_bytes();
            limiter.check(IpAddr::from([10, high, low, 1]));
        }
        assert_eq!(limiter.tracked(), MAX_PREFIXES);
        // Full: new networks share one bucket of the same rate.
        let shared: Vec<Verdict> = (0..6u8)
            .map(|i| limiter.check(IpAddr::from([172, 16, i, 1])))
            .collect();
        assert_eq!(shared.iter().filter(|v| **v == Verdict::Answer).count(), 5);
        assert_eq!(limiter.tracked(), MAX_PREFIXES, "nothing added while full");
        // Idle prefixes are forgotten once their bucket is full again.
        clock.advance(Duration::from_secs(2));
        limiter.sweep();
        assert_eq!(limiter.tracked(), 0);
        assert_eq!(limiter.check(ip("172.16.0.1")), Verdict::Answer);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn off_when_the_rate_is_zero() {
        let config = RateLimitConfig {
            per_second: None,
            ..RateLimitConfig::default()
        };
        assert!(ResponseLimiter::new(config).is_none());
    }
}
