//! The provider contract, defined in `vk-provider-api` (so backends need not depend on the
//! core) and re-exported here under its historical path.

pub use vk_provider_api::provider::*;
