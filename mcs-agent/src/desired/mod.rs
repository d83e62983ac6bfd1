//! Desired dataplane state: a pure function of the import model.
//!
//! A *frontend* is one ClusterSetIP × port × protocol; its backends are the
//! ready endpoints of every slice of the import (any cluster) that exposes a
//! port of the same name and protocol — so a cluster that does not export a
//! port never receives its traffic (KEP-1645 port conflict rule).
//!
//! Endpoint conditions (KEP-1669): ready endpoints serve; when a port has
//! none, serving-and-terminating endpoints serve instead. Then the locality
//! policy (agent default, overridable per import by annotation) narrows or
//! weights the set: see [`Locality`].
//!
//! * `policy.rs`: the agent's view (local cluster, locality, cluster CIDRs,
//!   ClusterSetIP ranges);
//! * `import.rs`: what one import asks for — its frontends and backends;
//! * `changes.rs`: which imports two snapshots differ in;
//! * `journal.rs`: a source's record of what changed, update by update;
//! * `follow.rs`: the state following a source's updates (changes from
//!   its journal, or a diff when the journal cannot say);
//! * `incremental.rs`: the engine keeping the whole state up to date import
//!   by import, resolving conflicts between imports.

mod changes;
mod follow;
mod import;
mod incremental;
mod journal;
mod policy;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

pub use self::{
    changes::Changes,
    follow::{Follower, Found},
    incremental::Incremental,
    journal::Journal,
    policy::{ClusterCidrs, ClustersetIpCidrs, Locality, Policy},
};
pub use crate::model::IpFamily;
use crate::model::{ObjectKey, Protocol, Rejection, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// A ClusterSetIP of either family; its backends are of the same one.
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = std::net::SocketAddr::new(self.addr, self.port);
        write!(f, "{addr}/{}", self.protocol)
    }
}

impl Frontend {
    pub const fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// Source cluster; empty when the slice does not say. Shared by the
    /// backends of a slice (a million backends would otherwise hold a
    /// million copies of a few names, in the desired state and again in
    /// what the reconciler applied).
    pub cluster: ClusterName,
    /// Relative share of new flows (Maglev weight, > 0).
    pub weight: u32,
    /// Serving but terminating (used because no endpoint is ready).
    pub terminating: bool,
}

/// A cluster's name shared by many backends behind one thin pointer: the
/// eight bytes a fat `Arc<str>` would add pay for [`Backend::addr`] holding
/// either family, so a backend stays as small as an IPv4-only one was.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClusterName(Arc<String>);

impl std::ops::Deref for ClusterName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClusterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ClusterName {
    fn from(name: &str) -> Self {
        Self(Arc::new(name.to_owned()))
    }
}

impl From<String> for ClusterName {
    fn from(name: String) -> Self {
        Self(Arc::new(name))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendKind {
    /// A service port that balances to backends.
    Service,
    /// Port-0 marker telling the datapath an address is a ClusterSetIP
    /// (used to drop fragments and malformed packets sent to it).
    VipMarker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub kind: FrontendKind,
    /// `namespace/name:port-name` for operators.
    pub name: String,
    /// Shared by the frontends of an import and the engine's bookkeeping.
    pub import: Arc<ObjectKey>,
    /// Sorted, deduplicated.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendSpec>,
}

impl DesiredState {
    pub fn service_frontends(&self) -> impl Iterator<Item = (&Frontend, &FrontendSpec)> {
        self.frontends
            .iter()
            .filter(|(_, spec)| spec.kind == FrontendKind::Service)
    }
}

/// [`compute_with`] under the default policy (no locality).
pub fn compute(snapshot: &Snapshot) -> (DesiredState, Vec<Rejection>) {
    compute_with(snapshot, &Policy::default())
}

/// Computes the frontends and their backends. Deterministic: the same
/// snapshot and policy always yield the same state.
pub fn compute_with(snapshot: &Snapshot, policy: &Policy) -> (DesiredState, Vec<Rejection>) {
    let engine = Incremental::new(snapshot, policy.clone());
    let rejections = engine.rejections();
    (engine.into_state(), rejections)
}

#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod incremental_tests;

#[cfg(test)]
mod tests;
