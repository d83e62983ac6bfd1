//! What the server takes from a CRD's structural schema
//! (`openAPIV3Schema`), as the apiserver does: defaults for missing fields,
//! pruning of fields the schema does not declare (unless
//! `x-kubernetes-preserve-unknown-fields`), and the list types
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`) server-side
//! apply merges by. Types, formats, enums and patterns are not validated.

use serde_json::{Map, Value};

/// How server-side apply merges a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced whole (the default).
    Atomic,
    /// Scalars, merged as a set.
    Set,
    /// Objects merged by the values of these keys.
    Map(Vec<String>),
}

/// The schema node of the field at `path` (field names from the root;
/// list items add no segment).
fn node_at<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut node = schema;
    for field in path {
        node = items(node);
        node = node
            .get("properties")
            .and_then(|p| p.get(*field))
            .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
    }
    Some(node)
}

fn items(node: &Value) -> &Value {
    match node.get("items") {
        Some(items) if node["type"] == "array" => items,
        _ => node,
    }
}

/// The list type of the list at `path` in `schema`.
pub(crate) fn list_type(schema: &Value, path: &[&str]) -> ListType {
    let Some(node) = node_at(schema, path) else {
        return ListType::Atomic;
    };
    match node["x-kubernetes-list-type"].as_str() {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            node["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => ListType::Atomic,
    }
}

/// Fills in the schema's `default`s of missing fields, under fields that
/// are present (as the apiserver defaults on every read and write).
pub(crate) fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Object(properties)) = schema.get("properties") {
                for (name, property) in properties {
                    match object.get_mut(name) {
                        Some(child) => apply_defaults(child, property),
                        None => {
                            if let Some(default) = property.get("default") {
                                object.insert(name.clone(), default.clone());
                            }
                        }
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for child in object.values_mut() {
                    apply_defaults(child, additional);
                }
            }
        }
        Value::Array(list) => {
            if let Some(items) = schema.get("items") {
                for item in list {
                    apply_defaults(item, items);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields `schema` does not declare; returns their paths
/// (`.spec.foo`), which a `fieldValidation=Strict` write refuses. At the
/// root, `apiVersion`, `kind` and `metadata` always stay.
pub(crate) fn prune(value: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Value::Object(object) = value {
        let metadata = ["apiVersion", "kind", "metadata"].map(|key| (key, object.remove(key)));
        prune_node(value, schema, "", &mut pruned);
        if let Value::Object(object) = value {
            for (key, kept) in metadata {
                if let Some(kept) = kept {
                    object.insert(key.to_owned(), kept);
                }
            }
        }
    }
    pruned
}

fn prune_node(value: &mut Value, schema: &Value, path: &str, pruned: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    match value {
        Value::Object(object) => prune_object(object, schema, preserve, path, pruned),
        Value::Array(list) => {
            if let Some(items) = schema.get("items") {
                for item in list {
                    prune_node(item, items, &format!("{path}[]"), pruned);
                }
            }
        }
        _ => {}
    }
}

fn prune_object(
    object: &mut Map<String, Value>,
    schema: &Value,
    preserve: bool,
    path: &str,
    pruned: &mut Vec<String>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let declares_fields = properties.is_some() || additional.is_some();
    if !declares_fields && (preserve || schema.get("type").is_none()) {
        return;
    }
    object.retain(|name, child| {
        let child_path = format!("{path}.{name}");
        let child_schema = properties
            .and_then(|p| p.get(name))
            .or_else(|| additional.filter(|a| a.is_object()));
        match child_schema {
            Some(child_schema) => {
                prune_node(child, child_schema, &child_path, pruned);
                true
            }
            None if preserve || additional == Some(&Value::Bool(true)) => true,
            None => {
                pruned.push(child_path);
                false
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "type": {"type": "string", "default": "ClusterSetIP"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "ports": {"type": "array", "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["port", "protocol"],
                        "items": {"type": "object", "properties": {
                            "port": {"type": "integer"},
                            "protocol": {"type": "string", "default": "TCP"}}}},
                    "ips": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }},
            },
        })
    }

    #[test]
    fn list_types_by_path() {
        let schema = schema();
        assert_eq!(
            list_type(&schema, &["spec", "ports"]),
            ListType::Map(vec!["port".into(), "protocol".into()])
        );
        assert_eq!(list_type(&schema, &["spec", "ips"]), ListType::Set);
        assert_eq!(list_type(&schema, &["spec", "other"]), ListType::Atomic);
    }

    #[test]
    fn defaults_fill_missing_fields_under_present_ones() {
        let mut value = json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}});
        apply_defaults(&mut value, &schema());
        assert_eq!(
            value,
            json!({"spec": {"type": "ClusterSetIP", "ports": [
                {"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}})
        );
        let mut empty = json!({});
        apply_defaults(&mut empty, &schema());
        assert_eq!(empty, json!({}), "no spec, no defaults inside it");
    }

    #[test]
    fn pruning_keeps_declared_and_preserved_fields() {
        let mut value = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"bogus": 1, "labels": {"a": "b"}, "ports": [{"port": 1, "extra": true}],
                "free": {"anything": {"goes": 1}}},
            "status": {},
        });
        let pruned = prune(&mut value, &schema());
        assert_eq!(pruned, [".spec.bogus", ".spec.ports[].extra", ".status"]);
        assert_eq!(
            value,
            json!({
                "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
                "spec": {"labels": {"a": "b"}, "ports": [{"port": 1}],
                    "free": {"anything": {"goes": 1}}},
            })
        );
    }
}
