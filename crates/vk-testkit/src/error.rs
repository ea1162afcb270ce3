use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::KUBECONFIG_ENV;

/// Why the kit could not provide a cluster or a namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`KUBECONFIG_ENV`] is unset or empty.
    #[error("{KUBECONFIG_ENV} is not set")]
    NotConfigured,
    /// The kubeconfig could not be read or turned into a client configuration.
    #[error("cannot load kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The API server named by the kubeconfig did not answer.
    #[error("the API server from {} did not answer: {reason}", path.display())]
    Unreachable { path: PathBuf, reason: String },
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Api {
        context: String,
        #[source]
        source: kube::Error,
    },
    /// `scripts/cluster.sh VERB DIR` failed for a test's own control plane.
    #[error("scripts/cluster.sh {verb} {}: {detail}", dir.display())]
    ControlPlane {
        verb: String,
        dir: PathBuf,
        detail: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
}

impl Error {
    pub(crate) fn api(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let context = context.into();
        move |source| Error::Api { context, source }
    }
}
