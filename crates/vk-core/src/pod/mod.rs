//! The pod side of a virtual node: watch the pods bound to the node, run them on the provider,
//! report their status back, delete them when asked, and keep API and backend in agreement.

pub mod admission;
mod controller;
mod decide;
pub mod status;
mod stored;
mod versions;

pub use controller::{DEFAULT_POD_WORKERS, PodController, PodControllerConfig, PodSummary};
pub use decide::{CONFIG_ERROR_REASON, LOST_REASON, TOO_LARGE_REASON};
