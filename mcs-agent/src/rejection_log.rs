//! "Report each problem once": a rejection is reported when it appears, not
//! again on every update while it persists, and again after it went away
//! and came back. One type behind the agent's log lines and metrics
//! ([`crate::run`]), the DNS server's log lines and Kubernetes Events
//! ([`crate::events`]).

use std::collections::BTreeSet;

use tracing::warn;

use crate::model::Rejection;

/// What was current at the last report, by key.
#[derive(Debug)]
pub struct RejectionLog<K = String> {
    reported: BTreeSet<K>,
}

impl<K> Default for RejectionLog<K> {
    fn default() -> Self {
        Self {
            reported: BTreeSet::new(),
        }
    }
}

impl<K: Ord> RejectionLog<K> {
    /// The items of `current` whose key was not current at the previous
    /// call, each key once, in `current`'s order. Afterwards exactly the
    /// keys of `current` count as reported: a key that is gone is
    /// forgotten, so it is fresh again if it comes back.
    pub fn fresh<T>(
        &mut self,
        current: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> K,
    ) -> Vec<T> {
        let mut now = BTreeSet::new();
        let mut fresh = Vec::new();
        for item in current {
            let key = key(&item);
            if now.contains(&key) {
                continue;
            }
            if !self.reported.contains(&key) {
                fresh.push(item);
            }
            now.insert(key);
        }
        self.reported = now;
        fresh
    }

    /// `key`'s report could not be delivered: it is fresh again at the
    /// next call where it is current.
    pub fn retry(&mut self, key: &K) {
        self.reported.remove(key);
    }

    /// Problems currently counted as reported.
    pub fn len(&self) -> usize {
        self.reported.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }
}

impl RejectionLog<String> {
    /// Logs a warning naming the object and reason for every rejection not
    /// current before (keyed by its message); returns those.
    pub fn log<'a>(
        &mut self,
        rejections: impl IntoIterator<Item = &'a Rejection>,
    ) -> Vec<&'a Rejection> {
        let fresh = self.fresh(rejections, ToString::to_string);
        for rejection in &fresh {
            warn!(
                kind = rejection.kind,
                object = %rejection.object,
                reason = rejection.reason(),
                "rejected: {rejection}"
            );
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKey, Problem};

    fn rejection(name: &str, port: u16) -> Rejection {
        Rejection {
            kind: "ServiceImport".into(),
            object: ObjectKey::new("demo", name),
            problem: Problem::PortOutOfRange {
                field: "spec.ports[0]".into(),
                value: 65_535 + i64::from(port),
            },
            fatal: false,
        }
    }

    fn names(rejections: &[&Rejection]) -> Vec<String> {
        rejections.iter().map(|r| r.object.name.clone()).collect()
    }

    #[test]
    fn each_problem_is_reported_when_it_appears() {
        let mut log = RejectionLog::default();
        let (a, b, c) = (rejection("a", 1), rejection("b", 1), rejection("c", 1));
        assert_eq!(names(&log.log([&a, &b])), ["a", "b"]);
        // Unchanged: nothing new, however often the rest changes.
        assert!(log.log([&b, &a]).is_empty());
        assert_eq!(names(&log.log([&a, &b, &c])), ["c"]);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn a_fixed_problem_is_forgotten_and_reported_when_it_returns() {
        let mut log = RejectionLog::default();
        let (a, b) = (rejection("a", 1), rejection("b", 1));
        log.log([&a, &b]);
        assert!(log.log([&b]).is_empty());
        assert_eq!(log.len(), 1);
        assert_eq!(names(&log.log([&a, &b])), ["a"]);
        assert!(log.log([]).is_empty());
        assert!(log.is_empty());
    }

    #[test]
    fn the_same_problem_twice_in_one_update_is_reported_once() {
        let mut log = RejectionLog::default();
        let a = rejection("a", 1);
        let other_port = rejection("a", 2);
        assert_eq!(names(&log.log([&a, &a, &other_port])), ["a", "a"]);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn an_undelivered_report_is_retried() {
        let mut log: RejectionLog<(String, u32)> = RejectionLog::default();
        let key = |item: &(&str, u32)| (item.0.to_owned(), item.1);
        assert_eq!(log.fresh([("x", 1), ("y", 1)], key).len(), 2);
        log.retry(&("y".to_owned(), 1));
        assert_eq!(log.fresh([("x", 1), ("y", 1)], key), [("y", 1)]);
        assert!(log.fresh([("x", 1), ("y", 1)], key).is_empty());
        // A changed key (e.g. a new note) is a new report.
        assert_eq!(log.fresh([("x", 2), ("y", 1)], key), [("x", 2)]);
    }
}
