//! `delete` and `deletecollection`: preconditions (`uid`,
//! `resourceVersion`) answered `409 Conflict` when they fail, finalizers
//! holding the object (marked with a deletionTimestamp), a namespace's
//! objects going with it (see [`super::state::State::delete`]). Custom
//! resources answer with the deleted object, built-in kinds with a
//! `Status` of success, as the apiserver does.

use serde_json::{Value, json};

use super::{
    checks::{decode, key_of, options},
    http::{Call, Reply, selectors},
    state::{State, view},
    status::{self, ApiError},
    store::Key,
};

pub(crate) fn delete(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    if target.is_status() {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        ));
    }
    let options = options(call)?;
    let name = target.name.as_deref().unwrap_or_default();
    let body: Value = if call.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        decode(call, false)?
    };
    let key = key_of(target, name);
    let old = state
        .store
        .get(&key)
        .ok_or_else(|| ApiError::not_found(&key.resource, name))?
        .object
        .clone();
    let preconditions = &body["preconditions"];
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        if let Some(wanted) = preconditions[field].as_str()
            && old["metadata"][field] != wanted
        {
            let actual = old["metadata"][field].as_str().unwrap_or_default();
            return Err(ApiError::conflict(
                &key.resource,
                name,
                &format!(
                    "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"
                ),
            ));
        }
    }
    let api_version = target.api_version();
    let kind = &target.resource.kind;
    if options.dry_run {
        return Ok(Reply::ok(view(&old, &api_version, kind)));
    }
    let last = state.delete(&key).unwrap_or(old);
    if let Some(still) = state.store.get(&key) {
        return Ok(Reply::ok(view(&still.object, &api_version, kind)));
    }
    Ok(Reply::ok(if target.resource.custom {
        view(&last, &api_version, kind)
    } else {
        status::deleted(&key.resource, name, &last["metadata"]["uid"])
    }))
}

pub(crate) fn delete_collection(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    let options = options(call)?;
    let (labels, fields) = selectors(call.query)?;
    let resource = target.resource.group_resource();
    let keys: Vec<Key> = state
        .store
        .list(&resource, target.namespace.as_deref())
        .filter(|(_, stored)| labels.matches(&stored.object) && fields.matches(&stored.object))
        .map(|(key, _)| key.clone())
        .collect();
    let api_version = target.api_version();
    let mut items = Vec::new();
    for key in keys {
        let object = if options.dry_run {
            state.store.get(&key).map(|s| s.object.clone())
        } else {
            state.delete(&key)
        };
        items.extend(object.map(|o| view(&o, &api_version, &target.resource.kind)));
    }
    Ok(Reply::ok(json!({
        "apiVersion": api_version,
        "kind": target.resource.list_kind,
        "metadata": {"resourceVersion": state.store.revision().to_string()},
        "items": items,
    })))
}
