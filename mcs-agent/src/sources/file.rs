//! File source: a YAML/JSON manifest file or a directory of them.
//!
//! * Changes are picked up through inotify (`notify`), debounced, with a
//!   periodic re-read as a safety net. Only events that can change what a
//!   file holds wake the source (not the opens and reads of its own
//!   re-reads, which would wake it again and again).
//! * Reading and parsing run on a blocking thread, never on the async
//!   workers (a large manifest takes a while to parse); so does journaling
//!   the update ([`Publisher`]: every object is parsed anew, so the diff
//!   against the last update compares them all, off the agent's path).
//! * A file that cannot be read or is not YAML keeps the objects it had
//!   (nothing is lost to a half-written file); the error names the file
//!   and is logged once, when it appears (and once when it is gone). The
//!   update says which files fail ([`SourceUpdate::failures`]) and whether
//!   the snapshot is still complete: a file that never parsed since the
//!   agent started (a restart onto a broken file) makes it incomplete, and
//!   an incomplete snapshot never replaces an adopted dataplane.
//! * If PATH itself disappears (e.g. a volume being remounted) the last
//!   state is kept until it comes back; a file removed from a directory
//!   that still exists removes its objects.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{
    EventKind, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{Publisher, SourceUpdate};
use crate::{
    desired::Journal,
    model::{
        Rejection,
        convert::Object,
        manifest::{self, SyntaxError},
    },
};

const DEBOUNCE: Duration = Duration::from_millis(100);
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
const MISSING_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("source path {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: invalid manifest")]
    Syntax {
        path: PathBuf,
        #[source]
        source: SyntaxError,
    },
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// The blocking thread that reads the files panicked or was cancelled.
    #[error("the file reader thread failed")]
    Reader(#[source] tokio::task::JoinError),
}

#[derive(Clone, Debug)]
struct FileContents {
    objects: Vec<Object>,
    rejections: Vec<Rejection>,
}

/// Reads and converts a manifest path, keeping the last good contents of
/// files that fail.
pub struct FileSource {
    path: PathBuf,
    files: BTreeMap<PathBuf, FileContents>,
    /// Files listed at the last reload that have never parsed (no contents
    /// to keep): the snapshot misses whatever they hold.
    unread: BTreeSet<PathBuf>,
    /// What failed at the last reload, one line each.
    failures: Vec<String>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) && !path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            files: BTreeMap::new(),
            unread: BTreeSet::new(),
            failures: Vec::new(),
        }
    }

    fn list(&self) -> Result<Vec<PathBuf>, FileSourceError> {
        let metadata = fs::metadata(&self.path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => FileSourceError::Missing(self.path.clone()),
            _ => FileSourceError::Read {
                path: self.path.clone(),
                source,
            },
        })?;
        if !metadata.is_dir() {
            return Ok(vec![self.path.clone()]);
        }
        let entries = fs::read_dir(&self.path).map_err(|source| FileSourceError::Read {
            path: self.path.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_file() && is_manifest(path))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Re-reads everything; returns the errors of files that kept their old
    /// contents (or, never having parsed, have none). Fails only when PATH
    /// itself is unusable (state kept).
    pub fn reload(&mut self) -> Result<Vec<FileSourceError>, FileSourceError> {
        let files = match self.list() {
            Ok(files) => files,
            Err(error) => {
                self.failures = vec![crate::telemetry::chain(&error)];
                return Err(error);
            }
        };
        let mut errors = Vec::new();
        let mut unread = BTreeSet::new();
        let mut next = BTreeMap::new();
        for file in files {
            let parsed = fs::read_to_string(&file)
                .map_err(|source| FileSourceError::Read {
                    path: file.clone(),
                    source,
                })
                .and_then(|text| {
                    manifest::parse(&text).map_err(|source| FileSourceError::Syntax {
                        path: file.clone(),
                        source,
                    })
                });
            match parsed {
                Ok(converted) => {
                    next.insert(
                        file,
                        FileContents {
                            objects: converted.objects,
                            rejections: converted.rejections,
                        },
                    );
                }
                Err(error) => {
                    match self.files.get(&file) {
                        Some(previous) => {
                            next.insert(file, previous.clone());
                        }
                        None => {
                            unread.insert(file);
                        }
                    }
                    errors.push(error);
                }
            }
        }
        self.files = next;
        self.unread = unread;
        self.failures = errors
            .iter()
            .map(|error| crate::telemetry::chain(error))
            .collect();
        Ok(errors)
    }

    /// Whether the snapshot holds every listed file (see
    /// [`SourceUpdate::complete`]).
    pub fn complete(&self) -> bool {
        self.unread.is_empty()
    }

    /// The merged state of all files.
    pub fn update(&self) -> SourceUpdate {
        let objects = self.files.values().flat_map(|c| c.objects.iter().cloned());
        let (snapshot, mut rejections) = manifest::snapshot(objects);
        let mut all: Vec<Rejection> = self
            .files
            .values()
            .flat_map(|c| c.rejections.iter().cloned())
            .collect();
        all.append(&mut rejections);
        SourceUpdate {
            snapshot: Arc::new(snapshot),
            journal: Journal::default(),
            rejections: all,
            references: Default::default(),
            complete: self.complete(),
            failures: self.failures.clone(),
        }
    }

    /// [`reload`](Self::reload) and [`update`](Self::update) on a blocking
    /// thread, journaled by `publisher` there too (the diff against the
    /// last update compares every re-parsed object); hands both back, with
    /// the update to publish if anything changed.
    async fn reload_blocking(
        mut self,
        mut publisher: Publisher,
    ) -> Result<
        (
            Self,
            Publisher,
            Result<Vec<FileSourceError>, FileSourceError>,
            Option<SourceUpdate>,
        ),
        FileSourceError,
    > {
        tokio::task::spawn_blocking(move || {
            let result = self.reload();
            let update = publisher.prepare(self.update());
            (self, publisher, result, update)
        })
        .await
        .map_err(FileSourceError::Reader)
    }

    /// Loads once, then watches PATH and publishes every change until the
    /// receiver is dropped. The first load must find PATH (the agent should
    /// not start on a path that does not exist); files in it that fail are
    /// reported in the update.
    pub async fn run(
        self,
        updates: watch::Sender<Option<SourceUpdate>>,
    ) -> Result<(), FileSourceError> {
        let (mut source, mut publisher, loaded, update) =
            self.reload_blocking(Publisher::default()).await?;
        let mut logged = FailureLog::default();
        logged.report(&loaded?);
        // The first update is always published (nothing was before it).
        if let Some(update) = update {
            if !update.complete {
                warn!(
                    path = %source.path.display(),
                    "some files never parsed: the snapshot is incomplete (an adopted dataplane is kept as it is until they do)"
                );
            }
            updates.send_replace(Some(update));
        }
        info!(path = %source.path.display(), "file source loaded");

        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher = Some(source.watch(events_tx.clone())?);
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.tick().await;
        // While PATH is missing, look for it every second (its watch is gone
        // with it) instead of waiting for the periodic re-read.
        let mut missing_poll = tokio::time::interval(MISSING_POLL);
        let mut missing = false;
        loop {
            tokio::select! {
                event = events.recv() => {
                    if event.is_none() {
                        return Ok(());
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                }
                _ = resync.tick() => debug!("periodic re-read"),
                _ = missing_poll.tick(), if missing => {}
                () = updates.closed() => return Ok(()),
            }
            let (reloaded, kept, result, update) = source.reload_blocking(publisher).await?;
            (source, publisher) = (reloaded, kept);
            match result {
                Ok(errors) => {
                    if missing || watcher.is_none() {
                        info!(path = %source.path.display(), "source back; applying its current state");
                        missing = false;
                        watcher = match source.watch(events_tx.clone()) {
                            Ok(watcher) => Some(watcher),
                            Err(error) => {
                                warn!(error = %crate::telemetry::chain(&error), "cannot watch the source again; re-reading periodically");
                                None
                            }
                        };
                    }
                    logged.report(&errors);
                }
                Err(error) => {
                    if !missing {
                        warn!(error = %crate::telemetry::chain(&error), "source unavailable; keeping the last state");
                        missing = true;
                        watcher = None;
                    }
                }
            }
            if let Some(update) = update {
                updates.send_replace(Some(update));
            }
        }
    }

    /// Watches the directory (or, for a file, its parent, so editors'
    /// rename-replace is seen); events only wake the loop up.
    fn watch(
        &self,
        events: mpsc::Sender<()>,
    ) -> Result<notify::RecommendedWatcher, FileSourceError> {
        let watch_path = if self.path.is_dir() {
            self.path.clone()
        } else {
            self.path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|event| changes_contents(&event.kind)) {
                    let _ = events.try_send(());
                }
            })
            .map_err(|source| FileSourceError::Watch {
                path: watch_path.clone(),
                source,
            })?;
        watcher
            .watch(&watch_path, RecursiveMode::NonRecursive)
            .map_err(|source| FileSourceError::Watch {
                path: watch_path.clone(),
                source,
            })?;
        Ok(watcher)
    }
}

/// Whether an event may change what the watched files hold. Opens, reads
/// and read-only closes do not, and the source's own re-reads cause them.
fn changes_contents(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_)
                | AccessKind::Read
                | AccessKind::Close(AccessMode::Read | AccessMode::Execute)
                | AccessKind::Any
                | AccessKind::Other
        )
    )
}

/// File errors logged once each, when they appear, and once when they are
/// gone.
#[derive(Default)]
struct FailureLog {
    current: BTreeSet<String>,
}

impl FailureLog {
    fn report(&mut self, errors: &[FileSourceError]) {
        let now: BTreeSet<String> = errors
            .iter()
            .map(|error| crate::telemetry::chain(error))
            .collect();
        for error in now.difference(&self.current) {
            error!(error = %error, "manifest file rejected; keeping its previous objects (if any) until it parses");
        }
        for error in self.current.difference(&now) {
            info!(was = %error, "manifest file problem gone");
        }
        self.current = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMPORT: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: web, namespace: demo}\nspec: {ips: [\"10.96.0.1\"], ports: [{name: http, port: 80}]}\n";

    #[test]
    fn broken_files_keep_their_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        fs::write(&file, IMPORT).unwrap();
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut source = FileSource::new(dir.path().to_path_buf());
        assert!(source.reload().unwrap().is_empty());
        assert_eq!(source.update().snapshot.imports.len(), 1);

        fs::write(&file, "spec: [broken").unwrap();
        let errors = source.reload().unwrap();
        assert!(matches!(
            errors.as_slice(),
            [FileSourceError::Syntax { .. }]
        ));
        let update = source.update();
        assert_eq!(update.snapshot.imports.len(), 1, "kept");
        assert!(update.complete, "the last good contents stand in");
        assert_eq!(update.failures.len(), 1);
        assert!(
            update.failures[0].contains("web.yaml"),
            "{:?}",
            update.failures
        );

        fs::remove_file(&file).unwrap();
        assert!(source.reload().unwrap().is_empty());
        assert!(
            source.update().snapshot.imports.is_empty(),
            "removed file removes objects"
        );
    }

    #[test]
    fn a_file_that_never_parsed_makes_the_snapshot_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("good.yaml"), IMPORT).unwrap();
        let broken = dir.path().join("broken.yaml");
        fs::write(&broken, "spec: [broken").unwrap();
        // A fresh source (an agent restart) meets the broken file first.
        let mut source = FileSource::new(dir.path().to_path_buf());
        assert_eq!(source.reload().unwrap().len(), 1);
        let update = source.update();
        assert!(!update.complete);
        assert_eq!(
            update.snapshot.imports.len(),
            1,
            "the good file still counts"
        );
        // Once it parses the snapshot is complete, and stays so when it
        // breaks again (its contents are kept).
        fs::write(&broken, IMPORT.replace("web", "api")).unwrap();
        assert!(source.reload().unwrap().is_empty());
        let update = source.update();
        assert!(update.complete && update.failures.is_empty());
        assert_eq!(update.snapshot.imports.len(), 2);
        fs::write(&broken, "spec: [broken").unwrap();
        source.reload().unwrap();
        assert!(source.update().complete);
    }

    #[test]
    fn only_events_that_can_change_contents_wake_the_source() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind};
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!changes_contents(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(changes_contents(&kind), "{kind:?}");
        }
    }

    /// The source's own re-read of a broken file does not wake it again:
    /// it re-reads once per change, not in a loop.
    #[tokio::test]
    async fn a_broken_file_is_read_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        fs::write(&file, IMPORT).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let source = FileSource::new(dir.path().to_path_buf());
        let task = tokio::spawn(source.run(tx));
        rx.wait_for(Option::is_some).await.unwrap();
        // The file breaks: the source reads it, reports it, and then rests.
        fs::write(&file, "spec: [broken").unwrap();
        rx.wait_for(|u| u.as_ref().is_some_and(|u| !u.failures.is_empty()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every re-read opens the file: count the opens a second watch
        // sees while nothing changes (a source woken by its own reads
        // re-reads ten times a second).
        let (events_tx, mut events) = mpsc::channel::<()>(64);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && matches!(event.kind, EventKind::Access(AccessKind::Open(_)))
                {
                    let _ = events_tx.try_send(());
                }
            })
            .unwrap();
        watcher
            .watch(dir.path(), RecursiveMode::NonRecursive)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut opens = 0;
        while events.try_recv().is_ok() {
            opens += 1;
        }
        assert_eq!(opens, 0, "the source kept re-reading an unchanged file");
        // A change is still read.
        fs::write(&file, IMPORT.replace("web", "api")).unwrap();
        rx.wait_for(|u| u.as_ref().is_some_and(|u| u.failures.is_empty()))
            .await
            .unwrap();
        task.abort();
    }

    #[test]
    fn a_missing_path_keeps_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        fs::write(&file, IMPORT).unwrap();
        let mut source = FileSource::new(file.clone());
        source.reload().unwrap();
        fs::remove_file(&file).unwrap();
        assert!(matches!(source.reload(), Err(FileSourceError::Missing(_))));
        assert_eq!(source.update().snapshot.imports.len(), 1);
    }
}
