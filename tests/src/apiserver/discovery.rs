//! Discovery, what kubectl needs before it touches a resource: `/version`,
//! `/api`, `/api/v1`, `/apis`, `/apis/GROUP`, `/apis/GROUP/VERSION`
//! (unaggregated: clients asking for aggregated discovery get these and
//! fall back, as with an older apiserver), and an OpenAPI v3 index whose
//! per-group-version documents declare each kind's `PATCH` with the
//! `fieldValidation` parameter: that is how kubectl 1.32 learns that the
//! server validates fields itself. The documents carry no schemas, so
//! kubectl builds strategic merge patches from its compiled-in types.
//! `/openapi/v2`, which kubectl still downloads to validate a `kind: List`
//! or an unknown kind on the client, is an empty document (in the protobuf
//! form kubectl asks for): nothing to check there, and kubectl goes on to
//! report an unknown kind itself.

use std::hash::{DefaultHasher, Hash, Hasher};

use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::{
    ResourceId,
    http::{Body, full, json_response},
    registry::Resource,
    state::State,
};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The answer to a discovery path, or `None` for other paths.
pub(crate) fn respond(state: &State, method: &Method, path: &str) -> Option<Response<Body>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match segments.as_slice() {
        ["version"] => Some(version()),
        ["healthz" | "livez" | "readyz"] => {
            return Some(full(StatusCode::OK, "text/plain", "ok"));
        }
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        })),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups(state),
        })),
        ["apis", group] => groups(state).into_iter().find(|g| g["name"] == *group),
        ["api", version] => resources(state, "", version),
        ["apis", group, version] => resources(state, group, version),
        ["openapi", "v2"] if method == Method::GET => {
            return Some(full(
                StatusCode::OK,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                openapi_v2(),
            ));
        }
        ["openapi", "v3"] => Some(openapi_index(state)),
        ["openapi", "v3", "api", version] => openapi_document(state, "", version),
        ["openapi", "v3", "apis", group, version] => openapi_document(state, group, version),
        ["openapi", ..] => None,
        _ => return None,
    };
    Some(match (method, body) {
        (&Method::GET, Some(body)) => json_response(StatusCode::OK, &body),
        (&Method::GET, None) => full(StatusCode::NOT_FOUND, "text/plain", "404 page not found"),
        _ => full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "405: method not allowed",
        ),
    })
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-mcs-local",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rust",
        "platform": "linux/amd64",
    })
}

/// Resources served in `group/version` (the versions a test switched off
/// are hidden, as an uninstalled CRD's are).
fn served<'a>(
    state: &'a State,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a Resource> {
    state.registry.resources().iter().filter(move |r| {
        r.group == group
            && r.version(version).is_some()
            && !state
                .faults
                .not_served
                .contains(&ResourceId::new(&r.api_version(version), &r.plural))
    })
}

fn groups(state: &State) -> Vec<Value> {
    state
        .registry
        .groups()
        .into_iter()
        .filter(|(group, _)| !group.is_empty())
        .filter_map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .filter(|v| served(state, &group, v).next().is_some())
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            let preferred = versions.first()?.clone();
            Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
        })
        .collect()
}

fn resources(state: &State, group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for resource in served(state, group, version) {
        list.push(json!({
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": VERBS,
            "shortNames": resource.short_names,
            "categories": resource.categories,
        }));
        if resource.version(version).is_some_and(|v| v.status) {
            list.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

/// A protobuf field of wire type 2 (length-delimited).
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let length = u8::try_from(bytes.len()).expect("short fields only");
    let mut encoded = vec![(number << 3) | 2, length];
    encoded.extend_from_slice(bytes);
    encoded
}

/// gnostic's `openapi_v2.Document` with swagger "2.0", an info block, and
/// empty paths and definitions.
fn openapi_v2() -> Vec<u8> {
    let info = [field(1, b"Kubernetes"), field(2, b"v1.32.0")].concat();
    [
        field(1, b"2.0"),
        field(2, &info),
        field(8, &[]),
        field(9, &[]),
    ]
    .concat()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn openapi_index(state: &State) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in state.registry.groups() {
        for version in versions {
            let Some(document) = openapi_document(state, &group, &version) else {
                continue;
            };
            let mut hasher = DefaultHasher::new();
            document.to_string().hash(&mut hasher);
            let path = gv_path(&group, &version);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", hasher.finish())}),
            );
        }
    }
    json!({"paths": paths})
}

fn parameter(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

/// The `PATCH` operation of each kind in `group/version`, with the query
/// parameters the server honours.
fn openapi_document(state: &State, group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for resource in served(state, group, version) {
        let scope = if resource.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let path = format!(
            "/{}/{scope}{}/{{name}}",
            gv_path(group, version),
            resource.plural
        );
        let parameters: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .into_iter()
            .map(parameter)
            .collect();
        paths.insert(
            path,
            json!({"patch": {
                "description": format!("partially update the specified {}", resource.kind),
                "operationId": format!("patch{}", resource.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": resource.kind},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
    }))
}
