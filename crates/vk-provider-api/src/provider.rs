//! The provider contract: what a backend (serverless service, remote cluster, local processes)
//! implements so that the core can run pods on it.
//!
//! The core calls the backend; the backend pushes what changes (pod status, pod gone, node
//! resources) through [`ProviderSinks`]. Backends that can only be asked, not told, wrap themselves
//! in `vk_core::poll::PollingAdapter`, which polls in bulk and pushes the differences.
//! Every pod is keyed by its UID: a pod deleted and re-created under the same name is a different
//! pod to the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{NodeCondition, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::ProviderError;
use crate::resolution::{Resolution, ResolvedVolume};
use crate::streams::{
    AttachRequest, ByteReader, ContainerStats, Duplex, ExecRequest, ExecSession, LogRequest,
};

/// Identity of a pod on a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(
        uid: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            uid: uid.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an API pod; `None` when the object lacks a uid, name or namespace.
    pub fn of(pod: &Pod) -> Option<Self> {
        let m = &pod.metadata;
        Some(Self::new(
            m.uid.clone()?,
            m.namespace.clone()?,
            m.name.clone()?,
        ))
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// Everything a backend needs to run a pod, since it cannot read the user's cluster.
///
/// `pod` is the API object as the core saw it; `resolution` is what the core read from the
/// cluster on the backend's behalf (env, volume contents, registry credentials). Backends use
/// the resolution, never the raw references in the spec.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResolvedPod {
    pub key: PodKey,
    pub pod: Arc<Pod>,
    /// Restarts already spent by earlier instances of this pod (when an instance vanished from the
    /// backend and the pod's restartPolicy brought it back). Backends add it to the restart counts
    /// they report, so `kubectl get pods` keeps counting up.
    pub restart_count_base: i32,
    pub resolution: Resolution,
}

impl ResolvedPod {
    pub fn new(key: PodKey, pod: Arc<Pod>) -> Self {
        Self {
            key,
            pod,
            restart_count_base: 0,
            resolution: Resolution::default(),
        }
    }

    pub fn with_restart_count_base(mut self, base: i32) -> Self {
        self.restart_count_base = base;
        self
    }

    pub fn with_resolution(mut self, resolution: Resolution) -> Self {
        self.resolution = resolution;
        self
    }
}

/// What a backend accepts, checked by the core before it calls the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderLimits {
    /// Most bytes of resolved ConfigMap, Secret, downward-API and token files per pod (UCloud
    /// Cube, for one, accepts 30 MiB). `None`: no limit.
    pub max_volume_bytes: Option<u64>,
}

impl ProviderLimits {
    pub fn with_max_volume_bytes(mut self, max: Option<u64>) -> Self {
        self.max_volume_bytes = max;
        self
    }
}

/// A pod as the backend lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendPod {
    pub key: PodKey,
    /// The latest status; `None` while the backend has not reported any.
    pub status: Option<Arc<PodStatus>>,
}

/// What a backend pushes about one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodUpdate {
    /// The pod's latest status. Only the newest matters: the core coalesces bursts. Shared, so
    /// a backend that keeps the status it reported does not double the memory per pod.
    Status(Arc<PodStatus>),
    /// The pod no longer exists on the backend (deleted, evicted, lost).
    Gone,
    /// Something a user should see in `kubectl describe pod` (e.g. `Started`, `BackOff`).
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// Capacity and health of the backend, as the node reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeResources {
    pub capacity: BTreeMap<String, Quantity>,
    /// Defaults to `capacity` when empty.
    pub allocatable: BTreeMap<String, Quantity>,
    /// Extra node conditions the backend owns (for example a sold-out pool). The core owns
    /// `Ready`, `MemoryPressure`, `DiskPressure`, `PIDPressure` and `NetworkUnavailable`.
    pub conditions: Vec<NodeCondition>,
    /// Whether the backend can take new pods at all; `false` sets `Ready=False`.
    pub accepting_pods: bool,
    /// Human-readable detail for the `Ready` condition when not accepting pods.
    pub message: Option<String>,
}

type PodCallback = dyn Fn(&str, PodUpdate) + Send + Sync;

/// Where a backend pushes what changed. Calls never block: the core only records the update and
/// schedules work.
#[derive(Clone)]
pub struct ProviderSinks {
    pod: Arc<PodCallback>,
    node: Arc<dyn Fn() + Send + Sync>,
}

impl ProviderSinks {
    pub fn new(
        pod: impl Fn(&str, PodUpdate) + Send + Sync + 'static,
        node_changed: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            pod: Arc::new(pod),
            node: Arc::new(node_changed),
        }
    }

    /// A sink that drops everything (for tools that run a provider without a node).
    pub fn discard() -> Self {
        Self::new(|_, _| {}, || {})
    }

    /// Report something about the pod with this UID.
    pub fn pod(&self, uid: &str, update: PodUpdate) {
        (self.pod)(uid, update)
    }

    /// Tell the core that [`Provider::node_resources`] has a new answer.
    pub fn node_changed(&self) {
        (self.node)()
    }
}

impl fmt::Debug for ProviderSinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderSinks")
    }
}

/// A backend for virtual-node pods. See the module documentation.
///
/// Contract:
/// - `create_pod` is idempotent per UID: creating a pod the backend already has succeeds.
/// - A `create_pod` that fails with a refusal (see [`ProviderError::may_have_created`]) leaves
///   nothing on the backend. After any other failure the outcome is unknown (a 5xx or a timeout
///   from a cloud API may come after the write took effect), so the core calls `delete_pod`
///   before it lets such a pod go, even when the backend does not report the pod: leftovers of
///   the attempt (a per-pod object written before the pod) go with that call.
/// - `delete_pod` starts stopping the pod (SIGTERM, then kill after `grace`) and releasing all
///   its backend resources; it may return before that finishes. The backend reports
///   [`PodUpdate::Gone`] once the pod is gone. Deleting an unknown pod returns `Ok` or `NotFound`.
/// - `list_pods` returns every pod this backend instance runs for this node, by UID.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short backend name used in the node taint `virtual-kubelet.io/provider=<kind>`.
    fn kind(&self) -> &str;

    /// Called once before any other call; keep `sinks` to push updates.
    async fn start(&self, sinks: ProviderSinks) -> Result<(), ProviderError>;

    async fn node_resources(&self) -> Result<NodeResources, ProviderError>;

    async fn create_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError>;

    /// Apply a changed spec (images, activeDeadlineSeconds, labels, annotations) to a running pod.
    async fn update_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError>;

    /// Replace the content of a running pod's file-backed volumes after a referenced ConfigMap or
    /// Secret changed or a service-account token was refreshed. `volumes` is the pod's full,
    /// current set; it may equal what the backend has (after a restart the core re-sends the
    /// volumes of every pod it adopts, as a kubelet re-syncs volumes), so writing only what
    /// differs is the backend's job. As with a kubelet, `subPath` mounts keep their old content.
    async fn update_volumes(
        &self,
        key: &PodKey,
        volumes: &[ResolvedVolume],
    ) -> Result<(), ProviderError> {
        let _ = (key, volumes);
        Err(ProviderError::NotSupported(
            "updating the volumes of a running pod".into(),
        ))
    }

    /// What this backend accepts; see [`ProviderLimits`].
    fn limits(&self) -> ProviderLimits {
        ProviderLimits::default()
    }

    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), ProviderError>;

    async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError>;

    /// Stop and remove everything this provider started (uninstall). Returns how many pods it
    /// removed.
    async fn cleanup_all(&self) -> Result<usize, ProviderError>;

    /// A container's log (`kubectl logs`); with `follow`, the stream ends when the container
    /// instance does or when the reader is dropped.
    async fn container_logs(
        &self,
        key: &PodKey,
        request: &LogRequest,
    ) -> Result<ByteReader, ProviderError> {
        let _ = (key, request);
        Err(ProviderError::NotSupported("container logs".into()))
    }

    /// Run a command in a running container (`kubectl exec`).
    async fn exec(
        &self,
        key: &PodKey,
        request: &ExecRequest,
    ) -> Result<ExecSession, ProviderError> {
        let _ = (key, request);
        Err(ProviderError::NotSupported("exec".into()))
    }

    /// Attach to a running container's streams (`kubectl attach`). The session's `exit` resolves
    /// when the container instance ends (with its exit code) or the session is dropped.
    async fn attach(
        &self,
        key: &PodKey,
        request: &AttachRequest,
    ) -> Result<ExecSession, ProviderError> {
        let _ = (key, request);
        Err(ProviderError::NotSupported("attach".into()))
    }

    /// A connection to `port` of the pod (`kubectl port-forward`).
    async fn port_forward(
        &self,
        key: &PodKey,
        port: u16,
    ) -> Result<std::pin::Pin<Box<dyn Duplex>>, ProviderError> {
        let _ = (key, port);
        Err(ProviderError::NotSupported("port forwarding".into()))
    }

    /// Usage of the pod's running containers, by container name.
    async fn pod_stats(
        &self,
        key: &PodKey,
    ) -> Result<BTreeMap<String, ContainerStats>, ProviderError> {
        let _ = key;
        Err(ProviderError::NotSupported("stats".into()))
    }
}

/// Shared handle to a provider.
pub type DynProvider = Arc<dyn Provider>;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn key_of_pod_needs_uid_name_and_namespace() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(PodKey::of(&pod), None);
        pod.metadata.uid = Some("u1".into());
        let key = PodKey::of(&pod);
        assert_eq!(key, Some(PodKey::new("u1", "ns", "web")));
        assert_eq!(key.map(|k| k.to_string()).as_deref(), Some("ns/web (u1)"));
    }

    #[test]
    fn sinks_forward_to_callbacks() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sinks = ProviderSinks::new(
            move |uid, u| {
                if let Ok(mut v) = s2.lock() {
                    v.push((uid.to_string(), u));
                }
            },
            || {},
        );
        sinks.pod("u1", PodUpdate::Gone);
        assert_eq!(
            seen.lock().map(|v| v.clone()).unwrap_or_default(),
            vec![("u1".to_string(), PodUpdate::Gone)]
        );
    }
}
