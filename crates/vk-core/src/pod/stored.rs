//! The API pod as the pod controller keeps it between passes: whole until the backend runs it as
//! specified, then only its metadata and status. The spec is the bulk of a pod, and `Pod` keeps
//! its `Option<PodSpec>` inline: a `Pod` whose spec is `None` still takes 2.4 KB, of which
//! 1.5 KB is the empty spec's room (docs/architecture.md, "Memory").

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[derive(Debug, Clone)]
pub(crate) enum StoredPod {
    Whole(Arc<Pod>),
    /// The spec was dropped; whoever needs it fetches the pod again.
    Slim(Arc<SlimPod>),
}

#[derive(Debug)]
pub(crate) struct SlimPod {
    metadata: ObjectMeta,
    status: Option<PodStatus>,
}

impl StoredPod {
    /// Keep `pod`, without its spec when `slim`.
    pub(crate) fn new(pod: Pod, slim: bool) -> Self {
        if slim {
            Self::Slim(Arc::new(SlimPod {
                metadata: pod.metadata,
                status: pod.status,
            }))
        } else {
            Self::Whole(Arc::new(pod))
        }
    }

    pub(crate) fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Whole(p) => &p.metadata,
            Self::Slim(p) => &p.metadata,
        }
    }

    pub(crate) fn status(&self) -> Option<&PodStatus> {
        match self {
            Self::Whole(p) => p.status.as_ref(),
            Self::Slim(p) => p.status.as_ref(),
        }
    }

    /// The pod as a `Pod` (spec `None` when slim): shared when whole, a copy of the metadata
    /// and status when slim.
    pub(crate) fn to_pod(&self) -> Arc<Pod> {
        match self {
            Self::Whole(p) => p.clone(),
            Self::Slim(p) => Arc::new(Pod {
                metadata: p.metadata.clone(),
                spec: None,
                status: p.status.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_slim_pod_keeps_metadata_and_status_and_drops_the_spec() {
        let slim = StoredPod::new(pod(), true);
        assert_eq!(slim.metadata().resource_version.as_deref(), Some("7"));
        assert_eq!(
            slim.status().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
        let p = slim.to_pod();
        assert!(p.spec.is_none());
        assert_eq!(p.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
    }

    #[test]
    fn a_whole_pod_is_shared_not_copied() {
        let whole = StoredPod::new(pod(), false);
        assert!(whole.to_pod().spec.is_some());
        assert!(Arc::ptr_eq(&whole.to_pod(), &whole.to_pod()));
    }

    #[test]
    fn the_slim_form_is_smaller_than_a_pod_without_spec() {
        // What the module exists for: if `Pod` ever boxes its spec, this type can go.
        assert!(
            std::mem::size_of::<SlimPod>() + 1024 < std::mem::size_of::<Pod>(),
            "SlimPod {} vs Pod {}",
            std::mem::size_of::<SlimPod>(),
            std::mem::size_of::<Pod>()
        );
    }
}
