//! Server-side printing: the `Table` (`meta.k8s.io/v1`) `kubectl get`
//! asks for (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`),
//! with a CRD's `additionalPrinterColumns` (simple JSON paths, the only
//! kind the apiserver accepts there) or a short column set per built-in
//! kind.

use serde_json::{Value, json};

use super::registry::{Column, Resource};

#[derive(Clone, Copy, Debug)]
enum Cell {
    Name,
    /// A simple JSON path (`.spec.type`, `.spec.ips[0]`).
    Path(&'static str),
    Owned,
    Age,
    Computed(fn(&Value) -> Value),
}

#[derive(Clone, Debug)]
struct PrinterColumn {
    name: String,
    type_: String,
    format: String,
    description: String,
    priority: i64,
    cell: Cell,
    /// For [`Cell::Owned`]: a CRD column's path.
    path: String,
}

/// What a row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("" | "Metadata") => Ok(Self::Metadata),
            Some("None") => Ok(Self::None),
            Some("Object") => Ok(Self::Object),
            Some(other) => Err(format!("unsupported includeObject {other:?}")),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Printer {
    columns: Vec<PrinterColumn>,
    include: Include,
}

fn column(name: &str, type_: &str, cell: Cell) -> PrinterColumn {
    PrinterColumn {
        name: name.to_owned(),
        type_: type_.to_owned(),
        format: if matches!(cell, Cell::Name) {
            "name".into()
        } else {
            String::new()
        },
        description: String::new(),
        priority: 0,
        cell,
        path: String::new(),
    }
}

fn joined(values: impl Iterator<Item = String>, empty: &str) -> Value {
    let values: Vec<String> = values.collect();
    if values.is_empty() {
        json!(empty)
    } else {
        json!(values.join(","))
    }
}

fn array(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn service_ports(object: &Value) -> Value {
    joined(
        array(&object["spec"]["ports"])
            .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))),
        "<none>",
    )
}

fn slice_ports(object: &Value) -> Value {
    joined(
        array(&object["ports"]).map(|p| p["port"].to_string()),
        "<unset>",
    )
}

fn slice_endpoints(object: &Value) -> Value {
    joined(
        array(&object["endpoints"])
            .flat_map(|e| array(&e["addresses"]))
            .filter_map(|a| a.as_str().map(str::to_owned)),
        "<unset>",
    )
}

fn endpoints_addresses(object: &Value) -> Value {
    joined(
        array(&object["subsets"]).flat_map(|subset| {
            array(&subset["addresses"]).flat_map(move |a| {
                array(&subset["ports"])
                    .map(move |p| format!("{}:{}", a["ip"].as_str().unwrap_or_default(), p["port"]))
            })
        }),
        "<none>",
    )
}

fn event_object(object: &Value) -> Value {
    let regarding = object
        .get("regarding")
        .or_else(|| object.get("involvedObject"))
        .unwrap_or(&Value::Null);
    json!(format!(
        "{}/{}",
        regarding["kind"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase(),
        regarding["name"].as_str().unwrap_or_default()
    ))
}

fn event_message(object: &Value) -> Value {
    object
        .get("note")
        .or_else(|| object.get("message"))
        .cloned()
        .unwrap_or(json!(""))
}

fn builtin_columns(resource: &Resource) -> Vec<PrinterColumn> {
    let path = |name: &str, path: &'static str| column(name, "string", Cell::Path(path));
    let computed = |name: &str, f: fn(&Value) -> Value| column(name, "string", Cell::Computed(f));
    match (resource.group.as_str(), resource.plural.as_str()) {
        ("", "namespaces") => vec![path("Status", ".status.phase")],
        ("", "services") => vec![
            path("Type", ".spec.type"),
            path("Cluster-IP", ".spec.clusterIP"),
            computed("External-IP", |_| json!("<none>")),
            computed("Port(s)", service_ports),
        ],
        ("", "endpoints") => vec![computed("Endpoints", endpoints_addresses)],
        ("discovery.k8s.io", "endpointslices") => vec![
            path("AddressType", ".addressType"),
            computed("Ports", slice_ports),
            computed("Endpoints", slice_endpoints),
        ],
        (_, "events") => vec![
            path("Type", ".type"),
            path("Reason", ".reason"),
            computed("Object", event_object),
            computed("Message", event_message),
        ],
        ("coordination.k8s.io", "leases") => vec![path("Holder", ".spec.holderIdentity")],
        _ => Vec::new(),
    }
}

impl Printer {
    pub fn new(resource: &Resource, version: &str, include: Include) -> Self {
        let mut columns = vec![column("Name", "string", Cell::Name)];
        let custom: &[Column] = resource.version(version).map_or(&[], |v| &v.columns);
        if resource.custom && !custom.is_empty() {
            columns.extend(custom.iter().map(|c| PrinterColumn {
                name: c.name.clone(),
                type_: c.type_.clone(),
                format: c.format.clone(),
                description: c.description.clone(),
                priority: c.priority,
                cell: Cell::Owned,
                path: c.json_path.clone(),
            }));
        } else {
            columns.extend(builtin_columns(resource));
            columns.push(column("Age", "date", Cell::Age));
        }
        Self { columns, include }
    }

    fn cell(&self, column: &PrinterColumn, object: &Value) -> Value {
        let found = match column.cell {
            Cell::Name => object["metadata"]["name"].clone(),
            Cell::Path(path) => simple_path(object, path).cloned().unwrap_or(Value::Null),
            Cell::Owned => simple_path(object, &column.path)
                .cloned()
                .unwrap_or(Value::Null),
            Cell::Age => object["metadata"]["creationTimestamp"].clone(),
            Cell::Computed(f) => f(object),
        };
        match found {
            Value::String(text) if column.type_ == "date" => json!(age(&text)),
            Value::Null => json!("<none>"),
            Value::Array(_) | Value::Object(_) => json!(found.to_string()),
            other => other,
        }
    }

    /// A Table of `objects` (already in the served version).
    pub fn table(&self, objects: &[Value], resource_version: Option<u64>) -> Value {
        let definitions: Vec<Value> = self
            .columns
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.type_, "format": c.format,
                    "description": c.description, "priority": c.priority})
            })
            .collect();
        let rows: Vec<Value> = objects
            .iter()
            .map(|object| {
                let cells: Vec<Value> = self.columns.iter().map(|c| self.cell(c, object)).collect();
                let mut row = json!({"cells": cells});
                match self.include {
                    Include::None => {}
                    Include::Metadata => {
                        row["object"] = json!({"kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]});
                    }
                    Include::Object => row["object"] = object.clone(),
                }
                row
            })
            .collect();
        let mut metadata = json!({});
        if let Some(revision) = resource_version {
            metadata["resourceVersion"] = json!(revision.to_string());
        }
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": definitions, "rows": rows})
    }
}

/// Whether an `Accept` header asks for a Table (kubectl offers Table
/// first, plain JSON as a fallback).
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// Follows a simple JSON path: `.a.b`, with `[n]` indices.
fn simple_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = object;
    for segment in path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        let (field, indices) = segment.split_once('[').unwrap_or((segment, ""));
        if !field.is_empty() {
            node = node.get(field)?;
        }
        for index in indices.split('[').filter(|i| !i.is_empty()) {
            node = node.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(node)
}

/// A timestamp's age as kubectl shows it (`42s`, `7m`, `3h`, `12d`).
fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let seconds = jiff::Timestamp::now().as_second() - then.as_second();
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json, */*"));
        assert!(!wants_table(
            "application/json,application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn paths() {
        let object = json!({"spec": {"ips": ["10.0.0.1"], "type": "ClusterSetIP"}});
        assert_eq!(
            simple_path(&object, ".spec.type"),
            Some(&json!("ClusterSetIP"))
        );
        assert_eq!(
            simple_path(&object, ".spec.ips[0]"),
            Some(&json!("10.0.0.1"))
        );
        assert_eq!(simple_path(&object, ".spec.ips[1]"), None);
        assert_eq!(simple_path(&object, ".status.x"), None);
    }
}
