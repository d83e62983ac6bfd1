//! Runs plans ([`super::plan`]) through the [`DataplaneWriter`], keeping the
//! reconciler's books: a frontend stays marked dirty until every write of
//! its plan succeeded (a failure leaves it to be rewritten whole next time,
//! its id owned, never leaked), its slot high-water mark covers every slot
//! a write may have reached, its tables' places are tracked until released
//! (`tables.rs`), and ids are released only once nothing in the maps uses
//! them.

use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};

use mcs_common::{
    BACKEND_F_READY, BACKEND_F_TERMINATING, BackendKey, BackendValue, BackendValueV6, names,
};

use super::{
    Applied, ApplyReport, DataplaneWriter, ORPHAN_FRONTEND, Reconciler, Retired, WriteError,
    family_index,
    layout::{FamilyServiceKey, Table, service_key},
    plan::{self, Current, Write},
};
use crate::desired::{Backend, Frontend, FrontendKind, FrontendSpec, IpFamily};

/// A slot's value in its family's slot map.
enum SlotValue {
    V4(BackendValue),
    V6(BackendValueV6),
}

impl Reconciler {
    /// Brings `frontend` to `spec`; nothing is written when it is current.
    /// `prebuilt`: see [`plan::upsert`].
    pub(super) fn upsert(
        &mut self,
        frontend: &Frontend,
        spec: &FrontendSpec,
        prebuilt: Option<Table>,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<(), WriteError> {
        let plan = match self.applied.get(frontend) {
            Some(applied) if plan::is_current(applied, spec) => return Ok(()),
            Some(applied) => plan::upsert(frontend, Current::Applied(applied), spec, prebuilt),
            None => {
                if frontend.family() == IpFamily::V6 {
                    self.check_frontend_room_v6()?;
                }
                let (id, reset_stats) = self.allocate_frontend_id()?;
                // Recorded before any write, so a failure below leaves the
                // id owned (and retried as dirty), never leaked.
                self.set_applied(*frontend, Applied::allocated(id, spec.kind));
                plan::upsert(frontend, Current::New { id, reset_stats }, spec, prebuilt)
            }
        };
        if let Some(stored) = self.applied.get_mut(frontend) {
            stored.dirty = true; // until every write below has succeeded
        }
        self.run(frontend, plan.writes, maps, report)?;
        report
            .retired
            .extend(retired(frontend, plan.applied.id, &plan.retired));
        let mut applied = plan.applied;
        if let Some(stored) = self.applied.get(frontend) {
            // Where the run placed the table.
            (applied.table, applied.staged) = (stored.table, stored.staged);
        }
        self.set_applied(*frontend, applied);
        if plan.is_new {
            report.added += 1;
        } else {
            report.updated += 1;
        }
        Ok(())
    }

    pub(super) fn remove(
        &mut self,
        frontend: &Frontend,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<(), WriteError> {
        let Some(applied) = self.applied.get_mut(frontend) else {
            return Ok(());
        };
        applied.dirty = true;
        let (id, slot_high) = (applied.id, applied.slot_high);
        let named = applied.kind == FrontendKind::Service;
        let mut slot_highs = [0; 2];
        slot_highs[family_index(frontend.family())] = slot_high;
        let writes = plan::removal(Some(service_key(frontend)), id, slot_highs, named);
        self.run(frontend, writes, maps, report)?;
        if let Some(applied) = self.take_applied(frontend) {
            report
                .retired
                .extend(retired(frontend, id, &applied.backends));
        }
        self.frontend_pool.release(id);
        report.removed += 1;
        Ok(())
    }

    /// Deletes what adoption found without a service entry; an id becomes
    /// free only once all of it is gone.
    pub(super) fn remove_orphans(
        &mut self,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) {
        let orphans: Vec<(u32, [u32; 2])> =
            self.orphans.iter().map(|(id, high)| (*id, *high)).collect();
        for (id, slot_high) in orphans {
            // Whatever it was, a name may be left.
            let writes = plan::removal(None, id, slot_high, true);
            match self.run(&ORPHAN_FRONTEND, writes, maps, report) {
                Ok(()) => {
                    self.orphans.remove(&id);
                    for (in_use, high) in self.slots_in_use.iter_mut().zip(slot_high) {
                        *in_use -= u64::from(high);
                    }
                    self.frontend_pool.release(id);
                }
                Err(error) => report.errors.push((ORPHAN_FRONTEND, error)),
            }
        }
    }

    /// Runs `writes` in order, stopping at the first failure.
    fn run(
        &mut self,
        frontend: &Frontend,
        writes: Vec<Write>,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<(), WriteError> {
        for write in writes {
            match write {
                Write::ResetStats(id) => maps.reset_frontend_stats(id)?,
                Write::PutName(id, name) => maps.put_frontend_name(id, &name)?,
                Write::PutSlot(key, backend) => {
                    let family = frontend.family();
                    let high = self.applied.get(frontend).map_or(0, |a| a.slot_high);
                    if key.slot >= high {
                        self.check_slot_room(family)?;
                    }
                    let value = self.slot_value(&backend, maps, report)?;
                    if let Some(applied) = self.applied.get_mut(frontend)
                        && key.slot >= applied.slot_high
                    {
                        self.slots_in_use[family_index(family)] +=
                            u64::from(key.slot + 1 - applied.slot_high);
                        applied.slot_high = key.slot + 1;
                    }
                    put_slot(maps, family, &key, &value)?;
                }
                Write::PutTable(id, table) => {
                    let place = self.place_table(frontend, &table)?;
                    maps.put_maglev(id, place, &table.slots)?;
                }
                Write::PutService(key, value) => {
                    let value = self.with_table(frontend, value);
                    match key {
                        FamilyServiceKey::V4(key) => maps.put_service(&key, &value)?,
                        FamilyServiceKey::V6(key) => maps.put_service_v6(&key, &value)?,
                    }
                    self.settle_tables(frontend, value.maglev());
                }
                Write::DeleteService(key) => {
                    match key {
                        FamilyServiceKey::V4(key) => maps.delete_service(&key)?,
                        FamilyServiceKey::V6(key) => maps.delete_service_v6(&key)?,
                    }
                    self.settle_tables(frontend, None);
                }
                Write::DeleteSlot(IpFamily::V4, key) => maps.delete_backend(&key)?,
                Write::DeleteSlot(IpFamily::V6, key) => maps.delete_backend_v6(&key)?,
                Write::DeleteName(id) => maps.delete_frontend_name(id)?,
            }
            report.map_writes += 1;
        }
        Ok(())
    }

    /// A slot's value, with the backend's cluster id and counter id
    /// (allocated on first use, which may write too).
    fn slot_value(
        &mut self,
        backend: &Backend,
        maps: &mut impl DataplaneWriter,
        report: &mut ApplyReport,
    ) -> Result<SlotValue, WriteError> {
        let cluster_id = self.cluster_id(&backend.cluster, maps, report);
        let backend_id = self.backend_id(backend, maps, report)?;
        let flags = if backend.terminating {
            BACKEND_F_TERMINATING
        } else {
            BACKEND_F_READY
        };
        Ok(match backend.addr {
            IpAddr::V4(addr) => SlotValue::V4(BackendValue::new(
                SocketAddrV4::new(addr, backend.port),
                cluster_id,
                flags,
                backend_id,
            )),
            IpAddr::V6(addr) => SlotValue::V6(BackendValueV6::new(
                SocketAddrV6::new(addr, backend.port, 0, 0),
                cluster_id,
                flags,
                backend_id,
            )),
        })
    }
}

/// Writes a slot of a `family` frontend. A backend of the other family
/// never reaches here (the desired state gives a frontend the backends of
/// its own family); refused rather than written to the wrong map.
fn put_slot(
    maps: &mut impl DataplaneWriter,
    family: IpFamily,
    key: &BackendKey,
    value: &SlotValue,
) -> Result<(), WriteError> {
    match (family, value) {
        (IpFamily::V4, SlotValue::V4(value)) => maps.put_backend(key, value),
        (IpFamily::V6, SlotValue::V6(value)) => maps.put_backend_v6(key, value),
        (family, _) => Err(WriteError {
            map: match family {
                IpFamily::V4 => names::BACKENDS,
                IpFamily::V6 => names::BACKENDS_V6,
            },
            op: "insert",
            source: format!("a backend of the other family for an {family} frontend").into(),
        }),
    }
}

fn retired<'a>(
    frontend: &'a Frontend,
    frontend_id: u32,
    backends: &'a [Backend],
) -> impl Iterator<Item = Retired> + 'a {
    backends.iter().map(move |b| Retired {
        frontend_id,
        addr: b.addr,
        port: b.port,
        protocol: frontend.protocol,
    })
}
