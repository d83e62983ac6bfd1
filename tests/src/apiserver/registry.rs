//! The resources the server serves: the built-in kinds below and the
//! resources of the CustomResourceDefinitions it was given (see
//! [`super::crds`]), with what discovery, the verbs and the patch
//! strategies need to know about each.

use std::fmt;

use serde_json::Value;

use super::schema::{self, ListType};

/// A resource across its versions: the key of its store (every version of
/// a CRD shares one store, as with conversion strategy `None`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct GroupResource {
    pub group: String,
    pub plural: String,
}

impl GroupResource {
    pub fn new(group: &str, plural: &str) -> Self {
        Self {
            group: group.to_owned(),
            plural: plural.to_owned(),
        }
    }
}

/// `plural.group` (or `plural` for the core group), as the apiserver names
/// a resource in its messages.
impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.plural)
        } else {
            write!(f, "{}.{}", self.plural, self.group)
        }
    }
}

/// A printer column of `kubectl get` (a CRD's `additionalPrinterColumns`).
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served version of a resource.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub name: String,
    /// Whether `.../NAME/status` is a subresource: writes there change only
    /// `status`, and other writes leave `status` alone.
    pub status: bool,
    pub columns: Vec<Column>,
    /// A CRD's `openAPIV3Schema`: defaults, pruning, list types.
    pub schema: Option<Value>,
}

/// How a built-in kind's lists merge, by field path (list items do not
/// add a path segment): the `patchMergeKey` of strategic merge patch and
/// the list type of server-side apply, as in the Go types.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListRule {
    pub path: &'static str,
    /// Strategic merge patch: `Some(key)` merges items by `key`, `Some("")`
    /// merges a list of scalars as a set; `None` replaces the list.
    pub merge_key: Option<&'static str>,
    pub apply: ApplyRule,
}

/// A built-in list's type in server-side apply.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ApplyRule {
    Set,
    Map(&'static [&'static str]),
}

impl ApplyRule {
    fn list_type(self) -> ListType {
        match self {
            Self::Set => ListType::Set,
            Self::Map(keys) => ListType::Map(keys.iter().map(|k| (*k).to_owned()).collect()),
        }
    }
}

/// Lists of `metadata`, the same in every kind.
const METADATA_LISTS: &[ListRule] = &[
    ListRule {
        path: "metadata.ownerReferences",
        merge_key: Some("uid"),
        apply: ApplyRule::Map(&["uid"]),
    },
    ListRule {
        path: "metadata.finalizers",
        merge_key: Some(""),
        apply: ApplyRule::Set,
    },
];

#[derive(Clone, Debug)]
pub(crate) struct Resource {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Served versions, the preferred one first.
    pub versions: Vec<Version>,
    /// From a CRD: list items carry `apiVersion`/`kind`, updates need a
    /// resourceVersion, strategic merge patch is refused.
    pub custom: bool,
    /// `metadata.generation` is kept (bumped when more than metadata and
    /// status changes).
    pub generation: bool,
    /// `PUT` of a missing object creates it (Endpoints, Events, Leases).
    pub create_on_update: bool,
    pub lists: &'static [ListRule],
}

impl Resource {
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The rule of the list at `path` (built-in kinds and `metadata`).
    pub fn list_rule(&self, path: &str) -> Option<&ListRule> {
        self.lists
            .iter()
            .chain(METADATA_LISTS)
            .find(|rule| rule.path == path)
    }

    /// How server-side apply merges the list at `path` (field names).
    pub fn apply_list_type(&self, version: &str, path: &[&str]) -> ListType {
        if let Some(rule) = self.list_rule(&path.join(".")) {
            return rule.apply.list_type();
        }
        self.version(version)
            .and_then(|v| v.schema.as_ref())
            .map_or(ListType::Atomic, |schema| schema::list_type(schema, path))
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    status: bool,
    generation: bool,
    create_on_update: bool,
    lists: &'static [ListRule],
}

/// The built-in kinds served, in the apiserver's discovery order.
const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        short_names: &["ns"],
        namespaced: false,
        status: true,
        generation: false,
        create_on_update: false,
        lists: &[ListRule {
            path: "status.conditions",
            merge_key: Some("type"),
            apply: ApplyRule::Map(&["type"]),
        }],
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        short_names: &["svc"],
        namespaced: true,
        status: true,
        generation: false,
        create_on_update: false,
        // The Go type merges ports by `port` alone in strategic merge
        // patches, by port and protocol in server-side apply.
        lists: &[
            ListRule {
                path: "spec.ports",
                merge_key: Some("port"),
                apply: ApplyRule::Map(&["port", "protocol"]),
            },
            ListRule {
                path: "status.conditions",
                merge_key: Some("type"),
                apply: ApplyRule::Map(&["type"]),
            },
        ],
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        short_names: &["ep"],
        namespaced: true,
        status: false,
        generation: false,
        create_on_update: true,
        lists: &[],
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        namespaced: true,
        status: false,
        generation: false,
        create_on_update: true,
        lists: &[],
    },
    Builtin {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        short_names: &[],
        namespaced: true,
        status: false,
        generation: true,
        create_on_update: false,
        // `endpoints` and `ports` are atomic lists: replaced whole.
        lists: &[],
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        namespaced: true,
        status: false,
        generation: false,
        create_on_update: true,
        lists: &[],
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        short_names: &[],
        namespaced: true,
        status: false,
        generation: false,
        create_on_update: true,
        lists: &[],
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        short_names: &["crd", "crds"],
        namespaced: false,
        status: true,
        generation: true,
        create_on_update: false,
        lists: &[],
    },
];

/// Every resource served; built-in groups first, then those of CRDs by
/// group name (the order the apiserver lists groups in, which decides the
/// group `kubectl get PLURAL` picks when two groups have that plural).
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    resources: Vec<Resource>,
}

impl Registry {
    pub fn builtin() -> Self {
        let resources = BUILTINS
            .iter()
            .map(|b| Resource {
                group: b.group.to_owned(),
                plural: b.plural.to_owned(),
                singular: b.singular.to_owned(),
                kind: b.kind.to_owned(),
                list_kind: format!("{}List", b.kind),
                short_names: b.short_names.iter().map(|s| (*s).to_owned()).collect(),
                categories: Vec::new(),
                namespaced: b.namespaced,
                versions: vec![Version {
                    name: b.version.to_owned(),
                    status: b.status,
                    columns: Vec::new(),
                    schema: None,
                }],
                custom: false,
                generation: b.generation,
                create_on_update: b.create_on_update,
                lists: b.lists,
            })
            .collect();
        Self { resources }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn get(&self, resource: &GroupResource) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == resource.group && r.plural == resource.plural)
    }

    /// The resource served at `group/version` under `plural`.
    pub fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.version(version).is_some())
    }

    /// The resource of objects with this `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Resource> {
        let (group, version) = split_api_version(api_version);
        self.resources
            .iter()
            .find(|r| r.group == group && r.kind == kind && r.version(version).is_some())
    }

    /// Adds (or replaces) a CRD's resource.
    pub fn insert(&mut self, resource: Resource) {
        self.remove(&resource.group_resource());
        let builtin = self.resources.iter().filter(|r| !r.custom).count();
        let at = builtin
            + self.resources[builtin..]
                .iter()
                .take_while(|r| r.group <= resource.group)
                .count();
        self.resources.insert(at, resource);
    }

    pub fn remove(&mut self, resource: &GroupResource) -> Option<Resource> {
        let at = self
            .resources
            .iter()
            .position(|r| r.custom && r.group == resource.group && r.plural == resource.plural)?;
        Some(self.resources.remove(at))
    }

    /// Every `(group, versions)` served, in discovery order; versions in
    /// preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for resource in &self.resources {
            let at = match groups.iter().position(|(g, _)| *g == resource.group) {
                Some(at) => at,
                None => {
                    groups.push((resource.group.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            for version in &resource.versions {
                if !groups[at].1.contains(&version.name) {
                    groups[at].1.push(version.name.clone());
                }
            }
        }
        for (_, versions) in &mut groups {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups
    }
}

/// `("group", "version")` of an apiVersion (`("", "v1")` for `v1`).
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// The Kubernetes version order: GA over beta over alpha, higher numbers
/// first (`v1` > `v1beta2` > `v1beta1` > `v1alpha1`); anything else last.
pub(crate) fn version_priority(version: &str) -> (u8, u64, u64) {
    let Some(rest) = version.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u64>() else {
        return (0, 0, 0);
    };
    let suffix = &rest[digits..];
    let minor = |tail: &str| tail.parse::<u64>().ok();
    match suffix {
        "" => (3, major, 0),
        s => match (s.strip_prefix("beta"), s.strip_prefix("alpha")) {
            (Some(n), _) => minor(n).map_or((0, 0, 0), |n| (2, major, n)),
            (_, Some(n)) => minor(n).map_or((0, 0, 0), |n| (1, major, n)),
            _ => (0, 0, 0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut versions = vec!["v1alpha1", "v2", "v1beta1", "v1", "v1beta2", "foo"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            versions,
            ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn lookups() {
        let registry = Registry::builtin();
        assert_eq!(
            registry.by_kind("v1", "Service").unwrap().plural,
            "services"
        );
        assert_eq!(
            registry.by_kind("events.k8s.io/v1", "Event").unwrap().group,
            "events.k8s.io"
        );
        assert!(registry.by_kind("v2", "Service").is_none());
        assert!(registry.by_plural("", "v1", "services").is_some());
        assert_eq!(
            GroupResource::new("discovery.k8s.io", "endpointslices").to_string(),
            "endpointslices.discovery.k8s.io"
        );
    }
}
