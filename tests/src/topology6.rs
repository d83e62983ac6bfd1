//! IPv6 for a [`Topology`]: dual-stack (IPv6 next to the IPv4 plan) or
//! IPv6-only (the IPv4 addresses and routes removed again).
//!
//! Every IPv4 address `a.b.c.d` of the plan gets the ULA twin
//! `fd00:a:b:c::d` (the decimal octets read as hex groups, so
//! `10.101.1.100` is `fd00:10:101:1::100`) and every node's pod `/24` the
//! twin `/64`. Pods keep the Calico/Cilium shape: one `/128`, a default route
//! via the link-local gateway `fe80::1` that every node-side pod veth holds,
//! and a `/128` route per pod on the node. Only ULA (`fd00::/8`) and
//! link-local addresses are used, only inside the topology's namespaces.
//!
//! Addresses are added with `nodad` and DAD is off on every interface, so
//! they are usable at once; forwarding is on wherever IPv4 forwarding is.
//! Checksum verification on every hop is family-independent: the
//! `tx-checksumming` switches of [`Topology::set_infra_tx_checksum`] and
//! [`Topology::set_pod_tx_checksum`] cover IPv6 as well.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::{
    netns::Netns,
    topology::{ROUTER_BRIDGE, Topology},
};

/// Link-local gateway every pod routes through (held by each node-side veth).
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Prefix length of the underlay and of each node's pod range.
const PREFIX_LEN: u8 = 64;

/// Which families a topology's pods and nodes speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// IPv4 and IPv6.
    Dual,
    /// IPv6 only: no IPv4 address or route outside `lo`.
    V6Only,
}

/// The ULA twin of an IPv4 address of the plan: `a.b.c.d` → `fd00:a:b:c::d`.
pub fn ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = v4.octets().map(decimal_as_hex);
    Ipv6Addr::new(0xfd00, a, b, c, 0, 0, 0, d)
}

/// `0..=255` written in decimal, read as hex: 101 → 0x101.
fn decimal_as_hex(octet: u8) -> u16 {
    let (h, t, o) = (
        u16::from(octet / 100),
        u16::from(octet / 10 % 10),
        u16::from(octet % 10),
    );
    h << 8 | t << 4 | o
}

/// The `/64` twin of an IPv4 `/24` (its network address's twin).
fn net6_of(v4_net: Ipv4Addr) -> String {
    format!("{}/{PREFIX_LEN}", ipv6_of(v4_net))
}

/// Gives every namespace of `topo` IPv6 (see the module docs); with
/// [`Stack::V6Only`], removes IPv4 from every interface but `lo` afterwards.
pub fn add_ipv6(topo: &Topology, stack: Stack) -> Result<()> {
    for ns in topo.all_netns() {
        enable_ipv6(ns)?;
    }
    let router = topo.router()?;
    let r = &router.netns;
    // Neighbour discovery is multicast; without an MLD querier a snooping
    // bridge may drop it.
    r.ip(&[
        "link",
        "set",
        ROUTER_BRIDGE,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])?;
    let router6 = ipv6_of(router.ip);
    addr6(r, &format!("{router6}/{PREFIX_LEN}"), ROUTER_BRIDGE)?;
    for node in topo.nodes() {
        let n = &node.netns;
        let underlay6 = ipv6_of(node.underlay_ip);
        addr6(n, &format!("{underlay6}/{PREFIX_LEN}"), &node.uplink)?;
        n.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &router6.to_string(),
            "dev",
            &node.uplink,
        ])?;
        r.ip(&[
            "-6",
            "route",
            "add",
            &net6_of(node.pod_cidr.addr),
            "via",
            &underlay6.to_string(),
        ])?;
    }
    for pod in topo.pods() {
        let node = topo.node(&pod.node)?;
        let (n, p) = (&node.netns, &pod.netns);
        let pod6 = format!("{}/128", ipv6_of(pod.ip));
        addr6(n, &format!("{POD_GATEWAY6}/64"), &pod.node_iface)?;
        n.ip(&["-6", "route", "add", &pod6, "dev", &pod.node_iface])?;
        addr6(p, &pod6, &pod.iface)?;
        p.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &POD_GATEWAY6.to_string(),
            "dev",
            &pod.iface,
        ])?;
    }
    if stack == Stack::V6Only {
        for ns in topo.all_netns() {
            for dev in ns.interfaces()? {
                ns.ip(&["-4", "addr", "flush", "dev", &dev])?;
            }
            ns.ip(&["-4", "route", "flush", "table", "main"])?;
        }
    }
    Ok(())
}

/// Turns IPv6 on in `ns` (the topology turns it off) with DAD off on every
/// interface and forwarding on.
fn enable_ipv6(ns: &Netns) -> Result<()> {
    for conf in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
    }
    let devs = ns.interfaces()?;
    for dev in &devs {
        ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")?;
    }
    // Writing `all` applies to every existing interface.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "0")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        .with_context(|| format!("IPv6 forwarding in {}", ns.name()))
}

fn addr6(ns: &Netns, cidr: &str, dev: &str) -> Result<()> {
    ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_read_the_decimal_octets_as_hex() {
        assert_eq!(
            ipv6_of(Ipv4Addr::new(10, 101, 1, 100)),
            "fd00:10:101:1::100".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ipv6_of(Ipv4Addr::new(10, 100, 0, 1)),
            "fd00:10:100::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(decimal_as_hex(255), 0x255);
        assert_eq!(net6_of(Ipv4Addr::new(10, 102, 1, 0)), "fd00:10:102:1::/64");
    }

    #[test]
    fn twins_are_ula() {
        let ip = ipv6_of(Ipv4Addr::new(192, 168, 7, 9));
        assert_eq!(ip.segments()[0] & 0xff00, 0xfd00);
    }
}
