//! The write verbs: create (`POST`), update (`PUT`) and patch (`PATCH`:
//! merge, JSON, strategic merge, server-side apply), with the apiserver's
//! rules every client relies on:
//!
//! * `409 AlreadyExists` for a create of an existing name, `409 Conflict`
//!   for a stale `metadata.resourceVersion` (update, or a patch that sets
//!   one), `404 NotFound` for a missing object or namespace, `403` for new
//!   objects in a terminating one;
//! * the server owns uid, creationTimestamp, resourceVersion and
//!   generation, and fills in built-in kinds' defaults ([`super::defaults`]);
//!   an update that changes nothing is not written;
//! * with a status subresource, writes to the object keep its status and
//!   writes to `.../status` change only the status;
//! * custom resources are defaulted and pruned by their schema
//!   (`fieldValidation=Strict` refuses unknown fields, `Warn` warns);
//! * `dryRun=All` answers without writing.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{
    apply,
    checks::{
        Options, Validation, check_name, check_namespace, check_object, decode, invalid, key_of,
        options, suffix,
    },
    crds, defaults,
    http::{Call, Reply, Target},
    patch, schema,
    state::{self, State, crd_resource, view},
    status::ApiError,
    store::{Key, Stored},
};

fn without_version(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
    }
    object
}

/// Completes a write of `object` over `old` (`None`: a create) and stores
/// it; returns the object as served and any warnings.
fn finish(
    state: &mut State,
    call: &Call,
    key: Key,
    old: Option<&Stored>,
    mut object: Value,
    applied: BTreeMap<String, Value>,
    options: &Options,
) -> Result<(Value, Vec<String>), ApiError> {
    let target = call.target;
    let resource = &target.resource;
    let status = object.get("status").cloned();
    match old {
        Some(old) if target.is_status() => {
            object = old.object.clone();
            set_status(&mut object, status);
        }
        Some(old) if target.has_status() => {
            set_status(&mut object, old.object.get("status").cloned())
        }
        None if target.has_status() => set_status(&mut object, None),
        _ => {}
    }
    object["apiVersion"] = json!(target.api_version());
    object["kind"] = json!(resource.kind);
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]["name"] = json!(key.name);
    match resource.namespaced {
        true => object["metadata"]["namespace"] = json!(key.namespace),
        false => {
            if let Some(metadata) = object["metadata"].as_object_mut() {
                metadata.remove("namespace");
            }
        }
    }
    defaults::builtin(state, &key.resource, &mut object, old.map(|o| &o.object))
        .map_err(|(field, problem)| invalid(target, &key.name, &field, &problem))?;
    let mut warnings = Vec::new();
    if let Some(schema) = resource
        .version(&target.version)
        .and_then(|v| v.schema.as_ref())
    {
        let unknown: Vec<String> = schema::prune(&mut object, schema)
            .iter()
            .map(|path| format!("unknown field \"{}\"", path.trim_start_matches('.')))
            .collect();
        match options.validation {
            Validation::Strict if !unknown.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    unknown.join(", ")
                )));
            }
            Validation::Warn => warnings.extend(unknown),
            _ => {}
        }
        schema::apply_defaults(&mut object, schema);
    }
    if key.resource == crd_resource() && !target.is_status() {
        let defined = crds::resource_of(&object).map_err(|problem| {
            let (field, problem) = problem.split_once(": ").unwrap_or(("spec", &problem));
            invalid(target, &key.name, field, problem)
        })?;
        let existing = state.registry.get(&defined.group_resource());
        if existing.is_some_and(|r| !r.custom) {
            return Err(invalid(
                target,
                &key.name,
                "spec.names.plural",
                "a built-in resource has these names",
            ));
        }
        object["status"] = crds::established_status(&object, &state::now());
    }
    state.stamp(&mut object, old.map(|o| &o.object), resource.generation);
    let api_version = target.api_version();
    if let Some(old) = old
        && without_version(&old.object) == without_version(&object)
        && old.applied == applied
    {
        return Ok((view(&old.object, &api_version, &resource.kind), warnings));
    }
    if options.dry_run {
        return Ok((object, warnings));
    }
    let finalized = old.is_some_and(|o| o.object["metadata"].get("deletionTimestamp").is_some())
        && object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
    let stored = state.put(key.clone(), object, applied).new;
    if finalized {
        state.remove(&key);
    }
    Ok((view(&stored, &api_version, &resource.kind), warnings))
}

fn set_status(object: &mut Value, status: Option<Value>) {
    if let Value::Object(map) = object {
        match status {
            Some(status) => map.insert("status".into(), status),
            None => map.remove("status"),
        };
    }
}

fn created(body: Value, warnings: Vec<String>) -> Reply {
    Reply {
        code: hyper::StatusCode::CREATED,
        body,
        warnings,
    }
}

pub(crate) fn create(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    let options = options(call)?;
    if target.resource.namespaced && target.namespace.is_none() {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let object = decode(call, false)?;
    check_object(target, &object)?;
    let name = match object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(name) => name.to_owned(),
        None => match object["metadata"]["generateName"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            Some(prefix) => format!("{prefix}{}", suffix(state.store.revision())),
            None => {
                return Err(invalid(
                    target,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        },
    };
    insert(state, call, &name, object, BTreeMap::new(), &options)
}

/// Creates `name` from `object`.
fn insert(
    state: &mut State,
    call: &Call,
    name: &str,
    object: Value,
    applied: BTreeMap<String, Value>,
    options: &Options,
) -> Result<Reply, ApiError> {
    let target = call.target;
    check_name(target, name)?;
    check_namespace(state, target, name)?;
    let key = key_of(target, name);
    if state.store.get(&key).is_some() {
        return Err(ApiError::already_exists(&key.resource, name));
    }
    let (object, warnings) = finish(state, call, key, None, object, applied, options)?;
    if target.resource.plural == "events" && state.record && !options.dry_run {
        state.posted_events.push(object.clone());
    }
    Ok(created(object, warnings))
}

pub(crate) fn update(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    let options = options(call)?;
    let name = target.name.as_deref().unwrap_or_default();
    let object = decode(call, false)?;
    check_object(target, &object)?;
    if let Some(got) = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty() && *n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({got}) does not match the name on the URL ({name})"
        )));
    }
    let key = key_of(target, name);
    let Some(old) = state.store.get(&key).cloned() else {
        if target.resource.create_on_update && !target.is_status() {
            return insert(state, call, name, object, BTreeMap::new(), &options);
        }
        return Err(ApiError::not_found(&key.resource, name));
    };
    match object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
    {
        "" if target.resource.custom => {
            return Err(invalid(
                target,
                name,
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            ));
        }
        "" => {}
        version if old.object["metadata"]["resourceVersion"] != version => {
            return Err(ApiError::modified(&key.resource, name));
        }
        _ => {}
    }
    let applied = old.applied.clone();
    let (object, warnings) = finish(state, call, key, Some(&old), object, applied, &options)?;
    Ok(Reply {
        warnings,
        ..Reply::ok(object)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

fn patch_type(call: &Call) -> Result<PatchType, ApiError> {
    let media = call
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    match media {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" if !call.target.resource.custom => {
            Ok(PatchType::Strategic)
        }
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
            if call.target.resource.custom {
                ""
            } else {
                ", application/strategic-merge-patch+json"
            }
        ))),
    }
}

/// What an apply may own through this endpoint: only `status` on the
/// status subresource, everything else elsewhere (when there is one).
fn applied_part(target: &Target, config: &Value) -> Value {
    let mut part = config.clone();
    if let Value::Object(map) = &mut part {
        if target.is_status() {
            map.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
        } else if target.has_status() {
            map.remove("status");
        }
    }
    part
}

pub(crate) fn patch(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    let options = options(call)?;
    let kind = patch_type(call)?;
    let options_invalid = |field: &str, problem: &str| {
        ApiError::invalid("PatchOptions", "meta.k8s.io", "", field, problem)
    };
    if options.force && kind != PatchType::Apply {
        return Err(options_invalid(
            "force",
            "Forbidden: may not be specified for non-apply patch",
        ));
    }
    let manager_key = match (&options.manager, kind) {
        (Some(manager), PatchType::Apply) if target.is_status() => format!("{manager}/status"),
        (Some(manager), _) => manager.clone(),
        (None, PatchType::Apply) => {
            return Err(options_invalid(
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        (None, _) => String::new(),
    };
    let name = target.name.as_deref().unwrap_or_default();
    let document = decode(call, kind == PatchType::Apply)?;
    if target.resource.plural == "events" && state.record {
        state.event_patches.push(document.clone());
    }
    let key = key_of(target, name);
    let lists = |path: &[&str]| target.resource.apply_list_type(&target.version, path);
    let Some(old) = state.store.get(&key).cloned() else {
        if kind != PatchType::Apply || target.is_status() {
            return Err(ApiError::not_found(&key.resource, name));
        }
        check_object(target, &document)?;
        let config = applied_part(target, &document);
        let object = apply::apply(&json!({}), &config, None, &[], &lists);
        let applied = BTreeMap::from([(manager_key, config)]);
        return insert(state, call, name, object, applied, &options);
    };
    let current = view(&old.object, &target.api_version(), &target.resource.kind);
    let mut applied = old.applied.clone();
    let patched = match kind {
        PatchType::Merge => {
            let mut patched = current.clone();
            patch::merge(&mut patched, &document);
            patched
        }
        PatchType::Json => {
            let mut patched = current.clone();
            patch::json(&mut patched, &document).map_err(|e| invalid(target, name, "patch", &e))?;
            patched
        }
        PatchType::Strategic => {
            let mut patched = current.clone();
            let keys = |path: &str| target.resource.list_rule(path).and_then(|r| r.merge_key);
            patch::strategic(&mut patched, &document, &keys).map_err(ApiError::bad_request)?;
            patched
        }
        PatchType::Apply => {
            check_object(target, &document)?;
            let config = applied_part(target, &document);
            let others: Vec<&Value> = applied
                .iter()
                .filter(|(k, _)| **k != manager_key)
                .map(|(_, v)| v)
                .collect();
            let patched = apply::apply(
                &current,
                &config,
                applied.get(&manager_key),
                &others,
                &lists,
            );
            applied.insert(manager_key, config);
            patched
        }
    };
    if let Some(version) = patched["metadata"]["resourceVersion"].as_str()
        && old.object["metadata"]["resourceVersion"] != version
    {
        return Err(ApiError::modified(&key.resource, name));
    }
    for field in ["name", "namespace", "uid"] {
        if patched["metadata"].get(field).is_some()
            && patched["metadata"][field] != current["metadata"][field]
        {
            return Err(invalid(
                target,
                name,
                &format!("metadata.{field}"),
                "Invalid value: field is immutable",
            ));
        }
    }
    let (object, warnings) = finish(state, call, key, Some(&old), patched, applied, &options)?;
    Ok(Reply {
        warnings,
        ..Reply::ok(object)
    })
}
