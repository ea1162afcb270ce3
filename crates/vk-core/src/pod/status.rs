//! Pod status as vkubelet reports it: what the backend says, overlaid with the core's own verdicts
//! (provider failures, rejections), merged with what others own on the API object, and turned into a
//! JSON merge patch for `pods/status` that carries only the fields that changed.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
};
use serde_json::{Map, Value};

/// Pod condition types the kubelet owns; every other condition on the API object (PodScheduled,
/// readiness gates, DisruptionTarget, ...) belongs to someone else and is kept as it is.
pub const KUBELET_CONDITIONS: &[&str] = &[
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodReadyToStartContainers",
];

/// Status fields the kubelet writes. Anything else in `status` (nominatedNodeName, qosClass,
/// resize, ...) is never touched.
const OWNED_FIELDS: &[&str] = &[
    "phase",
    "reason",
    "message",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "conditions",
    "containerStatuses",
    "initContainerStatuses",
    "ephemeralContainerStatuses",
];

/// The core's own word on a pod, which wins over the backend's status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Container statuses to show while the backend has reported none (containers waiting on
    /// a configuration error, as a kubelet shows them).
    pub containers: Option<(Vec<ContainerStatus>, Vec<ContainerStatus>)>,
}

impl Verdict {
    pub fn pending(reason: &str, message: impl Into<String>) -> Self {
        Self {
            phase: Some("Pending".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            containers: None,
        }
    }

    pub fn failed(reason: &str, message: impl Into<String>) -> Self {
        Self {
            phase: Some("Failed".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            containers: None,
        }
    }

    /// Pending, with every container waiting for `reason` (`CreateContainerConfigError`).
    pub fn containers_waiting(pod: &Pod, reason: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let waiting = |c: &k8s_openapi::api::core::v1::Container| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(message.clone()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = pod.spec.as_ref();
        let init = spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(waiting)
            .collect();
        let main = spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(waiting)
            .collect();
        Self {
            phase: Some("Pending".into()),
            reason: None,
            message: None,
            containers: Some((init, main)),
        }
    }
}

/// The status vkubelet wants the API object to have.
///
/// `current` is the API object's status, `backend` the provider's latest report (if any).
pub fn desired_status(
    current: &PodStatus,
    backend: Option<&PodStatus>,
    verdict: Option<&Verdict>,
) -> PodStatus {
    let mut desired = match backend {
        Some(b) => b.clone(),
        None => PodStatus {
            phase: current.phase.clone(),
            ..Default::default()
        },
    };
    if backend.is_none() {
        // Without a report from the backend only the verdict speaks; keep what is there.
        desired.host_ip = current.host_ip.clone();
        desired.host_ips = current.host_ips.clone();
        desired.pod_ip = current.pod_ip.clone();
        desired.pod_ips = current.pod_ips.clone();
        desired.start_time = current.start_time.clone();
        desired.container_statuses = current.container_statuses.clone();
        desired.init_container_statuses = current.init_container_statuses.clone();
        desired.ephemeral_container_statuses = current.ephemeral_container_statuses.clone();
        desired.conditions = current.conditions.as_ref().map(|cs| {
            cs.iter()
                .filter(|c| KUBELET_CONDITIONS.contains(&c.type_.as_str()))
                .cloned()
                .collect()
        });
    }
    if let Some(v) = verdict {
        if v.phase.is_some() {
            desired.phase = v.phase.clone();
        }
        desired.reason = v.reason.clone();
        desired.message = v.message.clone();
        if backend.is_none()
            && let Some((init, main)) = &v.containers
        {
            desired.init_container_statuses = (!init.is_empty()).then(|| init.clone());
            desired.container_statuses = Some(main.clone());
        }
    }
    desired.conditions =
        merge_conditions(current.conditions.as_deref(), desired.conditions.as_deref());
    desired
}

/// Kubelet-owned conditions from `ours`, everything else from `theirs`; transition times are kept
/// when a condition's status did not change, so unchanged conditions compare equal.
fn merge_conditions(
    theirs: Option<&[PodCondition]>,
    ours: Option<&[PodCondition]>,
) -> Option<Vec<PodCondition>> {
    let theirs = theirs.unwrap_or_default();
    let mut out: Vec<PodCondition> = theirs
        .iter()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    for c in ours.unwrap_or_default() {
        if !KUBELET_CONDITIONS.contains(&c.type_.as_str()) {
            continue;
        }
        let mut c = c.clone();
        if let Some(prev) = theirs.iter().find(|p| p.type_ == c.type_)
            && prev.status == c.status
        {
            c.last_transition_time = prev.last_transition_time.clone();
            c.last_probe_time = prev.last_probe_time.clone();
        }
        out.push(c);
    }
    // A stable order keeps equal sets equal.
    out.sort_by(|a, b| {
        condition_rank(&a.type_)
            .cmp(&condition_rank(&b.type_))
            .then_with(|| a.type_.cmp(&b.type_))
    });
    if out.is_empty() { None } else { Some(out) }
}

fn condition_rank(t: &str) -> usize {
    match t {
        "PodReadyToStartContainers" => 0,
        "Initialized" => 1,
        "Ready" => 2,
        "ContainersReady" => 3,
        "PodScheduled" => 4,
        _ => 5,
    }
}

/// The fields vkubelet owns in `status`, normalized (see [`normalize`]) so that two statuses that
/// mean the same compare equal.
pub fn owned_fields(status: &PodStatus) -> Map<String, Value> {
    let Ok(Value::Object(all)) = serde_json::to_value(status) else {
        return Map::new();
    };
    OWNED_FIELDS
        .iter()
        .filter_map(|f| {
            all.get(*f)
                .cloned()
                .and_then(normalize)
                .map(|v| ((*f).to_string(), v))
        })
        .collect()
}

/// A JSON merge patch for `pods/status` with just the owned fields that differ, or `None` when the
/// API object already says what we want. `uid` makes the patch fail on a re-created pod with the
/// same name instead of overwriting it.
pub fn status_patch(current: &PodStatus, desired: &PodStatus, uid: &str) -> Option<Value> {
    let cur = owned_fields(current);
    let mut want = owned_fields(desired);
    let mut changed = Map::new();
    for field in OWNED_FIELDS {
        let b = want.remove(*field);
        if cur.get(*field) != b.as_ref() {
            changed.insert((*field).to_string(), b.unwrap_or(Value::Null));
        }
    }
    // An API server before 1.28 drops `hostIPs`. Written alone, it would go out again for every
    // pod after every restart and every leadership term, and change nothing: at 10,000 pods that
    // is 10,000 writes queued ahead of real ones. It goes out with the pod's next real change
    // instead, where a server that keeps it takes it.
    let host_ips_alone = changed.len() == 1 && changed.contains_key("hostIPs");
    if changed.is_empty() || (host_ips_alone && !cur.contains_key("hostIPs")) {
        return None;
    }
    Some(serde_json::json!({ "metadata": { "uid": uid }, "status": Value::Object(changed) }))
}

/// Drop nulls, empty strings, empty lists and empty objects at every depth: the API server
/// returns `lastState: {}` where we send nothing, and the like.
pub fn normalize(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(normalize).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(o) => {
            let o: Map<String, Value> = o
                .into_iter()
                .filter_map(|(k, v)| normalize(v).map(|v| (k, v)))
                .collect();
            (!o.is_empty()).then_some(Value::Object(o))
        }
        other => Some(other),
    }
}

/// Whether every container in the status has stopped (or none was ever reported as running).
pub fn all_containers_terminated(status: &PodStatus) -> bool {
    let running = |cs: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        cs.iter()
            .flatten()
            .any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_none()))
    };
    matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        || (!running(&status.container_statuses) && !running(&status.init_container_statuses))
}

pub fn is_terminal_phase(status: Option<&PodStatus>) -> bool {
    matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn cond(t: &str, s: &str, at: i64) -> PodCondition {
        PodCondition {
            type_: t.into(),
            status: s.into(),
            last_transition_time: Some(Time(
                Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH),
            )),
            ..Default::default()
        }
    }

    fn running(name: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready: true,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn backend_running() -> PodStatus {
        PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.0.0.1".into()),
            conditions: Some(vec![
                cond("Ready", "True", 100),
                cond("Initialized", "True", 100),
            ]),
            container_statuses: Some(vec![running("c")]),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_conditions_owned_by_others() {
        let current = PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![
                cond("PodScheduled", "True", 1),
                cond("example.com/gate", "False", 2),
            ]),
            ..Default::default()
        };
        let d = desired_status(&current, Some(&backend_running()), None);
        let types: Vec<_> = d
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            vec!["Initialized", "Ready", "PodScheduled", "example.com/gate"]
        );
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time_and_needs_no_patch() {
        let backend = backend_running();
        let mut current = desired_status(&PodStatus::default(), Some(&backend), None);
        // The backend reports the same Ready=True again with a fresh timestamp.
        let mut again = backend.clone();
        again.conditions = Some(vec![
            cond("Ready", "True", 999),
            cond("Initialized", "True", 999),
        ]);
        let d = desired_status(&current, Some(&again), None);
        assert_eq!(status_patch(&current, &d, "u"), None);
        // A flip of Ready is a change, with the new transition time.
        let mut flipped = again.clone();
        flipped.conditions = Some(vec![
            cond("Ready", "False", 1000),
            cond("Initialized", "True", 999),
        ]);
        let d = desired_status(&current, Some(&flipped), None);
        let p = status_patch(&current, &d, "u").unwrap_or_default();
        assert!(
            p["status"]["conditions"]
                .to_string()
                .contains("1970-01-01T00:16:40Z"),
            "{p}"
        );
        assert!(
            p["status"].get("phase").is_none(),
            "only changed fields: {p}"
        );
        current.phase = Some("Running".into());
    }

    #[test]
    fn patch_carries_only_changed_fields_and_uid() {
        let current = PodStatus {
            phase: Some("Pending".into()),
            qos_class: Some("Burstable".into()),
            ..Default::default()
        };
        let d = desired_status(&current, Some(&backend_running()), None);
        let p = status_patch(&current, &d, "uid-1").unwrap_or_default();
        assert_eq!(p["metadata"]["uid"], "uid-1");
        let status = p["status"].as_object().cloned().unwrap_or_default();
        let mut keys: Vec<_> = status.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec!["conditions", "containerStatuses", "phase", "podIP"]
        );
        assert!(status.get("qosClass").is_none());
    }

    #[test]
    fn verdict_overrides_phase_and_sets_reason_then_clears_it() {
        let current = PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        };
        let v = Verdict::pending("ProviderFailed", "boom");
        let d = desired_status(&current, None, Some(&v));
        let p = status_patch(&current, &d, "u").unwrap_or_default();
        assert_eq!(p["status"]["reason"], "ProviderFailed");
        assert_eq!(p["status"]["message"], "boom");
        // Recovery: the backend now runs it and there is no verdict; reason and message are removed.
        let after_failure = d;
        let d = desired_status(&after_failure, Some(&backend_running()), None);
        let p = status_patch(&after_failure, &d, "u").unwrap_or_default();
        assert_eq!(p["status"]["reason"], Value::Null);
        assert_eq!(p["status"]["message"], Value::Null);
        assert_eq!(p["status"]["phase"], "Running");
    }

    #[test]
    fn failed_verdict_wins_over_backend_phase() {
        let v = Verdict::failed("UnsupportedPodSpec", "hostNetwork is not supported");
        let d = desired_status(&PodStatus::default(), Some(&backend_running()), Some(&v));
        assert_eq!(d.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn no_backend_status_keeps_existing_fields() {
        let current = desired_status(&PodStatus::default(), Some(&backend_running()), None);
        let d = desired_status(&current, None, None);
        assert_eq!(status_patch(&current, &d, "u"), None);
    }

    #[test]
    fn host_ips_alone_are_not_worth_a_write() {
        let mut backend = backend_running();
        backend.host_ip = Some("10.1.2.3".into());
        backend.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: "10.1.2.3".into(),
        }]);
        let desired = desired_status(&PodStatus::default(), Some(&backend), None);
        // What a 1.20 API server keeps of it.
        let mut kept = desired.clone();
        kept.host_ips = None;
        assert_eq!(status_patch(&kept, &desired, "u"), None);
        // With a real change they go along.
        let mut older = kept.clone();
        older.phase = Some("Pending".into());
        let p = status_patch(&older, &desired, "u").unwrap_or_default();
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["hostIPs"][0]["ip"], "10.1.2.3");
        // A server that keeps them gets a changed list written.
        let mut moved = desired.clone();
        moved.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: "10.9.9.9".into(),
        }]);
        let p = status_patch(&moved, &desired, "u").unwrap_or_default();
        assert_eq!(p["status"]["hostIPs"][0]["ip"], "10.1.2.3");
    }

    #[test]
    fn server_defaults_do_not_count_as_changes() {
        let desired = desired_status(&PodStatus::default(), Some(&backend_running()), None);
        // The API server adds `lastState: {}` and an empty message.
        let mut echoed = serde_json::to_value(&desired).unwrap_or_default();
        echoed["containerStatuses"][0]["lastState"] = serde_json::json!({});
        echoed["message"] = serde_json::json!("");
        let echoed: PodStatus = serde_json::from_value(echoed).unwrap_or_default();
        assert_eq!(status_patch(&echoed, &desired, "u"), None);
        assert_eq!(owned_fields(&echoed), owned_fields(&desired));
    }

    #[test]
    fn termination_detection() {
        let mut s = backend_running();
        assert!(!all_containers_terminated(&s));
        s.container_statuses = Some(vec![ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated::default()),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        assert!(all_containers_terminated(&s));
        assert!(all_containers_terminated(&PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        }));
        assert!(is_terminal_phase(Some(&PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        })));
        assert!(!is_terminal_phase(None));
    }
}
