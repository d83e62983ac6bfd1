//! Watches: a chunked stream of JSON lines
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}`.
//!
//! A watch resumes from `resourceVersion` by replaying the history after it
//! (as the apiserver's watch cache does); one without (or from `0`) starts
//! with the current objects as ADDED events; one from before the compacted
//! history gets an `ERROR` event with a `410 Expired` Status. Label- and
//! field-selector transitions become ADDED/DELETED. BOOKMARKs are sent on
//! request when `allowWatchBookmarks=true`; `sendInitialEvents=true`
//! starts with the current objects and a bookmark marking their end; the
//! stream ends after `timeoutSeconds`. Objects are served in the watched
//! version, or as one-row Tables when `kubectl get --watch` asks for them.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::{Response, StatusCode, body::Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    http::{Body, Target},
    registry::GroupResource,
    selector::{FieldSelector, Selector},
    state::{self, State},
    status,
    store::{Change, ChangeKind},
    table::Printer,
};

pub(crate) enum WatchMsg {
    Line(Bytes),
    /// End the response normally.
    End,
    /// Break the connection mid-stream.
    Abort,
}

pub(crate) struct OpenWatch {
    pub resource: GroupResource,
    /// The ResourceId it was opened on (fault injection matches on it).
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub labels: Selector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    pub table: Option<Printer>,
    pub tx: mpsc::UnboundedSender<WatchMsg>,
}

impl OpenWatch {
    fn selects(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| state::namespace_of(object) == ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event this watch sees for a change, honouring its namespace
    /// and selectors: an object entering the selection is ADDED, one
    /// leaving it DELETED, as the apiserver does.
    fn line(&self, change: &Change) -> Option<Bytes> {
        if self.resource != change.resource {
            return None;
        }
        let was = change.old.as_ref().is_some_and(|old| self.selects(old));
        let is = change.kind != ChangeKind::Deleted && self.selects(&change.new);
        let kind = match (was, is) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        Some(self.event(kind, &change.new))
    }

    fn event(&self, kind: &str, object: &Value) -> Bytes {
        let object = state::view(object, &self.api_version, &self.kind);
        let object = match &self.table {
            Some(printer) => printer.table(std::slice::from_ref(&object), None),
            None => object,
        };
        event_line(kind, &object)
    }

    /// Sends the change's event if it concerns this watch; false once the
    /// client has gone.
    pub fn send_change(&self, change: &Change) -> bool {
        match self.line(change) {
            Some(line) => self.tx.send(WatchMsg::Line(line)).is_ok(),
            None => !self.tx.is_closed(),
        }
    }

    /// A BOOKMARK at `revision`; false once the client has gone.
    pub fn send_bookmark(&self, revision: u64, annotations: Option<Value>) -> bool {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        let object =
            json!({"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata});
        self.tx
            .send(WatchMsg::Line(event_line("BOOKMARK", &object)))
            .is_ok()
    }

    /// Sends a `410 Expired` ERROR event and ends the watch.
    pub fn expire(&self, message: &str) {
        let line = event_line("ERROR", &status::failure(410, "Expired", message));
        let _ = self.tx.send(WatchMsg::Line(line));
        let _ = self.tx.send(WatchMsg::End);
    }

    pub fn abort(&self) {
        let _ = self.tx.send(WatchMsg::Abort);
    }
}

pub(crate) fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialise");
    line.push(b'\n');
    Bytes::from(line)
}

fn flag(query: &BTreeMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// Opens a watch (under the lock, so no change falls between the replay
/// and the live events) and streams it.
pub(crate) fn start(
    state: &Arc<Mutex<State>>,
    target: &Target,
    labels: Selector,
    fields: FieldSelector,
    table: Option<Printer>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    let timeout = {
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let watch = OpenWatch {
            resource: target.resource.group_resource(),
            api_version: target.resource.api_version(&target.version),
            kind: target.resource.kind.clone(),
            namespace: target.namespace.clone(),
            labels,
            fields,
            bookmarks: flag(query, "allowWatchBookmarks"),
            table,
            tx,
        };
        let from = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv > 0);
        let initial = flag(query, "sendInitialEvents");
        match from {
            Some(from) if from < state.store.compacted() => watch.expire(&format!(
                "too old resource version: {from} ({})",
                state.store.compacted()
            )),
            Some(from) if !initial => {
                for change in state.store.since(from) {
                    if let Some(line) = watch.line(change) {
                        let _ = watch.tx.send(WatchMsg::Line(line));
                    }
                }
                state.watches.push(watch);
            }
            // No resourceVersion (or "0"): the current objects as ADDED
            // first, as the apiserver's "get state and start at most
            // recent" does.
            _ => {
                let resource = watch.resource.clone();
                for (_, stored) in state.store.list(&resource, target.namespace.as_deref()) {
                    if watch.selects(&stored.object) {
                        let _ = watch
                            .tx
                            .send(WatchMsg::Line(watch.event("ADDED", &stored.object)));
                    }
                }
                if initial {
                    watch.send_bookmark(
                        state.store.revision(),
                        Some(json!({"k8s.io/initial-events-end": "true"})),
                    );
                }
                state.watches.push(watch);
            }
        }
        let requested = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        match (requested, state.faults.watch_timeout_cap) {
            (Some(requested), Some(cap)) => Some(requested.min(cap)),
            (requested, cap) => requested.or(cap),
        }
    };
    stream(rx, timeout)
}

fn stream(rx: mpsc::UnboundedReceiver<WatchMsg>, timeout: Option<Duration>) -> Response<Body> {
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let stream = futures::stream::unfold((rx, deadline), |(mut rx, deadline)| async move {
        let message = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, rx.recv()).await.ok()?,
            None => rx.recv().await,
        };
        match message? {
            WatchMsg::Line(line) => Some((Ok(Frame::data(line)), (rx, deadline))),
            WatchMsg::End => None,
            WatchMsg::Abort => Some((
                Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "watch dropped by the test",
                )),
                (rx, deadline),
            )),
        }
    })
    // After an abort the error ends the response; never poll further.
    .scan(false, |failed, item| {
        let stop = *failed;
        *failed |= item.is_err();
        futures::future::ready((!stop).then_some(item))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}
