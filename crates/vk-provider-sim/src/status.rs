//! Pod statuses as a kubelet would write them, for the simulated pods.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::state::PodRecord;

/// Where a simulated pod is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Creating,
    Running {
        started: Timestamp,
    },
    Finished {
        exit_code: i32,
        started: Timestamp,
        finished: Timestamp,
    },
}

fn cond(t: &str, ok: bool, reason: Option<&str>, at: Timestamp) -> PodCondition {
    PodCondition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(Time(at)),
        ..Default::default()
    }
}

fn terminated(
    exit_code: i32,
    started: Timestamp,
    finished: Timestamp,
    uid: &str,
    name: &str,
) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code,
        reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
        started_at: Some(Time(started)),
        finished_at: Some(Time(finished)),
        container_id: Some(format!("sim://{uid}/{name}")),
        ..Default::default()
    }
}

/// The status of `rec` in `phase`. `restarts` counts this instance's restarts; `last` is the
/// previous termination, if any.
pub fn build(
    rec: &PodRecord,
    node_ip: &str,
    created: Timestamp,
    phase: &Phase,
    restarts: i32,
    last: Option<&ContainerStateTerminated>,
) -> PodStatus {
    let now = Timestamp::now();
    let (pod_phase, ready, state) = match phase {
        Phase::Creating => (
            "Pending",
            false,
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            },
        ),
        Phase::Running { started } => (
            "Running",
            true,
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started)),
                }),
                ..Default::default()
            },
        ),
        Phase::Finished {
            exit_code,
            started,
            finished,
        } => (
            if *exit_code == 0 {
                "Succeeded"
            } else {
                "Failed"
            },
            false,
            ContainerState {
                terminated: Some(terminated(*exit_code, *started, *finished, &rec.uid, "")),
                ..Default::default()
            },
        ),
    };
    let containers = rec
        .containers
        .iter()
        .map(|(name, image)| {
            let mut state = state.clone();
            if let Some(t) = state.terminated.as_mut() {
                t.container_id = Some(format!("sim://{}/{name}", rec.uid));
            }
            ContainerStatus {
                name: name.clone(),
                image: image.clone(),
                image_id: format!("sim://{image}"),
                container_id: (!matches!(phase, Phase::Creating))
                    .then(|| format!("sim://{}/{name}", rec.uid)),
                ready,
                started: Some(matches!(phase, Phase::Running { .. })),
                restart_count: rec.restart_base + restarts,
                state: Some(state),
                last_state: last.map(|t| ContainerState {
                    terminated: Some(t.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    let init = (!rec.init_containers.is_empty()).then(|| {
        rec.init_containers
            .iter()
            .map(|(name, image)| ContainerStatus {
                name: name.clone(),
                image: image.clone(),
                image_id: format!("sim://{image}"),
                ready: !matches!(phase, Phase::Creating),
                restart_count: 0,
                state: Some(match phase {
                    Phase::Creating => ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("PodInitializing".into()),
                            message: None,
                        }),
                        ..Default::default()
                    },
                    _ => ContainerState {
                        terminated: Some(terminated(0, created, created, &rec.uid, name)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            })
            .collect()
    });
    let not_ready_reason = match phase {
        Phase::Finished { .. } => Some("PodCompleted"),
        _ => Some("ContainersNotReady"),
    };
    let initialized = !matches!(phase, Phase::Creating) || rec.init_containers.is_empty();
    let running = !matches!(phase, Phase::Creating);
    PodStatus {
        phase: Some(pod_phase.into()),
        host_ip: Some(node_ip.into()),
        host_ips: Some(vec![HostIP { ip: node_ip.into() }]),
        pod_ip: running.then(|| node_ip.to_string()),
        pod_ips: running.then(|| vec![PodIP { ip: node_ip.into() }]),
        start_time: Some(Time(created)),
        conditions: Some(vec![
            cond("Initialized", initialized, None, now),
            cond(
                "Ready",
                ready,
                (!ready).then_some(not_ready_reason).flatten(),
                now,
            ),
            cond(
                "ContainersReady",
                ready,
                (!ready).then_some(not_ready_reason).flatten(),
                now,
            ),
            cond("PodScheduled", true, None, created),
        ]),
        container_statuses: Some(containers),
        init_container_statuses: init,
        ..Default::default()
    }
}

/// The termination record of one container instance that exited.
pub fn exited(
    rec: &PodRecord,
    exit_code: i32,
    started: Timestamp,
    finished: Timestamp,
) -> ContainerStateTerminated {
    terminated(
        exit_code,
        started,
        finished,
        &rec.uid,
        rec.containers.first().map(|c| c.0.as_str()).unwrap_or(""),
    )
}
