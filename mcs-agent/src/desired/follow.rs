//! Following a source: the desired state brought from one published
//! snapshot to the next by recomputing only the imports that changed,
//! found in the source's [`Journal`] (or, when the journal cannot say, by
//! diffing against the snapshot last applied).

use std::{collections::BTreeSet, sync::Arc};

use super::{Changes, Frontend, Incremental, Journal, Policy};
use crate::model::Snapshot;

/// The incremental engine, with the snapshot and journal version it is
/// computed from. The snapshot is shared with the source's update (an
/// `Arc`): keeping it costs nothing while it is the latest, and it is the
/// base of the diff when the journal cannot answer.
#[derive(Debug)]
pub struct Follower {
    engine: Incremental,
    snapshot: Arc<Snapshot>,
    version: u64,
}

/// How an update's changes were found (for the bench and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// From the journal's entries after the version last applied.
    Journal,
    /// By diffing the snapshots (the journal no longer held that version).
    Diff,
}

impl Follower {
    /// Computes everything from `snapshot` at `version` of its journal.
    pub fn new(snapshot: Arc<Snapshot>, version: u64, policy: Policy) -> Self {
        Self {
            engine: Incremental::new(&snapshot, policy),
            snapshot,
            version,
        }
    }

    pub fn engine(&self) -> &Incremental {
        &self.engine
    }

    pub fn policy(&self) -> &Policy {
        self.engine.policy()
    }

    /// Brings the state to `snapshot`, the latest version of `journal`;
    /// returns the frontends whose desired spec may have changed, and how
    /// the changes were found.
    pub fn advance(
        &mut self,
        snapshot: Arc<Snapshot>,
        journal: &Journal,
    ) -> (BTreeSet<Frontend>, Found) {
        let (changes, found) = self.changes(&snapshot, journal);
        (self.apply(snapshot, journal.version(), &changes), found)
    }

    /// The first half of [`advance`](Self::advance): what changed from the
    /// snapshot applied last to `snapshot`, the latest version of `journal`.
    pub fn changes(&self, snapshot: &Snapshot, journal: &Journal) -> (Changes, Found) {
        match journal.since(self.version) {
            Some(changes) => (changes, Found::Journal),
            None => (Changes::between(&self.snapshot, snapshot), Found::Diff),
        }
    }

    /// The second half of [`advance`](Self::advance): recomputes the
    /// imports `changes` affect; returns the frontends they touched.
    pub fn apply(
        &mut self,
        snapshot: Arc<Snapshot>,
        version: u64,
        changes: &Changes,
    ) -> BTreeSet<Frontend> {
        let affected = self.engine.affected(changes);
        let touched = self.engine.update(&snapshot, &affected);
        self.snapshot = snapshot;
        self.version = version;
        touched
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{desired::compute, model::manifest::snapshot_from_yaml};

    fn import(name: &str, ip: u8, port: u16) -> String {
        format!(
            "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
             metadata: {{name: {name}, namespace: ns}}\n\
             spec: {{type: ClusterSetIP, ips: [\"10.9.0.{ip}\"], ports: [{{name: http, port: {port}}}]}}\n"
        )
    }

    fn slice(name: &str, service: &str, address: u8) -> String {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, namespace: ns, labels: {{multicluster.kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
             endpoints: [{{addresses: [\"10.1.0.{address}\"]}}]\n"
        )
    }

    /// Imports and slices from a few names, so that steps add, change and
    /// remove the same objects, and imports contest ClusterSetIPs.
    fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
        (
            prop::collection::vec((0u8..4, 0u8..3, 80u16..82), 0..4),
            prop::collection::vec((0u8..5, 0u8..4, 1u8..4), 0..5),
        )
            .prop_map(|(imports, slices)| {
                let mut yaml = String::new();
                for (name, ip, port) in imports {
                    yaml.push_str(&import(&format!("i{name}"), ip, port));
                }
                for (name, service, address) in slices {
                    yaml.push_str(&slice(&format!("s{name}"), &format!("i{service}"), address));
                }
                snapshot_from_yaml(&yaml).expect("valid YAML").0
            })
    }

    proptest! {
        /// Whatever versions the consumer sees, and however short the
        /// journal, the state it follows equals a full computation of the
        /// latest snapshot.
        #[test]
        fn follows_a_full_computation(
            snapshots in prop::collection::vec(snapshot_strategy(), 1..12),
            seen in prop::collection::vec(prop::bool::ANY, 12),
        ) {
            let mut journal = Journal::default();
            let mut follower: Option<Follower> = None;
            let mut previous: Option<Arc<Snapshot>> = None;
            for (step, snapshot) in snapshots.into_iter().enumerate() {
                let snapshot = Arc::new(snapshot);
                match &previous {
                    None => journal.restart(),
                    Some(previous) => journal.record(Changes::between(previous, &snapshot)),
                };
                previous = Some(snapshot.clone());
                if !seen[step] && step > 0 {
                    continue;
                }
                match &mut follower {
                    None => {
                        follower = Some(Follower::new(snapshot.clone(), journal.version(), Policy::default()));
                    }
                    Some(follower) => {
                        follower.advance(snapshot.clone(), &journal);
                    }
                }
                let follower = follower.as_ref().expect("set");
                let (expected, rejections) = compute(&snapshot);
                prop_assert_eq!(follower.engine().state(), &expected);
                prop_assert_eq!(follower.engine().rejections(), rejections);
            }
        }
    }

    #[test]
    fn falls_back_to_the_diff_when_the_journal_lost_the_version() {
        let first = Arc::new(
            snapshot_from_yaml(&(import("a", 1, 80) + &slice("s", "a", 1)))
                .unwrap()
                .0,
        );
        let second = Arc::new(
            snapshot_from_yaml(&(import("a", 1, 80) + &slice("s", "a", 2)))
                .unwrap()
                .0,
        );
        let service = Frontend {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, 1)),
            port: 80,
            protocol: crate::model::Protocol::Tcp,
        };
        let mut journal = Journal::default();
        journal.restart();
        let mut follower = Follower::new(first.clone(), journal.version(), Policy::default());
        // The journal started over (a relist): its entries say nothing
        // about the version the follower has.
        journal.restart();
        let (touched, found) = follower.advance(second.clone(), &journal);
        assert_eq!(found, Found::Diff);
        assert!(touched.contains(&service), "{touched:?}");
        assert_eq!(follower.engine().state(), &compute(&second).0);
        // Then journaled: found without a diff.
        journal.record(Changes::between(&second, &first));
        let (touched, found) = follower.advance(first.clone(), &journal);
        assert_eq!(found, Found::Journal);
        assert!(touched.contains(&service), "{touched:?}");
        assert_eq!(follower.engine().state(), &compute(&first).0);
    }
}
