//! Object sources. Each turns its objects into the shared model and
//! publishes a [`SourceUpdate`] whenever what it knows changes.

pub mod file;
pub mod kube;

use std::path::Path;

use tokio::sync::watch;

use self::{
    file::{FileSource, FileSourceError},
    kube::{KubeSource, KubeSourceError, KubeSourceOptions},
};
use crate::{
    cli::SourceSpec,
    model::{Rejection, Snapshot},
};

/// Everything a source currently knows, with the problems it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceUpdate {
    pub snapshot: Snapshot,
    pub rejections: Vec<Rejection>,
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
