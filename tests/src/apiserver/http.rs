//! HTTP: the accept loop, request parsing, routing of resource paths to
//! the verbs and of the rest to discovery, fault injection at the door
//! (503, resources not served, slow lists), and the request log.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    RequestRecord, ResourceId, deletes, discovery, reads,
    registry::{Registry, Resource},
    selector::{FieldSelector, Selector},
    state::State,
    status::ApiError,
    table::{self, Include, Printer},
    watch, writes,
};

pub(crate) type Body = BoxBody<Bytes, io::Error>;

/// The apiserver's request body limit (etcd's object limit is smaller).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A request for a resource, parsed from its path.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub resource: Resource,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status` (the only subresource served).
    pub subresource: Option<String>,
}

impl Target {
    pub fn id(&self) -> ResourceId {
        ResourceId::new(
            &self.resource.api_version(&self.version),
            &self.resource.plural,
        )
    }

    pub fn api_version(&self) -> String {
        self.resource.api_version(&self.version)
    }

    /// Whether writes here go to the status subresource.
    pub fn is_status(&self) -> bool {
        self.subresource.is_some()
    }

    /// Whether this version has a status subresource.
    pub fn has_status(&self) -> bool {
        self.resource
            .version(&self.version)
            .is_some_and(|v| v.status)
    }
}

/// What the verbs get from a request.
pub(crate) struct Call<'a> {
    pub target: &'a Target,
    pub query: &'a BTreeMap<String, String>,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub table: Option<Printer>,
}

/// A verb's answer: status code, body, `Warning` headers.
pub(crate) struct Reply {
    pub code: StatusCode,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            code: StatusCode::OK,
            body,
            warnings: Vec::new(),
        }
    }
}

pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            // Connection errors (clients going away, aborted watches) are
            // part of the tests.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub(crate) fn full(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response parts are valid")
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &error.to_status(),
    )
}

fn not_found_page() -> Response<Body> {
    full(StatusCode::NOT_FOUND, "text/plain", "404 page not found")
}

fn header<'a>(request: &'a Request<Incoming>, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn handle(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let accept = header(&request, "accept").to_owned();
    let content_type = header(&request, "content-type").to_owned();
    let response = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            route(state, &method, &path, &query, &accept, &content_type, &body).await
        }
        Err(_) => error_response(&ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("the request body is larger than {MAX_BODY} bytes or was cut off"),
            details: None,
        }),
    };
    let mut state = lock(state);
    if state.record {
        state.requests.push(RequestRecord {
            method: method.to_string(),
            path,
            query,
            status: response.status().as_u16(),
        });
    }
    response
}

async fn route(
    state: &Arc<Mutex<State>>,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    accept: &str,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let target = {
        let state = lock(state);
        if state.faults.unavailable {
            return error_response(&ApiError::unavailable());
        }
        if let Some(response) = discovery::respond(&state, method, path) {
            return response;
        }
        let Some(target) = parse_target(&state.registry, path) else {
            return not_found_page();
        };
        if state.faults.not_served.contains(&target.id()) {
            return not_found_page();
        }
        target
    };
    let table = if table::wants_table(accept) {
        match Include::parse(query.get("includeObject").map(String::as_str)) {
            Ok(include) => Some(Printer::new(&target.resource, &target.version, include)),
            Err(message) => return error_response(&ApiError::bad_request(message)),
        }
    } else {
        None
    };
    let call = Call {
        target: &target,
        query,
        content_type,
        body,
        table,
    };
    let reply = match (method, &target.name) {
        (&Method::GET, None) if flag(query, "watch") => {
            return match selectors(query) {
                Ok((labels, fields)) => {
                    watch::start(state, &target, labels, fields, call.table, query)
                }
                Err(error) => error_response(&error),
            };
        }
        (&Method::GET, None) => {
            let delay = lock(state).faults.list_delay.get(&target.id()).copied();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            reads::list(&mut lock(state), &call)
        }
        (&Method::GET, Some(_)) => reads::get(&lock(state), &call),
        (&Method::POST, None) => writes::create(&mut lock(state), &call),
        (&Method::PUT, Some(_)) => writes::update(&mut lock(state), &call),
        (&Method::PATCH, Some(_)) => writes::patch(&mut lock(state), &call),
        (&Method::DELETE, Some(_)) => deletes::delete(&mut lock(state), &call),
        (&Method::DELETE, None) => deletes::delete_collection(&mut lock(state), &call),
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))),
    };
    match reply {
        Ok(reply) => {
            let mut response = json_response(reply.code, &reply.body);
            for warning in reply.warnings {
                if let Ok(value) = format!("299 - \"{}\"", warning.replace('"', "'")).parse() {
                    response.headers_mut().append("warning", value);
                }
            }
            response
        }
        Err(error) => error_response(&error),
    }
}

pub(crate) fn flag(query: &BTreeMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

pub(crate) fn selectors(
    query: &BTreeMap<String, String>,
) -> Result<(Selector, FieldSelector), ApiError> {
    let labels = Selector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// The resource, namespace, name and subresource of a path under `/api/v1`
/// or `/apis/GROUP/VERSION`.
pub(crate) fn parse_target(registry: &Registry, path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let resource = |plural: &str| registry.by_plural(group, version, plural);
    let (resource, namespace, name, subresource) = match rest {
        [plural] => (resource(plural)?, None, None, None),
        ["namespaces", namespace, plural] if resource(plural).is_some_and(|r| r.namespaced) => {
            (resource(plural)?, Some(*namespace), None, None)
        }
        [plural, name] => (resource(plural)?, None, Some(*name), None),
        [plural, name, subresource] => (resource(plural)?, None, Some(*name), Some(*subresource)),
        ["namespaces", namespace, plural, name] => {
            (resource(plural)?, Some(*namespace), Some(*name), None)
        }
        ["namespaces", namespace, plural, name, subresource] => (
            resource(plural)?,
            Some(*namespace),
            Some(*name),
            Some(*subresource),
        ),
        _ => return None,
    };
    // Objects of namespaced kinds live only under their namespace;
    // collections may also be listed across namespaces.
    if (resource.namespaced && name.is_some() && namespace.is_none())
        || (!resource.namespaced && namespace.is_some())
    {
        return None;
    }
    if subresource.is_some_and(|s| s != "status")
        || (subresource.is_some() && !resource.version(version).is_some_and(|v| v.status))
    {
        return None;
    }
    Some(Target {
        resource: resource.clone(),
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let registry = Registry::builtin();
        let target = parse_target(&registry, "/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(target.resource.plural, "endpointslices");
        assert!(target.namespace.is_none() && target.name.is_none());
        let target = parse_target(&registry, "/api/v1/namespaces/demo/endpoints/x").unwrap();
        assert_eq!(target.namespace.as_deref(), Some("demo"));
        assert_eq!(target.name.as_deref(), Some("x"));
        let target = parse_target(&registry, "/api/v1/namespaces/demo").unwrap();
        assert_eq!(
            (target.resource.plural.as_str(), target.name.as_deref()),
            ("namespaces", Some("demo"))
        );
        let target = parse_target(&registry, "/api/v1/namespaces/demo/status").unwrap();
        assert_eq!(target.subresource.as_deref(), Some("status"));
        let target =
            parse_target(&registry, "/api/v1/namespaces/demo/services/web/status").unwrap();
        assert_eq!(
            (target.name.as_deref(), target.subresource.as_deref()),
            (Some("web"), Some("status"))
        );
        assert!(parse_target(&registry, "/api/v1/namespaces/demo/endpoints/x/status").is_none());
        assert!(parse_target(&registry, "/api/v1/services/web").is_none());
        assert!(parse_target(&registry, "/apis/unknown.io/v1/things").is_none());
    }
}
