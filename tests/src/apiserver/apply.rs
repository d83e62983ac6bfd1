//! Server-side apply (`application/apply-patch+yaml`), approximated as
//! create-or-merge per field manager: the applied configuration merges
//! into the object (objects by field, lists by their list type: `map`
//! lists by their keys, `set` lists as unions, `atomic` lists replaced),
//! and fields the same manager applied last time but leaves out now are
//! removed unless another manager's last apply still sets them.
//!
//! Ownership is tracked per manager's last applied configuration only:
//! writes other than apply take no ownership, applies never conflict (as
//! if every apply were forced), and `metadata.managedFields` is not
//! served.

use serde_json::{Map, Value};

use super::schema::ListType;

/// Where an applied object's lists get their type from.
pub(crate) type ListTypes<'a> = &'a dyn Fn(&[&str]) -> ListType;

/// Metadata fields a manager can own; the rest is the server's.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// `current` after `manager` applied `config`, having applied `previous`
/// last time; `others` are the other managers' last configurations.
pub(crate) fn apply(
    current: &Value,
    config: &Value,
    previous: Option<&Value>,
    others: &[&Value],
    lists: ListTypes,
) -> Value {
    let mut object = current.clone();
    if let Some(previous) = previous {
        forget(
            &mut object,
            previous,
            Some(config),
            others,
            &mut Vec::new(),
            lists,
        );
    }
    merge(&mut object, config, &mut Vec::new(), lists);
    object
}

/// Whether a field at `path` is one managers own.
fn owned(path: &[&str], field: &str) -> bool {
    match path {
        [] => !matches!(field, "apiVersion" | "kind"),
        ["metadata"] => OWNED_METADATA.contains(&field),
        _ => true,
    }
}

fn key_of<'a>(item: &'a Value, keys: &[String]) -> Vec<&'a Value> {
    keys.iter()
        .map(|k| item.get(k).unwrap_or(&Value::Null))
        .collect()
}

fn find<'a>(items: &'a Value, key: &[&Value], keys: &[String]) -> Option<&'a Value> {
    items
        .as_array()?
        .iter()
        .find(|item| key_of(item, keys) == key)
}

/// Removes from `object` what `previous` set and `config` no longer does
/// (nor `others`).
fn forget<'p>(
    object: &mut Value,
    previous: &'p Value,
    config: Option<&Value>,
    others: &[&Value],
    path: &mut Vec<&'p str>,
    lists: ListTypes,
) {
    match previous {
        Value::Object(fields) => {
            let Value::Object(target) = object else {
                return;
            };
            for (field, was) in fields {
                if !owned(path, field) {
                    continue;
                }
                let now = config.and_then(|c| c.get(field));
                let kept: Vec<&Value> = others.iter().filter_map(|o| o.get(field)).collect();
                let Some(child) = target.get_mut(field) else {
                    continue;
                };
                if now.is_none() && kept.is_empty() {
                    target.remove(field);
                } else if was.is_object() || was.is_array() {
                    path.push(field);
                    forget(child, was, now, &kept, path, lists);
                    path.pop();
                }
            }
        }
        Value::Array(was) => forget_items(object, was, config, others, path, lists),
        _ => {}
    }
}

fn forget_items<'p>(
    object: &mut Value,
    was: &'p [Value],
    config: Option<&Value>,
    others: &[&Value],
    path: &mut Vec<&'p str>,
    lists: ListTypes,
) {
    let Value::Array(items) = object else {
        return;
    };
    match lists(path) {
        ListType::Atomic => {}
        ListType::Set => {
            let still = |value: &Value| {
                config
                    .into_iter()
                    .chain(others.iter().copied())
                    .any(|list| list.as_array().is_some_and(|l| l.contains(value)))
            };
            items.retain(|item| !was.contains(item) || still(item));
        }
        ListType::Map(keys) => {
            for previous in was {
                let key = key_of(previous, &keys);
                let now = config.and_then(|c| find(c, &key, &keys));
                let kept: Vec<&Value> =
                    others.iter().filter_map(|o| find(o, &key, &keys)).collect();
                let Some(at) = items.iter().position(|item| key_of(item, &keys) == key) else {
                    continue;
                };
                if now.is_none() && kept.is_empty() {
                    items.remove(at);
                } else {
                    forget(&mut items[at], previous, now, &kept, path, lists);
                }
            }
        }
    }
}

/// Merges `config` into `object`.
fn merge<'c>(object: &mut Value, config: &'c Value, path: &mut Vec<&'c str>, lists: ListTypes) {
    match config {
        Value::Object(fields) => {
            if !object.is_object() {
                *object = Value::Object(Map::new());
            }
            let Value::Object(target) = object else {
                return;
            };
            for (field, value) in fields {
                if value.is_null() || !owned(path, field) {
                    continue;
                }
                let child = target.entry(field.clone()).or_insert(Value::Null);
                path.push(field);
                merge(child, value, path, lists);
                path.pop();
            }
        }
        Value::Array(items) => {
            let existing = match object {
                Value::Array(existing) => std::mem::take(existing),
                _ => Vec::new(),
            };
            *object = Value::Array(merge_items(existing, items, path, lists));
        }
        scalar => *object = scalar.clone(),
    }
}

fn merge_items<'c>(
    mut existing: Vec<Value>,
    items: &'c [Value],
    path: &mut Vec<&'c str>,
    lists: ListTypes,
) -> Vec<Value> {
    match lists(path) {
        ListType::Atomic => items.to_vec(),
        ListType::Set => {
            for item in items {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
            existing
        }
        ListType::Map(keys) => {
            for item in items {
                let key = key_of(item, &keys);
                match existing.iter_mut().find(|e| key_of(e, &keys) == key) {
                    Some(found) => merge(found, item, path, lists),
                    None => existing.push(item.clone()),
                }
            }
            existing
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lists(path: &[&str]) -> ListType {
        match path {
            ["spec", "ports"] => ListType::Map(vec!["port".into(), "protocol".into()]),
            ["metadata", "finalizers"] => ListType::Set,
            _ => ListType::Atomic,
        }
    }

    #[test]
    fn the_first_apply_merges_into_what_is_there() {
        let current = json!({"metadata": {"name": "web", "labels": {"team": "a"}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        let config = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"app": "web"}, "uid": "forged"},
            "spec": {"ports": [{"port": 443, "protocol": "TCP"}], "ips": ["10.0.0.1"]}});
        let applied = apply(&current, &config, None, &[], &lists);
        assert_eq!(
            applied,
            json!({"metadata": {"name": "web", "labels": {"team": "a", "app": "web"}},
                "spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
                    "ips": ["10.0.0.1"]}})
        );
    }

    #[test]
    fn what_a_manager_stops_applying_goes_unless_another_applies_it() {
        let previous = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
                "ips": ["10.0.0.1"], "type": "ClusterSetIP"}});
        let current = apply(&json!({}), &previous, None, &[], &lists);
        let other = json!({"metadata": {"labels": {"b": "2"}}, "spec": {"type": "ClusterSetIP"}});
        let config = json!({"metadata": {"labels": {"a": "1"}},
            "spec": {"ports": [{"port": 443, "protocol": "TCP", "name": "https"}]}});
        let applied = apply(&current, &config, Some(&previous), &[&other], &lists);
        assert_eq!(
            applied,
            json!({"metadata": {"labels": {"a": "1", "b": "2"}},
                "spec": {"ports": [{"port": 443, "protocol": "TCP", "name": "https"}],
                    "type": "ClusterSetIP"}})
        );
    }
}
