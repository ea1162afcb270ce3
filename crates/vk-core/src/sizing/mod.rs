//! Sizing profiles: what a backend sells (CPU/memory steps or a flavour table, caps, defaults,
//! volume kinds) as data, and the normalisation that turns a pod into a size the backend accepts.
//!
//! This module owns:
//! - the profile format (YAML, one file per profile; the built-ins live in `vk-core/profiles/` and
//!   are embedded, a user's file in the same format is loaded by path), its parsing and validation
//!   (`profile.rs`);
//! - normalisation: effective per-container CPU/memory, the pod's effective request, the
//!   profile's rules or flavour choice, and the rewrite of container resources so that
//!   `requests == limits` and the pod's totals equal the chosen size (`normalize.rs`);
//! - the spec checks a profile implies besides sizing: volume kinds it carries, emptyDir subPath
//!   (`volumes.rs`);
//! - unit conversions and the `${cpu}_${mem}` size format (`units.rs`).
//!
//! It does not own where the size goes (annotation, backend request) or node-level limits such as
//! `maxPods`; callers read those from the profile.

mod normalize;
mod profile;
mod units;
mod volumes;

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod props;

use std::fmt;

use k8s_openapi::api::core::v1::Pod;

pub use profile::ProfileError;
pub use units::{cpu_quantity, memory_quantity};

/// Annotation carrying a pod's normalised size in [`PodSize`]'s `${cpu}_${mem}` form.
pub const SIZE_ANNOTATION: &str = "virtual-kubelet.io/size";

/// Event/condition reason used when a pod cannot be normalised under the node's profile.
pub const NORMALIZATION_FAILED_REASON: &str = "ResourceNormalizationFailed";

/// A backend's sizing rules, as loaded from a profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizingProfile {
    pub name: String,
    pub description: String,
    method: Method,
    /// Given to the first app container when no container asks for CPU or memory.
    default_resources: Option<Res>,
    volumes: VolumePolicy,
    /// Whether emptyDir volumes may be mounted with subPath/subPathExpr.
    empty_dir_sub_path: bool,
    max_pods: Option<u32>,
    max_config_volume_bytes: Option<u64>,
}

/// How a profile turns the pod's need into a size.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Method {
    /// Passthrough: resources are left as written.
    None,
    /// Step/ratio/cap rules applied in order (Huawei CCI style).
    Rules(Rules),
    /// Smallest flavour of a fixed table that holds the pod.
    Flavours(Vec<Flavour>),
}

/// `method: rules` parameters; each absent field disables its rule. CPU in millicores, memory in
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rules {
    cpu_step: Option<i64>,
    container_min_memory: Option<i64>,
    pod_memory_step: Option<i64>,
    /// Bytes of memory per core, inclusive bounds.
    memory_per_cpu_min: Option<i64>,
    memory_per_cpu_max: Option<i64>,
    max_cpu: Option<i64>,
    max_memory: Option<i64>,
}

/// One sellable size: CPU in millicores, memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Flavour {
    cpu: i64,
    memory: i64,
}

/// A CPU/memory pair in millicores and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Res {
    cpu: i64,
    memory: i64,
}

/// Which volume kinds (the Volume's source field name, e.g. `configMap`) the backend carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum VolumePolicy {
    Any,
    /// Everything except hostPath, which no remote backend can honour (the default).
    AllButHostPath,
    Only(Vec<String>),
}

/// The result of [`SizingProfile::normalize`].
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The pod with container resources rewritten (unchanged under `none`).
    pub pod: Pod,
    /// The pod's size after normalisation; `None` under the passthrough profile.
    pub size: Option<PodSize>,
    /// Every container's values after normalisation, init containers first, in spec order.
    pub containers: Vec<ContainerSize>,
}

/// A pod's size: its effective CPU and memory request after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSize {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl fmt::Display for PodSize {
    /// CCI's `${cpu}_${mem}`: cores and GiB as plain decimals (`0.5_1`, `2_1.5`), memory rounded
    /// up to thousandths of a GiB so the label never understates the size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}",
            units::cores(self.cpu_millis),
            units::gib(self.memory_bytes)
        )
    }
}

/// One container's values after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSize {
    pub name: String,
    pub init: bool,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub best_effort: bool,
}

/// Why a pod cannot be sized under a profile; the message names the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {profile}: {message}")]
pub struct NormalizationError {
    pub profile: String,
    pub message: String,
}

impl SizingProfile {
    /// The passthrough profile: no sizing, any volume.
    pub fn none() -> SizingProfile {
        SizingProfile {
            name: "none".to_string(),
            description: "Passthrough: resources are sent as written; any volume kind.".to_string(),
            method: Method::None,
            default_resources: None,
            volumes: VolumePolicy::Any,
            empty_dir_sub_path: true,
            max_pods: None,
            max_config_volume_bytes: None,
        }
    }

    pub fn is_none(&self) -> bool {
        self.method == Method::None
    }

    /// Most pods the backend runs per virtual node, if the profile caps it.
    pub fn max_pods(&self) -> Option<u32> {
        self.max_pods
    }

    /// Most bytes of ConfigMap and Secret volume data one pod may carry, if capped.
    pub fn max_config_volume_bytes(&self) -> Option<u64> {
        self.max_config_volume_bytes
    }
}
