//! CustomResourceDefinitions: read from YAML files (the repository's
//! `deploy/crds/`) or created through the API, each becomes a served
//! [`Resource`] whose versions share one store.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::{Value, json};

use super::registry::{Column, Resource, Version, version_priority};

/// A CRD file that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not YAML: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {kind:?} is not a CustomResourceDefinition")]
    NotACrd { path: PathBuf, kind: String },
    #[error("{path}: CustomResourceDefinition {name:?}: {message}")]
    Invalid {
        path: PathBuf,
        name: String,
        message: String,
    },
}

/// Every CRD in the `.yaml`/`.yml`/`.json` files of `dir` (not
/// recursive), in file name order; a file may hold several documents.
pub fn load_dir(dir: &Path) -> Result<Vec<Value>, CrdError> {
    let read_error = |source| CrdError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    files.retain(|path| {
        path.extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
    });
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| CrdError::Read {
            path: path.clone(),
            source,
        })?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).map_err(|source| CrdError::Parse {
                path: path.clone(),
                source,
            })?;
            if value.is_null() {
                continue;
            }
            if value["kind"] != "CustomResourceDefinition" {
                return Err(CrdError::NotACrd {
                    path,
                    kind: value["kind"].as_str().unwrap_or_default().to_owned(),
                });
            }
            resource_of(&value).map_err(|message| CrdError::Invalid {
                path: path.clone(),
                name: value["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message,
            })?;
            crds.push(value);
        }
    }
    Ok(crds)
}

fn text<'a>(value: &'a Value, what: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{what}: Required value"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The resource a CRD defines, or what is wrong with it (in the
/// apiserver's `field: problem` style).
pub(crate) fn resource_of(crd: &Value) -> Result<Resource, String> {
    let spec = &crd["spec"];
    let group = text(&spec["group"], "spec.group")?;
    let names = &spec["names"];
    let plural = text(&names["plural"], "spec.names.plural")?;
    let kind = text(&names["kind"], "spec.names.kind")?;
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope: Unsupported value: must be Namespaced or Cluster".into()),
    };
    let all = spec["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if all.is_empty() {
        return Err("spec.versions: Required value".into());
    }
    if all.iter().filter(|v| v["storage"] == true).count() != 1 {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    let mut versions = Vec::new();
    for version in all.iter().filter(|v| v["served"] == true) {
        versions.push(Version {
            name: text(&version["name"], "spec.versions[].name")?.to_owned(),
            status: version["subresources"].get("status").is_some(),
            columns: version["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| Column {
                    name: c["name"].as_str().unwrap_or_default().to_owned(),
                    type_: c["type"].as_str().unwrap_or("string").to_owned(),
                    format: c["format"].as_str().unwrap_or_default().to_owned(),
                    description: c["description"].as_str().unwrap_or_default().to_owned(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                })
                .collect(),
            schema: version["schema"].get("openAPIV3Schema").cloned(),
        });
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(&v.name)));
    Ok(Resource {
        group: group.to_owned(),
        plural: plural.to_owned(),
        singular: names["singular"]
            .as_str()
            .map_or_else(|| kind.to_lowercase(), str::to_owned),
        kind: kind.to_owned(),
        list_kind: names["listKind"]
            .as_str()
            .map_or_else(|| format!("{kind}List"), str::to_owned),
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        namespaced,
        versions,
        custom: true,
        generation: true,
        create_on_update: false,
        lists: &[],
    })
}

/// The status the apiserver gives an accepted CRD.
pub(crate) fn established_status(crd: &Value, now: &str) -> Value {
    let condition = |type_: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": "True", "lastTransitionTime": now,
            "reason": reason, "message": message})
    };
    let storage: Vec<&Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| &v["name"])
        .collect();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": storage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing", "shortNames": ["th"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [{"name": "Type", "type": "string", "jsonPath": ".spec.type"}]},
                    {"name": "v2", "served": false, "storage": false},
                ],
            },
        })
    }

    #[test]
    fn a_crd_becomes_a_resource_with_its_served_versions_preferred_first() {
        let resource = resource_of(&crd()).unwrap();
        assert_eq!(resource.kind, "Thing");
        assert_eq!(resource.list_kind, "ThingList");
        assert_eq!(resource.singular, "thing");
        assert_eq!(resource.short_names, ["th"]);
        let versions: Vec<(&str, bool)> = resource
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.status))
            .collect();
        assert_eq!(versions, [("v1", true), ("v1alpha1", false)]);
        assert_eq!(resource.versions[0].columns[0].json_path, ".spec.type");
    }

    #[test]
    fn invalid_crds_are_refused_with_the_field_named() {
        let mut bad = crd();
        bad["metadata"]["name"] = json!("other.example.com");
        assert!(resource_of(&bad).unwrap_err().starts_with("metadata.name"));
        let mut bad = crd();
        bad["spec"]["versions"][0]["storage"] = json!(true);
        assert!(resource_of(&bad).unwrap_err().contains("exactly one"));
        let mut bad = crd();
        bad["spec"]["scope"] = json!("Galaxy");
        assert!(resource_of(&bad).unwrap_err().starts_with("spec.scope"));
    }

    #[test]
    fn the_repository_crds_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        let crds = load_dir(&dir).unwrap();
        assert!(
            crds.iter()
                .any(|c| c["metadata"]["name"] == "serviceimports.multicluster.x-k8s.io")
        );
    }
}
