//! The incremental engine: the desired state of every import, kept up to
//! date import by import, with conflicts between imports resolved.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{Changes, DesiredState, Frontend, FrontendSpec, Policy, import::import_frontends};
use crate::model::{ObjectKey, Problem, Rejection, ServiceImport, SliceOwner, Snapshot};

/// What one import asks for, before conflicts between imports are resolved.
#[derive(Clone, Debug, Default)]
struct ImportOutput {
    /// Frontends in the order the import lists them (a frontend listed twice
    /// conflicts with itself).
    frontends: Vec<Frontend>,
    /// Its own rejections (conflicts are kept per frontend).
    rejections: Vec<Rejection>,
    derived_service: Option<String>,
}

/// The imports listing one frontend, with how often, in key order. Almost
/// every frontend has one: a vector holds it in one small allocation (a
/// map's node is sized for eleven).
#[derive(Clone, Debug, Default)]
struct Claimants(Vec<(Arc<ObjectKey>, u32)>);

impl Claimants {
    fn add(&mut self, key: &Arc<ObjectKey>) {
        match self.0.binary_search_by(|(listed, _)| (**listed).cmp(key)) {
            Ok(index) => self.0[index].1 += 1,
            Err(index) => {
                self.0.reserve_exact(1);
                self.0.insert(index, (key.clone(), 1));
            }
        }
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Ok(index) = self.0.binary_search_by(|(listed, _)| (**listed).cmp(key)) {
            self.0.remove(index);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first import in key order: it serves the frontend.
    fn winner(&self) -> Option<&ObjectKey> {
        self.0.first().map(|(key, _)| &**key)
    }

    fn total(&self) -> u32 {
        self.0.iter().map(|(_, count)| count).sum()
    }
}

/// A marker frontend (port 0) only says "this address is a ClusterSetIP";
/// service ports are 1..=65535 (conversion refuses 0), so the two kinds
/// never claim the same frontend.
fn is_marker(frontend: &Frontend) -> bool {
    frontend.port == 0
}

/// Desired state kept up to date import by import: a change costs
/// O(size of the imports it touches), not O(all imports). Conflicts are
/// resolved exactly as a full computation does: the first import in key
/// order that lists a frontend serves it; every other listing is rejected.
#[derive(Clone, Debug)]
pub struct Incremental {
    policy: Policy,
    state: DesiredState,
    /// Every import known, with what it asks for.
    outputs: BTreeMap<ObjectKey, ImportOutput>,
    /// Imports with rejections of their own: listing rejections (every
    /// update) costs O(rejected imports), not O(imports).
    rejecting: BTreeSet<ObjectKey>,
    /// Frontend → imports listing it, with how often (first in key order wins).
    claims: BTreeMap<Frontend, Claimants>,
    /// (namespace, derived Service) → imports backed by its slices.
    derived: BTreeMap<(String, String), BTreeSet<ObjectKey>>,
    /// Conflict rejections per contested service frontend.
    conflicts: BTreeMap<Frontend, Vec<Rejection>>,
}

impl Incremental {
    /// Computes everything (first sync, policy change).
    pub fn new(snapshot: &Snapshot, policy: Policy) -> Self {
        let mut engine = Self {
            policy,
            state: DesiredState::default(),
            outputs: BTreeMap::new(),
            rejecting: BTreeSet::new(),
            claims: BTreeMap::new(),
            derived: BTreeMap::new(),
            conflicts: BTreeMap::new(),
        };
        for import in snapshot.imports.values() {
            let (entries, rejections) = import_frontends(snapshot, import, &engine.policy);
            let frontends = entries.iter().map(|(frontend, _)| *frontend).collect();
            for (frontend, spec) in entries {
                engine.claims.entry(frontend).or_default().add(&spec.import);
                // Imports come in key order: the first listing wins.
                engine.state.frontends.entry(frontend).or_insert(spec);
            }
            engine.add_output(
                import,
                ImportOutput {
                    frontends,
                    rejections,
                    derived_service: import.derived_service.clone(),
                },
            );
        }
        let contested: Vec<Frontend> = engine
            .claims
            .iter()
            .filter(|(frontend, claimants)| !is_marker(frontend) && claimants.total() > 1)
            .map(|(frontend, _)| *frontend)
            .collect();
        for frontend in contested {
            engine.update_conflicts(&frontend);
        }
        engine
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    pub fn into_state(self) -> DesiredState {
        self.state
    }

    /// Every rejection of the current state, each once: the imports' own
    /// in import order, then conflicts in frontend order.
    pub fn rejections(&self) -> Vec<Rejection> {
        let mut seen = BTreeSet::new();
        self.rejecting
            .iter()
            .filter_map(|key| self.outputs.get(key))
            .flat_map(|output| &output.rejections)
            .chain(self.conflicts.values().flatten())
            .filter(|rejection| seen.insert(rejection.to_string()))
            .cloned()
            .collect()
    }

    /// Imports whose frontends `changes` may affect.
    pub fn affected(&self, changes: &Changes) -> BTreeSet<ObjectKey> {
        let mut affected = changes.imports.clone();
        for (namespace, owner) in &changes.slice_owners {
            match owner {
                SliceOwner::Import(name) => {
                    affected.insert(ObjectKey::new(namespace.clone(), name.clone()));
                }
                SliceOwner::Service(service) => {
                    if let Some(imports) = self.derived.get(&(namespace.clone(), service.clone())) {
                        affected.extend(imports.iter().cloned());
                    }
                }
            }
        }
        affected
    }

    /// Recomputes `imports` (added, changed or removed) from `snapshot`;
    /// returns the frontends whose desired spec may have changed.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        imports: &BTreeSet<ObjectKey>,
    ) -> BTreeSet<Frontend> {
        let mut touched = BTreeSet::new();
        // Each recomputed import's first listing of a frontend.
        let mut fresh: BTreeMap<(Frontend, ObjectKey), FrontendSpec> = BTreeMap::new();
        for key in imports {
            if let Some(old) = self.remove_output(key) {
                for frontend in old.frontends {
                    if let Some(claimants) = self.claims.get_mut(&frontend) {
                        claimants.remove(key);
                        if claimants.is_empty() {
                            self.claims.remove(&frontend);
                        }
                    }
                    touched.insert(frontend);
                }
            }
            let Some(import) = snapshot.imports.get(key) else {
                continue;
            };
            let (entries, rejections) = import_frontends(snapshot, import, &self.policy);
            let frontends = entries.iter().map(|(frontend, _)| *frontend).collect();
            for (frontend, spec) in entries {
                self.claims.entry(frontend).or_default().add(&spec.import);
                touched.insert(frontend);
                fresh.entry((frontend, key.clone())).or_insert(spec);
            }
            self.add_output(
                import,
                ImportOutput {
                    frontends,
                    rejections,
                    derived_service: import.derived_service.clone(),
                },
            );
        }
        for frontend in &touched {
            let winner = self.claims.get(frontend).and_then(Claimants::winner);
            match winner {
                None => {
                    self.state.frontends.remove(frontend);
                }
                Some(winner) => {
                    let current = self.state.frontends.get(frontend).map(|spec| &*spec.import);
                    let spec = if let Some(spec) = fresh.remove(&(*frontend, winner.clone())) {
                        Some(spec)
                    } else if current == Some(winner) {
                        None // the winner did not change and still serves it
                    } else {
                        // An unchanged import wins it now (the previous
                        // winner left): recompute that import, as specs of
                        // losing listings are not kept.
                        snapshot.imports.get(winner).and_then(|import| {
                            import_frontends(snapshot, import, &self.policy)
                                .0
                                .into_iter()
                                .find(|(listed, _)| listed == frontend)
                                .map(|(_, spec)| spec)
                        })
                    };
                    if let Some(spec) = spec {
                        self.state.frontends.insert(*frontend, spec);
                    }
                }
            }
            self.update_conflicts(frontend);
        }
        touched
    }

    fn add_output(&mut self, import: &ServiceImport, output: ImportOutput) {
        if let Some(service) = &output.derived_service {
            self.derived
                .entry((import.key.namespace.clone(), service.clone()))
                .or_default()
                .insert(import.key.clone());
        }
        if !output.rejections.is_empty() {
            self.rejecting.insert(import.key.clone());
        }
        self.outputs.insert(import.key.clone(), output);
    }

    fn remove_output(&mut self, key: &ObjectKey) -> Option<ImportOutput> {
        let output = self.outputs.remove(key)?;
        self.rejecting.remove(key);
        if let Some(service) = &output.derived_service {
            let index = (key.namespace.clone(), service.clone());
            if let Some(imports) = self.derived.get_mut(&index) {
                imports.remove(key);
                if imports.is_empty() {
                    self.derived.remove(&index);
                }
            }
        }
        Some(output)
    }

    /// Every listing of a service frontend but the winning one is rejected.
    fn update_conflicts(&mut self, frontend: &Frontend) {
        let rejections: Vec<Rejection> = match self.claims.get(frontend) {
            Some(claimants) if !is_marker(frontend) => {
                let winner = claimants.winner();
                claimants
                    .0
                    .iter()
                    .flat_map(|(key, count)| {
                        let losing = if Some(&**key) == winner {
                            count - 1
                        } else {
                            *count
                        };
                        std::iter::repeat_n(&**key, losing as usize)
                    })
                    .filter_map(|key| Some(conflict(key, frontend, winner?)))
                    .collect()
            }
            _ => Vec::new(),
        };
        if rejections.is_empty() {
            self.conflicts.remove(frontend);
        } else {
            self.conflicts.insert(*frontend, rejections);
        }
    }
}

/// `import` lists `frontend`, which `winner` serves.
pub(super) fn conflict(import: &ObjectKey, frontend: &Frontend, winner: &ObjectKey) -> Rejection {
    Rejection {
        kind: "ServiceImport".into(),
        object: import.clone(),
        problem: Problem::Conflict(format!("{frontend} is already served for {winner}")),
        fatal: false,
    }
}
