//! An endpoint's addresses, compact: nearly every endpoint has exactly one
//! address, which is kept inline; only other counts take a heap slice.

use std::{fmt, net::IpAddr, ops::Deref};

/// Addresses of one endpoint, used as a slice (`&[IpAddr]`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Addresses(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    One(IpAddr),
    /// None, or more than one.
    Other(Box<[IpAddr]>),
}

impl Addresses {
    pub fn as_slice(&self) -> &[IpAddr] {
        match &self.0 {
            Repr::One(ip) => std::slice::from_ref(ip),
            Repr::Other(ips) => ips,
        }
    }
}

impl Default for Addresses {
    fn default() -> Self {
        Self(Repr::Other(Box::default()))
    }
}

impl Deref for Addresses {
    type Target = [IpAddr];

    fn deref(&self) -> &[IpAddr] {
        self.as_slice()
    }
}

impl From<Vec<IpAddr>> for Addresses {
    fn from(ips: Vec<IpAddr>) -> Self {
        match ips.as_slice() {
            [ip] => Self(Repr::One(*ip)),
            _ => Self(Repr::Other(ips.into_boxed_slice())),
        }
    }
}

impl FromIterator<IpAddr> for Addresses {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a IpAddr;
    type IntoIter = std::slice::Iter<'a, IpAddr>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl PartialEq<Vec<IpAddr>> for Addresses {
    fn eq(&self, other: &Vec<IpAddr>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_inline_and_every_count_reads_back() {
        assert_eq!(size_of::<Addresses>(), 24);
        for count in 0..4u8 {
            let ips: Vec<IpAddr> = (0..count).map(|i| IpAddr::from([10, 0, 0, i])).collect();
            let addresses: Addresses = ips.iter().copied().collect();
            assert_eq!(addresses, ips);
            assert_eq!(addresses.len(), usize::from(count));
            assert_eq!((&addresses).into_iter().count(), usize::from(count));
            assert_eq!(format!("{addresses:?}"), format!("{ips:?}"));
            assert_eq!(matches!(addresses.0, Repr::One(_)), count == 1);
        }
        assert!(Addresses::default().is_empty());
    }
}
