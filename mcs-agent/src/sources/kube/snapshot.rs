//! Snapshot building: the stores' objects converted into the model (an
//! object's conversion is reused while its resourceVersion is unchanged),
//! with a reference to every converted object for Events.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, discovery::v1::EndpointSlice as K8sEndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use serde_json::Value;
use tracing::instrument;

use super::watchers::{Stores, Watched};
use crate::{
    model::{
        Flavour, ObjectKey, Rejection,
        convert::{self, LABEL_MC_SERVICE_NAME, LABEL_SERVICE_NAME, Object},
        manifest,
    },
    sources::{ObjectRef, References, SourceUpdate},
};

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether a slice is converted: every slice with the MCS label (conversion
/// itself skips those of the ordinary controller, as for files), and a
/// slice of an ordinary Service only when an import's derived-service
/// annotation names that Service. The slices of every other Service are
/// not converted, so they cannot cause rejections or Events.
fn slice_is_relevant(slice: &K8sEndpointSlice, derived: &BTreeSet<ObjectKey>) -> bool {
    let labels = slice.metadata.labels.as_ref();
    let label = |key: &str| {
        labels
            .and_then(|labels| labels.get(key))
            .map(String::as_str)
    };
    let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
    if label(LABEL_MC_SERVICE_NAME).is_some() {
        return true;
    }
    label(LABEL_SERVICE_NAME)
        .is_some_and(|service| derived.contains(&ObjectKey::new(namespace, service)))
}

/// One object's conversion, kept while its resourceVersion is unchanged.
struct Cached {
    resource_version: String,
    objects: Vec<Object>,
    rejections: Vec<Rejection>,
}

/// Converts store contents, reusing conversions of unchanged objects.
#[derive(Default)]
pub(super) struct SnapshotBuilder {
    cache: HashMap<(usize, ObjectKey), Cached>,
}

/// Objects, rejections and references gathered during one build.
#[derive(Default)]
struct Gathered {
    objects: Vec<Object>,
    rejections: Vec<Rejection>,
    references: References,
}

impl SnapshotBuilder {
    /// Converts one stored object (or takes its cached conversion).
    fn convert(
        &mut self,
        next: &mut HashMap<(usize, ObjectKey), Cached>,
        gathered: &mut Gathered,
        source: Watched,
        key: ObjectKey,
        reference: ObjectReference,
        raw: impl FnOnce() -> Value,
    ) {
        let resource_version = reference.resource_version.clone().unwrap_or_default();
        let cache_key = (source.index(), key.clone());
        let cached = match self.cache.remove(&cache_key) {
            Some(cached)
                if !resource_version.is_empty() && cached.resource_version == resource_version =>
            {
                cached
            }
            _ => {
                let converted = convert::convert(&raw());
                Cached {
                    resource_version,
                    objects: converted.objects,
                    rejections: converted.rejections,
                }
            }
        };
        gathered.objects.extend(cached.objects.iter().cloned());
        gathered
            .rejections
            .extend(cached.rejections.iter().cloned());
        let kind = reference.kind.unwrap_or_default();
        gathered
            .references
            .entry((kind.clone(), key.clone()))
            .or_insert_with(|| ObjectRef {
                api_version: reference.api_version.unwrap_or_default(),
                kind,
                key,
                uid: reference.uid,
            });
        next.insert(cache_key, cached);
    }

    #[instrument(level = "debug", skip_all)]
    pub(super) fn build(&mut self, stores: &Stores) -> SourceUpdate {
        let mut next = HashMap::new();
        let mut gathered = Gathered::default();

        let mut mcs_api_keys = HashSet::new();
        for (watched, resource, store) in &stores.imports {
            for import in sorted(store.state(), |import| key_of(&import.metadata)) {
                let key = key_of(&import.metadata);
                // v1alpha1 and v1beta1 are two views of one CRD: an object
                // listed in both is the same object, taken once (v1beta1).
                if *watched != Watched::Imports(Flavour::Gke) && !mcs_api_keys.insert(key.clone()) {
                    continue;
                }
                let reference = import.object_ref(resource);
                self.convert(&mut next, &mut gathered, *watched, key, reference, || {
                    serde_json::to_value(&*import).unwrap_or(Value::Null)
                });
            }
        }

        let derived: BTreeSet<ObjectKey> = gathered
            .objects
            .iter()
            .filter_map(|object| match object {
                Object::Import(import) => import
                    .derived_service
                    .as_ref()
                    .map(|service| ObjectKey::new(import.key.namespace.clone(), service.clone())),
                Object::Slice(_) => None,
            })
            .collect();

        for (watched, store) in [
            (Watched::McsSlices, &stores.mcs_slices),
            (Watched::ServiceSlices, &stores.service_slices),
        ] {
            for slice in sorted(store.state(), |slice| key_of(&slice.metadata)) {
                if !slice_is_relevant(&slice, &derived) {
                    continue;
                }
                let key = key_of(&slice.metadata);
                let reference = slice.object_ref(&());
                self.convert(&mut next, &mut gathered, watched, key, reference, || {
                    serde_json::to_value(&*slice).unwrap_or(Value::Null)
                });
            }
        }

        for endpoints in sorted(stores.endpoints.state(), |e| key_of(&e.metadata)) {
            let key = key_of(&endpoints.metadata);
            if !derived.contains(&key) {
                continue;
            }
            let reference = endpoints.object_ref(&());
            self.convert(
                &mut next,
                &mut gathered,
                Watched::Endpoints,
                key,
                reference,
                || serde_json::to_value(&*endpoints).unwrap_or(Value::Null),
            );
        }

        self.cache = next;
        // A GKE and an mcs-api import of the same name are distinct objects:
        // the first (mcs-api) wins and the other is rejected, as in files.
        let (snapshot, duplicates) = manifest::snapshot(gathered.objects);
        let mut rejections = gathered.rejections;
        rejections.extend(duplicates);
        SourceUpdate {
            snapshot: Arc::new(snapshot),
            rejections,
            references: Arc::new(gathered.references),
            ..SourceUpdate::default()
        }
    }
}

fn sorted<K>(mut items: Vec<Arc<K>>, key: impl Fn(&K) -> ObjectKey) -> Vec<Arc<K>> {
    items.sort_by_cached_key(|item| key(item));
    items
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::convert::{LABEL_MANAGED_BY, MANAGED_BY_ENDPOINTSLICE_CONTROLLER};

    #[test]
    fn slices_of_ordinary_services_are_relevant_only_when_derived() {
        let slice = |labels: Value| -> K8sEndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "s", "namespace": "demo", "labels": labels},
                "addressType": "IPv4",
                "endpoints": [],
            }))
            .unwrap()
        };
        let derived = BTreeSet::from([ObjectKey::new("demo", "gke-mcs-x")]);
        assert!(slice_is_relevant(
            &slice(json!({LABEL_MC_SERVICE_NAME: "web"})),
            &derived
        ));
        assert!(slice_is_relevant(
            &slice(
                json!({LABEL_MC_SERVICE_NAME: "web", LABEL_MANAGED_BY: MANAGED_BY_ENDPOINTSLICE_CONTROLLER})
            ),
            &derived
        ));
        assert!(slice_is_relevant(
            &slice(json!({LABEL_SERVICE_NAME: "gke-mcs-x"})),
            &derived
        ));
        assert!(!slice_is_relevant(
            &slice(json!({LABEL_SERVICE_NAME: "kubernetes"})),
            &derived
        ));
    }
}
