//! A source's journal of what changed, update by update, so that the agent
//! finds the imports an update affects without comparing whole snapshots.
//!
//! Every published update carries the journal's version and its last
//! entries (the [`Changes`] leading to each version). A tokio watch channel
//! drops intermediate values, so the consumer remembers the last version it
//! applied and takes the union of every entry after it
//! ([`Journal::since`]). When that version fell out of the journal (more
//! updates missed than it keeps, or an entry too large to keep, such as a
//! full relist), `since` says so and the consumer diffs snapshots instead
//! ([`Changes::between`]).

use std::{collections::VecDeque, sync::Arc};

use super::Changes;

/// Entries kept: a consumer further behind than this diffs snapshots.
const MAX_ENTRIES: usize = 64;
/// Keys (imports and slice owners) kept over all entries: bounds what each
/// publish copies, and a change larger than this (a relist, a whole file
/// replaced) is cheaper to find by a diff anyway.
const MAX_KEYS: usize = 4096;

/// The changes leading to each of the last versions, oldest first.
/// Cloning it (once per publish) copies at most [`MAX_ENTRIES`] pointers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    /// The version of the latest snapshot (0: none published yet).
    version: u64,
    /// `(version, what changed from the version before)`, contiguous and
    /// ending at `version`.
    entries: VecDeque<(u64, Arc<Changes>)>,
    keys: usize,
}

impl Journal {
    /// The version of the latest snapshot.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Records that the next version differs from the current one by
    /// `changes` (a superset is fine: more imports get recomputed); returns
    /// the new version.
    pub fn record(&mut self, changes: Changes) -> u64 {
        self.version += 1;
        let size = changes.len();
        if size > MAX_KEYS {
            // Too large to keep: whoever has not seen it diffs snapshots.
            self.entries.clear();
            self.keys = 0;
        } else {
            self.entries.push_back((self.version, Arc::new(changes)));
            self.keys += size;
            while self.entries.len() > MAX_ENTRIES || self.keys > MAX_KEYS {
                if let Some((_, dropped)) = self.entries.pop_front() {
                    self.keys -= dropped.len();
                }
            }
        }
        self.version
    }

    /// Records a new version whose changes are unknown (the first snapshot,
    /// a source that started over): every consumer diffs snapshots.
    pub fn restart(&mut self) -> u64 {
        self.version += 1;
        self.entries.clear();
        self.keys = 0;
        self.version
    }

    /// What changed from `version` to the latest version, if the journal
    /// still holds every entry after it; `None` means "diff snapshots".
    pub fn since(&self, version: u64) -> Option<Changes> {
        if version == self.version {
            return Some(Changes::default());
        }
        let first = self.entries.front()?.0;
        if version > self.version || version + 1 < first {
            return None;
        }
        let mut changes = Changes::default();
        for (_, entry) in self.entries.iter().filter(|(v, _)| *v > version) {
            changes.imports.extend(entry.imports.iter().cloned());
            changes
                .slice_owners
                .extend(entry.slice_owners.iter().cloned());
        }
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{EndpointSlice, ObjectKey, SliceOwner, Snapshot};

    fn changes(imports: &[&str]) -> Changes {
        Changes {
            imports: imports.iter().map(|n| ObjectKey::new("ns", *n)).collect(),
            ..Changes::default()
        }
    }

    #[test]
    fn unions_the_entries_after_a_version() {
        let mut journal = Journal::default();
        assert_eq!(journal.restart(), 1);
        assert_eq!(journal.since(1), Some(Changes::default()));
        assert_eq!(journal.since(0), None, "the first snapshot is diffed");
        journal.record(changes(&["a"]));
        journal.record(changes(&["b"]));
        assert_eq!(journal.since(1), Some(changes(&["a", "b"])));
        assert_eq!(journal.since(2), Some(changes(&["b"])));
        assert_eq!(journal.since(3), Some(Changes::default()));
        assert_eq!(journal.since(4), None, "a version it never had");
        journal.restart();
        assert_eq!(journal.since(3), None);
    }

    #[test]
    fn old_and_large_entries_fall_out() {
        let mut journal = Journal::default();
        for _ in 0..=MAX_ENTRIES {
            journal.record(changes(&["a"]));
        }
        assert_eq!(journal.since(0), None);
        assert_eq!(journal.since(1), Some(changes(&["a"])));
        let names: Vec<String> = (0..=MAX_KEYS).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let version = journal.version();
        journal.record(changes(&names));
        assert_eq!(journal.since(version), None, "too large to keep");
        journal.record(changes(&["b"]));
        assert_eq!(journal.since(version + 1), Some(changes(&["b"])));
    }

    /// A small snapshot: imports and slices (owned by an import, or by a
    /// derived Service) drawn from a few names, so steps collide.
    fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
        let import = (0u8..4, 0u8..3);
        let slice = (0u8..5, 0u8..4, prop::bool::ANY, 0u8..3);
        (
            prop::collection::vec(import, 0..4),
            prop::collection::vec(slice, 0..5),
        )
            .prop_map(|(imports, slices)| {
                let mut snapshot = Snapshot::default();
                for (name, port) in imports {
                    let yaml = format!(
                        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
                         metadata: {{name: i{name}, namespace: ns}}\n\
                         spec: {{type: ClusterSetIP, ips: [\"10.9.0.{name}\"], ports: [{{port: {}}}]}}\n",
                        80 + u16::from(port)
                    );
                    let (parsed, _) = crate::model::manifest::snapshot_from_yaml(&yaml).unwrap();
                    for (key, import) in parsed.imports {
                        snapshot.imports.insert(key, import);
                    }
                }
                for (name, owner, derived, address) in slices {
                    let owner = if derived {
                        SliceOwner::Service(format!("i{owner}"))
                    } else {
                        SliceOwner::Import(format!("i{owner}"))
                    };
                    snapshot.insert_slice(EndpointSlice {
                        key: ObjectKey::new("ns", format!("s{name}")),
                        owner,
                        source_cluster: String::new(),
                        address_type: crate::model::AddressType::IPv4,
                        ports: Vec::new(),
                        endpoints: vec![crate::model::Endpoint {
                            addresses: vec![format!("10.1.0.{address}").parse().unwrap()].into(),
                            conditions: crate::model::Conditions {
                                ready: true,
                                serving: true,
                                terminating: false,
                            },
                            hostname: None,
                        }],
                    });
                }
                snapshot
            })
    }

    proptest! {
        /// A consumer that saw some versions of a sequence of snapshots
        /// (the rest dropped by the channel), each step journaled as its
        /// diff: the journal gives every change of the whole diff (and at
        /// most changes some step made: an object changed and changed back
        /// is in the union, not in the diff), or sends it to the diff when
        /// the versions fell out.
        #[test]
        fn journal_covers_the_diff(
            snapshots in prop::collection::vec(snapshot_strategy(), 1..12),
            seen in prop::collection::vec(prop::bool::ANY, 12),
            max_entries in 1usize..6,
        ) {
            let mut journal = Journal::default();
            let mut published: BTreeMap<u64, Snapshot> = BTreeMap::new();
            let mut applied: Option<u64> = None;
            let mut previous: Option<Snapshot> = None;
            for (step, snapshot) in snapshots.into_iter().enumerate() {
                let version = match &previous {
                    None => journal.restart(),
                    Some(previous) => journal.record(Changes::between(previous, &snapshot)),
                };
                // A short journal, to overflow it often.
                while journal.entries.len() > max_entries {
                    let (_, dropped) = journal.entries.pop_front().unwrap();
                    journal.keys -= dropped.len();
                }
                published.insert(version, snapshot.clone());
                previous = Some(snapshot.clone());
                if !seen[step] {
                    continue;
                }
                if let Some(last) = applied {
                    let diff = Changes::between(&published[&last], &snapshot);
                    let oldest_kept = journal.entries.front().map_or(u64::MAX, |(v, _)| *v);
                    match journal.since(last) {
                        Some(union) => {
                            prop_assert!(last + 1 >= oldest_kept || last == version);
                            prop_assert!(union.imports.is_superset(&diff.imports));
                            prop_assert!(union.slice_owners.is_superset(&diff.slice_owners));
                            let mut every_step = Changes::default();
                            for v in last..version {
                                let step = Changes::between(&published[&v], &published[&(v + 1)]);
                                every_step.imports.extend(step.imports);
                                every_step.slice_owners.extend(step.slice_owners);
                            }
                            prop_assert_eq!(union, every_step);
                        }
                        None => prop_assert!(last + 1 < oldest_kept),
                    }
                }
                applied = Some(version);
            }
        }
    }
}
