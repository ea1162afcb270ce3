//! vkubelet's core: the provider contract, the node and pod controllers that make a backend look
//! like a kubelet to the API server, status sync, events, API client plumbing and self-metrics.
//!
//! The core knows no provider; providers depend on it. See `docs/architecture.md`.

pub mod burst;
pub mod cache;
pub mod client;
pub mod error;
pub mod events;
pub mod metrics;
pub mod node;
pub mod pod;
pub mod poll;
pub mod provider;
pub mod queue;
pub mod resolve;
pub mod sizing;
pub mod streams;
pub mod transport;
pub mod virtual_node;

pub use error::{Error, ProviderError};
pub use provider::{
    BackendPod, DynProvider, NodeResources, PodKey, PodUpdate, Provider, ProviderLimits,
    ProviderSinks, ResolvedPod,
};
pub use virtual_node::VirtualNode;
