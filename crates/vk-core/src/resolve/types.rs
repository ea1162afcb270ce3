//! What resolution produces, defined in `vk-provider-api` (backends consume it) and re-exported
//! here.

pub use vk_provider_api::resolution::*;
