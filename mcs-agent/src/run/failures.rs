//! Failed map writes between reconciles: each failure is logged once when
//! it appears (a full map fails the same writes on every retry, once a
//! second), and a failure because a map is full is counted then, by map,
//! with a gauge of the frontends waiting for room in each map.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{error, info};

use crate::{
    desired::Frontend,
    metrics::{MapLabels, Metrics},
    reconcile::WriteError,
    telemetry::chain,
};

/// The failures of the last reconcile.
#[derive(Debug, Default)]
pub(super) struct Failures {
    failing: BTreeSet<String>,
    /// Maps that were full at some point (their gauge is kept up to date).
    full_maps: BTreeSet<&'static str>,
}

/// What one reconcile's errors change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Failures not seen in the reconcile before (to log).
    pub(super) new: Vec<String>,
    /// Of those, the ones because a map was full, by map (to count).
    pub(super) newly_full: BTreeMap<&'static str, u64>,
    /// Frontends failing now because a map is full, by map (every map that
    /// was ever full, 0 once it has room again).
    pub(super) full_now: BTreeMap<&'static str, i64>,
    /// Everything succeeded again after failures.
    pub(super) recovered: bool,
}

impl Failures {
    /// Whether the last reconcile had failures.
    pub(super) fn any(&self) -> bool {
        !self.failing.is_empty()
    }

    /// Records the errors of a reconcile.
    pub(super) fn record(&mut self, errors: &[(Frontend, WriteError)]) -> Outcome {
        let mut outcome = Outcome::default();
        let mut failing = BTreeSet::new();
        for (frontend, error) in errors {
            let failure = format!("{frontend}: {}", chain(error));
            let new = !self.failing.contains(&failure);
            if error.is_full() {
                *outcome.full_now.entry(error.map).or_default() += 1;
                if new {
                    *outcome.newly_full.entry(error.map).or_default() += 1;
                }
            }
            if new && failing.insert(failure.clone()) {
                outcome.new.push(failure);
            } else {
                failing.insert(failure);
            }
        }
        for map in &self.full_maps {
            outcome.full_now.entry(map).or_default();
        }
        self.full_maps.extend(outcome.full_now.keys());
        outcome.recovered = failing.is_empty() && !self.failing.is_empty();
        self.failing = failing;
        outcome
    }

    /// Records the errors of a reconcile: logs and counts what is new.
    pub(super) fn report(&mut self, errors: &[(Frontend, WriteError)], metrics: &Metrics) {
        let outcome = self.record(errors);
        let labels = |map: &str| MapLabels {
            map: map.to_owned(),
        };
        for (map, count) in &outcome.newly_full {
            metrics.map_full.get_or_create(&labels(map)).inc_by(*count);
        }
        for (map, count) in &outcome.full_now {
            metrics
                .map_full_frontends
                .get_or_create(&labels(map))
                .set(*count);
        }
        for failure in &outcome.new {
            error!(failure = %failure, "map update failed; retrying every second");
        }
        if outcome.recovered {
            info!("all map updates succeeded again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use mcs_common::names;

    use super::*;
    use crate::model::Protocol;

    fn frontend(port: u16) -> Frontend {
        Frontend {
            addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn full(map: &'static str) -> WriteError {
        WriteError::full(map, "insert", "backend slots", 8, "--backend-slots-max")
    }

    fn broken() -> WriteError {
        WriteError {
            map: names::SERVICES,
            op: "insert",
            source: "injected".into(),
        }
    }

    #[test]
    fn a_full_map_is_counted_and_logged_once_while_it_lasts() {
        let mut failures = Failures::default();
        let errors = vec![
            (frontend(1), full(names::BACKENDS)),
            (frontend(2), full(names::BACKENDS)),
            (frontend(3), broken()),
        ];
        let first = failures.record(&errors);
        assert_eq!(first.new.len(), 3);
        assert_eq!(first.newly_full, BTreeMap::from([(names::BACKENDS, 2)]));
        assert_eq!(first.full_now, BTreeMap::from([(names::BACKENDS, 2)]));
        assert!(failures.any() && !first.recovered);
        // The retry a second later fails the same way: nothing new.
        let retry = failures.record(&errors);
        assert!(retry.new.is_empty() && retry.newly_full.is_empty());
        assert_eq!(retry.full_now, BTreeMap::from([(names::BACKENDS, 2)]));
        // One frontend found room; another map fills.
        let later = failures.record(&[
            (frontend(2), full(names::BACKENDS)),
            (frontend(4), full(names::MAGLEV)),
        ]);
        assert_eq!(later.new.len(), 1);
        assert_eq!(later.newly_full, BTreeMap::from([(names::MAGLEV, 1)]));
        assert_eq!(
            later.full_now,
            BTreeMap::from([(names::BACKENDS, 1), (names::MAGLEV, 1)])
        );
        // Room everywhere: the gauges drop to zero, recovery is told once.
        let done = failures.record(&[]);
        assert!(done.recovered && !failures.any());
        assert_eq!(
            done.full_now,
            BTreeMap::from([(names::BACKENDS, 0), (names::MAGLEV, 0)])
        );
        assert!(!failures.record(&[]).recovered);
    }
}
