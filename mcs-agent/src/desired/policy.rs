//! The agent's own view of where traffic should go: its cluster, the
//! default locality (overridable per import), which ranges each cluster
//! may publish endpoints in and which ranges ClusterSetIPs come from.

use std::{collections::BTreeMap, net::IpAddr};

use super::Backend;

/// How traffic is spread over clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Locality {
    /// Spread over the endpoints of all clusters alike.
    #[default]
    None,
    /// Only the local cluster's endpoints while it has any usable one;
    /// otherwise spill over to all clusters.
    LocalFirst,
    /// Each listed cluster receives its weight's share of new flows, split
    /// evenly over its endpoints; unlisted clusters receive none, unless no
    /// listed cluster has endpoints (then all clusters share alike).
    Weighted(BTreeMap<String, u32>),
}

impl std::str::FromStr for Locality {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "none" => Ok(Self::None),
            "local-first" => Ok(Self::LocalFirst),
            other => {
                let Some(list) = other.strip_prefix("weighted:") else {
                    return Err(format!(
                        "unknown locality {other:?}; expected none, local-first or weighted:CLUSTER=WEIGHT,..."
                    ));
                };
                let mut weights = BTreeMap::new();
                for item in list.split(',').filter(|item| !item.trim().is_empty()) {
                    let (cluster, weight) = item
                        .split_once('=')
                        .ok_or_else(|| format!("{item:?} is not CLUSTER=WEIGHT"))?;
                    let weight: u32 = weight
                        .trim()
                        .parse()
                        .ok()
                        .filter(|w| *w <= 1000)
                        .ok_or_else(|| format!("weight of {cluster:?} must be 0..=1000"))?;
                    weights.insert(cluster.trim().to_owned(), weight);
                }
                if weights.values().all(|w| *w == 0) {
                    return Err("weighted locality needs at least one non-zero weight".into());
                }
                Ok(Self::Weighted(weights))
            }
        }
    }
}

/// The agent's own view: which cluster it is in and its default locality.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub local_cluster: Option<String>,
    pub locality: Locality,
    /// Per source cluster, the ranges its endpoints must lie in. When set,
    /// every cluster must be listed: endpoints of an unlisted cluster (or
    /// of a slice without cluster label) are rejected too, so no cluster
    /// can publish endpoints that hijack another's traffic.
    pub cluster_cidrs: ClusterCidrs,
    /// The ranges ClusterSetIPs are allocated from. When set, an import
    /// claiming an address outside them (a node's, the API server's) is
    /// not served at that address, so no import can capture traffic meant
    /// for something else.
    pub clusterset_ip_cidrs: ClustersetIpCidrs,
}

/// `--clusterset-ip-cidrs CIDR,...` (IPv4 and IPv6); empty allows every
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClustersetIpCidrs(pub Vec<ipnet::IpNet>);

impl ClustersetIpCidrs {
    /// Whether an import may claim `ip` as its ClusterSetIP.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|net| net.contains(&ip))
    }
}

impl std::str::FromStr for ClustersetIpCidrs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<ipnet::IpNet>()
                    .map(|net| net.trunc())
                    .map_err(|error| format!("{item:?}: {error} (expected CIDR,CIDR,...)"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// `--cluster-cidrs cluster=CIDR,cluster=CIDR,...` (a cluster may repeat).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterCidrs(pub BTreeMap<String, Vec<ipnet::IpNet>>);

impl ClusterCidrs {
    /// Whether `cluster` may publish `addr` (a cluster's ranges may be of
    /// both families).
    pub fn allows(&self, cluster: &str, addr: IpAddr) -> bool {
        self.0.is_empty()
            || self
                .0
                .get(cluster)
                .is_some_and(|ranges| ranges.iter().any(|net| net.contains(&addr)))
    }
}

impl std::str::FromStr for ClusterCidrs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map: BTreeMap<String, Vec<ipnet::IpNet>> = BTreeMap::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (cluster, cidr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not CLUSTER=CIDR"))?;
            let net: ipnet::IpNet = cidr
                .trim()
                .parse()
                .map_err(|error| format!("{cidr:?} of cluster {cluster:?}: {error}"))?;
            map.entry(cluster.trim().to_owned())
                .or_default()
                .push(net.trunc());
        }
        Ok(Self(map))
    }
}

/// Narrows or weights `backends` by cluster (see [`Locality`]).
pub(super) fn apply_locality(
    backends: Vec<Backend>,
    locality: &Locality,
    local_cluster: Option<&str>,
) -> Vec<Backend> {
    match locality {
        Locality::None => backends,
        Locality::LocalFirst => {
            let Some(local) = local_cluster else {
                return backends;
            };
            if backends.iter().any(|b| &*b.cluster == local) {
                backends
                    .into_iter()
                    .filter(|b| &*b.cluster == local)
                    .collect()
            } else {
                backends
            }
        }
        Locality::Weighted(weights) => {
            let mut per_cluster: BTreeMap<&str, u32> = BTreeMap::new();
            for backend in &backends {
                *per_cluster.entry(&*backend.cluster).or_default() += 1;
            }
            let weighted: u32 = per_cluster
                .keys()
                .map(|cluster| weights.get(*cluster).copied().unwrap_or(0))
                .sum();
            if weighted == 0 {
                return backends; // no listed cluster has endpoints: share alike
            }
            // A cluster's weight is split over its endpoints; scale so the
            // integer Maglev weights keep the ratio (≥ 1 when non-zero).
            const SCALE: u64 = 1 << 16;
            let counts: BTreeMap<String, u32> = per_cluster
                .into_iter()
                .map(|(cluster, count)| (cluster.to_owned(), count))
                .collect();
            backends
                .into_iter()
                .filter_map(|mut backend| {
                    let weight = u64::from(weights.get(&*backend.cluster).copied().unwrap_or(0));
                    let count = u64::from(counts.get(&*backend.cluster).copied().unwrap_or(1));
                    if weight == 0 {
                        return None;
                    }
                    backend.weight =
                        u32::try_from((weight * SCALE / count).max(1)).unwrap_or(u32::MAX);
                    Some(backend)
                })
                .collect()
        }
    }
}
