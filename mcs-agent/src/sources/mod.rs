//! Object sources. Each turns its objects into the shared model and
//! publishes a [`SourceUpdate`] whenever what it knows changes: the
//! snapshot, the problems found converting it, and (API server only) a
//! reference to every object, so that the rejections the agent derives
//! later can become Events on them ([`crate::events`]). Sources neither
//! compute desired state nor report: that is the run loop's job.
//!
//! Each update carries the source's [`Journal`] of what changed, update by
//! update ([`Publisher`]): the agent recomputes the imports it names
//! without comparing whole snapshots on its update path. The source finds
//! the changes when it publishes (off that path), by a diff against what
//! it published last, which costs pointer compares for the objects it
//! reused.

pub mod file;
pub mod kube;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use tokio::sync::watch;

use self::{
    file::{FileSource, FileSourceError},
    kube::{KubeSource, KubeSourceError, KubeSourceOptions},
};
use crate::{
    desired::{Changes, Journal},
    model::{ObjectKey, Rejection, Snapshot},
};

/// Where ServiceImports and EndpointSlices come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// A YAML/JSON file or a directory of them, watched for changes.
    File(PathBuf),
    /// The Kubernetes API server (in-cluster, or `--kubeconfig`).
    Kube,
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            None if value == "kube" => Ok(Self::Kube),
            _ => Err(format!(
                "unknown source {value:?}; expected `kube` (the API server) or `file:PATH` (a YAML \
                 file or directory)"
            )),
        }
    }
}

/// Everything a source currently knows, with the problems it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceUpdate {
    /// Shared: the channel, the agent and DNS hold the same snapshot.
    pub snapshot: Arc<Snapshot>,
    /// What changed in the last versions; its version is this update's.
    pub journal: Journal,
    pub rejections: Vec<Rejection>,
    /// The API objects behind the snapshot (empty for files).
    pub references: Arc<References>,
    /// Whether the snapshot is authoritative: it holds everything the
    /// source has — every file read and parsed (now, or for a file that
    /// broke since, its last good contents), every watcher listed. The run
    /// loop never lets an incomplete snapshot replace a dataplane adopted
    /// from an earlier agent: it could only delete what it does not know.
    pub complete: bool,
    /// What the source cannot read right now, one line each (its last good
    /// state is kept meanwhile); empty while it is healthy.
    pub failures: Vec<String>,
}

/// Journals a source's updates: each update published gets the next
/// version, with what changed since the one published before.
#[derive(Debug, Default)]
pub struct Publisher {
    journal: Journal,
    last: Option<SourceUpdate>,
}

impl Publisher {
    /// `update` with the journal up to it, or `None` when it tells nothing
    /// new (the same objects, problems and health as the last one).
    pub fn prepare(&mut self, mut update: SourceUpdate) -> Option<SourceUpdate> {
        match &self.last {
            None => {
                self.journal.restart();
            }
            Some(last) => {
                let changes = Changes::between(&last.snapshot, &update.snapshot);
                let same = changes.is_empty()
                    && last.rejections == update.rejections
                    && (Arc::ptr_eq(&last.references, &update.references)
                        || last.references == update.references)
                    && last.complete == update.complete
                    && last.failures == update.failures;
                if same {
                    return None;
                }
                self.journal.record(changes);
            }
        }
        update.journal = self.journal.clone();
        self.last = Some(update.clone());
        Some(update)
    }
}

/// API objects by kind and namespace/name.
pub type References = HashMap<(String, ObjectKey), ObjectRef>;

/// An API object a rejection may name: what an Event's `regarding` needs.
/// No resourceVersion, so an object changed in nothing the agent reads
/// keeps an equal reference (and publishes no update).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub key: ObjectKey,
    pub uid: Option<String>,
}

/// The source the agent follows.
pub enum Source {
    File(FileSource),
    Kube(KubeSource),
}

/// A source failed to start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    File(#[from] FileSourceError),
    #[error(transparent)]
    Kube(#[from] KubeSourceError),
    #[error("--kubeconfig applies only to `--source kube`")]
    KubeconfigWithoutKube,
}

impl Source {
    /// Opens the source named on the command line. The Kubernetes client
    /// is built here, so an unusable kubeconfig fails before the dataplane
    /// is touched.
    pub async fn open(spec: &SourceSpec, kubeconfig: Option<&Path>) -> Result<Self, SourceError> {
        match spec {
            SourceSpec::File(_) if kubeconfig.is_some() => Err(SourceError::KubeconfigWithoutKube),
            SourceSpec::File(path) => Ok(Self::File(FileSource::new(path.clone()))),
            SourceSpec::Kube => Ok(Self::Kube(
                KubeSource::connect(kubeconfig, KubeSourceOptions::default()).await?,
            )),
        }
    }

    /// The API server client, for Events (none for files).
    pub fn kube_client(&self) -> Option<::kube::Client> {
        match self {
            Self::File(_) => None,
            Self::Kube(source) => Some(source.client().clone()),
        }
    }

    /// The source's name in metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Kube(_) => "kube",
        }
    }

    /// Publishes updates until the receiver of `updates` is dropped.
    pub async fn run(
        self,
        updates: watch::Sender<Option<SourceUpdate>>,
    ) -> Result<(), SourceError> {
        match self {
            Self::File(source) => Ok(source.run(updates).await?),
            Self::Kube(source) => Ok(source.run(updates).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs() {
        assert_eq!(
            "file:/etc/mcs".parse::<SourceSpec>(),
            Ok(SourceSpec::File("/etc/mcs".into()))
        );
        assert_eq!("kube".parse::<SourceSpec>(), Ok(SourceSpec::Kube));
        assert!("file:".parse::<SourceSpec>().is_err());
        assert!("kube:x".parse::<SourceSpec>().is_err());
        assert!("http://x".parse::<SourceSpec>().is_err());
    }
}
