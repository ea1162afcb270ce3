//! The API pod as the pod controller keeps it between passes: whole until the backend runs it as
//! specified, then only its metadata and its status, the status as compact JSON.
//!
//! Why: the spec is the bulk of a pod, and `Pod` keeps its `Option<PodSpec>` inline (a `Pod`
//! whose spec is `None` still takes 2.4 KB, 1.5 KB of it the empty spec's room). Of what is left,
//! a running pod's status takes ~3.8 KB as structs (every `Option` field of the status, of each
//! condition and container status, inline, each string its own allocation) and under 1 KB as
//! JSON. It is read only when a pass starts or a listing is made, so it is parsed then
//! (microseconds) rather than held parsed for every pod between passes (docs/architecture.md,
//! "Memory").

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::warn;

#[derive(Debug, Clone)]
pub(crate) enum StoredPod {
    Whole(Arc<Pod>),
    /// The spec was dropped; whoever needs it fetches the pod again.
    Slim(Arc<SlimPod>),
}

#[derive(Debug)]
pub(crate) struct SlimPod {
    metadata: ObjectMeta,
    /// The status as JSON; `None` when the pod had none.
    status: Option<Box<[u8]>>,
    /// The phase, which the metrics count on every scrape, parsed once.
    phase: Option<Box<str>>,
}

impl StoredPod {
    /// Keep `pod`, without its spec when `slim`.
    pub(crate) fn new(pod: Pod, slim: bool) -> Self {
        if !slim {
            return Self::Whole(Arc::new(pod));
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .map(Box::from);
        let status = match &pod.status {
            None => None,
            Some(s) => match serde_json::to_vec(s) {
                Ok(json) => Some(json.into_boxed_slice()),
                // Serializing plain data does not fail; if it ever did, the pod would keep its
                // spec rather than lose its status.
                Err(_) => return Self::Whole(Arc::new(pod)),
            },
        };
        Self::Slim(Arc::new(SlimPod {
            metadata: pod.metadata,
            status,
            phase,
        }))
    }

    pub(crate) fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Whole(p) => &p.metadata,
            Self::Slim(p) => &p.metadata,
        }
    }

    pub(crate) fn phase(&self) -> Option<&str> {
        match self {
            Self::Whole(p) => p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Self::Slim(p) => p.phase.as_deref(),
        }
    }

    /// The pod as a `Pod` (spec `None` when slim): shared when whole, a copy of the metadata
    /// and the parsed status when slim.
    pub(crate) fn to_pod(&self) -> Arc<Pod> {
        match self {
            Self::Whole(p) => p.clone(),
            Self::Slim(p) => Arc::new(Pod {
                metadata: p.metadata.clone(),
                spec: None,
                status: p.status.as_deref().and_then(parse_status),
            }),
        }
    }
}

fn parse_status(json: &[u8]) -> Option<PodStatus> {
    match serde_json::from_slice(json) {
        Ok(s) => Some(s),
        // What `serde_json::to_vec` wrote parses; a status that did not would be written
        // again by the next pass, which is the safe side.
        Err(e) => {
            warn!(error = %e, "a stored pod status does not parse");
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
        assert!(matches!(slim, StoredPod::Slim(_)));
        assert_eq!(slim.to_pod().status.as_ref(), Some(&status));
        assert_eq!(slim.phase(), Some("Running"));

        let mut p = pod();
        p.status = None;
        let slim = StoredPod::new(p, true);
        assert_eq!(slim.to_pod().status, None);
        assert_eq!(slim.phase(), None);
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
