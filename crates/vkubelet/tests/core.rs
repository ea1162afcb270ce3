//! End-to-end: the vkubelet binary with the sim provider against the real control plane, driven
//! through the API and kubectl.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{POLL, Vk, WAIT, is_ready, phase, wait_event, wait_pod_phase, wait_running};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use vk_testkit::{DeploymentBuilder, wait_for};

#[tokio::test]
async fn node_registers_ready_with_labels_taint_capacity_and_lease() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(
        &env,
        json!({ "capacity": { "cpu": "64", "memory": "256Gi", "pods": "500" } }),
    );
    let node = vk.wait_ready(&env).await;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("type").map(String::as_str),
        Some("virtual-kubelet")
    );
    assert_eq!(
        labels.get("kubernetes.io/role").map(String::as_str),
        Some("agent")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&vk.node));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "virtual-kubelet.io/provider"
            && t.value.as_deref() == Some("sim")
            && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    let status = node.status.clone().unwrap_or_default();
    let cap = status.capacity.unwrap_or_default();
    assert_eq!(cap.get("cpu").map(|q| q.0.as_str()), Some("64"));
    assert_eq!(cap.get("pods").map(|q| q.0.as_str()), Some("500"));
    // The harness asks for a free kubelet port (`--kubelet-port 0`): the node advertises the
    // port its kubelet API really listens on.
    let port = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .expect("daemonEndpoints.kubeletEndpoint");
    let port = u16::try_from(port).expect("a port");
    assert!(port > 0);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "nothing listens on the advertised kubelet port {port}"
    );
    assert!(
        status
            .addresses
            .unwrap_or_default()
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    assert!(
        status
            .node_info
            .map(|i| i.kubelet_version)
            .unwrap_or_default()
            .starts_with("v1.20")
    );

    // kubectl sees it Ready too.
    let out = env
        .kubectl(["get", "node", &vk.node, "--no-headers"])
        .await
        .assert_success();
    assert!(
        out.stdout.contains("Ready") && out.stdout.contains("agent"),
        "{}",
        out.stdout
    );

    // The lease exists, is owned by the node, and is renewed.
    let leases: Api<Lease> = Api::namespaced(env.client(), "kube-node-lease");
    let node_uid = node.metadata.uid.clone();
    let first = wait_for(WAIT, POLL, async || {
        let l = leases
            .get_opt(&vk.node)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no lease")?;
        let owned = l
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Node" && Some(&o.uid) == node_uid.as_ref());
        let spec = l.spec.clone().unwrap_or_default();
        if owned && spec.lease_duration_seconds == Some(40) {
            Ok(spec.renew_time)
        } else {
            Err(format!("{l:?}"))
        }
    })
    .await;
    wait_for(
        Duration::from_secs(30),
        Duration::from_secs(1),
        async || {
            let l = leases.get(&vk.node).await.map_err(|e| e.to_string())?;
            let renewed = l.spec.and_then(|s| s.renew_time);
            if renewed != first {
                Ok(())
            } else {
                Err("lease not renewed yet".to_string())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn deployment_runs_all_replicas_on_the_virtual_node_and_scale_down_deletes_backend_pods() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    let dep = DeploymentBuilder::new("web")
        .replicas(5)
        .selector_label("app", "web")
        .template(vk.pod("web"))
        .build();
    env.create(&dep).await;
    let pods = wait_running(&env, "app=web", 5).await;
    for p in &pods {
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            Some(vk.node.clone())
        );
        let s = p.status.clone().unwrap_or_default();
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"));
        assert!(is_ready(p), "pod {:?} not Ready", p.metadata.name);
        assert!(
            s.conditions_contains_scheduled(),
            "PodScheduled condition (the scheduler's) was kept"
        );
    }
    let out = env
        .kubectl_ns([
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .await
        .assert_success();
    wait_for(WAIT, POLL, async || {
        let d: Deployment = env
            .api::<Deployment>()
            .get("web")
            .await
            .map_err(|e| e.to_string())?;
        if d.status.and_then(|s| s.ready_replicas) == Some(5) {
            Ok(())
        } else {
            Err(out.stdout.clone())
        }
    })
    .await;

    env.kubectl_ns(["scale", "deploy/web", "--replicas=2"])
        .await
        .assert_success();
    wait_running(&env, "app=web", 2).await;
    let mut vk = vk;
    assert!(vk.terminate(), "vkubelet exits cleanly on SIGTERM");
    let live_api: BTreeSet<String> = env
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    let on_backend: BTreeSet<String> = vk.backend_pods().await.into_iter().collect();
    assert_eq!(
        on_backend, live_api,
        "the backend holds exactly the pods that still exist"
    );
}

trait ScheduledExt {
    fn conditions_contains_scheduled(&self) -> bool;
}

impl ScheduledExt for k8s_openapi::api::core::v1::PodStatus {
    fn conditions_contains_scheduled(&self) -> bool {
        self.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    }
}

#[tokio::test]
async fn job_pods_reach_succeeded_and_failed_with_exit_codes() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    let template = vk
        .pod("job")
        .restart_policy("Never")
        .annotation("sim.vkubelet.io/lifetime", "1s")
        .build_template();
    let job = Job {
        metadata: ObjectMeta {
            name: Some("done".into()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            template,
            backoff_limit: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    env.create(&job).await;
    let jobs: Api<Job> = env.api();
    wait_for(WAIT, POLL, async || {
        let j = jobs.get("done").await.map_err(|e| e.to_string())?;
        if j.status.as_ref().and_then(|s| s.succeeded) == Some(1) {
            Ok(())
        } else {
            Err(format!("{:?}", j.status))
        }
    })
    .await;
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("job-name=done"))
        .await
        .expect("list")
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(phase(&pods[0]).as_deref(), Some("Succeeded"));

    // A failing container: exit code 3 is propagated and the pod ends Failed.
    let failing = vk
        .pod("crash")
        .restart_policy("Never")
        .annotation("sim.vkubelet.io/lifetime", "1s")
        .annotation("sim.vkubelet.io/exit-code", "3")
        .build();
    env.create(&failing).await;
    let p = wait_pod_phase(&env, "crash", "Failed").await;
    let term = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_eq!(term.exit_code, 3);
}

#[tokio::test]
async fn kubectl_delete_completes_as_soon_as_the_backend_stops() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({ "stopLatency": { "fixed": "500ms" } }));
    vk.wait_ready(&env).await;
    // A 10-minute grace period: the delete must finish when the backend has stopped, not then.
    env.create(
        &vk.pod("slow-exit")
            .termination_grace_period_seconds(600)
            .build(),
    )
    .await;
    let p = wait_pod_phase(&env, "slow-exit", "Running").await;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    env.kubectl_ns([
        "delete",
        "pod",
        "slow-exit",
        "--wait=true",
        "--timeout=120s",
    ])
    .await
    .assert_success();
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "deletion waited for the grace period"
    );
    let mut vk = vk;
    vk.terminate();
    assert!(
        !vk.backend_pods().await.contains(&uid),
        "backend pod removed"
    );
}

#[tokio::test]
async fn provider_failures_mark_pods_provider_failed_and_recover() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    vk.control(json!({ "failCreates": true }));
    env.create(&vk.pod("flaky").build()).await;
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("flaky").await.map_err(|e| e.to_string())?;
        let s = p.status.clone().unwrap_or_default();
        if s.reason.as_deref() == Some("ProviderFailed") && s.phase.as_deref() == Some("Pending") {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let ev = wait_event(&env, "flaky", "ProviderCreateFailed").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(
        ev.message.unwrap_or_default().contains("simulated"),
        "event says why"
    );

    vk.control(json!({}));
    let p = wait_pod_phase(&env, "flaky", "Running").await;
    let s = p.status.unwrap_or_default();
    assert_eq!(
        s.reason, None,
        "the failure reason is cleared once the pod runs"
    );
}

#[tokio::test]
async fn fail_fast_marks_pod_failed_at_first_provider_failure() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start_with_args(&env, json!({}), &["--fail-fast"]);
    vk.wait_ready(&env).await;
    vk.control(json!({ "failCreates": true }));
    env.create(&vk.pod("once").build()).await;
    let p = wait_pod_phase(&env, "once", "Failed").await;
    assert_eq!(
        p.status.and_then(|s| s.reason).as_deref(),
        Some("ProviderFailed")
    );
}

#[tokio::test]
async fn unsupported_pod_fails_with_a_clear_reason_and_event() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    let mut pod = vk.pod("hostnet").build();
    if let Some(spec) = pod.spec.as_mut() {
        spec.host_network = Some(true);
    }
    env.create(&pod).await;
    let p = wait_pod_phase(&env, "hostnet", "Failed").await;
    let s = p.status.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("UnsupportedPodSpec"));
    assert!(
        s.message
            .unwrap_or_default()
            .contains("hostNetwork is not supported")
    );
    let ev = wait_event(&env, "hostnet", "UnsupportedPodSpec").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let out = env
        .kubectl_ns(["describe", "pod", "hostnet"])
        .await
        .assert_success();
    assert!(out.stdout.contains("UnsupportedPodSpec"), "{}", out.stdout);
}

#[tokio::test]
async fn kill_9_mid_burst_then_restart_runs_every_pod_exactly_once() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = Vk::start(
        &env,
        json!({ "startLatency": { "uniform": { "min": "10ms", "max": "1500ms" } } }),
    );
    vk.wait_ready(&env).await;
    let dep = DeploymentBuilder::new("burst")
        .replicas(60)
        .selector_label("app", "burst")
        .template(vk.pod("burst"))
        .build();
    env.create(&dep).await;
    // Kill once some, but not all, pods run.
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, Duration::from_millis(50), async || {
        let l = pods
            .list(&ListParams::default().labels("app=burst"))
            .await
            .map_err(|e| e.to_string())?;
        let running = l
            .items
            .iter()
            .filter(|p| phase(p).as_deref() == Some("Running"))
            .count();
        if running >= 5 {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    })
    .await;
    vk.restart();
    let running = wait_running(&env, "app=burst", 60).await;
    for p in &running {
        assert_eq!(
            common::restarts(p),
            0,
            "pod {:?} was restarted instead of adopted",
            p.metadata.name
        );
    }
    vk.terminate();
    vk.assert_backend_matches(&running).await;
}

/// A vkubelet killed and started again adopts what runs and, for pods whose backend state did
/// not change, writes nothing: no pods/status patch and no resourceVersion moves, although every
/// pod is reconciled again (at 10,000 pods a restart would otherwise cost 10,000 writes).
#[tokio::test]
async fn restart_writes_nothing_for_pods_that_did_not_change() {
    const N: usize = 30;
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut vk = Vk::start_with_args(&env, json!({}), &["--metrics-addr", &addr]);
    vk.wait_ready(&env).await;
    for i in 0..N {
        env.create(
            &vk.pod(&format!("steady-{i}"))
                .label("app", "steady")
                .build(),
        )
        .await;
    }
    wait_running(&env, "app=steady", N).await;
    let pods: Api<Pod> = env.api();
    let lp = ListParams::default().labels("app=steady");
    // Settled: nothing is left for vkubelet to report.
    wait_for(WAIT, POLL, async || {
        let l = pods.list(&lp).await.map_err(|e| e.to_string())?;
        let ready = l.items.iter().filter(|p| is_ready(p)).count();
        if ready == N {
            Ok(())
        } else {
            Err(format!("{ready}/{N} Ready"))
        }
    })
    .await;
    vk.kill9();
    let before = common::resource_versions(&pods.list(&lp).await.expect("list pods"));
    vk.resume();
    // Every pod went through the restarted process's reconcile at least once.
    let node = format!("node=\"{}\"", vk.node);
    let text = wait_for(WAIT, POLL, async || {
        let text = common::scrape(&addr)?;
        let done = common::metric_sum(
            &text,
            &[
                "vkubelet_reconcile_duration_seconds_count{",
                &node,
                "outcome=\"done\"",
            ],
        );
        if done >= N as f64 {
            Ok(text)
        } else {
            Err(format!("{done} reconciles done, want {N}"))
        }
    })
    .await;
    let patches = common::metric_sum(&text, &["vkubelet_pod_status_patches_total{", &node]);
    assert_eq!(patches, 0.0, "status patches after the restart");
    let after = pods.list(&lp).await.expect("list pods");
    for p in &after.items {
        assert_eq!(
            common::restarts(p),
            0,
            "{:?} was restarted",
            p.metadata.name
        );
    }
    assert_eq!(
        common::resource_versions(&after),
        before,
        "pods written by the restarted vkubelet (name, resourceVersion)"
    );
    vk.terminate();
}

#[tokio::test]
async fn backend_pod_without_api_pod_is_removed() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    env.create(&vk.pod("orphan").build()).await;
    let p = wait_pod_phase(&env, "orphan", "Running").await;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    assert!(vk.terminate());
    // While vkubelet is down the pod is force-deleted: nobody tells the backend.
    env.kubectl_ns(["delete", "pod", "orphan", "--grace-period=0", "--force"])
        .await
        .assert_success();
    assert!(
        vk.backend_pods().await.contains(&uid),
        "the backend still runs it"
    );
    vk.resume();
    vk.wait_ready(&env).await;
    wait_for(WAIT, POLL, async || {
        let text =
            std::fs::read_to_string(vk.state_dir().join("journal.jsonl")).unwrap_or_default();
        let deleted = text
            .lines()
            .any(|l| l.contains("delete") && l.contains(&uid));
        if deleted {
            Ok(())
        } else {
            Err("backend pod not deleted yet")
        }
    })
    .await;
    vk.terminate();
    assert!(!vk.backend_pods().await.contains(&uid));
}

#[tokio::test]
async fn lost_backend_pod_follows_restart_policy() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    env.create(&vk.pod("always").build()).await;
    env.create(&vk.pod("never").restart_policy("Never").build())
        .await;
    wait_pod_phase(&env, "always", "Running").await;
    wait_pod_phase(&env, "never", "Running").await;
    assert!(vk.terminate());
    // The backend loses everything (its state is wiped).
    std::fs::remove_dir_all(vk.state_dir()).expect("wipe backend");
    vk.resume();
    let p = wait_pod_phase(&env, "never", "Failed").await;
    assert_eq!(
        p.status.and_then(|s| s.reason).as_deref(),
        Some("ProviderPodLost")
    );
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("always").await.map_err(|e| e.to_string())?;
        let s = p.status.clone().unwrap_or_default();
        let restarts = s
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        if s.phase.as_deref() == Some("Running") && restarts >= 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    wait_event(&env, "always", "ProviderPodLost").await;
}

#[tokio::test]
async fn deleted_node_object_is_recreated() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    let before = vk.wait_ready(&env).await;
    env.kubectl(["delete", "node", &vk.node])
        .await
        .assert_success();
    let nodes: Api<Node> = Api::all(env.client());
    let after = wait_for(WAIT, POLL, async || {
        let n = nodes
            .get_opt(&vk.node)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("not yet".to_string())?;
        if n.metadata.uid != before.metadata.uid {
            Ok(n)
        } else {
            Err("same object".to_string())
        }
    })
    .await;
    assert!(
        after
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("type")
    );
    vk.wait_ready(&env).await;
}

#[tokio::test]
async fn labels_set_by_others_survive_status_updates() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    env.create(&vk.pod("keep").build()).await;
    wait_pod_phase(&env, "keep", "Running").await;
    let pods: Api<Pod> = env.api();
    pods.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"owner": "me"}}})),
    )
    .await
    .expect("label");
    // Force more status traffic: the container image changes (an in-place update).
    pods.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Strategic(
            json!({"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}}),
        ),
    )
    .await
    .expect("update image");
    wait_for(WAIT, POLL, async || {
        let p = pods.get("keep").await.map_err(|e| e.to_string())?;
        let image = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.image.clone());
        if image.as_deref() == Some("busybox:2") {
            Ok(())
        } else {
            Err(format!("{image:?}"))
        }
    })
    .await;
    let p = pods.get("keep").await.expect("get");
    assert_eq!(
        p.metadata
            .labels
            .unwrap_or_default()
            .get("owner")
            .map(String::as_str),
        Some("me")
    );
    let _ = pods.delete("keep", &DeleteParams::default()).await;
}

#[tokio::test]
async fn one_process_runs_several_virtual_nodes_from_a_config_file() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("vkubelet-multi-{}", env.namespace()));
    std::fs::create_dir_all(&dir).expect("dir");
    let names = [
        format!("vk-a-{}", env.namespace()),
        format!("vk-b-{}", env.namespace()),
    ];
    let cfg = json!({ "nodes": [
        { "name": names[0], "provider": "sim", "labels": { "zone": "a" }, "kubeletPort": 20250,
          "providerConfig": { "capacity": { "pods": "10" } } },
        { "name": names[1], "provider": "sim", "labels": { "zone": "b" }, "kubeletPort": 20251 },
    ]});
    let path = dir.join("nodes.json");
    std::fs::write(&path, cfg.to_string()).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vkubelet"))
        .arg("run")
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .arg("--config")
        .arg(&path)
        .args(["--metrics-addr", "", "--kubelet-bind-address", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).expect("log"))
        .spawn()
        .expect("spawn");
    let nodes: Api<Node> = Api::all(env.client());
    for (name, zone, port, pods) in [
        (&names[0], "a", 20250, Some("10")),
        (&names[1], "b", 20251, None),
    ] {
        let n = wait_for(WAIT, POLL, async || {
            let n = nodes
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("not yet".to_string())?;
            let ready = n
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                Ok(n)
            } else {
                Err("not ready".to_string())
            }
        })
        .await;
        assert_eq!(
            n.metadata
                .labels
                .unwrap_or_default()
                .get("zone")
                .map(String::as_str),
            Some(zone)
        );
        let st = n.status.unwrap_or_default();
        assert_eq!(
            st.daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(port)
        );
        if let Some(p) = pods {
            assert_eq!(
                st.capacity
                    .unwrap_or_default()
                    .get("pods")
                    .map(|q| q.0.as_str()),
                Some(p)
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for n in &names {
        let _ = nodes.delete(n, &DeleteParams::default()).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sold_out_backend_taints_the_node_and_pods_wait_with_a_reason() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    vk.control(json!({ "soldOut": true }));
    let nodes: Api<Node> = Api::all(env.client());
    let has_taint = async |want: bool| {
        wait_for(WAIT, POLL, async || {
            let n = nodes.get(&vk.node).await.map_err(|e| e.to_string())?;
            let tainted = n
                .spec
                .iter()
                .flat_map(|s| s.taints.iter().flatten())
                .any(|t| t.key == "virtual-kubelet.io/sold-out" && t.effect == "NoSchedule");
            if tainted == want {
                Ok(())
            } else {
                Err(format!("sold-out taint present: {tainted}"))
            }
        })
        .await
    };
    has_taint(true).await;
    // A pod bound anyway (it tolerates everything) waits with the sold-out reason.
    env.create(&vk.pod("waits").build()).await;
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("waits").await.map_err(|e| e.to_string())?;
        let s = p.status.unwrap_or_default();
        if s.reason.as_deref() == Some("ProviderSoldOut") {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    vk.control(json!({}));
    has_taint(false).await;
    wait_pod_phase(&env, "waits", "Running").await;
}

#[tokio::test]
async fn metrics_report_pods_by_phase_provider_latency_and_api_requests() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let vk = Vk::start_with_args(&env, json!({}), &["--metrics-addr", &addr]);
    vk.wait_ready(&env).await;
    env.create(&vk.pod("measured").build()).await;
    wait_pod_phase(&env, "measured", "Running").await;
    let node = vk.node.clone();
    let text = wait_for(WAIT, POLL, async || {
        let text = common::scrape(&addr)?;
        if text.contains(&format!(
            "vkubelet_pods{{node=\"{node}\",phase=\"Running\"}} 1"
        )) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    for needle in [
        "vkubelet_provider_call_duration_seconds_bucket{",
        "operation=\"create\",result=\"ok\"",
        "vkubelet_api_requests_total{verb=\"PATCH\",code=\"200\"}",
        "vkubelet_pod_status_patches_total{",
        "vkubelet_workqueue_depth{",
        "vkubelet_node_lease_renewals_total{",
        "vkubelet_reconcile_duration_seconds_bucket{",
        "outcome=\"done\",error=\"\"",
        "vkubelet_workqueue_queue_duration_seconds_bucket{",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // A pod ran, so the node's pod controller has synced and its watch works: healthy.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}/healthz"),
        ])
        .output()
        .expect("curl /healthz");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out, "ok\n200", "/healthz");
}

#[tokio::test]
async fn kubectl_delete_completes_when_the_backend_stops_at_once() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    // Stop latency 0: the backend reports the pod gone while vkubelet is still handling the delete.
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    env.create(
        &vk.pod("quick-exit")
            .termination_grace_period_seconds(600)
            .build(),
    )
    .await;
    wait_pod_phase(&env, "quick-exit", "Running").await;
    env.kubectl_ns([
        "delete",
        "pod",
        "quick-exit",
        "--wait=true",
        "--timeout=120s",
    ])
    .await
    .assert_success();
}

#[tokio::test]
async fn cleanup_removes_every_backend_pod() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    let dep = DeploymentBuilder::new("leftover")
        .replicas(3)
        .selector_label("app", "leftover")
        .template(vk.pod("leftover"))
        .build();
    env.create(&dep).await;
    wait_running(&env, "app=leftover", 3).await;
    assert!(vk.terminate());
    assert_eq!(vk.backend_pods().await.len(), 3);
    let out = vk.cleanup();
    assert!(out.contains("removed 3 backend pod(s)"), "{out}");
    assert!(
        vk.backend_pods().await.is_empty(),
        "nothing left running (or billing) on the backend"
    );
}
