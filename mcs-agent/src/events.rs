//! Kubernetes Events for rejections (API-server source only): the run loop
//! hands over every rejection of the current state — the source's and
//! those its desired-state engine derives under the agent's real policy —
//! with the object references the source published.
//!
//! * One Warning Event per object and reason; its note lists every message
//!   (cut at the Events API limit); the reason is CamelCase.
//! * Reported once until fixed ([`RejectionLog`]): an unchanged bad object
//!   gets no second Event; a fixed one is forgotten, so it is reported
//!   again if it breaks again.
//! * One Event for every agent of the cluster: an Event's name follows from
//!   what it says (object, reason, note), so when N agents (one per node)
//!   see the same bad object, the first creates the Event and the others
//!   find it (`409 AlreadyExists`) and add nothing; a restarted agent does
//!   the same. An existing Event last seen more than [`REPEAT_AFTER`] ago
//!   is a new occurrence: its series count and last-observed time are
//!   bumped instead. The Event names the agent that reported it: its pod
//!   (`reportingInstance`) and node (`deprecatedSource.host`), from the
//!   downward API's `POD_NAME` and `NODE_NAME`.
//! * Posted from a task of its own through a bounded queue, so a slow or
//!   failing API server never delays map updates; when the queue is full
//!   the Event is tried again on the next report instead.

use std::{collections::BTreeMap, hash::Hasher as _, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{EventSource, ObjectReference},
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
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
/// Events API limit for `reportingInstance`.
const EVENT_INSTANCE_MAX: usize = 128;
/// Events waiting to be posted; beyond this they are retried on the next
/// report instead of queued (an API server that does not keep up must not
/// make the agent grow).
const EVENT_QUEUE: usize = 256;
/// An existing Event seen this long ago is another occurrence (the object
/// was fixed and broke again), not another agent's report of this one:
/// agents see a change within seconds of each other.
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// The agent publishing Events: its pod and node, from the downward API
/// (`POD_NAME`, `NODE_NAME`, set by the DaemonSet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publisher {
    pub pod: Option<String>,
    pub node: Option<String>,
}

impl Publisher {
    /// `POD_NAME` and `NODE_NAME`; unset or empty ones are `None`.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self {
            pod: var("POD_NAME"),
            node: var("NODE_NAME"),
        }
    }

    /// `reportingInstance`: the pod, else the node, else the controller
    /// name (the field is required).
    fn instance(&self) -> String {
        let mut instance = self
            .pod
            .clone()
            .or_else(|| self.node.clone())
            .unwrap_or_else(|| EVENT_CONTROLLER.to_owned());
        truncate(&mut instance, EVENT_INSTANCE_MAX);
        instance
    }
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
    queue: mpsc::Sender<(ObjectReference, Pending)>,
    log: RejectionLog<EventKey>,
    task: JoinHandle<()>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one Event says.
struct Pending {
    reason: String,
    note: String,
}

/// What posting an Event did.
#[derive(Debug, PartialEq, Eq)]
enum Posted {
    Created,
    /// Another agent (or this one before a restart) reported it just now.
    AlreadyReported,
    /// Reported long ago: counted as a new occurrence of the series.
    Repeated,
}

impl Events {
    /// Starts the posting task (needs a Tokio runtime).
    pub fn start(client: Client, publisher: Publisher) -> Self {
        Self::start_with(client, publisher, REPEAT_AFTER)
    }

    /// [`start`](Self::start) with another [`REPEAT_AFTER`] (tests).
    pub fn start_with(client: Client, publisher: Publisher, repeat_after: Duration) -> Self {
        let (queue, mut pending) = mpsc::channel::<(ObjectReference, Pending)>(EVENT_QUEUE);
        let poster = Poster {
            client,
            publisher,
            repeat_after: SignedDuration::try_from(repeat_after).unwrap_or(SignedDuration::MAX),
        };
        let task = tokio::spawn(async move {
            let mut failing = false;
            while let Some((reference, event)) = pending.recv().await {
                match poster.post(&reference, &event).await {
                    Ok(posted) => {
                        failing = false;
                        debug!(reason = %event.reason, ?posted, "Kubernetes Event");
                    }
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
            let event = Pending {
                reason: key.reason.clone(),
                note: key.note.clone(),
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

/// Posts Events as one agent.
struct Poster {
    client: Client,
    publisher: Publisher,
    repeat_after: SignedDuration,
}

impl Poster {
    async fn post(
        &self,
        regarding: &ObjectReference,
        pending: &Pending,
    ) -> Result<Posted, kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let name = event_name(regarding, &pending.reason, &pending.note);
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            type_: Some("Warning".to_owned()),
            reason: Some(pending.reason.clone()),
            note: Some(pending.note.clone()),
            action: Some(EVENT_ACTION.to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(EVENT_CONTROLLER.to_owned()),
            reporting_instance: Some(self.publisher.instance()),
            deprecated_source: Some(EventSource {
                component: Some(EVENT_CONTROLLER.to_owned()),
                host: self.publisher.node.clone(),
            }),
            ..K8sEvent::default()
        };
        match events.create(&PostParams::default(), &event).await {
            Ok(_) => Ok(Posted::Created),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = events.get(&name).await?;
                let last_seen = existing
                    .series
                    .as_ref()
                    .map(|series| series.last_observed_time.0)
                    .or(existing.event_time.as_ref().map(|time| time.0));
                if last_seen.is_some_and(|seen| now.duration_since(seen) < self.repeat_after) {
                    return Ok(Posted::AlreadyReported);
                }
                let count = existing
                    .series
                    .as_ref()
                    .map_or(2, |series| series.count + 1);
                let series = EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                };
                let patch = serde_json::json!({ "series": series });
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Ok(Posted::Repeated)
            }
            Err(error) => Err(error),
        }
    }
}

/// The Event's name: the object's name and a hash of everything the Event
/// says (FNV-1a: the same in every agent and version), so every agent
/// reporting the same thing names the same Event. At most 253 characters.
fn event_name(regarding: &ObjectReference, reason: &str, note: &str) -> String {
    let mut hasher = fnv::FnvHasher::default();
    for part in [
        EVENT_CONTROLLER,
        regarding.api_version.as_deref().unwrap_or_default(),
        regarding.kind.as_deref().unwrap_or_default(),
        regarding.namespace.as_deref().unwrap_or_default(),
        regarding.name.as_deref().unwrap_or_default(),
        regarding.uid.as_deref().unwrap_or_default(),
        reason,
        note,
    ] {
        hasher.write(part.as_bytes());
        hasher.write_u8(0); // separator: ("ab", "c") differs from ("a", "bc")
    }
    let mut object = regarding
        .name
        .clone()
        .unwrap_or_else(|| EVENT_CONTROLLER.to_owned());
    truncate(&mut object, 253 - 17);
    let object = object.trim_end_matches(['.', '-']);
    format!("{object}.{:016x}", hasher.finish())
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
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
        truncate(&mut note, EVENT_NOTE_MAX - '…'.len_utf8());
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

    fn reference(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("discovery.k8s.io/v1".into()),
            kind: Some("EndpointSlice".into()),
            namespace: Some("demo".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn event_names_follow_from_what_the_event_says() {
        let name = event_name(&reference("web-a", "u1"), "ForbiddenIp", "note");
        assert_eq!(
            name,
            event_name(&reference("web-a", "u1"), "ForbiddenIp", "note")
        );
        assert!(name.starts_with("web-a."), "{name}");
        for other in [
            event_name(&reference("web-a", "u2"), "ForbiddenIp", "note"),
            event_name(&reference("web-a", "u1"), "Conflict", "note"),
            event_name(&reference("web-a", "u1"), "ForbiddenIp", "other note"),
            event_name(&reference("web-b", "u1"), "ForbiddenIp", "note"),
        ] {
            assert_ne!(name, other);
        }
        let long = event_name(&reference(&"a".repeat(253), "u1"), "R", "n");
        assert!(long.len() <= 253, "{}", long.len());
    }

    #[test]
    fn the_instance_is_the_pod_else_the_node() {
        let publisher = Publisher {
            pod: Some("mcs-agent-x7k2p".into()),
            node: Some("node-1".into()),
        };
        assert_eq!(publisher.instance(), "mcs-agent-x7k2p");
        let node_only = Publisher {
            pod: None,
            node: Some("node-1".into()),
        };
        assert_eq!(node_only.instance(), "node-1");
        assert_eq!(Publisher::default().instance(), EVENT_CONTROLLER);
        let long = Publisher {
            pod: Some("p".repeat(300)),
            node: None,
        };
        assert_eq!(long.instance().len(), EVENT_INSTANCE_MAX);
    }
}
