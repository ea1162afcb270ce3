//! Which pods a virtual node refuses outright: those that need the node itself (its network, PID
//! or IPC namespace, its filesystem) or that exist only to run on every real node (DaemonSets).
//! Such a pod is failed at once with reason [`UNSUPPORTED_REASON`] and a message naming every
//! problem, instead of being retried forever.

use k8s_openapi::api::core::v1::Pod;

pub const UNSUPPORTED_REASON: &str = "UnsupportedPodSpec";

/// Every reason this pod cannot run on a virtual node; empty when it can.
pub fn unsupported_features(pod: &Pod) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        problems.push("pod has no spec".to_string());
        return problems;
    };
    if spec.host_network == Some(true) {
        problems.push("hostNetwork is not supported".into());
    }
    if spec.host_pid == Some(true) {
        problems.push("hostPID is not supported".into());
    }
    if spec.host_ipc == Some(true) {
        problems.push("hostIPC is not supported".into());
    }
    let daemonset_owned = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    if daemonset_owned {
        problems.push("DaemonSet pods do not run on virtual nodes".into());
    }
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            problems.push(format!("hostPath volume {:?} is not supported", v.name));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostPathVolumeSource, PodSpec, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn plain_pod_is_supported() {
        assert!(unsupported_features(&pod(PodSpec::default())).is_empty());
    }

    #[test]
    fn lists_every_problem() {
        let mut p = pod(PodSpec {
            host_network: Some(true),
            host_pid: Some(true),
            volumes: Some(vec![Volume {
                name: "logs".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/var/log".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            name: "agent".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert_eq!(
            unsupported_features(&p),
            vec![
                "hostNetwork is not supported",
                "hostPID is not supported",
                "DaemonSet pods do not run on virtual nodes",
                "hostPath volume \"logs\" is not supported",
            ]
        );
    }

    #[test]
    fn replicaset_owned_pod_is_fine() {
        let mut p = pod(PodSpec::default());
        p.metadata.owner_references = Some(vec![OwnerReference {
            kind: "ReplicaSet".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert!(unsupported_features(&p).is_empty());
    }
}
