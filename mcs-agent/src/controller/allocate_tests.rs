//! Tests of the ClusterSetIP allocator: ranges, families, exhaustion,
//! adoption, and a property test of never-twice and stability.

use proptest::prelude::*;

use super::*;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("demo", name)
}

fn net(value: &str) -> IpNet {
    value.parse().unwrap()
}

fn ip(value: &str) -> IpAddr {
    value.parse().unwrap()
}

#[test]
fn ranges_are_checked() {
    assert!(parse_range("10.240.0.0/16").is_ok());
    assert!(parse_range("fd00:240::/108").is_ok());
    for (bad, why) in [
        ("10.240.0.1/16", "did you mean 10.240.0.0/16"),
        ("10.0.0.0/7", "at least /8"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/24", "multicast"),
        ("fe80::/64", "link-local"),
        ("2001:db8::/48", "at least /64"),
        ("nonsense", "not a CIDR"),
    ] {
        let error = parse_range(bad).unwrap_err();
        assert!(error.contains(why), "{bad}: {error}");
    }
    let error = Allocator::new(&[net("10.0.0.0/24"), net("10.1.0.0/24")]).unwrap_err();
    assert!(matches!(error, RangeError::SameFamily(..)));
}

#[test]
fn usable_addresses_leave_out_network_and_broadcast() {
    let pool = Pool::new(net("10.0.0.0/30"));
    assert_eq!((pool.first, pool.size), (1, 2));
    assert_eq!(pool.address(0), ip("10.0.0.1"));
    assert_eq!(pool.address(1), ip("10.0.0.2"));
    assert!(!pool.contains(ip("10.0.0.0")) && !pool.contains(ip("10.0.0.3")));
    assert_eq!(Pool::new(net("10.0.0.4/31")).size, 2);
    assert_eq!(Pool::new(net("10.0.0.4/32")).size, 1);
    let pool = Pool::new(net("fd00::/126"));
    assert_eq!((pool.first, pool.size), (1, 3));
    assert_eq!(pool.address(2), ip("fd00::3"));
}

#[test]
fn one_address_per_family_kept_while_held_and_released_after() {
    let mut allocator = Allocator::new(&[net("10.240.0.0/16"), net("fd00:240::/108")]).unwrap();
    let (ips, errors) = allocator.ensure(&key("web"), &[IpFamily::V4, IpFamily::V6]);
    assert!(errors.is_empty());
    assert_eq!(ips.len(), 2);
    assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
    // Stable across ensures, and dropping a family keeps the other.
    assert_eq!(
        allocator
            .ensure(&key("web"), &[IpFamily::V4, IpFamily::V6])
            .0,
        ips
    );
    assert_eq!(allocator.ensure(&key("web"), &[IpFamily::V4]).0, ips[..1]);
    assert_eq!(allocator.usage()[1].1, 0, "IPv6 address released");
    allocator.release(&key("web"));
    assert_eq!(allocator.usage()[0].1, 0);
    assert!(allocator.get(&key("web")).is_empty());
}

#[test]
fn a_family_without_a_range_is_reported() {
    let mut allocator = Allocator::new(&[net("10.240.0.0/16")]).unwrap();
    let (ips, errors) = allocator.ensure(&key("web"), &[IpFamily::V6, IpFamily::V4]);
    assert_eq!(ips.len(), 1);
    assert_eq!(errors, [AllocError::NoRange(IpFamily::V6)]);
}

#[test]
fn one_full_family_does_not_block_the_other() {
    let mut allocator = Allocator::new(&[net("10.240.0.0/16"), net("fd00::/127")]).unwrap();
    let both = [IpFamily::V4, IpFamily::V6];
    assert_eq!(allocator.ensure(&key("a"), &both).0.len(), 2);
    assert_eq!(allocator.ensure(&key("b"), &both).0.len(), 2);
    let (ips, errors) = allocator.ensure(&key("c"), &both);
    assert!(matches!(ips.as_slice(), [IpAddr::V4(_)]), "{ips:?}");
    assert_eq!(errors, [AllocError::Exhausted(net("fd00::/127"))]);
    assert_eq!(errors[0].family(), IpFamily::V6);
    // Once an IPv6 address is free, the next ensure adds it, keeping IPv4.
    allocator.release(&key("a"));
    let (again, errors) = allocator.ensure(&key("c"), &both);
    assert!(errors.is_empty());
    assert_eq!((again.len(), again[0]), (2, ips[0]));
}

#[test]
fn exhaustion_is_an_error_and_freeing_makes_room() {
    let mut allocator = Allocator::new(&[net("10.0.0.0/30")]).unwrap();
    let a = allocator.ensure(&key("a"), &[IpFamily::V4]).0;
    let b = allocator.ensure(&key("b"), &[IpFamily::V4]).0;
    assert_ne!(a, b);
    let (none, errors) = allocator.ensure(&key("c"), &[IpFamily::V4]);
    assert!(none.is_empty());
    assert_eq!(errors, [AllocError::Exhausted(net("10.0.0.0/30"))]);
    allocator.release(&key("a"));
    assert_eq!(allocator.ensure(&key("c"), &[IpFamily::V4]).0, a);
}

#[test]
fn adoption_keeps_valid_addresses_and_drops_the_rest() {
    let mut allocator = Allocator::new(&[net("10.240.0.0/16")]).unwrap();
    assert!(allocator.adopt(&key("a"), &[ip("10.240.3.4")]).is_empty());
    // Outside the range, a second address of one family, another's address.
    assert_eq!(
        allocator.adopt(&key("b"), &[ip("10.9.0.1")]),
        [ip("10.9.0.1")]
    );
    assert_eq!(
        allocator.adopt(&key("c"), &[ip("10.240.0.9"), ip("10.240.0.10")]),
        [ip("10.240.0.10")]
    );
    assert_eq!(
        allocator.adopt(&key("d"), &[ip("10.240.3.4")]),
        [ip("10.240.3.4")]
    );
    assert_eq!(
        allocator.ensure(&key("a"), &[IpFamily::V4]).0,
        [ip("10.240.3.4")]
    );
    let b = allocator.ensure(&key("b"), &[IpFamily::V4]).0;
    assert!(net("10.240.0.0/16").contains(&b[0]));
    assert_ne!(
        allocator.ensure(&key("d"), &[IpFamily::V4]).0,
        [ip("10.240.3.4")]
    );
}

#[test]
fn reserved_addresses_are_never_handed_out() {
    let mut allocator = Allocator::new(&[net("10.0.0.0/29")]).unwrap();
    let reserved: BTreeSet<IpAddr> = (1..=5).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    allocator.set_reserved(reserved.clone());
    let a = allocator.ensure(&key("a"), &[IpFamily::V4]).0;
    assert_eq!(a, [ip("10.0.0.6")]);
    assert!(allocator.ensure(&key("b"), &[IpFamily::V4]).0.is_empty());
    assert!(allocator.adopt(&key("x"), &[ip("10.0.0.1")]) == [ip("10.0.0.1")]);
}

/// An operation on the allocator.
#[derive(Clone, Debug)]
enum Op {
    Ensure(u8, Vec<IpFamily>),
    Release(u8),
    Restart,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, prop::sample::select(vec![
            vec![IpFamily::V4], vec![IpFamily::V6], vec![IpFamily::V4, IpFamily::V6],
        ])).prop_map(|(k, f)| Op::Ensure(k, f)),
        2 => (0u8..12).prop_map(Op::Release),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    /// Whatever happens, no address is held twice, every address is in
    /// its range, and a restart (adoption from what was written) keeps
    /// every import's addresses.
    #[test]
    fn never_twice_and_stable_across_restarts(ops in prop::collection::vec(arb_op(), 1..60)) {
        let ranges = [net("10.0.0.0/28"), net("fd00::/124")];
        let mut allocator = Allocator::new(&ranges).unwrap();
        // What the imports hold, as the API server would return them.
        let mut written: BTreeMap<ObjectKey, Vec<IpAddr>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Ensure(k, families) => {
                    let k = key(&format!("s{k}"));
                    let before = written.get(&k).cloned().unwrap_or_default();
                    let (ips, _) = allocator.ensure(&k, &families);
                    for old in &before {
                        if families.contains(&IpFamily::of(*old)) {
                            prop_assert!(ips.contains(old), "{} lost {}", k, old);
                        }
                    }
                    written.insert(k, ips);
                }
                Op::Release(k) => {
                    let k = key(&format!("s{k}"));
                    allocator.release(&k);
                    written.remove(&k);
                }
                Op::Restart => {
                    let mut fresh = Allocator::new(&ranges).unwrap();
                    for (k, ips) in &written {
                        prop_assert!(fresh.adopt(k, ips).is_empty());
                    }
                    allocator = fresh;
                }
            }
            let mut seen = BTreeSet::new();
            for (k, ips) in &written {
                prop_assert_eq!(allocator.get(k), ips.as_slice());
                for ip in ips {
                    prop_assert!(seen.insert(*ip), "{} held twice", ip);
                    prop_assert!(ranges.iter().any(|r| r.contains(ip)));
                }
            }
        }
    }
}
