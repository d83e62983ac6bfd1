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

/// Flow collections (`[`, `{`) nested deeper than this refuse the text
/// before the YAML parser runs: its simple-key bookkeeping costs time
/// quadratic in the nesting depth (80 KB of `{a: {a: …` took 24 s), and the
/// deserializer refuses anything deeper than 128 levels anyway.
const MAX_FLOW_DEPTH: usize = 256;

/// The deepest nesting of flow collections in `text`, skipping quoted
/// scalars and comments. Brackets inside plain scalars are counted too, so
/// this can only overestimate; hence the margin above the parser's limit.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut previous = '\n';
    while let Some(c) = chars.next() {
        match c {
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '#' if previous.is_whitespace() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            // Quotes open a scalar only where one starts.
            '"' if quote_may_open(previous) => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' if quote_may_open(previous) => {
                // An escaped '' ends the skip early: only overestimates.
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
            }
            _ => {}
        }
        previous = c;
    }
    deepest
}

fn quote_may_open(previous: char) -> bool {
    previous.is_whitespace() || matches!(previous, '[' | '{' | ',' | ':' | '-' | '?')
}

/// Parses every document of `text` and converts each object.
pub fn parse(text: &str) -> Result<Converted, SyntaxError> {
    let depth = flow_depth(text);
    if depth > MAX_FLOW_DEPTH {
        return Err(SyntaxError(serde::de::Error::custom(format!(
            "flow collections nested {depth} deep (limit {MAX_FLOW_DEPTH})"
        ))));
    }
    let mut result = Converted::default();
    let mut converted_rejections = Vec::new();
    let mut values = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // Read as YAML first (tags, non-string keys, .nan are valid YAML):
        // only a document that is not YAML at all refuses the whole text.
        let yaml = serde_yaml_ng::Value::deserialize(document).map_err(SyntaxError)?;
        // Valid YAML that JSON cannot hold rejects just that document; its
        // siblings in the same file are still served.
        match serde_json::to_value(yaml) {
            Ok(value) => flatten_lists(value, &mut values),
            Err(error) => result.rejections.push(Rejection {
                kind: "document".to_owned(),
                object: ObjectKey::new("-", format!("#{}", index + 1)),
                problem: Problem::Unparsable(error.to_string()),
                fatal: true,
            }),
        }
        // Converted document by document: the generic values of the whole
        // text are never alive at once (most of the agent's peak memory
        // on a large file).
        for value in values.drain(..) {
            let converted = convert(&value);
            result.objects.extend(converted.objects);
            converted_rejections.extend(converted.rejections);
        }
    }
    // Document-level problems first, as before.
    result.rejections.extend(converted_rejections);
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
                if snapshot.slices().contains_key(&slice.key) {
                    rejections.push(duplicate("EndpointSlice", &slice.key));
                } else {
                    snapshot.insert_slice(slice);
                }
            }
        }
    }
    (snapshot, rejections)
}

/// What one manifest text serves: [`parse`] then [`snapshot`]. The
/// rejections are the text's own (unparsable documents, invalid objects),
/// then its duplicates, as the file source reports them.
pub fn snapshot_from_yaml(text: &str) -> Result<(Snapshot, Vec<Rejection>), SyntaxError> {
    let converted = parse(text)?;
    let (snapshot, duplicates) = snapshot(converted.objects);
    let mut rejections = converted.rejections;
    rejections.extend(duplicates);
    Ok((snapshot, rejections))
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
        assert_eq!(snapshot.slices().len(), 1);
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        assert_eq!(
            flow_depth("a: [1, {b: [2]}]  # [[[[\nc: \"[[[[\" \nd: '[[ it''s'"),
            3
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&deep).is_err());
        assert!(parse(&format!("a: {}{}", "[".repeat(100), "]".repeat(100))).is_ok());
    }

    #[test]
    fn json_incompatible_documents_spare_their_siblings() {
        let converted = parse(&format!("? [1, 2]\n: x\n---\n{MANIFEST}")).expect("valid YAML");
        assert_eq!(converted.rejections[0].reason(), "unparsable");
        assert_eq!(converted.objects.len(), 2);
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

    #[test]
    fn snapshot_from_yaml_is_parse_then_snapshot() {
        let doubled = format!("{MANIFEST}\n---\n{MANIFEST}");
        let (snapshot, rejections) = snapshot_from_yaml(&doubled).expect("valid YAML");
        assert_eq!(snapshot.imports.len(), 1);
        assert_eq!(snapshot.slices().len(), 1);
        let reasons: Vec<_> = rejections.iter().map(Rejection::reason).collect();
        assert_eq!(
            reasons,
            [
                "unsupported_kind",
                "unsupported_kind",
                "conflict",
                "conflict"
            ],
            "the text's own rejections first, then the duplicates"
        );
        assert!(snapshot_from_yaml("a: [unclosed").is_err());
    }
}
