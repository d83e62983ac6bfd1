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

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

pub use self::{
    changes::Changes,
    follow::{Follower, Found},
    incremental::Incremental,
    journal::Journal,
    policy::{ClusterCidrs, ClustersetIpCidrs, Locality, Policy},
};
use crate::model::{ObjectKey, Protocol, Rejection, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Source cluster; empty when the slice does not say. Shared by the
    /// backends of a slice (a million backends would otherwise hold a
    /// million copies of a few names, in the desired state and again in
    /// what the reconciler applied).
    pub cluster: Arc<str>,
    /// Relative share of new flows (Maglev weight, > 0).
    pub weight: u32,
    /// Serving but terminating (used because no endpoint is ready).
    pub terminating: bool,
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
mod incremental_tests;

#[cfg(test)]
mod tests;
