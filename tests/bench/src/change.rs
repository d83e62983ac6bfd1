//! One endpoint change with everything loaded, timed through the agent's
//! path for an update (parts 3 and 3b): the source publishes the change
//! with its journal, the agent takes the changed set from the journal,
//! recomputes the affected imports and writes their frontends, until a map
//! lookup sees the new endpoint.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mcs_agent::{
    dataplane::MapHandles,
    desired,
    model::{EndpointSlice, ObjectKey, Snapshot},
    reconcile::Reconciler,
    sources::{Publisher, SourceUpdate},
};
use mcs_common::BackendKey;
use serde::{Deserialize, Serialize};

use crate::rules::{self, HTTP_PORT, ServiceSet};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChangeTimes {
    /// Change → the map holds it (ms), per change.
    pub total_ms: Vec<f64>,
    /// Of which the desired state: the changed set and the incremental
    /// update of the affected imports (`desired::Follower`).
    pub compute_ms: Vec<f64>,
    /// Of `compute_ms`, the changed set: the entries of the update's
    /// journal after the version last applied (`Follower::changes`).
    #[serde(default)]
    pub diff_ms: Vec<f64>,
    /// Before the change reaches the agent, not in `total_ms`: the
    /// source's journaling of it (`sources::Publisher::prepare`, a diff
    /// against the snapshot it published last).
    #[serde(default)]
    pub source_ms: Vec<f64>,
    /// Of which `Reconciler::apply_changed` of the touched frontends (map writes).
    pub apply_ms: Vec<f64>,
    pub map_writes_per_change: f64,
}

/// The change test stops after this long (having done at least
/// [`MIN_CHANGES`]), whatever `changes` says.
const CHANGE_BUDGET: Duration = Duration::from_secs(90);
const MIN_CHANGES: usize = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The model as the agent holds it after its first sync: the source's
/// first update (journaled by the sources' own [`Publisher`]) and the
/// desired state following it.
pub struct Followed {
    pub publisher: Publisher,
    pub snapshot: Arc<Snapshot>,
    pub follower: desired::Follower,
}

impl Followed {
    pub fn new(snapshot: Snapshot) -> Result<Self> {
        let mut publisher = Publisher::default();
        let update = publisher
            .prepare(SourceUpdate {
                snapshot: Arc::new(snapshot),
                ..SourceUpdate::default()
            })
            .context("the first update is published")?;
        let follower = desired::Follower::new(
            update.snapshot.clone(),
            update.journal.version(),
            desired::Policy::default(),
        );
        Ok(Self {
            publisher,
            snapshot: update.snapshot,
            follower,
        })
    }
}

/// Changes one endpoint of one service per step and times the agent's path
/// for an update (`run/context.rs`) until the backend map holds the new
/// address: the changed set from the update's journal
/// (`Follower::changes`), the incremental desired state of the affected
/// imports (`Follower::apply`), `Reconciler::apply_changed` of the touched
/// frontends, a map lookup. The source's side (a new snapshot with the
/// slice replaced, journaled by `Publisher::prepare` as the sources do) is
/// timed apart.
pub fn change_latency(
    set: &ServiceSet,
    followed: &mut Followed,
    maps: &mut MapHandles,
    reconciler: &mut Reconciler,
    changes: usize,
) -> Result<ChangeTimes> {
    let mut times = ChangeTimes::default();
    let mut writes = 0usize;
    let mut state = 0x5eed_u64;
    let others = set.len().saturating_sub(1).max(1);
    let budget = Instant::now() + CHANGE_BUDGET;
    // Two snapshots in turn, changed in place: the one the agent follows,
    // and a spare one change behind (nobody else holds it), so that making
    // the next snapshot costs no copy of the whole model.
    let mut spare = Arc::new(Snapshot::clone(&followed.snapshot));
    let mut pending: Option<Arc<EndpointSlice>> = None;
    for n in 0..changes {
        if n >= MIN_CHANGES && Instant::now() > budget {
            break;
        }
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let index = usize::try_from(state >> 33).unwrap_or(0) % others;
        let service = &set.services[index];
        let key = ObjectKey::new(
            service.namespace.clone(),
            format!("{}-{}", service.name, rules::CLUSTER),
        );
        // A fresh address from outside the pool.
        let fresh =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 66, 0, 1)) + u32::try_from(n).unwrap_or(0));
        let mut slice = EndpointSlice::clone(
            followed
                .snapshot
                .slices()
                .get(&key)
                .with_context(|| format!("slice {key} missing"))?,
        );
        slice
            .endpoints
            .get_mut(n % service.endpoints.len().max(1))
            .context("endpoint")?
            .addresses = vec![IpAddr::V4(fresh)];
        let slice = Arc::new(slice);
        let next = Arc::get_mut(&mut spare).context("the spare snapshot is shared")?;
        if let Some(pending) = pending.take() {
            next.insert_slice(pending);
        }
        next.insert_slice(slice.clone());
        let source_start = Instant::now();
        let update = followed
            .publisher
            .prepare(SourceUpdate {
                snapshot: spare.clone(),
                ..SourceUpdate::default()
            })
            .context("the change is published")?;
        let source = source_start.elapsed();
        let start = Instant::now();
        let (changed, found) = followed.follower.changes(&update.snapshot, &update.journal);
        let diffed = Instant::now();
        ensure!(
            found == desired::Found::Journal,
            "change {n}: the journal did not hold the change"
        );
        let touched =
            followed
                .follower
                .apply(update.snapshot.clone(), update.journal.version(), &changed);
        let computed = Instant::now();
        let report = reconciler.apply_changed(followed.follower.engine().state(), &touched, maps);
        let applied = Instant::now();
        if let Some((frontend, error)) = report.errors.first() {
            bail!("apply failed on {frontend}: {error}");
        }
        writes += report.map_writes;
        // The map holds it: find the frontend and the new backend.
        let frontend = desired::Frontend {
            addr: service.vip.into(),
            port: HTTP_PORT,
            protocol: mcs_agent::model::Protocol::Tcp,
        };
        let key =
            mcs_common::ServiceKey::new(service.vip, frontend.port, frontend.protocol.number());
        let value = maps.services.get(&key, 0).context("service entry")?;
        let found = (0..value.backend_count).any(|slot| {
            maps.backends
                .get(
                    &BackendKey {
                        frontend_id: value.frontend_id,
                        slot,
                    },
                    0,
                )
                .is_ok_and(|b| b.addr() == fresh)
        });
        let seen = Instant::now();
        ensure!(
            found,
            "change {n}: the new endpoint {fresh} is not in the map"
        );
        drop(update);
        // The followed snapshot becomes the spare (one change behind).
        std::mem::swap(&mut followed.snapshot, &mut spare);
        pending = Some(slice);
        times.total_ms.push(ms(seen - start));
        times.diff_ms.push(ms(diffed - start));
        times.compute_ms.push(ms(computed - start));
        times.apply_ms.push(ms(applied - computed));
        times.source_ms.push(ms(source));
    }
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    {
        times.map_writes_per_change = writes as f64 / times.total_ms.len().max(1) as f64;
    }
    Ok(times)
}
