//! The cold sync: the first apply into maps holding no frontend. Every
//! frontend is new and its id unused, so puts are deferred and written in
//! batches (see [`super::deferred`]), a chunk of frontends at a time to
//! bound the memory held, in three stages one chunk apart: Maglev tables
//! built on one thread, the bookkeeping (plans) on the caller's, the
//! writes on a third (taking the maps' lock per chunk). A table takes about
//! as long to build as a chunk's entries take to write.

use std::collections::{BTreeMap, HashMap};

use super::{
    ApplyReport, DataplaneWriter, Reconciler, deferred,
    layout::{Table, maglev_table},
};
use crate::{
    desired::{DesiredState, Frontend, FrontendSpec},
    maglev,
};

impl Reconciler {
    /// Applies `upserts` of `desired` to maps holding no frontend. A
    /// frontend with a failed put is reported and left dirty.
    pub(super) fn apply_cold<'a, W: DataplaneWriter + Send>(
        &mut self,
        desired: &'a DesiredState,
        upserts: impl Iterator<Item = &'a Frontend>,
        maps: &mut W,
    ) -> ApplyReport {
        // Frontends per batch: large enough to amortise a batch call,
        // small enough that the tables in flight stay a few MiB.
        const CHUNK: usize = 1024;
        let mut report = ApplyReport::default();
        let frontends: Vec<(&Frontend, &FrontendSpec)> = upserts
            .filter_map(|frontend| Some((frontend, desired.frontends.get(frontend)?)))
            .collect();
        let chunks: Vec<&[(&Frontend, &FrontendSpec)]> = frontends.chunks(CHUNK).collect();
        let mut by_id: HashMap<u32, Frontend> = HashMap::with_capacity(frontends.len());
        let shared = deferred::Shared::new(maps);
        // Three stages, one chunk apart: Maglev tables are built on one
        // thread, this thread does the bookkeeping and collects the puts,
        // another writes them (taking the maps' lock per chunk).
        let failed = std::thread::scope(|scope| {
            let (built, tables_of) = std::sync::mpsc::sync_channel(1);
            let builder_chunks = &chunks;
            scope.spawn(move || {
                for chunk in builder_chunks {
                    let tables: Vec<Table> = chunk
                        .iter()
                        .filter(|(_, spec)| !spec.backends.is_empty())
                        .map(|(_, spec)| {
                            let size = maglev::table_size(spec.backends.len(), None);
                            maglev_table(&spec.backends, size)
                        })
                        .collect();
                    if built.send(tables).is_err() {
                        return;
                    }
                }
            });
            let (to_writer, puts_of) = std::sync::mpsc::sync_channel::<deferred::Puts>(1);
            let shared = &shared;
            let writer = scope.spawn(move || {
                let mut failed = BTreeMap::new();
                for puts in puts_of {
                    for (id, error) in puts.flush(&mut **shared.lock()) {
                        failed.entry(id).or_insert(error);
                    }
                }
                failed
            });
            for chunk in &chunks {
                // Built from `spec.backends` in order: what a new
                // frontend's full rewrite lays out.
                let mut tables = tables_of.recv().unwrap_or_default().into_iter();
                let mut batch = deferred::Deferred::new(shared);
                for (frontend, spec) in chunk.iter() {
                    let table = if spec.backends.is_empty() {
                        None
                    } else {
                        tables.next()
                    };
                    match self.upsert(frontend, spec, table, &mut batch, &mut report) {
                        Ok(()) => {
                            if let Some(applied) = self.applied.get(frontend) {
                                by_id.insert(applied.id, **frontend);
                            }
                        }
                        Err(error) => report.errors.push((**frontend, error)),
                    }
                }
                if to_writer.send(batch.into_puts()).is_err() {
                    break; // the writer panicked; its join below re-raises it
                }
            }
            drop(to_writer);
            writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        for (id, error) in failed {
            let Some(frontend) = by_id.get(&id) else {
                continue;
            };
            if let Some(applied) = self.applied.get_mut(frontend) {
                applied.dirty = true; // rewritten whole next time
            }
            report.added = report.added.saturating_sub(1);
            report.errors.push((*frontend, error));
        }
        self.finish_apply(shared.into_inner(), &mut report);
        report
    }
}
