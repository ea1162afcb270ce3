//! Stream types of the provider contract (logs, exec, attach, port-forward, stats), defined in
//! `vk-provider-api` and re-exported here.

pub use vk_provider_api::streams::*;
