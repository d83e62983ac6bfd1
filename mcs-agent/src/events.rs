//! Kubernetes Events for rejections (API-server source only): the run loop
//! hands over every rejection of the current state — the source's and
//! those its desired-state engine derives under the agent's real policy —
//! with the object references the source published.
//!
//! * One Warning Event per object and reason; its note lists every message
//!   (cut at the Events API limit); the reason is CamelCase.
//! * Reported once until fixed ([`RejectionLog`]): an unchanged bad object
//!   gets no second Event; a fixed one is forgotten, so it gets a new Event
//!   if it breaks again.
//! * Posted from a task of its own through a bounded queue, so a slow or
//!   failing API server never delays map updates; when the queue is full
//!   the Event is tried again on the next report instead.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

use crate::{
    model::{ObjectKey, Rejection},
    rejection_log::RejectionLog,
    sources::{ObjectRef, References},
    telemetry::chain,
};

/// `reportingController` of the Events the agent publishes.
pub const EVENT_CONTROLLER: &str = "mcs-agent";
/// `action` of the Events the agent publishes.
const EVENT_ACTION: &str = "Validate";
/// Events API limit for `note`.
const EVENT_NOTE_MAX: usize = 1024;
/// Events waiting to be posted; beyond this they are retried on the next
/// report instead of queued (an API server that does not keep up must not
/// make the agent grow).
const EVENT_QUEUE: usize = 256;

/// `reportingInstance` from the environment: set through the downward API
/// in the DaemonSet, so the Events of different nodes' agents can be told
/// apart.
pub fn reporting_instance() -> Option<String> {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("NODE_NAME"))
        .ok()
        .filter(|name| !name.is_empty())
}

/// Identity of a published Event: an unchanged bad object keeps the same
/// key from report to report and is therefore reported once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EventKey {
    kind: String,
    object: ObjectKey,
    uid: Option<String>,
    reason: String,
    note: String,
}

/// Publishes rejections as Events. Dropping it stops posting.
pub struct Events {
    queue: mpsc::Sender<(ObjectReference, Event)>,
    log: RejectionLog<EventKey>,
    task: JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Events {
    /// Starts the posting task (needs a Tokio runtime).
    pub fn start(client: Client, reporting_instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: EVENT_CONTROLLER.to_owned(),
            instance: reporting_instance,
        };
        let recorder = Recorder::new(client, reporter);
        let (queue, mut pending) = mpsc::channel::<(ObjectReference, Event)>(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            let mut failing = false;
            while let Some((reference, event)) = pending.recv().await {
                match recorder.publish(&event, &reference).await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        warn!(error = %chain(&error), "cannot publish Kubernetes Event (rejections are still logged)");
                    }
                    Err(error) => debug!(error = %chain(&error), "cannot publish Kubernetes Event"),
                }
            }
        });
        Self {
            queue,
            log: RejectionLog::default(),
            task,
        }
    }

    /// Queues an Event for every object and reason among `rejections` not
    /// reported before. Rejections of objects without a reference (not
    /// from the API server) are skipped.
    pub fn report<'a>(
        &mut self,
        rejections: impl IntoIterator<Item = &'a Rejection>,
        references: &References,
    ) {
        let mut grouped: BTreeMap<(&str, &ObjectKey, &'static str), Vec<String>> = BTreeMap::new();
        for rejection in rejections {
            grouped
                .entry((&rejection.kind, &rejection.object, rejection.reason()))
                .or_default()
                .push(rejection.to_string());
        }
        let current = grouped
            .into_iter()
            .filter_map(|((kind, object, reason), mut messages)| {
                let reference = references.get(&(kind.to_owned(), object.clone()))?;
                messages.dedup();
                let key = EventKey {
                    kind: kind.to_owned(),
                    object: object.clone(),
                    uid: reference.uid.clone(),
                    reason: event_reason(reason),
                    note: truncate_note(messages.join("; ")),
                };
                Some((key, reference))
            });
        for (key, reference) in self.log.fresh(current, |(key, _)| key.clone()) {
            let event = Event {
                type_: EventType::Warning,
                reason: key.reason.clone(),
                note: Some(key.note.clone()),
                action: EVENT_ACTION.to_owned(),
                secondary: None,
            };
            if self
                .queue
                .try_send((object_reference(reference), event))
                .is_err()
            {
                debug!(object = %key.object, "Event queue full");
                self.log.retry(&key);
            }
        }
    }
}

fn object_reference(object: &ObjectRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(object.api_version.clone()),
        kind: Some(object.kind.clone()),
        namespace: Some(object.key.namespace.clone()).filter(|ns| !ns.is_empty()),
        name: Some(object.key.name.clone()),
        uid: object.uid.clone(),
        ..ObjectReference::default()
    }
}

/// `snake_case` → `CamelCase` (Event reasons are CamelCase).
pub fn event_reason(reason: &str) -> String {
    reason
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn truncate_note(mut note: String) -> String {
    if note.len() > EVENT_NOTE_MAX {
        let mut end = EVENT_NOTE_MAX - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(event_reason("forbidden_ip"), "ForbiddenIp");
        assert_eq!(event_reason("duplicate_port_name"), "DuplicatePortName");
        assert_eq!(event_reason("conflict"), "Conflict");
    }

    #[test]
    fn notes_are_cut_at_the_events_limit() {
        let note = truncate_note("é".repeat(EVENT_NOTE_MAX));
        assert!(note.len() <= EVENT_NOTE_MAX);
        assert!(note.ends_with('…'));
        assert_eq!(truncate_note("short".into()), "short");
    }
}
