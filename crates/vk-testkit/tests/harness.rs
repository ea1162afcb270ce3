//! Proves the test harness against the real control plane: connect, per-test namespaces,
//! kubectl, and the controllers and scheduler doing their jobs on a cluster without nodes.
//!
//! Needs `VKUBELET_TEST_KUBECONFIG` (set by `make test`); skips without it, fails under CI=true.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::ListParams;
use vk_testkit::{DeploymentBuilder, PodBuilder, TEST_LABEL, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// A Deployment's ReplicaSet creates its pods; with no nodes they stay Pending, unbound, and the
/// scheduler marks them Unschedulable.
#[tokio::test]
async fn deployment_pods_stay_pending_without_nodes() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };

    let deployment = DeploymentBuilder::new("sleepers")
        .replicas(3)
        .selector_label("app", "sleepers")
        .template(
            PodBuilder::new("sleepers")
                .image("busybox")
                .command(["sleep", "3600"]),
        )
        .build();
    let deployment = env.create::<Deployment>(&deployment).await;
    let deployment_uid = deployment.metadata.uid.clone().unwrap();

    // The deployment controller creates a ReplicaSet owned by the Deployment.
    let replica_sets = env.api::<ReplicaSet>();
    let rs = wait_for(TIMEOUT, POLL, async || {
        let list = replica_sets
            .list(&ListParams::default().labels("app=sleepers"))
            .await
            .map_err(|e| e.to_string())?;
        let owned: Vec<ReplicaSet> = list
            .items
            .into_iter()
            .filter(|rs| {
                rs.metadata.owner_references.iter().flatten().any(|o| {
                    o.kind == "Deployment" && o.uid == deployment_uid && o.controller == Some(true)
                })
            })
            .collect();
        match owned.as_slice() {
            [rs] => Ok(rs.clone()),
            other => Err(format!(
                "{} ReplicaSets owned by the Deployment: {:?}",
                other.len(),
                other.iter().map(|r| &r.metadata.name).collect::<Vec<_>>()
            )),
        }
    })
    .await;
    let rs_name = rs.metadata.name.clone().unwrap();
    let rs_uid = rs.metadata.uid.clone().unwrap();
    assert_eq!(rs.spec.replicas, Some(3));

    // The ReplicaSet controller creates 3 pods; the scheduler finds no node for them.
    let pods = env.api::<Pod>();
    let pods = wait_for(TIMEOUT, POLL, async || {
        let list = pods
            .list(&ListParams::default().labels("app=sleepers"))
            .await
            .map_err(|e| vec![e.to_string()])?;
        let summary: Vec<String> = list.items.iter().map(describe).collect();
        let unschedulable = list.items.iter().filter(|p| is_unschedulable(p)).count();
        if list.items.len() == 3 && unschedulable == 3 {
            Ok(list.items)
        } else {
            Err(summary)
        }
    })
    .await;

    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let owners = pod.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owners.iter().any(|o| o.kind == "ReplicaSet"
                && o.name == rs_name
                && o.uid == rs_uid
                && o.controller == Some(true)),
            "pod {name} is not controlled by ReplicaSet {rs_name}: {owners:?}"
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name, None, "pod {name} was bound to a node");
        assert_eq!(spec.containers[0].image.as_deref(), Some("busybox"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"), "pod {name}");
    }

    // kubectl sees the same thing.
    let out = env
        .kubectl_ns(["get", "pods", "-l", "app=sleepers", "-o", "name"])
        .await
        .assert_success();
    assert_eq!(out.stdout_lines().len(), 3, "{out}");

    env.cleanup().await;
}

/// kubectl through the kit reaches the cluster, and the kit's namespace is ready for pods.
#[tokio::test]
async fn kubectl_and_namespace_setup() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let ns = env.namespace().to_string();
    assert!(vk_testkit::is_dns_label(&ns), "{ns}");
    assert!(ns.starts_with("kubectl-and-namespace-setup-"), "{ns}");
    assert!(env.kubeconfig_path().is_absolute());
    assert!(env.kubeconfig_path().exists());

    let out = env
        .kubectl(["get", "ns", "-o", "name"])
        .await
        .assert_success();
    let lines = out.stdout_lines();
    assert!(lines.contains(&"namespace/default"), "{out}");
    assert!(lines.contains(&format!("namespace/{ns}").as_str()), "{out}");

    // The default ServiceAccount already exists (the kit waited for it).
    let out = env
        .kubectl_ns(["get", "serviceaccount", "default", "-o", "name"])
        .await
        .assert_success();
    assert_eq!(out.stdout.trim(), "serviceaccount/default", "{out}");
    assert!(
        env.api::<ServiceAccount>()
            .get_opt("default")
            .await
            .unwrap()
            .is_some()
    );

    // The namespace carries the sweep label.
    let namespace = env.api_all::<Namespace>().get(&ns).await.unwrap();
    let labels = namespace.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get(TEST_LABEL).map(String::as_str), Some("true"));

    // Failures come back as output, not panics, with a useful description.
    let out = env
        .kubectl_ns(["get", "pod", "does-not-exist"])
        .await
        .assert_failure();
    assert!(out.stderr.contains("not found"), "{out}");
    assert!(out.to_string().contains("get pod does-not-exist"), "{out}");
}

/// Dropping a TestEnv deletes its namespace; `cleanup` does too.
#[tokio::test]
async fn namespaces_are_deleted_on_drop_and_cleanup() {
    let Some(cluster) = vk_testkit::cluster().await else {
        return;
    };
    let namespaces = kube::Api::<Namespace>::all(cluster.client());

    let dropped = cluster.namespace("dropped").await;
    let dropped_name = dropped.namespace().to_string();
    drop(dropped);
    let cleaned = cluster.namespace("cleaned").await;
    let cleaned_name = cleaned.namespace().to_string();
    cleaned.cleanup().await;

    for name in [dropped_name, cleaned_name] {
        wait_for(TIMEOUT, POLL, async || {
            match namespaces.get_opt(&name).await {
                Ok(None) => Ok(()),
                Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_some() => Ok(()),
                Ok(Some(ns)) => Err(format!("{name} not being deleted: {:?}", ns.status)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }
}

fn is_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
}

fn describe(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    format!(
        "{} phase={:?} node={:?} conditions={:?}",
        pod.metadata.name.as_deref().unwrap_or("?"),
        status.and_then(|s| s.phase.as_deref()),
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| format!("{}={} ({:?})", c.type_, c.status, c.reason))
            .collect::<Vec<_>>()
    )
}

/// A test's own control plane: its API server killed with SIGKILL stops answering, comes back
/// with the same flags (same port, certificates and etcd: the kubeconfig still works and the data
/// is still there) as a new process, and dropping the control plane stops all its processes.
#[tokio::test]
async fn own_control_plane_survives_an_apiserver_kill_and_restart() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::PostParams;

    let Some(cp) = vk_testkit::OwnControlPlane::start().await else {
        return;
    };
    let client = cp.cluster().client();
    let cms = kube::Api::<ConfigMap>::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("kept".into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let first = cp.apiserver_pid().expect("the API server runs");

    cp.kill_apiserver().await.unwrap();
    assert_eq!(cp.apiserver_pid(), None, "killed");
    let err = cms
        .get("kept")
        .await
        .expect_err("nothing answers while it is down");
    assert!(
        matches!(err, kube::Error::HyperError(_) | kube::Error::Service(_)),
        "a connection error, not an API answer: {err:?}"
    );

    cp.restart_apiserver().await.unwrap();
    let second = cp.apiserver_pid().expect("the API server runs again");
    assert_ne!(first, second, "a new process");
    let kept = cms
        .get("kept")
        .await
        .expect("same port, certificates and etcd");
    assert_eq!(kept.metadata.name.as_deref(), Some("kept"));

    let dir = cp.dir().to_path_buf();
    let pids: Vec<u32> = [
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ]
    .iter()
    .map(|n| {
        std::fs::read_to_string(dir.join(format!("{n}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    })
    .collect();
    assert!(
        pids.iter()
            .all(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    );
    drop(cp);
    // `down` sends SIGTERM (SIGKILL after 10 s) and returns; the processes are gone soon after.
    wait_for(TIMEOUT, POLL, async || {
        let running: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
                })
            })
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(format!("still running after the drop: {running:?}"))
        }
    })
    .await;
    assert!(!dir.exists(), "its directory is removed");
}
