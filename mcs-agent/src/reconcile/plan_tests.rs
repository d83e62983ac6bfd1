//! The pure plan: the order of its writes, checked on plans alone and by
//! replaying them on a model of one frontend's entries.

use std::{collections::BTreeMap, net::Ipv4Addr};

use mcs_common::{BackendKey, MaglevTable, ServiceKey};
use proptest::prelude::*;

use super::{Current, Plan, Write, is_current, removal, upsert};
use crate::{
    desired::{Backend, Frontend, FrontendKind, FrontendSpec},
    model::{ObjectKey, Protocol},
    reconcile::{
        Applied,
        layout::{maglev_table, service_key},
    },
};

const ID: u32 = 7;

fn frontend() -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(10, 96, 0, 1),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn backend(n: u8) -> Backend {
    Backend {
        addr: Ipv4Addr::new(10, 1, 0, n),
        port: 8080,
        cluster: format!("c{}", n % 2),
        weight: 1,
        terminating: false,
    }
}

fn spec(backends: Vec<Backend>) -> FrontendSpec {
    FrontendSpec {
        kind: FrontendKind::Service,
        name: "ns/web:http".into(),
        import: ObjectKey::new("ns", "web"),
        backends,
        affinity_timeout: None,
    }
}

/// What a completed plan for `spec` leaves recorded.
fn applied(backends: Vec<Backend>) -> Applied {
    upsert(
        &frontend(),
        Current::New {
            id: ID,
            reset_stats: false,
        },
        &spec(backends),
        None,
    )
    .applied
}

fn new_plan(backends: Vec<Backend>, reset_stats: bool) -> Plan {
    let current = Current::New {
        id: ID,
        reset_stats,
    };
    upsert(&frontend(), current, &spec(backends), None)
}

fn slot(slot: u32) -> BackendKey {
    BackendKey {
        frontend_id: ID,
        slot,
    }
}

/// The writes with tables and names left out, for order checks.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Reset,
    Name,
    Slot(u32),
    Table,
    Service(u32),
    DeleteService,
    DeleteTable,
    DeleteSlot(u32),
    DeleteName,
}

fn kinds(writes: &[Write]) -> Vec<Kind> {
    writes
        .iter()
        .map(|write| match write {
            Write::ResetStats(_) => Kind::Reset,
            Write::PutName(..) => Kind::Name,
            Write::PutSlot(key, _) => Kind::Slot(key.slot),
            Write::PutTable(..) => Kind::Table,
            Write::PutService(_, value) => Kind::Service(value.backend_count),
            Write::DeleteService(_) => Kind::DeleteService,
            Write::DeleteTable(_) => Kind::DeleteTable,
            Write::DeleteSlot(key) => Kind::DeleteSlot(key.slot),
            Write::DeleteName(_) => Kind::DeleteName,
        })
        .collect()
}

#[test]
fn a_new_frontend_is_visible_only_after_its_name_slots_and_table() {
    let plan = new_plan(vec![backend(1), backend(2)], true);
    assert_eq!(
        kinds(&plan.writes),
        [
            Kind::Reset,
            Kind::Name,
            Kind::Slot(0),
            Kind::Slot(1),
            Kind::Table,
            Kind::Service(2)
        ]
    );
    assert!(plan.is_new && plan.retired.is_empty());
    assert_eq!(plan.applied.backends, [backend(1), backend(2)]);
    // A fresh id needs no counter reset; without backends, no table.
    let plan = new_plan(Vec::new(), false);
    assert_eq!(kinds(&plan.writes), [Kind::Name, Kind::Service(0)]);
}

#[test]
fn a_new_backend_gets_its_slot_before_the_table_and_the_count() {
    let known = applied(vec![backend(1), backend(2)]);
    let plan = upsert(
        &frontend(),
        Current::Applied(&known),
        &spec(vec![backend(1), backend(2), backend(3)]),
        None,
    );
    assert_eq!(
        kinds(&plan.writes),
        [Kind::Slot(2), Kind::Table, Kind::Service(3)]
    );
    assert!(!plan.is_new && plan.retired.is_empty());
}

#[test]
fn a_removed_backend_is_replaced_in_place_and_its_stale_slot_deleted_last() {
    let known = applied(vec![backend(1), backend(2), backend(3)]);
    let plan = upsert(
        &frontend(),
        Current::Applied(&known),
        &spec(vec![backend(2), backend(3)]),
        None,
    );
    // Slot 2 goes, so backend 3 moves into the freed slot 0; backend 2
    // stays in slot 1.
    assert_eq!(
        kinds(&plan.writes),
        [
            Kind::Slot(0),
            Kind::Table,
            Kind::Service(2),
            Kind::DeleteSlot(2)
        ]
    );
    assert_eq!(plan.applied.backends, [backend(3), backend(2)]);
    assert_eq!(plan.retired, [backend(1)]);
}

#[test]
fn a_frontend_left_without_backends_loses_its_table_after_its_count() {
    let known = applied(vec![backend(1), backend(2)]);
    let plan = upsert(&frontend(), Current::Applied(&known), &spec(vec![]), None);
    assert_eq!(
        kinds(&plan.writes),
        [
            Kind::Service(0),
            Kind::DeleteTable,
            Kind::DeleteSlot(0),
            Kind::DeleteSlot(1)
        ]
    );
    assert_eq!(plan.retired, [backend(1), backend(2)]);
}

#[test]
fn a_change_of_name_or_affinity_alone_writes_only_that() {
    let known = applied(vec![backend(1)]);
    let mut renamed = spec(vec![backend(1)]);
    renamed.name = "other/web:http".into();
    assert!(!is_current(&known, &renamed));
    let plan = upsert(&frontend(), Current::Applied(&known), &renamed, None);
    assert_eq!(kinds(&plan.writes), [Kind::Name]);

    let mut sticky = spec(vec![backend(1)]);
    sticky.affinity_timeout = Some(60);
    let plan = upsert(&frontend(), Current::Applied(&known), &sticky, None);
    assert_eq!(kinds(&plan.writes), [Kind::Service(1)]);
    assert!(is_current(&plan.applied, &sticky));
}

#[test]
fn an_adopted_frontend_rewrites_only_its_table() {
    let mut known = applied(vec![backend(1), backend(2)]);
    assert!(is_current(&known, &spec(vec![backend(1), backend(2)])));
    known.table_stale = true;
    let wanted = spec(vec![backend(1), backend(2)]);
    assert!(!is_current(&known, &wanted));
    let plan = upsert(&frontend(), Current::Applied(&known), &wanted, None);
    assert_eq!(kinds(&plan.writes), [Kind::Table]);
}

#[test]
fn a_dirty_frontend_is_rewritten_whole_in_spec_order() {
    let mut known = applied(vec![backend(1), backend(2), backend(3)]);
    known.dirty = true;
    known.slot_high = 5; // a failed update may have reached further
    // A full rewrite takes the caller's table of the spec's order as is.
    let prebuilt = maglev_table(&[backend(9)]);
    let plan = upsert(
        &frontend(),
        Current::Applied(&known),
        &spec(vec![backend(3), backend(2)]),
        Some(prebuilt.clone()),
    );
    assert_eq!(
        kinds(&plan.writes),
        [
            Kind::Name,
            Kind::Slot(0),
            Kind::Slot(1),
            Kind::Table,
            Kind::Service(2),
            Kind::DeleteSlot(2),
            Kind::DeleteSlot(3),
            Kind::DeleteSlot(4)
        ]
    );
    assert!(plan.writes.contains(&Write::PutTable(ID, prebuilt)));
    // A dirty frontend left without backends deletes a table it may have.
    let plan = upsert(&frontend(), Current::Applied(&known), &spec(vec![]), None);
    assert!(kinds(&plan.writes).contains(&Kind::DeleteTable));
}

#[test]
fn a_prebuilt_table_is_used_only_when_all_is_rewritten() {
    let known = applied(vec![backend(1)]);
    let wrong: Box<MaglevTable> = maglev_table(&[backend(9)]);
    let plan = upsert(
        &frontend(),
        Current::Applied(&known),
        &spec(vec![backend(1), backend(2)]),
        Some(wrong),
    );
    let expected = maglev_table(&plan.applied.backends);
    assert!(plan.writes.contains(&Write::PutTable(ID, expected)));
}

#[test]
fn a_removal_hides_the_service_first_and_deletes_the_name_last() {
    let key: ServiceKey = service_key(&frontend());
    assert_eq!(
        removal(Some(key), ID, 2),
        [
            Write::DeleteService(key),
            Write::DeleteTable(ID),
            Write::DeleteSlot(slot(0)),
            Write::DeleteSlot(slot(1)),
            Write::DeleteName(ID),
        ]
    );
    // An orphan (no service entry) is cleaned the same way.
    assert_eq!(
        kinds(&removal(None, ID, 1)),
        [Kind::DeleteTable, Kind::DeleteSlot(0), Kind::DeleteName]
    );
}

/// One frontend's entries, as the datapath sees them.
#[derive(Debug, Default)]
struct Model {
    slots: BTreeMap<u32, Backend>,
    table: Option<Vec<u16>>,
    count: Option<u32>,
    named: bool,
}

impl Model {
    /// The maps after a completed plan left `applied` (stale slots beyond
    /// the count included).
    fn of(applied: &Applied, stale: &[Backend]) -> Self {
        let mut slots: BTreeMap<u32, Backend> = (0u32..).zip(applied.backends.clone()).collect();
        for (slot, backend) in (applied.backends.len() as u32..applied.slot_high).zip(stale) {
            slots.insert(slot, backend.clone());
        }
        Self {
            slots,
            table: (!applied.backends.is_empty())
                .then(|| maglev_table(&applied.backends).slots.to_vec()),
            count: Some(applied.backends.len() as u32),
            named: true,
        }
    }

    fn apply(&mut self, write: &Write) {
        match write {
            Write::ResetStats(_) => {}
            Write::PutName(..) => self.named = true,
            Write::PutSlot(key, backend) => {
                self.slots.insert(key.slot, backend.clone());
            }
            Write::PutTable(_, table) => self.table = Some(table.slots.to_vec()),
            Write::PutService(_, value) => self.count = Some(value.backend_count),
            Write::DeleteService(_) => self.count = None,
            Write::DeleteTable(_) => self.table = None,
            Write::DeleteSlot(key) => {
                self.slots.remove(&key.slot);
            }
            Write::DeleteName(_) => self.named = false,
        }
    }

    /// What the datapath relies on while the service entry exists: a name,
    /// slots `0..count`, and with any backend a table naming only
    /// existing slots.
    fn check_serving(&self) -> Result<(), String> {
        let Some(count) = self.count else {
            return Ok(());
        };
        if !self.named {
            return Err("visible without a name".into());
        }
        if let Some(missing) = (0..count).find(|slot| !self.slots.contains_key(slot)) {
            return Err(format!("slot {missing} of {count} missing"));
        }
        if count == 0 {
            return Ok(());
        }
        let table = self.table.as_ref().ok_or("backends but no table")?;
        match table
            .iter()
            .find(|s| !self.slots.contains_key(&u32::from(**s)))
        {
            Some(slot) => Err(format!("table names missing slot {slot}")),
            None => Ok(()),
        }
    }
}

fn backends(max: usize) -> impl Strategy<Value = Vec<Backend>> {
    prop::collection::btree_set(1u8..12, 0..max).prop_flat_map(|ids| {
        let n = ids.len();
        (
            Just(ids),
            prop::collection::vec((1u32..4, any::<bool>()), n),
        )
            .prop_map(|(ids, extra)| {
                ids.into_iter()
                    .zip(extra)
                    .map(|(n, (weight, terminating))| Backend {
                        weight,
                        terminating,
                        ..backend(n)
                    })
                    .collect()
            })
    })
}

proptest! {
    /// Replayed write by write, any plan from a completed state keeps the
    /// frontend serving at every step, never has it without backends in
    /// between when it has some before and after, and ends exactly in the
    /// state the plan records.
    #[test]
    fn every_step_of_a_plan_serves_and_the_end_is_what_it_records(
        old in backends(6),
        new in backends(6),
        stale in backends(3),
        table_stale in any::<bool>(),
    ) {
        let mut known = applied(old.clone());
        known.slot_high += stale.len() as u32;
        known.table_stale = table_stale;
        let mut model = Model::of(&known, &stale);
        let wanted = spec(new.clone());
        let plan = upsert(&frontend(), Current::Applied(&known), &wanted, None);
        for write in &plan.writes {
            model.apply(write);
            prop_assert_eq!(model.check_serving(), Ok(()), "after {:?}", write);
            if !old.is_empty() && !new.is_empty() {
                prop_assert_ne!(model.count, Some(0), "no backends in between");
            }
        }
        let end = Model::of(&plan.applied, &[]);
        prop_assert_eq!(&model.slots, &end.slots, "stale slots left or missing");
        prop_assert_eq!(&model.table, &end.table);
        prop_assert_eq!(model.count, end.count);
        prop_assert!(is_current(&plan.applied, &wanted));
        // The recorded layout is the wanted set; what left is retired.
        let mut layout = plan.applied.backends.clone();
        layout.sort();
        prop_assert_eq!(layout, new.clone());
        for gone in &plan.retired {
            prop_assert!(old.contains(gone) && !new.iter().any(|b| (b.addr, b.port) == (gone.addr, gone.port)));
        }
        // Planning again from the result writes nothing.
        let again = upsert(&frontend(), Current::Applied(&plan.applied), &wanted, None);
        prop_assert!(again.writes.is_empty(), "{:?}", kinds(&again.writes));
    }

    /// A new frontend's service entry is its last write: nothing of it is
    /// visible before its name, slots and table exist.
    #[test]
    fn a_new_frontend_becomes_visible_last(new in backends(8), reset_stats in any::<bool>()) {
        let plan = new_plan(new.clone(), reset_stats);
        let mut model = Model::default();
        for write in &plan.writes {
            model.apply(write);
            prop_assert_eq!(model.check_serving(), Ok(()), "after {:?}", write);
        }
        prop_assert!(matches!(plan.writes.last(), Some(Write::PutService(..))));
        prop_assert_eq!(model.slots.len(), new.len());
    }
}
