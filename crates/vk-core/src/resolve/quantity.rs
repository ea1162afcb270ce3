//! Kubernetes quantities, defined in `vk-provider-api` (backends parse them too: one parser)
//! and re-exported here.

pub use vk_provider_api::quantity::*;
