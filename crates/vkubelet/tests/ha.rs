//! High availability end to end: two vkubelet replicas with `--leader-elect` for one virtual node
//! on a shared sim backend (its `stateDir`), against the real control plane. Exactly one replica
//! holds the node's Lease; kill -9 of the leader mid-burst hands the node to the other replica
//! with no pod lost, created twice on the backend, restarted or orphaned; a graceful stop (what a
//! rollout does) hands over without re-creating anything.
//!
//! The election timings are shortened so a takeover happens in seconds; nothing here asserts a
//! duration — takeover time is a benchmark (docs/testing.md).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{POLL, Vk, WAIT, ha_args, phase, restarts, wait_running};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use vk_testkit::{DeploymentBuilder, TestEnv, wait_for};

/// The holder of the node's election Lease, once someone holds it.
async fn holder(env: &TestEnv, node: &str) -> Option<String> {
    let leases: Api<Lease> = env.api();
    leases
        .get_opt(&format!("vkubelet-{node}"))
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Wait until the Lease names the replica with this pid (identities carry `_<pid>_`).
async fn wait_holder_pid(env: &TestEnv, node: &str, pid: u32) -> String {
    let want = format!("_{pid}_");
    wait_for(WAIT, POLL, async || match holder(env, node).await {
        Some(h) if h.contains(&want) => Ok(h),
        other => Err(format!("holder {other:?}, want pid {pid}")),
    })
    .await
}

async fn running_count(env: &TestEnv, selector: &str) -> Result<usize, String> {
    let pods: Api<Pod> = env.api();
    let l = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| e.to_string())?;
    Ok(l.items
        .iter()
        .filter(|p| phase(p).as_deref() == Some("Running"))
        .count())
}

#[tokio::test]
async fn kill_9_of_the_leader_mid_burst_hands_the_node_over_and_loses_nothing() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let args = ha_args(&env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Vk::start_with_args(
        &env,
        json!({ "startLatency": { "uniform": { "min": "10ms", "max": "800ms" } } }),
        &args,
    );
    let first_pid = first.pid().unwrap_or_default();
    wait_holder_pid(&env, &first.node, first_pid).await;
    first.wait_ready(&env).await;
    let mut second = first.replica(2);
    let second_pid = second.pid().unwrap_or_default();
    // The standby competes but never takes a held node.
    wait_for(WAIT, POLL, async || {
        if second.log().contains("waiting for the lease") {
            Ok(())
        } else {
            Err("the second replica has not seen the lease yet")
        }
    })
    .await;
    assert!(
        holder(&env, &first.node)
            .await
            .is_some_and(|h| h.contains(&format!("_{first_pid}_"))),
        "the first replica still leads while the second waits"
    );

    const N: usize = 1000;
    let dep = DeploymentBuilder::new("burst")
        .replicas(N as i32)
        .selector_label("app", "burst")
        .template(first.pod("burst"))
        .build();
    env.create(&dep).await;
    wait_for(WAIT, Duration::from_millis(50), async || {
        let running = running_count(&env, "app=burst").await?;
        if running >= 20 {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    })
    .await;
    first.kill9();
    wait_holder_pid(&env, &second.node, second_pid).await;
    let running = wait_running(&env, "app=burst", N).await;
    for p in &running {
        assert_eq!(
            restarts(p),
            0,
            "pod {:?} was restarted instead of adopted by the new leader",
            p.metadata.name
        );
    }
    assert!(
        second.log().contains("leading the node"),
        "the takeover is the second replica's"
    );
    assert!(second.terminate(), "the new leader exits cleanly");
    second.assert_backend_matches(&running).await;
}

#[tokio::test]
async fn a_graceful_stop_hands_over_at_once_and_recreates_nothing() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let args = ha_args(&env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Vk::start_with_args(&env, json!({}), &args);
    wait_holder_pid(&env, &first.node, first.pid().unwrap_or_default()).await;
    first.wait_ready(&env).await;
    // The second replica has an address of its own, as a second pod would.
    let mut second = first.replica_with(
        2,
        &[
            "--node-ip",
            "127.0.0.2",
            "--kubelet-bind-address",
            "127.0.0.2",
        ],
    );
    let dep = DeploymentBuilder::new("web")
        .replicas(40)
        .selector_label("app", "web")
        .template(first.pod("web"))
        .build();
    env.create(&dep).await;
    let before = wait_running(&env, "app=web", 40).await;
    let creates_before = first.backend_creates().len();
    assert_eq!(creates_before, 40);

    let leases: Api<Lease> = env.api();
    let lease = leases
        .get(&format!("vkubelet-{}", first.node))
        .await
        .expect("lease");
    let transitions_before = lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    // What a rollout does to the old replica: SIGTERM. It releases the Lease on the way out.
    assert!(first.terminate(), "the old leader exits cleanly");
    let second_pid = second.pid().unwrap_or_default();
    wait_holder_pid(&env, &second.node, second_pid).await;
    // The new leader has taken the node on once it reports Ready through its own status writes.
    wait_for(WAIT, POLL, async || {
        if second.log().contains("virtual node running") {
            Ok(())
        } else {
            Err("the new leader has not started the node")
        }
    })
    .await;
    // The node's address follows the leader, so the API server reaches the new leader's
    // kubelet API.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client());
    wait_for(WAIT, POLL, async || {
        let n = nodes.get(&second.node).await.map_err(|e| e.to_string())?;
        let ips: Vec<String> = n
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect();
        if ips == ["127.0.0.2"] {
            Ok(())
        } else {
            Err(format!("InternalIP {ips:?}"))
        }
    })
    .await;
    let after = wait_running(&env, "app=web", 40).await;
    let uids = |pods: &[Pod]| -> BTreeSet<String> {
        pods.iter().filter_map(|p| p.metadata.uid.clone()).collect()
    };
    assert_eq!(uids(&before), uids(&after), "the same pods, none replaced");
    for p in &after {
        assert_eq!(restarts(p), 0, "pod {:?} restarted", p.metadata.name);
    }
    let lease = leases
        .get(&format!("vkubelet-{}", second.node))
        .await
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0),
        transitions_before + 1,
        "the Lease records the hand-over"
    );
    assert!(second.terminate());
    assert_eq!(
        second.backend_creates().len(),
        creates_before,
        "the hand-over created nothing on the backend"
    );
    second.assert_backend_matches(&after).await;
}

/// A registration shaped like vkubelet's that matches no namespace, so no other test is affected.
fn inert_webhook(name: &str) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/managed-by": "vkubelet" } },
        "webhooks": [{
            "name": "burst-policy.vkubelet.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": { "url": "https://127.0.0.1:1/mutate" },
            "namespaceSelector": { "matchLabels": { "vkubelet-test-no-such-namespace": "true" } },
            "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"] }]
        }]
    }))
    .expect("webhook configuration")
}

fn uninstall_command(vk: &Vk, webhook: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = vk.admin_command("uninstall");
    cmd.args(["--webhook-name", webhook]).args(extra);
    cmd
}

#[tokio::test]
async fn uninstall_refuses_a_served_node_then_leaves_nothing_and_is_harmless_twice() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let args = ha_args(&env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vk = Vk::start_with_args(&env, json!({}), &args);
    wait_holder_pid(&env, &vk.node, vk.pid().unwrap_or_default()).await;
    vk.wait_ready(&env).await;
    let webhook = format!("vkubelet-{}", env.namespace());
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(env.client());
    webhooks
        .create(&Default::default(), &inert_webhook(&webhook))
        .await
        .expect("create webhook configuration");
    let dep = DeploymentBuilder::new("app")
        .replicas(20)
        .selector_label("app", "app")
        .template(vk.pod("app"))
        .build();
    env.create(&dep).await;
    wait_running(&env, "app=app", 20).await;

    // While a replica leads the node, uninstall must not pull the backend from under it.
    let out = uninstall_command(&vk, &webhook, &["--wait-stopped", "2"])
        .output()
        .expect("run uninstall");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "uninstall went ahead on a served node"
    );
    assert!(
        stderr.contains(&vk.node) && stderr.contains("still served"),
        "the error names the served node: {stderr}"
    );
    assert_eq!(running_count(&env, "app=app").await.ok(), Some(20));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client());
    assert!(nodes.get_opt(&vk.node).await.expect("get node").is_some());

    assert!(vk.terminate());
    let out = uninstall_command(&vk, &webhook, &[])
        .output()
        .expect("run uninstall");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "uninstall failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("removed 20 backend pod(s)"), "{stdout}");
    assert!(
        vk.backend_pods().await.is_empty(),
        "nothing left on the backend"
    );
    assert!(nodes.get_opt(&vk.node).await.expect("get node").is_none());
    let node_leases: Api<Lease> = Api::namespaced(env.client(), "kube-node-lease");
    assert!(
        node_leases
            .get_opt(&vk.node)
            .await
            .expect("lease")
            .is_none()
    );
    let leases: Api<Lease> = env.api();
    assert!(
        leases
            .get_opt(&format!("vkubelet-{}", vk.node))
            .await
            .expect("lease")
            .is_none()
    );
    assert!(webhooks.get_opt(&webhook).await.expect("webhook").is_none());

    let again = uninstall_command(&vk, &webhook, &[])
        .output()
        .expect("run uninstall");
    assert!(
        again.status.success(),
        "a second uninstall is harmless: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("removed 0 backend pod(s)"));
}
