//! File source: a YAML/JSON manifest file or a directory of them.
//!
//! * Changes are picked up through inotify (`notify`), debounced, with a
//!   periodic re-read as a safety net.
//! * A file that cannot be read or is not YAML keeps the objects it had
//!   (nothing is lost to a half-written file); the error names the file.
//! * If PATH itself disappears (e.g. a volume being remounted) the last
//!   state is kept until it comes back; a file removed from a directory
//!   that still exists removes its objects.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::SourceUpdate;
use crate::model::{
    Rejection,
    convert::Object,
    manifest::{self, SyntaxError},
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
    /// contents. Fails only when PATH itself is unusable (state kept).
    pub fn reload(&mut self) -> Result<Vec<FileSourceError>, FileSourceError> {
        let files = self.list()?;
        let mut errors = Vec::new();
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
                    if let Some(previous) = self.files.get(&file) {
                        next.insert(file, previous.clone());
                    }
                    errors.push(error);
                }
            }
        }
        self.files = next;
        Ok(errors)
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
            snapshot,
            rejections: all,
            references: Default::default(),
        }
    }

    /// Loads once, then watches PATH and publishes every change until the
    /// receiver is dropped. The first load must succeed (the agent should
    /// not start on a path that does not exist).
    pub async fn run(
        mut self,
        updates: watch::Sender<Option<SourceUpdate>>,
    ) -> Result<(), FileSourceError> {
        for error in self.reload()? {
            error!(error = %crate::telemetry::chain(&error), "manifest file rejected");
        }
        updates.send_replace(Some(self.update()));
        info!(path = %self.path.display(), "file source loaded");

        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher = Some(self.watch(events_tx.clone())?);
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
            match self.reload() {
                Ok(errors) => {
                    if missing || watcher.is_none() {
                        info!(path = %self.path.display(), "source back; applying its current state");
                        missing = false;
                        watcher = match self.watch(events_tx.clone()) {
                            Ok(watcher) => Some(watcher),
                            Err(error) => {
                                warn!(error = %crate::telemetry::chain(&error), "cannot watch the source again; re-reading periodically");
                                None
                            }
                        };
                    }
                    for error in errors {
                        error!(error = %crate::telemetry::chain(&error), "manifest file rejected; keeping its previous objects");
                    }
                }
                Err(error) => {
                    if !missing {
                        warn!(error = %crate::telemetry::chain(&error), "source unavailable; keeping the last state");
                        missing = true;
                        watcher = None;
                    }
                    continue;
                }
            }
            let update = self.update();
            updates.send_if_modified(|current| {
                if current.as_ref() == Some(&update) {
                    false
                } else {
                    *current = Some(update);
                    true
                }
            });
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
                if event.is_ok() {
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
        assert_eq!(source.update().snapshot.imports.len(), 1, "kept");

        fs::remove_file(&file).unwrap();
        assert!(source.reload().unwrap().is_empty());
        assert!(
            source.update().snapshot.imports.is_empty(),
            "removed file removes objects"
        );
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
