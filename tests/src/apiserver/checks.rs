//! What every write checks first: the request's options (`dryRun`,
//! `fieldValidation`, `fieldManager`, `force`), its body, the object's
//! name, and its namespace.

use serde_json::Value;

use super::{
    http::{Call, Target, flag},
    protobuf,
    state::{State, namespace_resource},
    status::ApiError,
    store::Key,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Validation {
    Ignore,
    Warn,
    Strict,
}

pub(crate) struct Options {
    pub dry_run: bool,
    pub validation: Validation,
    pub manager: Option<String>,
    pub force: bool,
}

pub(crate) fn options(call: &Call) -> Result<Options, ApiError> {
    let query = call.query;
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let validation = match query.get("fieldValidation").map(String::as_str) {
        None | Some("" | "Warn") => Validation::Warn,
        Some("Ignore") => Validation::Ignore,
        Some("Strict") => Validation::Strict,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: must be Ignore, Warn or Strict"
            )));
        }
    };
    let manager = query.get("fieldManager").filter(|m| !m.is_empty()).cloned();
    if manager.as_ref().is_some_and(|m| m.len() > 128) {
        return Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    Ok(Options {
        dry_run,
        validation,
        manager,
        force: flag(query, "force"),
    })
}

pub(crate) fn decode(call: &Call, yaml: bool) -> Result<Value, ApiError> {
    if call
        .content_type
        .starts_with("application/vnd.kubernetes.protobuf")
    {
        return protobuf::namespace(call.body).ok_or_else(|| {
            ApiError::unsupported_media_type(
                "protobuf bodies are not supported here (only a Namespace's); send JSON",
            )
        });
    }
    if yaml {
        serde_yaml_ng::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    } else {
        serde_json::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }
}

/// A whole object in a body: its apiVersion and kind must be the URL's.
pub(crate) fn check_object(target: &Target, object: &Value) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let want = target.api_version();
    if let Some(got) = object["apiVersion"]
        .as_str()
        .filter(|v| !v.is_empty() && **v != want)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({got}) does not match the expected API version ({want})"
        )));
    }
    if let Some(got) = object["kind"]
        .as_str()
        .filter(|k| !k.is_empty() && **k != target.resource.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({got}) does not match the expected kind ({})",
            target.resource.kind
        )));
    }
    if let Some(got) = object["metadata"]["namespace"]
        .as_str()
        .filter(|ns| !ns.is_empty())
        && target.resource.namespaced
        && target.namespace.as_deref() != Some(got)
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

pub(crate) fn invalid(target: &Target, name: &str, field: &str, problem: &str) -> ApiError {
    ApiError::invalid(
        &target.resource.kind,
        &target.resource.group,
        name,
        field,
        problem,
    )
}

/// RFC 1123: a subdomain (most names) or a label (namespaces).
pub(crate) fn check_name(target: &Target, name: &str) -> Result<(), ApiError> {
    let label = target.resource.group_resource() == namespace_resource();
    let max = if label { 63 } else { 253 };
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= max
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes
            .iter()
            .all(|&c| alnum(c) || c == b'-' || (c == b'.' && !label));
    if valid {
        Ok(())
    } else {
        Err(invalid(
            target,
            name,
            "metadata.name",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 {} of at most {max} characters must consist of lower case alphanumeric characters, '-'{}, and must start and end with an alphanumeric character",
                if label { "label" } else { "subdomain" },
                if label { "" } else { " or '.'" }
            ),
        ))
    }
}

pub(crate) fn key_of(target: &Target, name: &str) -> Key {
    Key::new(
        target.resource.group_resource(),
        target.namespace.as_deref().unwrap_or_default(),
        name,
    )
}

/// New objects need their namespace, and not a terminating one.
pub(crate) fn check_namespace(state: &State, target: &Target, name: &str) -> Result<(), ApiError> {
    let Some(namespace) = target.namespace.as_deref() else {
        return Ok(());
    };
    let key = Key::new(namespace_resource(), "", namespace);
    match state.store.get(&key) {
        None => Err(ApiError::not_found(&namespace_resource(), namespace)),
        Some(ns) if ns.object["metadata"].get("deletionTimestamp").is_some() => {
            Err(ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                target.resource.group_resource()
            )))
        }
        Some(_) => Ok(()),
    }
}

/// Five characters for `generateName`, from the revision.
pub(crate) fn suffix(revision: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = revision.wrapping_mul(2_654_435_761) % 14_348_907;
    (0..5)
        .map(|_| {
            let c = ALPHABET[usize::try_from(n % 27).unwrap_or(0)];
            n /= 27;
            char::from(c)
        })
        .collect()
}
