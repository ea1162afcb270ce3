//! The node side of a virtual node: register the Node, keep its status and Lease fresh, and bring
//! it back when someone deletes it.

mod controller;
mod lease;
mod spec;

pub use controller::{NodeConfig, NodeController};
pub use lease::LEASE_NAMESPACE;
pub use spec::{PREFER_LOCAL_TAINT_KEY, PROVIDER_TAINT_KEY, SOLD_OUT_TAINT_KEY, taint_value};
