//! Checksum verification: offload switches and the kernel's checksum error
//! counters.
//!
//! A veth-only test with default offloads hides checksum bugs, because a
//! veth hands partial checksums to the receiver, which trusts them. Turning
//! transmit checksumming off (`ethtool -K DEV tx off`) on the device a packet
//! leaves through makes the kernel complete the checksum in software, so the
//! receiver really verifies it and counts failures in `InCsumErrors`.

use std::fmt;

use anyhow::{Context, Result, bail, ensure};

use crate::netns::Netns;

/// `ethtool -K DEV tx on|off` inside `ns`, then checks that it took effect
/// (a device that cannot change it would silently keep offloading).
pub fn set_tx_checksum(ns: &Netns, dev: &str, on: bool) -> Result<()> {
    let context = || format!("tx checksum offload of {dev} in {}", ns.name());
    ns.exec("ethtool", &["-K", dev, "tx", if on { "on" } else { "off" }])
        .with_context(context)?;
    let now = tx_checksum(ns, dev).with_context(context)?;
    ensure!(
        now == on,
        "{} is still {}",
        context(),
        if now { "on" } else { "off" }
    );
    Ok(())
}

/// Whether `dev` in `ns` offloads transmit checksums (`ethtool -k`).
pub fn tx_checksum(ns: &Netns, dev: &str) -> Result<bool> {
    let features = ns.exec("ethtool", &["-k", dev])?;
    parse_tx_checksumming(&features)
}

/// The `tx-checksumming:` line of `ethtool -k` output (`on`, `off`, or
/// either with ` [fixed]`).
fn parse_tx_checksumming(features: &str) -> Result<bool> {
    let value = features
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
        .context("no tx-checksumming in ethtool -k output")?;
    match value.split_whitespace().next() {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        other => bail!("tx-checksumming: {other:?}"),
    }
}

/// Checksum error counters of one network namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumCounters {
    /// `Tcp: InCsumErrors` of `/proc/net/snmp`.
    pub tcp: u64,
    /// `Udp: InCsumErrors` of `/proc/net/snmp`.
    pub udp: u64,
    /// `IpExt: InCsumErrors` of `/proc/net/netstat` (IPv4 header checksums).
    pub ip: u64,
    /// `Icmp: InCsumErrors` of `/proc/net/snmp` (ICMP messages, e.g. the
    /// datapath's port unreachable refusals).
    pub icmp: u64,
    /// `Udp6InCsumErrors` of `/proc/net/snmp6` (TCP over IPv6 counts in
    /// `tcp`: the kernel keeps one TCP MIB for both families).
    pub udp6: u64,
    /// `Icmp6InCsumErrors` of `/proc/net/snmp6` (e.g. the datapath's ICMPv6
    /// port unreachable refusals).
    pub icmp6: u64,
}

impl CsumCounters {
    /// Reads the counters of `ns`. `/proc/net` shows the network namespace
    /// of the reading thread (via `/proc/thread-self`), so the files are read
    /// from a thread inside `ns`.
    pub fn read(ns: &Netns) -> Result<Self> {
        let (snmp, netstat, snmp6) =
            ns.enter(|| -> std::io::Result<(String, String, Option<String>)> {
                Ok((
                    std::fs::read_to_string("/proc/thread-self/net/snmp")?,
                    std::fs::read_to_string("/proc/thread-self/net/netstat")?,
                    // Absent only on a kernel without IPv6: nothing to count.
                    std::fs::read_to_string("/proc/thread-self/net/snmp6").ok(),
                ))
            })??;
        let mut counters =
            Self::parse(&snmp, &netstat).with_context(|| format!("counters of {}", ns.name()))?;
        if let Some(snmp6) = snmp6 {
            counters.udp6 = counter6(&snmp6, "Udp6InCsumErrors")?;
            counters.icmp6 = counter6(&snmp6, "Icmp6InCsumErrors")?;
        }
        Ok(counters)
    }

    /// Parses the contents of `/proc/net/snmp` and `/proc/net/netstat`.
    pub fn parse(snmp: &str, netstat: &str) -> Result<Self> {
        Ok(Self {
            tcp: counter(snmp, "Tcp", "InCsumErrors")?,
            udp: counter(snmp, "Udp", "InCsumErrors")?,
            ip: counter(netstat, "IpExt", "InCsumErrors")?,
            icmp: counter(snmp, "Icmp", "InCsumErrors")?,
            udp6: 0,
            icmp6: 0,
        })
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for CsumCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TcpInCsumErrors={} UdpInCsumErrors={} IpExtInCsumErrors={} IcmpInCsumErrors={} \
             Udp6InCsumErrors={} Icmp6InCsumErrors={}",
            self.tcp, self.udp, self.ip, self.icmp, self.udp6, self.icmp6
        )
    }
}

/// One value of a `/proc/net/{snmp,netstat}` style file, where each group is
/// a line of names (`Tcp: A B ...`) followed by a line of values
/// (`Tcp: 1 2 ...`).
pub fn counter(text: &str, group: &str, name: &str) -> Result<u64> {
    let tag = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&tag));
    let names = lines.next().with_context(|| format!("no {group} group"))?;
    let values = lines.next().with_context(|| format!("no {group} values"))?;
    let index = names
        .split_whitespace()
        .position(|n| n == name)
        .with_context(|| format!("no {group} {name}"))?;
    let value = values
        .split_whitespace()
        .nth(index)
        .with_context(|| format!("no value for {group} {name}"))?;
    value
        .parse()
        .with_context(|| format!("{group} {name} = {value:?}"))
}

/// One value of `/proc/net/snmp6`, where each line is `NAME VALUE`.
pub fn counter6(text: &str, name: &str) -> Result<u64> {
    let value = text
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next())
        })
        .flatten()
        .with_context(|| format!("no {name} in snmp6"))?;
    value.parse().with_context(|| format!("{name} = {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 10
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs
Icmp: 3 1 5 2
Tcp: RtoAlgorithm RtoMin InSegs InErrs InCsumErrors
Tcp: 1 200 42 3 7
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 5 0 1 5 0 0 2 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 9 0 0
";
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv
TcpExt: 0 0
IpExt: InNoRoutes InTruncatedPkts InMcastPkts InCsumErrors
IpExt: 0 0 0 4
";

    #[test]
    fn parses_the_four_counters() {
        let c = CsumCounters::parse(SNMP, NETSTAT).unwrap();
        assert_eq!(
            c,
            CsumCounters {
                tcp: 7,
                udp: 2,
                ip: 4,
                icmp: 5,
                udp6: 0,
                icmp6: 0,
            }
        );
        assert!(!c.is_zero());
        assert_eq!(
            c.to_string(),
            "TcpInCsumErrors=7 UdpInCsumErrors=2 IpExtInCsumErrors=4 IcmpInCsumErrors=5 \
             Udp6InCsumErrors=0 Icmp6InCsumErrors=0"
        );
    }

    #[test]
    fn parses_snmp6_counters() {
        let snmp6 =
            "Icmp6InCsumErrors               \t3\nUdp6InCsumErrors 8\nUdpLite6InCsumErrors 9\n";
        assert_eq!(counter6(snmp6, "Udp6InCsumErrors").unwrap(), 8);
        assert_eq!(counter6(snmp6, "Icmp6InCsumErrors").unwrap(), 3);
        assert!(counter6(snmp6, "Tcp6InCsumErrors").is_err());
    }

    #[test]
    fn udp_is_not_confused_with_udplite() {
        assert_eq!(counter(SNMP, "Udp", "InCsumErrors").unwrap(), 2);
        assert_eq!(counter(SNMP, "UdpLite", "InCsumErrors").unwrap(), 9);
    }

    #[test]
    fn missing_counters_are_errors() {
        assert!(counter(SNMP, "IcmpMsg", "InCsumErrors").is_err());
        assert!(counter(SNMP, "Tcp", "Nope").is_err());
    }

    #[test]
    fn parses_ethtool_features() {
        let on = "Features for v-a1:\nrx-checksumming: on\ntx-checksumming: on\n\ttx-checksum-ipv4: off [fixed]\n";
        assert!(parse_tx_checksumming(on).unwrap());
        let off = "Features for eth0:\ntx-checksumming: off\n";
        assert!(!parse_tx_checksumming(off).unwrap());
        assert!(parse_tx_checksumming("scatter-gather: on\n").is_err());
    }

    #[test]
    fn reads_this_namespace() {
        // No root needed: the files of the current namespace always parse.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
        CsumCounters::parse(&snmp, &netstat).unwrap();
    }
}
