//! Where a Kubernetes client's configuration comes from, for the agent's
//! kube source and the export controller alike: a kubeconfig file (its
//! current context) or, inside a pod, the service account.

use std::path::{Path, PathBuf};

use kube::{
    Config,
    config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError},
};

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KubeConfigError {
    #[error("cannot load kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "no in-cluster Kubernetes configuration (pass --kubeconfig when running outside a pod)"
    )]
    InCluster(#[source] InClusterError),
}

/// The configuration of `kubeconfig` (its current context), or the
/// in-cluster one when `None`.
pub async fn load(kubeconfig: Option<&Path>) -> Result<Config, KubeConfigError> {
    match kubeconfig {
        Some(path) => {
            let error = |source| KubeConfigError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(error)
        }
        None => Config::incluster().map_err(KubeConfigError::InCluster),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_file_is_named_in_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let Err(error) = load(Some(&missing)).await else {
            panic!("a missing kubeconfig loads");
        };
        match &error {
            KubeConfigError::Kubeconfig { path, .. } => assert_eq!(path, &missing),
            other => panic!("{other:?}"),
        }
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
