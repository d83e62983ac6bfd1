//! The server's state behind one lock: served resources, stored objects,
//! open watches, injected faults and what tests inspect afterwards; and the
//! consequences of writes every client sees alike: watch events, namespace
//! deletion, garbage collection of dependents, CRDs registering their
//! resources.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Duration,
};

use serde_json::{Value, json};

use super::{
    RequestRecord, ResourceId, crds,
    registry::{GroupResource, Registry},
    store::{Change, Key, Store},
    watch::OpenWatch,
};

/// Namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Paginated lists kept for their `continue` tokens; older ones expire.
const PAGES_LIMIT: usize = 1_000;

#[derive(Default)]
pub(crate) struct Faults {
    pub not_served: HashSet<ResourceId>,
    pub list_delay: HashMap<ResourceId, Duration>,
    pub unavailable: bool,
    pub watch_timeout_cap: Option<Duration>,
}

pub(crate) struct State {
    pub registry: Registry,
    pub store: Store,
    pub watches: Vec<OpenWatch>,
    pub faults: Faults,
    /// Whether requests and Events are kept for [`super::LocalApiServer`]'s
    /// inspection methods (tests); a long-running server keeps nothing.
    pub record: bool,
    pub posted_events: Vec<Value>,
    pub event_patches: Vec<Value>,
    pub requests: Vec<RequestRecord>,
    /// Remaining items of paginated lists, by continue token.
    pub pages: BTreeMap<u64, (u64, Vec<Value>)>,
    pub next_page: u64,
}

/// Now, as metadata timestamps are written.
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random (version 4) UUID.
fn uid() -> String {
    let mut bytes = [0u8; 16];
    // The OS RNG does not fail on Linux; zeros would still be a valid uid.
    let _ = getrandom::fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

pub(crate) fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub(crate) fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The fields a write compares to decide whether `metadata.generation`
/// moves: everything but metadata and status.
fn content(object: &Value) -> Value {
    let mut content = object.clone();
    if let Value::Object(map) = &mut content {
        for field in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(field);
        }
    }
    content
}

impl State {
    pub fn new(record: bool) -> Self {
        let mut state = Self {
            registry: Registry::builtin(),
            store: Store::default(),
            watches: Vec::new(),
            faults: Faults::default(),
            record,
            posted_events: Vec::new(),
            event_patches: Vec::new(),
            requests: Vec::new(),
            pages: BTreeMap::new(),
            next_page: 0,
        };
        for name in INITIAL_NAMESPACES {
            state.ensure_namespace(name);
        }
        state
    }

    /// Sets what the server owns in `object`'s metadata for a write over
    /// `old` (`None`: a create): uid, creationTimestamp, generation, and a
    /// deletion in progress.
    pub fn stamp(&self, object: &mut Value, old: Option<&Value>, generation: bool) {
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let metadata = &mut object["metadata"];
        if let Some(map) = metadata.as_object_mut() {
            map.remove("managedFields");
            map.remove("resourceVersion");
        }
        match old {
            Some(old) => {
                for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    match old["metadata"].get(field) {
                        Some(value) => metadata[field] = value.clone(),
                        None => {
                            if let Some(map) = metadata.as_object_mut() {
                                map.remove(field);
                            }
                        }
                    }
                }
                if generation {
                    let before = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    let bump = i64::from(content(old) != content(object));
                    object["metadata"]["generation"] = json!(before + bump);
                }
            }
            None => {
                if metadata.get("uid").is_none_or(|u| !u.is_string()) {
                    metadata["uid"] = json!(uid());
                }
                if metadata.get("creationTimestamp").is_none_or(Value::is_null) {
                    metadata["creationTimestamp"] = json!(now());
                }
                if let Some(map) = metadata.as_object_mut() {
                    map.remove("deletionTimestamp");
                }
                if generation {
                    object["metadata"]["generation"] = json!(1);
                }
            }
        }
    }

    /// Stores an object and tells the watches.
    pub fn put(&mut self, key: Key, object: Value, applied: BTreeMap<String, Value>) -> Change {
        if key.resource == crd_resource() {
            self.register_crd(&object);
        }
        let change = self.store.put(key, object, applied);
        self.notify(&change);
        change
    }

    /// Deletes an object now, with what follows from it: a namespace's
    /// objects go with it, a CRD's resource and objects too, dependents
    /// left without owners are collected, and a terminating namespace that
    /// became empty goes.
    pub fn remove(&mut self, key: &Key) -> Option<Change> {
        let change = self.store.remove(key)?;
        self.notify(&change);
        if key.resource == namespace_resource() {
            let inside: Vec<Key> = self
                .store
                .all()
                .filter(|(k, _)| k.namespace == key.name && !k.namespace.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            for key in inside {
                self.remove(&key);
            }
        }
        if key.resource == crd_resource()
            && let Ok(resource) = crds::resource_of(&change.new)
        {
            let group_resource = resource.group_resource();
            let objects: Vec<Key> = self
                .store
                .list(&group_resource, None)
                .map(|(k, _)| k.clone())
                .collect();
            for key in objects {
                self.remove(&key);
            }
            self.registry.remove(&group_resource);
        }
        self.collect_garbage(&change.new);
        if !key.namespace.is_empty() {
            self.finish_namespace(&key.namespace);
        }
        Some(change)
    }

    /// Deletes as a client's DELETE does: an object with finalizers is only
    /// marked (deletionTimestamp) until they are removed; a namespace
    /// terminates, deleting its objects first. Returns the object's last
    /// state.
    pub fn delete(&mut self, key: &Key) -> Option<Value> {
        let stored = self.store.get(key)?.clone();
        let mut object = stored.object;
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let namespace = key.resource == namespace_resource();
        if !finalizers && !namespace {
            return self.remove(key).map(|change| change.new);
        }
        if object["metadata"].get("deletionTimestamp").is_none() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if namespace {
                object["status"]["phase"] = json!("Terminating");
            }
            object = self.put(key.clone(), object, stored.applied).new;
        }
        if namespace {
            let inside: Vec<Key> = self
                .store
                .all()
                .filter(|(k, _)| k.namespace == key.name)
                .map(|(k, _)| k.clone())
                .collect();
            for key in inside {
                self.delete(&key);
            }
            if !finalizers {
                self.finish_namespace(&key.name);
            }
        }
        Some(self.store.get(key).map_or(object, |s| s.object.clone()))
    }

    /// Removes a terminating namespace once it holds nothing.
    fn finish_namespace(&mut self, name: &str) {
        let key = Key::new(namespace_resource(), "", name);
        let terminating = self
            .store
            .get(&key)
            .is_some_and(|ns| ns.object["metadata"].get("deletionTimestamp").is_some());
        if terminating && !self.store.all().any(|(k, _)| k.namespace == name) {
            self.remove(&key);
        }
    }

    /// Deletes objects whose every owner (ownerReferences) is gone, as the
    /// garbage collector does in the background.
    fn collect_garbage(&mut self, deleted: &Value) {
        let Some(uid) = deleted["metadata"]["uid"].as_str() else {
            return;
        };
        let uids: BTreeSet<String> = self
            .store
            .all()
            .filter_map(|(_, s)| s.object["metadata"]["uid"].as_str().map(str::to_owned))
            .collect();
        let orphans: Vec<Key> = self
            .store
            .all()
            .filter(|(_, stored)| {
                let owners = stored.object["metadata"]["ownerReferences"].as_array();
                owners.is_some_and(|owners| {
                    owners.iter().any(|o| o["uid"] == uid)
                        && owners
                            .iter()
                            .all(|o| o["uid"].as_str().is_none_or(|u| !uids.contains(u)))
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in orphans {
            self.delete(&key);
        }
    }

    fn notify(&mut self, change: &Change) {
        self.watches.retain(|watch| watch.send_change(change));
    }

    /// Creates a namespace unless it exists.
    pub fn ensure_namespace(&mut self, name: &str) {
        let key = Key::new(namespace_resource(), "", name);
        if name.is_empty() || self.store.get(&key).is_some() {
            return;
        }
        let mut namespace = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        self.stamp(&mut namespace, None, false);
        self.put(key, namespace, BTreeMap::new());
    }

    /// Serves the resource a CRD object defines (invalid ones were refused
    /// before they were stored).
    fn register_crd(&mut self, crd: &Value) {
        if let Ok(resource) = crds::resource_of(crd) {
            self.registry.insert(resource);
        }
    }

    /// Keeps a paginated list's rest; returns its continue token.
    pub fn keep_page(&mut self, revision: u64, rest: Vec<Value>) -> String {
        self.next_page += 1;
        self.pages.insert(self.next_page, (revision, rest));
        while self.pages.len() > PAGES_LIMIT {
            self.pages.pop_first();
        }
        format!("page-{}", self.next_page)
    }

    pub fn take_page(&mut self, token: &str) -> Option<(u64, Vec<Value>)> {
        let id = token.strip_prefix("page-")?.parse().ok()?;
        self.pages.remove(&id)
    }
}

pub(crate) fn namespace_resource() -> GroupResource {
    GroupResource::new("", "namespaces")
}

pub(crate) fn crd_resource() -> GroupResource {
    GroupResource::new("apiextensions.k8s.io", "customresourcedefinitions")
}

/// An object as served in one version: conversion is `None`, only
/// `apiVersion` and `kind` change.
pub(crate) fn view(object: &Value, api_version: &str, kind: &str) -> Value {
    let mut object = object.clone();
    if let Value::Object(map) = &mut object {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    object
}
