//! `get` and `list`: objects in the requested version (conversion `None`),
//! lists filtered by namespace and label/field selectors, paginated with
//! `limit`/`continue` over a consistent snapshot, and always at the latest
//! revision (`resourceVersion` of a list is not honoured). Built-in kinds'
//! list items carry no `apiVersion`/`kind`, as the apiserver sends them.

use serde_json::{Value, json};

use super::{
    http::{Call, Reply, selectors},
    state::{State, view},
    status::ApiError,
    store::Key,
};

pub(crate) fn get(state: &State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    let name = target.name.as_deref().unwrap_or_default();
    let resource = target.resource.group_resource();
    let key = Key::new(
        resource.clone(),
        target.namespace.as_deref().unwrap_or_default(),
        name,
    );
    let stored = state
        .store
        .get(&key)
        .ok_or_else(|| ApiError::not_found(&resource, name))?;
    let object = view(&stored.object, &target.api_version(), &target.resource.kind);
    Ok(Reply::ok(match &call.table {
        Some(printer) => printer.table(&[object], None),
        None => object,
    }))
}

pub(crate) fn list(state: &mut State, call: &Call) -> Result<Reply, ApiError> {
    let target = call.target;
    let (labels, fields) = selectors(call.query)?;
    let limit = call
        .query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let api_version = target.api_version();
    let (revision, mut items) = match call.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => state.take_page(token).ok_or_else(|| {
            ApiError::expired(
                "the provided continue parameter is too old to display a consistent list result",
            )
        })?,
        None => {
            let resource = target.resource.group_resource();
            let items: Vec<Value> = state
                .store
                .list(&resource, target.namespace.as_deref())
                .map(|(_, stored)| &stored.object)
                .filter(|object| labels.matches(object) && fields.matches(object))
                .map(|object| view(object, &api_version, &target.resource.kind))
                .collect();
            (state.store.revision(), items)
        }
    };
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        let rest = items.split_off(limit);
        metadata["remainingItemCount"] = json!(rest.len());
        metadata["continue"] = json!(state.keep_page(revision, rest));
    }
    if let Some(printer) = &call.table {
        let mut table = printer.table(&items, Some(revision));
        table["metadata"] = metadata;
        return Ok(Reply::ok(table));
    }
    if !target.resource.custom {
        for item in &mut items {
            if let Value::Object(map) = item {
                map.remove("apiVersion");
                map.remove("kind");
            }
        }
    }
    Ok(Reply::ok(json!({
        "apiVersion": api_version,
        "kind": target.resource.list_kind,
        "metadata": metadata,
        "items": items,
    })))
}
