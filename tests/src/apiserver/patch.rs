//! The patch types of `PATCH` (server-side apply is [`super::apply`]):
//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902) through the
//! `json-patch` crate, and strategic merge patch as kubectl sends it for
//! built-in kinds (`kubectl apply` of an existing object, `kubectl patch`).
//!
//! Strategic merge patch merges objects like a merge patch, and lists by
//! the `patchMergeKey` of the Go types ([`super::registry::ListRule`]):
//! items with the same key merge, new ones are appended, lists of scalars
//! with the merge strategy are unions, and every other list is replaced.
//! Directives: `$patch: replace|delete|merge` (on objects and list items),
//! `$retainKeys`, `$deleteFromPrimitiveList/FIELD`, and
//! `$setElementOrder/FIELD` (the listed items first, in that order, the
//! server's other items after them).

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch.
pub(crate) fn json(target: &mut Value, patch: &Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}

/// The merge key of the list at a path: `Some("")` for a set of scalars,
/// `None` for a list that is replaced.
pub(crate) type MergeKeys<'a> = &'a dyn Fn(&str) -> Option<&'static str>;

/// Applies a strategic merge patch.
pub(crate) fn strategic(target: &mut Value, patch: &Value, keys: MergeKeys) -> Result<(), String> {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => merge_object(target, patch, "", keys),
        (target, patch) => {
            *target = clean(patch);
            Ok(())
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn directive(object: &Map<String, Value>) -> Option<&str> {
    object.get("$patch").and_then(Value::as_str)
}

/// A patch value without directives, as stored.
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| item.as_object().is_none_or(|o| directive(o).is_none()))
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_object(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
    keys: MergeKeys,
) -> Result<(), String> {
    match directive(patch) {
        Some("replace") => {
            *target = clean(&Value::Object(patch.clone()))
                .as_object()
                .cloned()
                .unwrap_or_default();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive {other:?} at {path}")),
    }
    let mut orders = Vec::new();
    for (field, value) in patch {
        if let Some(list) = field.strip_prefix("$setElementOrder/") {
            orders.push((list, value));
            continue;
        }
        if let Some(list) = field.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = target.get_mut(list) {
                items.retain(|item| !gone.contains(item));
            }
            continue;
        }
        if field.starts_with('$') {
            continue;
        }
        let child = join(path, field);
        match value {
            Value::Null => {
                target.remove(field);
            }
            Value::Object(object) if directive(object) == Some("delete") => {
                target.remove(field);
            }
            Value::Object(object) => match target.get_mut(field) {
                Some(Value::Object(existing)) => merge_object(existing, object, &child, keys)?,
                _ => {
                    target.insert(field.clone(), clean(value));
                }
            },
            Value::Array(items) => {
                let existing = target.remove(field).unwrap_or(Value::Array(Vec::new()));
                let merged = merge_list(existing, items, &child, keys)?;
                target.insert(field.clone(), merged);
            }
            scalar => {
                target.insert(field.clone(), scalar.clone());
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        target.retain(|field, _| retain.iter().any(|k| k == field));
    }
    for (list, order) in orders {
        let key = keys(&join(path, list));
        if let (Some(Value::Array(items)), Some(order)) = (target.get_mut(list), order.as_array()) {
            reorder(items, order, key);
        }
    }
    Ok(())
}

fn same_item(item: &Value, other: &Value, key: &str) -> bool {
    if key.is_empty() {
        item == other
    } else {
        item.get(key).is_some() && item.get(key) == other.get(key)
    }
}

fn merge_list(
    existing: Value,
    patch: &[Value],
    path: &str,
    keys: MergeKeys,
) -> Result<Value, String> {
    let Some(key) = keys(path) else {
        return Ok(clean(&Value::Array(patch.to_vec())));
    };
    let mut items = match existing {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    if patch
        .iter()
        .any(|item| item.as_object().and_then(directive) == Some("replace"))
    {
        return Ok(clean(&Value::Array(patch.to_vec())));
    }
    for item in patch {
        if key.is_empty() {
            if !items.contains(item) {
                items.push(item.clone());
            }
            continue;
        }
        let Some(object) = item.as_object() else {
            return Err(format!(
                "{path}: items must be objects with the merge key {key:?}"
            ));
        };
        if object.get(key).is_none() {
            return Err(format!("{path}: an item has no merge key {key:?}"));
        }
        if directive(object) == Some("delete") {
            items.retain(|existing| !same_item(existing, item, key));
            continue;
        }
        match items
            .iter_mut()
            .find(|existing| same_item(existing, item, key))
        {
            Some(Value::Object(existing)) => merge_object(existing, object, path, keys)?,
            _ => items.push(clean(item)),
        }
    }
    Ok(Value::Array(items))
}

/// `$setElementOrder`: the listed items first, in the listed order.
fn reorder(items: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let key = key.unwrap_or("");
    let mut rest = std::mem::take(items);
    for wanted in order {
        if let Some(at) = rest.iter().position(|item| same_item(item, wanted, key)) {
            items.push(rest.remove(at));
        }
    }
    items.extend(rest);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service_keys(path: &str) -> Option<&'static str> {
        match path {
            "spec.ports" => Some("port"),
            "metadata.finalizers" => Some(""),
            _ => None,
        }
    }

    fn service() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"},
                {"port": 443, "protocol": "TCP", "name": "https"}],
                "selector": {"app": "web"}, "ipFamilies": ["IPv4"]},
        })
    }

    #[test]
    fn kubectl_apply_changing_a_port() {
        // What kubectl's three-way patch sends when port 80 becomes 8080.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {
                "$setElementOrder/ports": [{"port": 8080}, {"port": 443}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"$patch": "delete", "port": 80}],
            },
        });
        let mut target = service();
        strategic(&mut target, &patch, &service_keys).unwrap();
        assert_eq!(
            target["spec"]["ports"],
            json!([{"port": 8080, "protocol": "TCP", "name": "http"},
                {"port": 443, "protocol": "TCP", "name": "https"}])
        );
        assert_eq!(target["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(
            target["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{}"
        );
    }

    #[test]
    fn items_merge_by_key_and_other_lists_are_replaced() {
        let mut target = service();
        let patch = json!({"metadata": {"finalizers": ["y", "x"]}, "spec": {
            "ports": [{"port": 443, "name": "tls"}], "ipFamilies": ["IPv6"], "selector": null}});
        strategic(&mut target, &patch, &service_keys).unwrap();
        assert_eq!(
            target["spec"]["ports"][1],
            json!({"port": 443, "protocol": "TCP", "name": "tls"})
        );
        assert_eq!(target["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(target["spec"]["ipFamilies"], json!(["IPv6"]));
        assert!(target["spec"].get("selector").is_none());
        assert_eq!(target["metadata"]["finalizers"], json!(["x", "y"]));
    }

    #[test]
    fn directives() {
        let mut target = service();
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"$retainKeys": ["ports"], "ports": [{"$patch": "replace"}, {"port": 1}]}});
        strategic(&mut target, &patch, &service_keys).unwrap();
        assert_eq!(target["metadata"]["finalizers"], json!([]));
        assert_eq!(target["spec"], json!({"ports": [{"port": 1}]}));
        let mut target = service();
        strategic(
            &mut target,
            &json!({"spec": {"$patch": "replace", "type": "ClusterIP"}}),
            &service_keys,
        )
        .unwrap();
        assert_eq!(target["spec"], json!({"type": "ClusterIP"}));
        let bad = json!({"spec": {"ports": [{"name": "no key"}]}});
        assert!(strategic(&mut service(), &bad, &service_keys).is_err());
    }

    #[test]
    fn merge_and_json_patches() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut target, &json!({"b": {"c": null, "e": 4}, "f": 5}));
        assert_eq!(target, json!({"a": 1, "b": {"d": 3, "e": 4}, "f": 5}));
        json(
            &mut target,
            &json!([{"op": "replace", "path": "/a", "value": 2}]),
        )
        .unwrap();
        assert_eq!(target["a"], 2);
        assert!(
            json(
                &mut target,
                &json!([{"op": "test", "path": "/a", "value": 3}])
            )
            .is_err()
        );
    }
}
