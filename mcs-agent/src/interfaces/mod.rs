//! Pod interfaces: which network interfaces of the node get the tc
//! programs, found as they come and go.
//!
//! An interface is served when its name matches one of the
//! `--pod-interfaces` globs (default: the host-side names of the common
//! CNIs' pod veths), it is virtual (the kernel reports a link kind, such as
//! `veth`; physical NICs have none — told by netlink, which answers for the
//! agent's own network namespace, where sysfs may show another's), it
//! carries Ethernet frames, and it is not one of the agent's own devices
//! (the `--interface` NICs, which run XDP, and the DNS link). Decisions are
//! pure ([`PodInterfaces::decide`]); `watch.rs` feeds them the node's links
//! from netlink link notifications.

pub mod dns_link;
pub mod watch;

use std::{collections::BTreeSet, fmt, str::FromStr};

/// The host-side names of pod interfaces of common CNIs: bridge/ptp
/// plugins and flannel (`veth*`), Cilium (`lxc*`), Calico (`cali*`), GKE
/// (`gke*`).
pub const DEFAULT_POD_INTERFACES: &str = "veth*,lxc*,cali*,gke*";

/// A link of the node as netlink describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `dummy`, ...); `None` for physical devices.
    pub kind: Option<String>,
    /// Whether the link carries Ethernet frames (`ARPHRD_ETHER`).
    pub ethernet: bool,
    pub loopback: bool,
}

impl Link {
    /// Whether the device is virtual (created by software, with a kind).
    pub fn is_virtual(&self) -> bool {
        self.kind.is_some() || self.loopback
    }
}

/// What becomes of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A pod interface: tc is attached.
    Serve,
    /// Its name matches no glob.
    NotMatched,
    /// A physical device (no link kind) or the loopback: never a pod's.
    Physical,
    /// Not Ethernet (the programs parse Ethernet frames).
    NotEthernet,
    /// One of the agent's own devices.
    Own,
}

/// The `--pod-interfaces` globs (empty: none).
#[derive(Clone, Debug)]
pub struct PodInterfaces {
    patterns: Vec<glob::Pattern>,
}

#[derive(Debug, thiserror::Error)]
#[error("bad interface glob {glob:?}: {reason}")]
pub struct GlobError {
    glob: String,
    reason: String,
}

impl FromStr for PodInterfaces {
    type Err = GlobError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let patterns = value
            .split(',')
            .map(str::trim)
            .filter(|glob| !glob.is_empty())
            .map(|glob| {
                glob::Pattern::new(glob).map_err(|error| GlobError {
                    glob: glob.to_owned(),
                    reason: error.msg.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }
}

impl fmt::Display for PodInterfaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let globs: Vec<&str> = self.patterns.iter().map(glob::Pattern::as_str).collect();
        f.write_str(&globs.join(","))
    }
}

impl PodInterfaces {
    /// Whether no glob is given (pod interface discovery off).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `link` is a pod interface to serve; `own` are the agent's
    /// own devices by name.
    pub fn decide(&self, link: &Link, own: &BTreeSet<String>) -> Decision {
        if !self.patterns.iter().any(|glob| glob.matches(&link.name)) {
            Decision::NotMatched
        } else if own.contains(&link.name) {
            Decision::Own
        } else if link.loopback || link.kind.is_none() {
            Decision::Physical
        } else if !link.ethernet {
            Decision::NotEthernet
        } else {
            Decision::Serve
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>) -> Link {
        Link {
            index: 7,
            name: name.to_owned(),
            kind: kind.map(str::to_owned),
            ethernet: true,
            loopback: false,
        }
    }

    #[test]
    fn default_globs_match_common_cnis_only() {
        let pods: PodInterfaces = DEFAULT_POD_INTERFACES.parse().expect("globs");
        let own = BTreeSet::new();
        for name in [
            "veth1a2b3c",
            "lxc12345",
            "cali0ab1c2d3e4f",
            "gke7e3f5d10a4e",
        ] {
            assert_eq!(
                pods.decide(&link(name, Some("veth")), &own),
                Decision::Serve,
                "{name}"
            );
        }
        for name in [
            "eth0",
            "ens5",
            "cilium_host",
            "cni0",
            "docker0",
            "flannel.1",
            "lo",
        ] {
            assert_eq!(
                pods.decide(&link(name, Some("veth")), &own),
                Decision::NotMatched,
                "{name}"
            );
        }
        assert_eq!(pods.to_string(), DEFAULT_POD_INTERFACES);
    }

    #[test]
    fn physical_own_and_non_ethernet_devices_are_never_served() {
        let pods: PodInterfaces = "*".parse().expect("globs");
        let own = BTreeSet::from(["veth-xdp".to_owned()]);
        assert_eq!(pods.decide(&link("eth0", None), &own), Decision::Physical);
        let mut lo = link("lo", None);
        lo.loopback = true;
        assert_eq!(pods.decide(&lo, &own), Decision::Physical);
        assert_eq!(
            pods.decide(&link("veth-xdp", Some("veth")), &own),
            Decision::Own
        );
        let mut wg = link("wg0", Some("wireguard"));
        wg.ethernet = false;
        assert_eq!(pods.decide(&wg, &own), Decision::NotEthernet);
        assert_eq!(
            pods.decide(&link("v-a-x", Some("veth")), &own),
            Decision::Serve
        );
    }

    #[test]
    fn globs_parse_and_reject() {
        let pods: PodInterfaces = " v-* , lxc?? ,".parse().expect("globs");
        assert_eq!(pods.to_string(), "v-*,lxc??");
        assert!("".parse::<PodInterfaces>().expect("empty").is_empty());
        let error = "veth["
            .parse::<PodInterfaces>()
            .expect_err("unclosed class");
        assert!(error.to_string().contains("veth["), "{error}");
    }
}
