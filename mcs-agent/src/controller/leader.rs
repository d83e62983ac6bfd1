//! Leader election with a `coordination.k8s.io/v1` Lease in the own
//! cluster: of the replicas of a controller, only the Lease holder writes.
//!
//! The algorithm is client-go's (`tools/leaderelection`): every write of
//! the Lease is an update conditioned on the `resourceVersion` read (a
//! concurrent writer gets `409 Conflict` and loses), and expiry is judged
//! by the local monotonic clock from when the record was last seen to
//! change, never by comparing the holder's timestamps with the local
//! clock, so clock skew between nodes does not matter.
//!
//! * A candidate takes the Lease when it is free, released, or has not
//!   changed for `leaseDurationSeconds`.
//! * The leader renews every retry period; if it has not renewed for the
//!   renew deadline (shorter than the lease duration) it stops writing at
//!   once — [`Leadership::is_leader`] also checks the time, so a renewal
//!   stuck in a hung request cannot extend it — before any other replica
//!   may take over.
//! * On shutdown the leader releases the Lease, so a successor starts
//!   without waiting for the expiry.
//!
//! kube-lease-manager (the crate for kube 5) relies on server-side-apply
//! field ownership to detect a concurrent lock, which an API server must
//! implement in full; a resourceVersion precondition is enough here.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::telemetry::chain;

/// Settings of one election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The part of a Lease record that tells whether its holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    duration: Option<i32>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: Option<&LeaseSpec>) -> Self {
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            duration: spec.and_then(|s| s.lease_duration_seconds),
            transitions: spec.and_then(|s| s.lease_transitions),
        }
    }
}

/// What a candidate may do with the record it read (pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It holds the Lease: renew.
    Renew,
    /// Free, released or expired: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// Tracks when the record last changed, by the local clock.
#[derive(Debug, Default)]
struct Observation {
    record: Option<Record>,
    since: Option<Instant>,
}

impl Observation {
    fn decide(
        &mut self,
        record: Record,
        identity: &str,
        now: Instant,
        default: Duration,
    ) -> Decision {
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record.clone());
            self.since = Some(now);
        }
        match record.holder.as_deref() {
            None => Decision::Acquire,
            Some(holder) if holder == identity => Decision::Renew,
            Some(_) => {
                let duration = record
                    .duration
                    .and_then(|d| u64::try_from(d).ok())
                    .map_or(default, Duration::from_secs);
                let since = self.since.unwrap_or(now);
                if now.duration_since(since) >= duration {
                    Decision::Acquire
                } else {
                    Decision::Wait
                }
            }
        }
    }
}

/// Whether this replica may write, shared with the writer.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// Last successful renewal while leader.
    renewed: Arc<Mutex<Option<Instant>>>,
    deadline: Duration,
}

impl Leadership {
    /// Always leader (`--no-leader-election`).
    pub fn always() -> Self {
        Self {
            renewed: Arc::new(Mutex::new(None)),
            deadline: Duration::MAX,
        }
    }

    pub fn is_leader(&self) -> bool {
        if self.deadline == Duration::MAX {
            return true;
        }
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        renewed.is_some_and(|at| at.elapsed() < self.deadline)
    }

    fn set(&self, renewed: Option<Instant>) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
    }
}

/// Runs the election until the returned handle is stopped.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Leadership,
    changes: watch::Sender<bool>,
    observation: Observation,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> (Self, Leadership, watch::Receiver<bool>) {
        let leadership = Leadership {
            renewed: Arc::new(Mutex::new(None)),
            deadline: config.renew_deadline,
        };
        let (changes, receiver) = watch::channel(false);
        let elector = Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            leadership: leadership.clone(),
            changes,
            observation: Observation::default(),
        };
        (elector, leadership, receiver)
    }

    /// Tries to acquire or renew once; `Ok(true)` while holding the Lease.
    async fn try_once(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let lease = match self.api.get_opt(&self.config.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(error) => Err(error),
                };
            }
        };
        let record = Record::of(lease.spec.as_ref());
        let default = self.config.lease_duration;
        let decision = self.observation.decide(
            record.clone(),
            &self.config.identity,
            Instant::now(),
            default,
        );
        let (acquired, transitions) = match decision {
            Decision::Wait => return Ok(false),
            Decision::Renew => (
                lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.acquire_time.as_ref())
                    .map_or(now, |t| t.0),
                record.transitions.unwrap_or(0),
            ),
            Decision::Acquire => (now, record.transitions.unwrap_or(0).saturating_add(1)),
        };
        let mut updated = lease.clone();
        updated.spec = Some(self.spec(now, acquired, transitions));
        // `replace` carries the resourceVersion read: a concurrent writer
        // makes this fail with 409 Conflict.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Campaigns and renews until `stop` fires; then releases the Lease if
    /// held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut leader = false;
        let mut last_renew: Option<Instant> = None;
        loop {
            // Bounded, so a hung request cannot hold the renewal back.
            let attempt = tokio::time::timeout(self.config.retry_period, self.try_once()).await;
            let now = Instant::now();
            match attempt {
                Ok(Ok(true)) => {
                    last_renew = Some(now);
                    self.leadership.set(Some(now));
                    if !leader {
                        leader = true;
                        info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                        let _ = self.changes.send(true);
                    }
                }
                Ok(Ok(false)) => {
                    if leader {
                        self.lose("another replica holds the Lease");
                        leader = false;
                    }
                }
                Ok(Err(error)) => {
                    debug!(error = %chain(&error), "Lease attempt failed");
                    if leader
                        && last_renew
                            .is_none_or(|at| now.duration_since(at) >= self.config.renew_deadline)
                    {
                        warn!(error = %chain(&error), "cannot renew the Lease");
                        self.lose("renew deadline passed");
                        leader = false;
                    }
                }
                Err(_) => {
                    if leader
                        && last_renew
                            .is_none_or(|at| now.duration_since(at) >= self.config.renew_deadline)
                    {
                        self.lose("renew deadline passed (API server not answering)");
                        leader = false;
                    }
                }
            }
            // Candidates retry with jitter so replicas do not collide.
            let pause = if leader {
                self.config.retry_period
            } else {
                self.config
                    .retry_period
                    .mul_f64(1.0 + fastrand::f64() * 0.2)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
        if leader {
            self.release().await;
        }
    }

    fn lose(&mut self, why: &str) {
        warn!(lease = %self.config.name, why, "lost leadership; stopped writing");
        self.leadership.set(None);
        let _ = self.changes.send(false);
    }

    /// Gives the Lease up (as client-go's ReleaseOnCancel does).
    async fn release(&mut self) {
        self.leadership.set(None);
        let _ = self.changes.send(false);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.config.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.config.name, "released the Lease"),
            Err(error) => {
                warn!(error = %chain(&error), "cannot release the Lease; it expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, renewed: i64) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: Some(Timestamp::from_second(renewed).unwrap()),
            duration: Some(15),
            transitions: Some(0),
        }
    }

    #[test]
    fn a_free_or_released_lease_is_taken_and_an_own_one_renewed() {
        let now = Instant::now();
        let mut observation = Observation::default();
        assert_eq!(
            observation.decide(record(None, 1), "me", now, Duration::from_secs(15)),
            Decision::Acquire
        );
        assert_eq!(
            observation.decide(record(Some("me"), 2), "me", now, Duration::from_secs(15)),
            Decision::Renew
        );
    }

    #[test]
    fn another_holder_expires_only_after_its_record_stops_changing_for_the_duration() {
        let start = Instant::now();
        let mut observation = Observation::default();
        let default = Duration::from_secs(30);
        // The holder's timestamps are far in the past by our clock: skew
        // must not matter, only how long the record has been unchanged.
        assert_eq!(
            observation.decide(record(Some("other"), 1), "me", start, default),
            Decision::Wait
        );
        let later = start + Duration::from_secs(10);
        assert_eq!(
            observation.decide(record(Some("other"), 1), "me", later, default),
            Decision::Wait
        );
        // It renewed: the clock starts again.
        let renewed = start + Duration::from_secs(14);
        assert_eq!(
            observation.decide(record(Some("other"), 2), "me", renewed, default),
            Decision::Wait
        );
        let before = renewed + Duration::from_secs(14);
        assert_eq!(
            observation.decide(record(Some("other"), 2), "me", before, default),
            Decision::Wait
        );
        let after = renewed + Duration::from_secs(15);
        assert_eq!(
            observation.decide(record(Some("other"), 2), "me", after, default),
            Decision::Acquire
        );
        // Without a duration in the record, the configured one applies.
        let mut unbounded = record(Some("other"), 3);
        unbounded.duration = None;
        let t = after + Duration::from_secs(1);
        assert_eq!(
            observation.decide(unbounded.clone(), "me", t, default),
            Decision::Wait
        );
        assert_eq!(
            observation.decide(unbounded, "me", t + default, default),
            Decision::Acquire
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_the_renew_deadline_by_itself() {
        let leadership = Leadership {
            renewed: Arc::new(Mutex::new(None)),
            deadline: Duration::from_secs(10),
        };
        assert!(!leadership.is_leader());
        leadership.set(Some(Instant::now()));
        assert!(leadership.is_leader());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(leadership.is_leader());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !leadership.is_leader(),
            "no renewal for the deadline: not leader"
        );
        assert!(Leadership::always().is_leader());
    }
}
