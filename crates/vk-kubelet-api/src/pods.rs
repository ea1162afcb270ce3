//! The node's pods as the kubelet API sees them: lookup by namespace/name for the per-pod routes,
//! the pods on the backend for stats, and the bound pods for `/pods`.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::ListParams;
use vk_core::pod::{PodController, PodSummary};

use crate::status::ApiError;

/// Where the kubelet API reads the node's pods.
#[async_trait]
pub trait NodePods: Send + Sync + 'static {
    /// The pod `namespace/name` on this node.
    fn find(&self, namespace: &str, name: &str) -> Option<PodSummary>;
    /// Every pod the node knows.
    fn snapshot(&self) -> Vec<PodSummary>;
    /// The pods bound to the node, whole (spec included), for `/pods`.
    async fn bound_pods(&self) -> Result<Vec<Pod>, ApiError>;
}

/// The pod controller's view, plus the API server's watch cache for whole pods.
pub struct ControllerPods {
    controller: Arc<PodController>,
    api: Api<Pod>,
    node: String,
}

impl ControllerPods {
    pub fn new(
        controller: Arc<PodController>,
        client: kube::Client,
        node: impl Into<String>,
    ) -> Self {
        Self {
            controller,
            api: Api::all(client),
            node: node.into(),
        }
    }
}

#[async_trait]
impl NodePods for ControllerPods {
    fn find(&self, namespace: &str, name: &str) -> Option<PodSummary> {
        self.controller.find(namespace, name)
    }

    fn snapshot(&self) -> Vec<PodSummary> {
        self.controller.snapshot()
    }

    /// The controller keeps running pods without their spec (memory), so whole pods come from
    /// the API server; `resourceVersion=0` serves them from its watch cache, indexed by node.
    async fn bound_pods(&self) -> Result<Vec<Pod>, ApiError> {
        let lp = ListParams::default()
            .fields(&format!("spec.nodeName={}", self.node))
            .match_any();
        let list = self
            .api
            .list(&lp)
            .await
            .map_err(|e| ApiError::internal(format!("listing the node's pods: {e}")))?;
        let mut pods = list.items;
        for p in &mut pods {
            p.metadata.managed_fields = None;
        }
        Ok(pods)
    }
}

/// The names of every container of a pod (init, regular, ephemeral): from the spec, or from the
/// statuses when the stored copy has no spec. `None` when neither is known.
pub fn container_names(pod: &Pod) -> Option<Vec<String>> {
    if let Some(spec) = &pod.spec {
        let mut names: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
        names.extend(
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone()),
        );
        names.extend(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone()),
        );
        return Some(names);
    }
    let status = pod.status.as_ref()?;
    let names: Vec<String> = [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .map(|c| c.name.clone())
    .collect();
    (!names.is_empty()).then_some(names)
}

/// A running pod as the container runtime would list it (`/runningpods/`): identity plus its
/// running containers' names and images.
pub fn running_pod(summary: &PodSummary) -> Option<Pod> {
    if !summary.on_backend {
        return None;
    }
    let pod = summary.pod.as_ref();
    let containers: Vec<Container> = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .map(|c| Container {
            name: c.name.clone(),
            image: Some(c.image.clone()),
            ..Default::default()
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(summary.key.name.clone()),
            namespace: Some(summary.key.namespace.clone()),
            uid: Some(summary.key.uid.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers,
            ..Default::default()
        }),
        status: None,
    })
}

/// A `PodList` as the kubelet encodes one (v1, with kind and apiVersion).
pub fn pod_list(pods: Vec<Pod>) -> serde_json::Value {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use vk_core::PodKey;

    fn status(name: &str, running: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: format!("img-{name}"),
            state: Some(if running {
                ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                }
            } else {
                ContainerState {
                    terminated: Some(ContainerStateTerminated::default()),
                    ..Default::default()
                }
            }),
            ..Default::default()
        }
    }

    #[test]
    fn container_names_from_spec_or_status() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(container_names(&pod).unwrap(), ["app", "init"]);
        pod.spec = None;
        assert_eq!(container_names(&pod), None);
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![status("app", true)]),
            ..Default::default()
        });
        assert_eq!(container_names(&pod).unwrap(), ["app"]);
    }

    #[test]
    fn running_pods_list_running_containers_only() {
        let pod = Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![status("a", true), status("b", false)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut s = PodSummary {
            key: PodKey::new("u1", "ns", "p"),
            pod: Some(Arc::new(pod)),
            on_backend: true,
        };
        let p = running_pod(&s).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
                "spec": {"containers": [{"name": "a", "image": "img-a"}]}
            })
        );
        s.on_backend = false;
        assert!(running_pod(&s).is_none());
        let list = pod_list(vec![p]);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["items"][0]["metadata"]["uid"], "u1");
    }
}
