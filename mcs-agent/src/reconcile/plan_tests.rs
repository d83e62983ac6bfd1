//! The pure plan: the order of its writes, checked on plans alone and by
//! replaying them on a model of one frontend's entries.

use std::{collections::BTreeMap, net::Ipv4Addr};

use mcs_common::{BackendKey, MaglevPlace, maglev_wide};
use proptest::prelude::*;

use super::{Current, Plan, Write, is_current, removal, upsert};
use crate::{
    desired::{Backend, Frontend, FrontendKind, FrontendSpec, IpFamily},
    maglev::{rule_size, table_size},
    model::{ObjectKey, Protocol},
    reconcile::{
        Applied,
        layout::{Table, maglev_table, service_key},
    },
};

const ID: u32 = 7;

fn frontend() -> Frontend {
    Frontend {
        addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn backend(n: u8) -> Backend {
    Backend {
        addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 1, 0, n)),
        port: 8080,
        cluster: format!("c{}", n % 2).into(),
        weight: 1,
        terminating: false,
    }
}

fn spec(backends: Vec<Backend>) -> FrontendSpec {
    FrontendSpec {
        kind: FrontendKind::Service,
        name: "ns/web:http".into(),
        import: ObjectKey::new("ns", "web").into(),
        backends,
        affinity_timeout: None,
    }
}

/// What the execute step records once `plan` (from `known`) completed:
/// the plan's record with the table where the service entry now points
/// (a place of the size last written; the place itself does not matter
/// here).
fn completed(plan: &Plan, known: Option<&Applied>) -> Applied {
    let mut applied = plan.applied.clone();
    let written = plan.writes.iter().rev().find_map(|write| match write {
        Write::PutTable(_, table) => Some(MaglevPlace {
            base: 0,
            size: table.size,
            wide: table.wide,
        }),
        _ => None,
    });
    applied.table = if applied.backends.is_empty() {
        None
    } else {
        written.or(known.and_then(|known| known.table))
    };
    applied
}

/// What a completed plan for `spec` leaves recorded.
fn applied(backends: Vec<Backend>) -> Applied {
    let plan = upsert(
        &frontend(),
        Current::New {
            id: ID,
            reset_stats: false,
        },
        &spec(backends),
        None,
    );
    completed(&plan, None)
}

/// The table of `backends` at the size a new frontend gets.
fn rule_table(backends: &[Backend]) -> Table {
    maglev_table(backends, rule_size(backends.len()))
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
            Write::DeleteSlot(_, key) => Kind::DeleteSlot(key.slot),
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
    // Two backends take 211 entries; a third needs 307 or more: the table
    // grows (to the size for 4, half as many again) and moves, and the
    // service entry switches to it.
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
    let grown = completed(&plan, Some(&known));
    assert_eq!(grown.table.map(|t| t.size), Some(rule_size(4)));
    // A fourth backend fits that table: rewritten in place, the count
    // written with it.
    let plan = upsert(
        &frontend(),
        Current::Applied(&grown),
        &spec(vec![backend(1), backend(2), backend(3), backend(4)]),
        None,
    );
    assert_eq!(
        kinds(&plan.writes),
        [Kind::Slot(3), Kind::Table, Kind::Service(4)]
    );
    assert!(
        plan.writes
            .iter()
            .any(|w| matches!(w, Write::PutTable(_, t) if t.size == rule_size(4)))
    );
}

#[test]
fn a_table_that_keeps_its_size_is_rewritten_without_touching_the_service_entry() {
    // Weights change the table, not the count: same size, so in place.
    let known = applied(vec![backend(1), backend(2)]);
    let heavier = Backend {
        weight: 3,
        ..backend(2)
    };
    let plan = upsert(
        &frontend(),
        Current::Applied(&known),
        &spec(vec![backend(1), heavier]),
        None,
    );
    assert_eq!(kinds(&plan.writes), [Kind::Slot(1), Kind::Table]);
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
fn a_frontend_left_without_backends_loses_its_table_with_its_count() {
    let known = applied(vec![backend(1), backend(2)]);
    let plan = upsert(&frontend(), Current::Applied(&known), &spec(vec![]), None);
    assert_eq!(
        kinds(&plan.writes),
        [Kind::Service(0), Kind::DeleteSlot(0), Kind::DeleteSlot(1)]
    );
    assert_eq!(plan.retired, [backend(1), backend(2)]);
    assert_eq!(completed(&plan, Some(&known)).table, None);
}

#[test]
fn a_cluster_set_ip_marker_is_only_a_service_entry() {
    let marker = FrontendSpec {
        kind: FrontendKind::VipMarker,
        name: "ns/web:<vip>".into(),
        ..spec(vec![])
    };
    let current = Current::New {
        id: ID,
        reset_stats: false,
    };
    let plan = upsert(&frontend(), current, &marker, None);
    assert_eq!(kinds(&plan.writes), [Kind::Service(0)]);
    assert!(is_current(&plan.applied, &marker));
    // Another owner (conflict resolution) changes nothing stored.
    let renamed = FrontendSpec {
        name: "other/web:<vip>".into(),
        ..marker
    };
    assert!(is_current(&plan.applied, &renamed));
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
    // A full rewrite takes the caller's table of the spec's order as is,
    // when it has the size the frontend keeps (three backends' 307 entries
    // suit two).
    assert_eq!(table_size(2, Some(rule_size(3))), rule_size(3));
    let prebuilt = maglev_table(&[backend(9)], rule_size(3));
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
    // A dirty frontend left without backends writes its entry without
    // table.
    let plan = upsert(&frontend(), Current::Applied(&known), &spec(vec![]), None);
    assert!(kinds(&plan.writes).contains(&Kind::Service(0)));
}

#[test]
fn a_prebuilt_table_is_used_only_when_all_is_rewritten_at_its_size() {
    let known = applied(vec![backend(1)]);
    let wrong = rule_table(&[backend(9), backend(8)]);
    let plan = upsert(
        &frontend(),
        Current::Applied(&known),
        &spec(vec![backend(1), backend(2)]),
        Some(wrong.clone()),
    );
    let size = table_size(2, known.table.map(|t| t.size));
    let expected = maglev_table(&plan.applied.backends, size);
    assert!(plan.writes.contains(&Write::PutTable(ID, expected)));
    // Rewritten whole, but the frontend keeps another size than the
    // prebuilt table's: built again.
    let mut dirty = applied(vec![backend(1), backend(2), backend(3)]);
    dirty.dirty = true;
    let plan = upsert(
        &frontend(),
        Current::Applied(&dirty),
        &spec(vec![backend(1), backend(2)]),
        Some(wrong.clone()),
    );
    assert!(!plan.writes.contains(&Write::PutTable(ID, wrong)));
    let expected = maglev_table(&plan.applied.backends, rule_size(3));
    assert!(plan.writes.contains(&Write::PutTable(ID, expected)));
}

#[test]
fn a_removal_hides_the_service_first_and_deletes_the_name_last() {
    let key = service_key(&frontend());
    assert_eq!(
        removal(Some(key), ID, [2, 0], true),
        [
            Write::DeleteService(key),
            Write::DeleteSlot(IpFamily::V4, slot(0)),
            Write::DeleteSlot(IpFamily::V4, slot(1)),
            Write::DeleteName(ID),
        ]
    );
    // An orphan (no service entry) is cleaned the same way, in the slot
    // maps of both families.
    assert_eq!(
        removal(None, ID, [1, 1], true),
        [
            Write::DeleteSlot(IpFamily::V4, slot(0)),
            Write::DeleteSlot(IpFamily::V6, slot(0)),
            Write::DeleteName(ID),
        ]
    );
    // A ClusterSetIP marker has no name to delete.
    assert_eq!(
        removal(Some(key), ID, [0, 0], false),
        [Write::DeleteService(key)]
    );
}

/// One frontend's entries, as the datapath sees them: the table is the
/// one the service entry points at; a table of another size is written to
/// a new place (staged) that the next service entry points at.
#[derive(Debug, Default)]
struct Model {
    slots: BTreeMap<u32, Backend>,
    table: Option<Table>,
    staged: Option<Table>,
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
            table: applied
                .table
                .map(|place| maglev_table(&applied.backends, place.size)),
            staged: None,
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
            Write::PutTable(_, table) => {
                let fits = |t: &Table| t.size == table.size && t.wide == table.wide;
                if self.staged.is_none() && self.table.as_ref().is_some_and(fits) {
                    self.table = Some(table.clone());
                } else {
                    self.staged = Some(table.clone());
                }
            }
            Write::PutService(_, value) => {
                self.count = Some(value.backend_count);
                let staged = self.staged.take();
                self.table = if value.backend_count == 0 {
                    None
                } else {
                    staged.or(self.table.take())
                };
            }
            Write::DeleteService(_) => {
                self.count = None;
                self.table = None;
            }
            Write::DeleteSlot(_, key) => {
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
        let wide = maglev_wide(count);
        if !crate::maglev::keeps(table.size, count as usize) || table.wide != wide {
            return Err(format!("a table of {} for {count} backends", table.size));
        }
        match table
            .slots
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
        let done = completed(&plan, Some(&known));
        let end = Model::of(&done, &[]);
        prop_assert_eq!(&model.slots, &end.slots, "stale slots left or missing");
        prop_assert_eq!(&model.table, &end.table);
        prop_assert!(model.staged.is_none(), "a table left staged");
        prop_assert_eq!(model.count, end.count);
        prop_assert!(is_current(&done, &wanted));
        // The recorded layout is the wanted set; what left is retired.
        let mut layout = plan.applied.backends.clone();
        layout.sort();
        prop_assert_eq!(layout, new.clone());
        for gone in &plan.retired {
            prop_assert!(old.contains(gone) && !new.iter().any(|b| (b.addr, b.port) == (gone.addr, gone.port)));
        }
        // Planning again from the result writes nothing.
        let again = upsert(&frontend(), Current::Applied(&done), &wanted, None);
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
