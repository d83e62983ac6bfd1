//! Kubernetes Events on the own cluster's ServiceExports: conflicts,
//! invalid exports, parts left out, imports that cannot be written. Each is
//! published once while it lasts (a notice that goes away and comes back
//! is published again), from a task of its own so a slow API server never
//! delays a reconcile.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::desired::{ExportStatus, Notice};
use crate::{model::ObjectKey, telemetry::chain};

/// `reportingController` of the Events.
pub const EVENT_CONTROLLER: &str = "mcs-controller";
/// Events waiting to be posted; more are dropped and retried on the next
/// reconcile.
const QUEUE: usize = 256;
/// Events API limit for `note`.
const NOTE_MAX: usize = 1024;

fn truncate(mut note: String) -> String {
    if note.len() > NOTE_MAX {
        let mut end = NOTE_MAX - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// Publishes notices as Warning Events.
pub struct Events {
    queue: Option<mpsc::Sender<(ObjectReference, Event)>>,
    reported: HashSet<Notice>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Events {
    /// Events through `client`; `None`: notices are only logged.
    pub fn start(client: Option<Client>, instance: String) -> Self {
        let Some(client) = client else {
            return Self {
                queue: None,
                reported: HashSet::new(),
                task: None,
            };
        };
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: EVENT_CONTROLLER.to_owned(),
                instance: Some(instance),
            },
        );
        let (queue, mut pending) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        let task = tokio::spawn(async move {
            let mut failing = false;
            while let Some((reference, event)) = pending.recv().await {
                match recorder.publish(&event, &reference).await {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        warn!(error = %chain(&error), "cannot publish Kubernetes Event (notices are still logged)");
                    }
                    Err(error) => debug!(error = %chain(&error), "cannot publish Kubernetes Event"),
                }
            }
        });
        Self {
            queue: Some(queue),
            reported: HashSet::new(),
            task: Some(task),
        }
    }

    /// Logs and publishes the notices not reported before, each on the own
    /// cluster's export of its service (when there is one).
    pub fn report(&mut self, notices: &[Notice], exports: &[ExportStatus]) {
        let regarding: BTreeMap<&ObjectKey, &ExportStatus> =
            exports.iter().map(|e| (&e.key, e)).collect();
        let mut current = HashSet::new();
        for notice in notices {
            if !self.reported.contains(notice) {
                info!(service = %notice.service, reason = notice.reason, message = %notice.message, "notice");
                if let (Some(queue), Some(export)) = (&self.queue, regarding.get(&notice.service)) {
                    let (group, version) = export.flavour.group_version();
                    let reference = ObjectReference {
                        api_version: Some(format!("{group}/{version}")),
                        kind: Some("ServiceExport".to_owned()),
                        name: Some(export.key.name.clone()),
                        namespace: Some(export.key.namespace.clone()),
                        uid: export.uid.clone(),
                        ..ObjectReference::default()
                    };
                    let event = Event {
                        type_: EventType::Warning,
                        reason: notice.reason.to_owned(),
                        note: Some(truncate(notice.message.clone())),
                        action: "Export".to_owned(),
                        secondary: None,
                    };
                    if queue.try_send((reference, event)).is_err() {
                        // Not marked reported: tried again next reconcile.
                        continue;
                    }
                }
            }
            current.insert(notice.clone());
        }
        self.reported = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_the_events_limit() {
        let note = truncate("é".repeat(NOTE_MAX));
        assert!(note.len() <= NOTE_MAX && note.ends_with('…'));
        assert_eq!(truncate("short".into()), "short");
    }

    #[test]
    fn a_notice_is_reported_once_while_it_lasts() {
        let mut events = Events::start(None, String::new());
        let notice = Notice {
            service: ObjectKey::new("demo", "hello"),
            reason: "Conflict",
            message: "ports".into(),
        };
        events.report(std::slice::from_ref(&notice), &[]);
        assert!(events.reported.contains(&notice));
        events.report(&[], &[]);
        assert!(events.reported.is_empty(), "forgotten once fixed");
    }
}
