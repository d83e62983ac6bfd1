//! Where each frontend's Maglev table goes, and the capacity checks of the
//! execute step.
//!
//! A frontend's table is written over the one its service entry points at
//! when size and entry width are the same (each entry changes from one
//! existing slot to another: the datapath reads old or new entries, both
//! valid). Otherwise it goes to a new range of the table array (staged),
//! the service entry is switched to it, and only then is the old range
//! released (reused after [`super::TABLE_GRACE`]). A frontend thus owns at
//! most two ranges, both tracked in its `Applied`, so a failure at any
//! step leaks none.

use std::time::Instant;

use mcs_common::{MaglevPlace, ServiceValue, maglev_chunks, names};

use super::{Reconciler, WriteError, family_index, layout::Table};
use crate::desired::{Frontend, IpFamily};

impl Reconciler {
    /// Where `table` of `frontend` is written: over its current table, over
    /// a staged one of the same shape, or at a new range (staged).
    pub(super) fn place_table(
        &mut self,
        frontend: &Frontend,
        table: &Table,
    ) -> Result<MaglevPlace, WriteError> {
        let now = Instant::now();
        let Some(applied) = self.applied.get_mut(frontend) else {
            return Err(WriteError {
                map: names::MAGLEV,
                op: "place table",
                source: format!("{frontend} has no entry").into(),
            });
        };
        if let Some(staged) = applied.staged
            && staged.fits(table.size, table.wide)
        {
            return Ok(staged);
        }
        if applied.staged.is_none()
            && let Some(current) = applied.table
            && current.fits(table.size, table.wide)
        {
            return Ok(current);
        }
        if let Some(staged) = applied.staged.take() {
            // Nothing points at a staged table.
            self.table_space.release(staged.base, staged.chunks(), now);
        }
        let chunks = maglev_chunks(table.size, table.wide);
        let Some(base) = self.table_space.allocate(chunks, now) else {
            return Err(WriteError::full(
                names::MAGLEV,
                "place table",
                "Maglev table chunks",
                u64::from(self.table_space.capacity()),
                "--maglev-bytes-max",
            ));
        };
        let place = MaglevPlace {
            base,
            size: table.size,
            wide: table.wide,
        };
        applied.staged = Some(place);
        Ok(place)
    }

    /// `value` pointing at the table `frontend`'s service entry is to point
    /// at: the staged one, else the current one; none without backends.
    pub(super) fn with_table(&self, frontend: &Frontend, value: ServiceValue) -> ServiceValue {
        let place = self
            .applied
            .get(frontend)
            .filter(|_| value.backend_count > 0)
            .and_then(|applied| applied.staged.or(applied.table));
        value.with_maglev(place)
    }

    /// The service entry of `frontend` now points at `place` (`None`: the
    /// entry has no table, or is gone): every other range of the frontend
    /// is released.
    pub(super) fn settle_tables(&mut self, frontend: &Frontend, place: Option<MaglevPlace>) {
        let now = Instant::now();
        let Some(applied) = self.applied.get_mut(frontend) else {
            return;
        };
        for old in [applied.table.take(), applied.staged.take()]
            .into_iter()
            .flatten()
        {
            if Some(old) != place {
                self.table_space.release(old.base, old.chunks(), now);
            }
        }
        applied.table = place;
    }

    /// Whether one more backend slot fits the `family` slot map.
    pub(super) fn check_slot_room(&self, family: IpFamily) -> Result<(), WriteError> {
        let index = family_index(family);
        let capacity = self.slot_capacity[index];
        if self.slots_in_use[index] >= u64::from(capacity) {
            let (map, what, flag) = match family {
                IpFamily::V4 => (names::BACKENDS, "backend slots", "--backend-slots-max"),
                IpFamily::V6 => (
                    names::BACKENDS_V6,
                    "IPv6 backend slots",
                    "--backend-slots-v6-max",
                ),
            };
            return Err(WriteError::full(
                map,
                "insert",
                what,
                u64::from(capacity),
                flag,
            ));
        }
        Ok(())
    }

    /// Whether one more IPv6 frontend fits the IPv6 service map (its id
    /// comes from the pool shared with IPv4, checked when allocated).
    pub(super) fn check_frontend_room_v6(&self) -> Result<(), WriteError> {
        if self.frontends_v6 >= self.frontend_capacity_v6 {
            return Err(WriteError::full(
                names::SERVICES_V6,
                "insert",
                "IPv6 frontends",
                u64::from(self.frontend_capacity_v6),
                "--frontends-v6-max",
            ));
        }
        Ok(())
    }
}
