//! vkubelet's mutating admission webhook for the burst policy. It owns:
//! - the review of each pod CREATE (`review`): decide the policy from the pod, its workload and
//!   its namespace (`vk_core::burst`), refuse under `enforce` what cannot burst, else patch in
//!   the tolerations and node affinity the scheduler needs;
//! - the caches the policy reads (`cache`), fed by metadata-only watches;
//! - its HTTPS server (`server`), its certificate (`certs`), kept fresh while it runs
//!   (`rotation`), and its registration (`register`).
//!
//! The webhook is registered with `failurePolicy: Ignore`: when it is down, pods are created
//! without the policy applied, never refused.

pub mod cache;
pub mod certs;
pub mod register;
pub mod review;
pub mod rotation;
pub mod server;

use std::path::PathBuf;

pub use cache::WorkloadCache;
pub use register::{Endpoint, Registration};
pub use review::{Outcome, PolicyConfig};
pub use server::{WebhookMetrics, WebhookServer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook certificate: {0}")]
    Certificate(String),
    #[error("webhook certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] vk_kubelet_api::Error),
    #[error("webhook registration: {0}")]
    Kube(#[from] kube::Error),
}
