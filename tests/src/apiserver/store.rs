//! Objects by resource, namespace and name, one global revision (etcd's),
//! and the history of changes that watches replay from a resourceVersion
//! until it is compacted.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

use super::registry::GroupResource;

/// Changes kept for watch replay; older ones are compacted (a watch from
/// before them is answered `410 Gone`), so memory stays bounded.
const HISTORY_LIMIT: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub resource: GroupResource,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: GroupResource, namespace: &str, name: &str) -> Self {
        Self {
            resource,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// A stored object and what server-side apply remembers about it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stored {
    pub object: Value,
    /// The last configuration each field manager applied (key `manager`,
    /// or `manager/status` for the status subresource): the fields it
    /// owns, removed when a later apply of that manager leaves them out.
    pub applied: BTreeMap<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches see it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub revision: u64,
    pub resource: GroupResource,
    pub kind: ChangeKind,
    pub old: Option<Value>,
    /// The object after the change (for a deletion: its last state, with
    /// the deletion's resourceVersion).
    pub new: Value,
}

#[derive(Default)]
pub(crate) struct Store {
    revision: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Change>,
    /// Watches from a resourceVersion below this are answered 410.
    compacted: u64,
}

impl Store {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn get(&self, key: &Key) -> Option<&Stored> {
        self.objects.get(key)
    }

    /// Objects of `resource` (in `namespace`, if given), by namespace and
    /// name.
    pub fn list<'a>(
        &'a self,
        resource: &'a GroupResource,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Stored)> + 'a {
        self.objects.iter().filter(move |(key, _)| {
            key.resource == *resource && namespace.is_none_or(|ns| key.namespace == ns)
        })
    }

    /// Every object (for namespace deletion and garbage collection).
    pub fn all(&self) -> impl Iterator<Item = (&Key, &Stored)> {
        self.objects.iter()
    }

    /// Stores `object` at a new revision (its resourceVersion); the
    /// caller has set every other field.
    pub fn put(&mut self, key: Key, mut object: Value, applied: BTreeMap<String, Value>) -> Change {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let old = self
            .objects
            .insert(
                key.clone(),
                Stored {
                    object: object.clone(),
                    applied,
                },
            )
            .map(|stored| stored.object);
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            revision: self.revision,
            resource: key.resource,
            kind,
            old,
            new: object,
        })
    }

    /// Deletes an object at a new revision.
    pub fn remove(&mut self, key: &Key) -> Option<Change> {
        let old = self.objects.remove(key)?.object;
        self.revision += 1;
        let mut new = old.clone();
        new["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        Some(self.record(Change {
            revision: self.revision,
            resource: key.resource.clone(),
            kind: ChangeKind::Deleted,
            old: Some(old),
            new,
        }))
    }

    fn record(&mut self, change: Change) -> Change {
        if self.history.len() == HISTORY_LIMIT
            && let Some(oldest) = self.history.pop_front()
        {
            self.compacted = oldest.revision;
        }
        self.history.push_back(change.clone());
        change
    }

    /// Changes after `revision`, oldest first.
    pub fn since(&self, revision: u64) -> impl Iterator<Item = &Change> {
        self.history.iter().filter(move |c| c.revision > revision)
    }

    /// Forgets the history up to now.
    pub fn compact(&mut self) {
        self.compacted = self.revision;
        self.history.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_move_the_revision_and_are_replayed_until_compacted() {
        let mut store = Store::default();
        let key = Key::new(GroupResource::new("", "services"), "demo", "web");
        let added = store.put(
            key.clone(),
            json!({"metadata": {"name": "web"}}),
            BTreeMap::new(),
        );
        assert_eq!((added.revision, added.kind), (1, ChangeKind::Added));
        let modified = store.put(
            key.clone(),
            json!({"metadata": {"name": "web"}}),
            BTreeMap::new(),
        );
        assert_eq!(modified.kind, ChangeKind::Modified);
        assert_eq!(modified.new["metadata"]["resourceVersion"], "2");
        let deleted = store.remove(&key).unwrap();
        assert_eq!((deleted.revision, deleted.kind), (3, ChangeKind::Deleted));
        assert_eq!(deleted.new["metadata"]["resourceVersion"], "3");
        assert!(store.remove(&key).is_none());
        assert_eq!(store.since(1).count(), 2);
        store.compact();
        assert_eq!((store.compacted(), store.since(0).count()), (3, 0));
    }
}
