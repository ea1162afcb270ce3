//! The provider contract of vkubelet: what a backend (a serverless container service, another
//! Kubernetes cluster, local processes) implements so that the core can run pods on it, and
//! nothing else. A backend author depends on this crate alone — not on the core, not on kube's
//! client.
//!
//! - [`Provider`]: the async trait (create, update, delete, list, status push, logs, exec,
//!   attach, port-forward, stats, cleanup);
//! - [`ProviderError`]: typed failures, each with the core's reaction (fail for good, retry);
//! - [`PodKey`], [`ResolvedPod`] and [`resolution`]: a pod plus everything the backend cannot read
//!   from the cluster itself (env in declared order, volume contents, registry credentials);
//! - [`streams`]: protocol-independent types for logs, exec, attach, port-forward and stats;
//! - [`quantity`]: Kubernetes resource quantities as exact integers.

pub mod error;
pub mod provider;
pub mod quantity;
pub mod resolution;
pub mod streams;

pub use error::ProviderError;
pub use provider::{
    BackendPod, DynProvider, NodeResources, PodKey, PodUpdate, Provider, ProviderLimits,
    ProviderSinks, ResolvedPod,
};
