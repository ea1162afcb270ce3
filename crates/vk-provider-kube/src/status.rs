//! A backend pod's status as the source pod reports it: the backend kubelet's phase, conditions
//! and container statuses, the backend's pod IPs, the virtual node's host IP, and restart
//! counts that keep counting across instances vkubelet re-created.

use k8s_openapi::api::core::v1::{ContainerStatus, HostIP, Pod, PodStatus};

/// What the source pod shows for `backend`; `None` while the backend has said nothing yet.
pub fn source_status(backend: &Pod, node_ip: &str, restart_base: i32) -> Option<PodStatus> {
    let mut s = backend.status.clone()?;
    let add_base = |list: &mut Option<Vec<ContainerStatus>>| {
        for c in list.iter_mut().flatten() {
            c.restart_count = c.restart_count.saturating_add(restart_base);
        }
    };
    add_base(&mut s.container_statuses);
    add_base(&mut s.init_container_statuses);
    add_base(&mut s.ephemeral_container_statuses);
    // The source pod runs "on" the virtual node; its pod IP is the backend's.
    s.host_ip = Some(node_ip.to_string());
    s.host_ips = Some(vec![HostIP {
        ip: node_ip.to_string(),
    }]);
    // The backend's scheduler and QoS are the backend's business; the source pod keeps its own
    // PodScheduled condition (the core leaves conditions it does not own alone).
    if let Some(conditions) = s.conditions.as_mut() {
        conditions.retain(|c| c.type_ != "PodScheduled");
    }
    s.nominated_node_name = None;
    s.resize = None;
    s.resource_claim_statuses = None;
    Some(s)
}

/// Whether the backend pod is stuck because no backend node has room for it: `PodScheduled`
/// False with reason `Unschedulable`.
pub fn unschedulable(backend: &Pod) -> Option<String> {
    let c = backend
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    let message = c.message.clone().unwrap_or_default();
    // Only a lack of room says the pool is sold out; a pod stuck for its own reasons (a
    // selector nothing matches, an unbound claim) must not shield the whole node.
    let no_room = message.contains("Insufficient") || message.contains("Too many pods");
    (c.reason.as_deref() == Some("Unschedulable") && no_room).then_some(message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodIP};

    fn backend() -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.244.1.7".into()),
                pod_ips: Some(vec![PodIP {
                    ip: "10.244.1.7".into(),
                }]),
                host_ip: Some("192.0.2.10".into()),
                conditions: Some(vec![
                    PodCondition {
                        type_: "PodScheduled".into(),
                        status: "True".into(),
                        ..Default::default()
                    },
                    PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    },
                ]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    restart_count: 2,
                    ready: true,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_backends_word_with_our_host_and_restart_base() {
        let s = source_status(&backend(), "127.0.0.5", 3).unwrap();
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.7"));
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.5"));
        assert_eq!(s.container_statuses.unwrap()[0].restart_count, 5);
        let types: Vec<_> = s.conditions.unwrap().into_iter().map(|c| c.type_).collect();
        assert_eq!(types, vec!["Ready"]);
        assert!(source_status(&Pod::default(), "x", 0).is_none());
    }

    #[test]
    fn unschedulable_backend_pods_are_seen() {
        let mut p = backend();
        assert_eq!(unschedulable(&p), None);
        p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: 3 Insufficient cpu.".into()),
            ..Default::default()
        }]);
        assert_eq!(
            unschedulable(&p).as_deref(),
            Some("0/3 nodes are available: 3 Insufficient cpu.")
        );
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].message =
            Some("0/3 nodes are available: 3 node(s) didn't match node selector.".into());
        assert_eq!(unschedulable(&p), None, "not a lack of room");
    }
}
