//! The node side of a virtual node: register the Node, keep its status and Lease fresh, and bring
//! it back when someone deletes it.

mod controller;
mod lease;
mod spec;

pub use controller::{NodeConfig, NodeController};
pub use spec::{PROVIDER_TAINT_KEY, SOLD_OUT_TAINT_KEY};
