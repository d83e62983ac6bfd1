//! Which imports two snapshots differ in, found by comparing them key by
//! key (shared objects compare by pointer).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use crate::model::{ObjectKey, SliceOwner, Snapshot};

/// Which imports changed between two snapshots: added, removed or modified
/// imports, and every import backed by an added, removed or modified slice
/// (under its old or its new owner).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub imports: BTreeSet<ObjectKey>,
    /// (namespace, owner) of changed slices.
    pub slice_owners: BTreeSet<(String, SliceOwner)>,
}

impl Changes {
    /// Compares two snapshots key by key: O(objects) comparisons, no
    /// allocation but for what changed.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let mut changes = Self::default();
        merge_diff(&old.imports, &new.imports, |key, _, _| {
            changes.imports.insert(key.clone());
        });
        merge_diff(old.slices(), new.slices(), |key, before, after| {
            for slice in [before, after].into_iter().flatten() {
                changes
                    .slice_owners
                    .insert((key.namespace.clone(), slice.owner.clone()));
            }
        });
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.imports.is_empty() && self.slice_owners.is_empty()
    }

    /// How many keys (imports and slice owners) it names.
    pub fn len(&self) -> usize {
        self.imports.len() + self.slice_owners.len()
    }
}

/// Calls `changed` for every key whose value differs between two sorted
/// maps. Maps are keyed by their objects' own keys, so a shared value (one
/// pointer) means the same key: unchanged entries cost a pointer compare,
/// without touching the keys' strings (cache misses at 10k objects).
fn merge_diff<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
    mut changed: impl FnMut(&K, Option<&Arc<V>>, Option<&Arc<V>>),
) {
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((key, value)), None) => {
                changed(key, Some(value), None);
                old.next();
            }
            (None, Some((key, value))) => {
                changed(key, None, Some(value));
                new.next();
            }
            (Some((_, old_value)), Some((_, new_value))) if Arc::ptr_eq(old_value, new_value) => {
                old.next();
                new.next();
            }
            (Some((old_key, old_value)), Some((new_key, new_value))) => {
                match old_key.cmp(new_key) {
                    std::cmp::Ordering::Less => {
                        changed(old_key, Some(old_value), None);
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changed(new_key, None, Some(new_value));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if old_value != new_value {
                            changed(old_key, Some(old_value), Some(new_value));
                        }
                        old.next();
                        new.next();
                    }
                }
            }
        }
    }
}
