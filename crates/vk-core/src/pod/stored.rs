//! The API pod as the pod controller keeps it between passes: packed as compact JSON, and once
//! the backend runs it as specified, without its spec.
//!
//! Why: `Pod` keeps its `Option<PodSpec>` inline, and a `PodSpec` keeps every `Option` field of
//! itself and of each container inline, each string its own allocation. Measured at 10,000
//! pods queued for a slow backend (the kube provider, docs/testing.md), the whole pods took
//! ~7.5 KB each, where the JSON of a spec is about a kilobyte. A running pod's status takes
//! ~3.8 KB as structs and under 1 KB as JSON. The pod is read only when a pass starts or a
//! listing is made, so it is parsed then (microseconds) rather than held parsed for every pod
//! between passes (docs/architecture.md, "Memory").

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use tracing::warn;

#[derive(Debug, Clone)]
pub(crate) enum StoredPod {
    /// Kept as given: only if packing failed (serializing plain data does not fail).
    Whole(Arc<Pod>),
    Packed(Arc<PackedPod>),
}

#[derive(Debug)]
pub(crate) struct PackedPod {
    metadata: ObjectMeta,
    /// The spec as JSON; `None` when dropped (whoever needs it fetches the pod again) or when
    /// the pod had none.
    spec: Option<Box<[u8]>>,
    /// The status as JSON; `None` when the pod had none.
    status: Option<Box<[u8]>>,
    /// The phase, which the metrics count on every scrape, parsed once.
    phase: Option<Box<str>>,
}

impl StoredPod {
    /// Keep `pod`, without its spec when `slim`.
    pub(crate) fn new(pod: Pod, slim: bool) -> Self {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .map(Box::from);
        let spec = match pod.spec.as_ref().filter(|_| !slim).map(serde_json::to_vec) {
            None => None,
            Some(Ok(json)) => Some(json.into_boxed_slice()),
            // If it ever failed, the pod would be kept as it is rather than lose anything.
            Some(Err(_)) => return Self::Whole(Arc::new(pod)),
        };
        let status = match pod.status.as_ref().map(serde_json::to_vec) {
            None => None,
            Some(Ok(json)) => Some(json.into_boxed_slice()),
            Some(Err(_)) => return Self::Whole(Arc::new(pod)),
        };
        Self::Packed(Arc::new(PackedPod {
            metadata: pod.metadata,
            spec,
            status,
            phase,
        }))
    }

    pub(crate) fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Whole(p) => &p.metadata,
            Self::Packed(p) => &p.metadata,
        }
    }

    pub(crate) fn phase(&self) -> Option<&str> {
        match self {
            Self::Whole(p) => p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Self::Packed(p) => p.phase.as_deref(),
        }
    }

    /// The pod as a `Pod` (spec `None` when slim): the metadata copied, spec and status parsed.
    pub(crate) fn to_pod(&self) -> Arc<Pod> {
        match self {
            Self::Whole(p) => p.clone(),
            Self::Packed(p) => Arc::new(Pod {
                metadata: p.metadata.clone(),
                spec: p.spec.as_deref().and_then(parse::<PodSpec>),
                status: p.status.as_deref().and_then(parse::<PodStatus>),
            }),
        }
    }
}

/// The backend's last status of a pod. A provider that keeps a copy of its own (the sim, the
/// process runner) hands over a shared `Arc`, kept as it is: packing it would only add a second
/// copy. A provider that hands over its only copy (the kube provider parses each backend pod
/// afresh) leaves it here alone for as long as the pod lives, and there it is kept as JSON: at
/// 10,000 pods, a few KB each as structs.
#[derive(Debug, Clone)]
pub(crate) enum StoredStatus {
    Shared(Arc<PodStatus>),
    Packed(Arc<[u8]>),
}

impl StoredStatus {
    pub(crate) fn new(status: Arc<PodStatus>) -> Self {
        if Arc::strong_count(&status) > 1 {
            return Self::Shared(status);
        }
        match serde_json::to_vec(&*status) {
            Ok(json) => Self::Packed(json.into()),
            Err(_) => Self::Shared(status),
        }
    }

    /// The status, parsed when packed; `None` only if what was packed does not parse, which the
    /// next push from the backend mends.
    pub(crate) fn get(&self) -> Option<Arc<PodStatus>> {
        match self {
            Self::Shared(s) => Some(s.clone()),
            Self::Packed(json) => parse::<PodStatus>(json).map(Arc::new),
        }
    }
}

fn parse<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
    match serde_json::from_slice(json) {
        Ok(s) => Some(s),
        // What `serde_json::to_vec` wrote parses. A status that did not would be written again
        // by the next pass; a spec that did not would be fetched again, as a slim pod's is.
        Err(e) => {
            warn!(error = %e, "a stored pod does not parse");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
    fn a_status_only_this_table_holds_is_packed_and_comes_back_equal() {
        let status = PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.1.2.3".into()),
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let only = StoredStatus::new(Arc::new(status.clone()));
        assert!(matches!(only, StoredStatus::Packed(_)));
        assert_eq!(only.get().as_deref(), Some(&status));

        // Shared with the provider: kept as the same allocation, not copied.
        let shared = Arc::new(status);
        let kept = StoredStatus::new(shared.clone());
        assert!(matches!(&kept, StoredStatus::Shared(s) if Arc::ptr_eq(s, &shared)));
        assert!(kept.get().is_some_and(|s| Arc::ptr_eq(&s, &shared)));
    }

    #[test]
    fn a_slim_pod_keeps_metadata_and_status_and_drops_the_spec() {
        let slim = StoredPod::new(pod(), true);
        assert_eq!(slim.metadata().resource_version.as_deref(), Some("7"));
        assert_eq!(slim.phase(), Some("Running"));
        let p = slim.to_pod();
        assert!(p.spec.is_none());
        assert_eq!(p.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
    }

    #[test]
    fn a_slim_pod_gives_back_the_very_status_it_was_given() {
        let status: PodStatus = serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T10:00:00Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                 "lastTransitionTime": "2026-12-01T09:59:58Z", "reason": "r", "message": "m"}
            ],
            "hostIP": "127.0.0.1", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}],
            "startTime": "2026-12-01T09:59:59Z", "qosClass": "Burstable",
            "containerStatuses": [{
                "name": "app", "ready": true, "started": true, "restartCount": 3,
                "image": "busybox:1.36", "imageID": "sha256:abc", "containerID": "sim://1",
                "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}},
                "lastState": {"terminated": {"exitCode": 137, "signal": 9, "reason": "OOMKilled",
                    "startedAt": "2026-12-01T09:00:00Z", "finishedAt": "2026-12-01T09:59:00Z"}}
            }]
        }))
        .unwrap();
        let mut p = pod();
        p.status = Some(status.clone());
        let slim = StoredPod::new(p, true);
        assert!(matches!(&slim, StoredPod::Packed(p) if p.spec.is_none()));
        assert_eq!(slim.to_pod().status.as_ref(), Some(&status));
        assert_eq!(slim.phase(), Some("Running"));

        let mut p = pod();
        p.status = None;
        let slim = StoredPod::new(p, true);
        assert_eq!(slim.to_pod().status, None);
        assert_eq!(slim.phase(), None);
    }

    #[test]
    fn a_packed_pod_gives_back_the_very_spec_and_status_it_was_given() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{
                "name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "exec sleep 1"],
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets", "readOnly": true}]
            }],
            "volumes": [{"name": "token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "nodeName": "vk", "restartPolicy": "Always", "terminationGracePeriodSeconds": 30
        }))
        .unwrap();
        let mut p = pod();
        p.spec = Some(spec.clone());
        let status = p.status.clone();
        let packed = StoredPod::new(p, false);
        assert!(matches!(&packed, StoredPod::Packed(p) if p.spec.is_some()));
        let back = packed.to_pod();
        assert_eq!(back.spec.as_ref(), Some(&spec));
        assert_eq!(back.status, status);
        assert_eq!(back.metadata.name.as_deref(), Some("web"));
        assert_eq!(packed.phase(), Some("Running"));

        let mut p = pod();
        p.spec = None;
        assert_eq!(StoredPod::new(p, false).to_pod().spec, None);
    }

    #[test]
    fn the_packed_form_is_smaller_than_a_pod_without_spec() {
        // What the module exists for: if `Pod` ever boxes its spec, this type can go.
        assert!(
            std::mem::size_of::<PackedPod>() + 1024 < std::mem::size_of::<Pod>(),
            "PackedPod {} vs Pod {}",
            std::mem::size_of::<PackedPod>(),
            std::mem::size_of::<Pod>()
        );
    }
}
