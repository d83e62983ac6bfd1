//! Manifest text (multi-document YAML or JSON, as `kubectl get -o yaml`
//! prints, `kind: List` included) → model objects.

use serde::Deserialize;
use serde_json::Value;

use super::{
    ObjectKey, Problem, Rejection, Snapshot,
    convert::{Converted, Object, convert},
};

/// The text is not YAML at all; the caller keeps what it had.
#[derive(Debug, thiserror::Error)]
#[error("YAML syntax error: {0}")]
pub struct SyntaxError(#[source] pub serde_yaml_ng::Error);

/// Parses every document of `text` and converts each object.
pub fn parse(text: &str) -> Result<Converted, SyntaxError> {
    let mut values = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(SyntaxError)?;
        flatten_lists(value, &mut values);
    }
    let mut result = Converted::default();
    for value in &values {
        let converted = convert(value);
        result.objects.extend(converted.objects);
        result.rejections.extend(converted.rejections);
    }
    Ok(result)
}

/// Empty documents are skipped; `kind: List` (and `*List`) objects are
/// expanded into their items.
fn flatten_lists(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Object(mut map)
            if map
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|kind| kind.ends_with("List"))
                && map.get("items").is_some_and(Value::is_array) =>
        {
            if let Some(Value::Array(items)) = map.remove("items") {
                for item in items {
                    flatten_lists(item, out);
                }
            }
        }
        other => out.push(other),
    }
}

/// Builds a snapshot from objects; a second object of the same kind and
/// name replaces nothing and is rejected, so the outcome does not depend on
/// file order beyond "first wins".
pub fn snapshot(objects: impl IntoIterator<Item = Object>) -> (Snapshot, Vec<Rejection>) {
    let mut snapshot = Snapshot::default();
    let mut rejections = Vec::new();
    let duplicate = |kind: &str, key: &ObjectKey| Rejection {
        kind: kind.to_owned(),
        object: key.clone(),
        problem: Problem::Conflict("defined more than once; the first definition wins".into()),
        fatal: true,
    };
    for object in objects {
        match object {
            Object::Import(import) => {
                if snapshot.imports.contains_key(&import.key) {
                    rejections.push(duplicate("ServiceImport", &import.key));
                } else {
                    snapshot.imports.insert(import.key.clone(), import);
                }
            }
            Object::Slice(slice) => {
                if snapshot.slices.contains_key(&slice.key) {
                    rejections.push(duplicate("EndpointSlice", &slice.key));
                } else {
                    snapshot.slices.insert(slice.key.clone(), slice);
                }
            }
        }
    }
    (snapshot, rejections)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
# comment
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: web, namespace: demo}
spec:
  type: ClusterSetIP
  ips: ["10.96.100.10"]
  ports: [{name: http, protocol: TCP, port: 80}]
---
---
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-a
    namespace: demo
    labels: {multicluster.kubernetes.io/service-name: web, multicluster.kubernetes.io/source-cluster: a}
  addressType: IPv4
  ports: [{name: http, protocol: TCP, port: 8080}]
  endpoints: [{addresses: ["10.101.1.10"]}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: unrelated, namespace: demo}
"#;

    #[test]
    fn parses_multi_document_and_lists() {
        let converted = parse(MANIFEST).expect("valid YAML");
        assert_eq!(converted.objects.len(), 2);
        assert_eq!(converted.rejections.len(), 1, "the ConfigMap is rejected");
        assert_eq!(converted.rejections[0].reason(), "unsupported_kind");
        let (snapshot, duplicates) = snapshot(converted.objects);
        assert!(duplicates.is_empty());
        assert_eq!(snapshot.imports.len(), 1);
        assert_eq!(snapshot.slices.len(), 1);
    }

    #[test]
    fn syntax_errors_are_reported_not_panicked() {
        assert!(parse("a: [unclosed").is_err());
        assert!(parse("key: value\n  - bad indent: [").is_err());
    }

    #[test]
    fn duplicate_objects_first_wins() {
        let doubled = format!("{MANIFEST}\n---\n{MANIFEST}");
        let converted = parse(&doubled).expect("valid YAML");
        let (snapshot, duplicates) = snapshot(converted.objects);
        assert_eq!(snapshot.imports.len(), 1);
        assert_eq!(duplicates.len(), 2);
    }
}
