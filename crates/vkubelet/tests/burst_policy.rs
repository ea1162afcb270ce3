//! The burst policy end to end, with the seeds' own manifests: vkubelet's admission webhook
//! registered with the real API server, the real scheduler choosing between a "local" node (a
//! vkubelet sim node registered without the virtual label and taints, with room for exactly two
//! of seed 001's pods) and a virtual node, and sizing profiles applied on the way to the backend.
//!
//! These tests depend on what the scheduler sees cluster-wide, so they run one at a time (test
//! group `scheduler` in .config/nextest.toml). Each virtual node is tainted with a value of its
//! own and its webhook tolerates only that value and only touches the test's namespace, so other
//! tests' nodes and pods never mix in.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{POLL, Vk, WAIT, phase};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use vk_testkit::{TestEnv, wait_for};

const SEED_001: &str = include_str!("manifests/seed-001-deployment.yaml");
const SEED_003: &str = include_str!("manifests/seed-003-pod.yaml");
const BURST_ANNOTATION: &str = "virtual-kubelet.io/burst-policy";
const SIZE_ANNOTATION: &str = "virtual-kubelet.io/size";
/// The namespace label the tests' webhooks select on.
const WEBHOOK_SELECTOR: &str = "vkubelet-e2e-webhook";

/// Removes the test's MutatingWebhookConfiguration however the test ends.
struct WebhookRegistration {
    name: String,
    kubeconfig: PathBuf,
}

impl Drop for WebhookRegistration {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The "local" node: no `type=virtual-kubelet`, no taints, room for two 500m/1Gi pods (and by
/// its low free share no reason for the scheduler to prefer it beyond what the policy adds).
fn start_local(env: &TestEnv) -> Vk {
    Vk::start_node(
        env,
        "lo",
        json!({"capacity": {"cpu": "1200m", "memory": "2400Mi", "pods": "110"}}),
        &["--disable-taint", "--node-label", "type=local"],
    )
}

/// A virtual node serving the burst-policy webhook for the test's namespace, with `profile`.
async fn start_virtual(env: &TestEnv, profile: &str) -> (Vk, WebhookRegistration) {
    let ns = env.namespace().to_string();
    env.kubectl([
        "label",
        "namespace",
        &ns,
        &format!("{WEBHOOK_SELECTOR}={ns}"),
    ])
    .await
    .assert_success();
    let name = format!("vkubelet-{ns}");
    let cert_dir = std::env::temp_dir().join(format!("vkubelet-e2e-webhook-{ns}"));
    let registration = WebhookRegistration {
        name: name.clone(),
        kubeconfig: env.kubeconfig_path().to_path_buf(),
    };
    let selector = format!("{WEBHOOK_SELECTOR}={ns}");
    let cert_dir = cert_dir.to_string_lossy().into_owned();
    let vk = Vk::start_node(
        env,
        "vk",
        json!({"capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000"}}),
        &[
            "--sizing-profile",
            profile,
            "--taint-value",
            &ns,
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-name",
            &name,
            "--webhook-namespace-label",
            &selector,
            "--webhook-cert-dir",
            &cert_dir,
        ],
    );
    vk.wait_ready(env).await;
    wait_webhook_effective(env).await;
    (vk, registration)
}

fn write_manifest(env: &TestEnv, file: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vkubelet-e2e-manifests-{}", env.namespace()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The API server admits through the webhook once its informer has the registration: probe
/// with a server-side dry run until the webhook's annotation comes back.
async fn wait_webhook_effective(env: &TestEnv) {
    let probe = write_manifest(
        env,
        "probe.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probe\n  labels: {virtual-kubelet.io/burst-to-cci: auto}\nspec:\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m, memory: 100Mi}}}]\n",
    );
    let probe = probe.to_string_lossy().into_owned();
    wait_for(WAIT, POLL, async || {
        let out = env
            .kubectl_ns(["create", "--dry-run=server", "-o", "json", "-f", &probe])
            .await;
        if !out.success() {
            return Err(out.to_string());
        }
        let pod: Pod = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
        annotation(&pod, BURST_ANNOTATION)
            .map(|_| ())
            .ok_or_else(|| "not mutated yet".to_string())
    })
    .await;
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// What `vkubelet check` says of a manifest (the same code as the webhook and the core).
fn check_json(manifest: &PathBuf, profile: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vkubelet"))
        .args(["check", "-o", "json", "--profile", profile, "-f"])
        .arg(manifest)
        .output()
        .expect("run vkubelet check");
    assert!(
        out.status.success(),
        "vkubelet check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check json")
}

/// Wait until the seed's 20 pods reach the expected split: `running_local` + `running_virtual`
/// Running, the rest Pending as Unschedulable.
async fn wait_split(
    env: &TestEnv,
    local: &Vk,
    virt: &Vk,
    running_local: usize,
    running_virtual: usize,
) -> Vec<Pod> {
    let pods: Api<Pod> = env.api();
    let lp = ListParams::default().labels("app=test-vk");
    wait_for(WAIT, POLL, async || {
        let items = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
        let mut on: BTreeMap<String, usize> = BTreeMap::new();
        let mut running = 0;
        let mut waiting = 0;
        for p in &items {
            let node = node_of(p).unwrap_or_else(|| "<none>".into());
            *on.entry(node.clone()).or_default() += 1;
            if phase(p).as_deref() == Some("Running") {
                running += 1;
            } else if node == "<none>" && unschedulable(p) {
                waiting += 1;
            }
        }
        let l = on.get(&local.node).copied().unwrap_or(0);
        let v = on.get(&virt.node).copied().unwrap_or(0);
        let want_pending = 20 - running_local - running_virtual;
        if items.len() == 20
            && l == running_local
            && v == running_virtual
            && running == running_local + running_virtual
            && waiting == want_pending
        {
            Ok(items)
        } else {
            Err(format!(
                "{} pods, placement {on:?}, {running} running, {waiting} unschedulable",
                items.len()
            ))
        }
    })
    .await
}

/// Seed 001's Deployment with its label value set to `policy` (`auto` is the seed verbatim).
async fn run_seed_001(policy: &str, running_local: usize, running_virtual: usize) {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let local = start_local(&env);
    local.wait_ready(&env).await;
    let (virt, _registration) = start_virtual(&env, "cci").await;
    let text = SEED_001.replace(
        "virtual-kubelet.io/burst-to-cci: 'auto'",
        &format!("virtual-kubelet.io/burst-to-cci: '{policy}'"),
    );
    assert!(text.contains(&format!("'{policy}'")));
    let manifest = write_manifest(&env, "seed-001.yaml", &text);
    env.kubectl_ns(["apply", "-f", &manifest.to_string_lossy()])
        .await
        .assert_success();
    let pods = wait_split(&env, &local, &virt, running_local, running_virtual).await;

    let expected_size = check_json(&manifest, "cci")[0]["size"]
        .as_str()
        .map(str::to_string);
    assert_eq!(expected_size.as_deref(), Some("0.5_1"));
    for p in &pods {
        let decision = annotation(p, BURST_ANNOTATION).unwrap_or_default();
        assert!(
            decision.starts_with(&format!(
                "{policy} from Deployment test-vk virtual-kubelet.io/burst-to-cci"
            )),
            "{decision}"
        );
        if node_of(p).as_deref() == Some(virt.node.as_str()) {
            // The size the backend runs, recorded on the API pod: what `vkubelet check` prints.
            assert_eq!(annotation(p, SIZE_ANNOTATION), expected_size);
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let got = virt
                .wait_received(&uid, |r| {
                    r["resources"]["container-0"]
                        .is_object()
                        .then_some(())
                        .ok_or("no resources recorded".to_string())
                })
                .await;
            let res = &got["resources"]["container-0"];
            assert_eq!(res["limits"]["cpu"], res["requests"]["cpu"], "{res}");
            assert_eq!(res["limits"]["memory"], res["requests"]["memory"], "{res}");
        } else {
            assert_eq!(
                annotation(p, SIZE_ANNOTATION),
                None,
                "local pods are not sized"
            );
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn seed_001_auto_fills_local_then_bursts() {
    run_seed_001("auto", 2, 18).await;
}

#[tokio::test]
async fn seed_001_local_prefer_fills_local_then_bursts() {
    run_seed_001("localPrefer", 2, 18).await;
}

#[tokio::test]
async fn seed_001_enforce_runs_every_replica_virtual() {
    run_seed_001("enforce", 0, 20).await;
}

#[tokio::test]
async fn seed_001_off_never_bursts() {
    run_seed_001("off", 2, 0).await;
}

/// Seed 004's namespace label, seed 003's vendor taint value, an `enforce` pod that cannot
/// burst, and pod creation with the webhook down.
#[tokio::test]
async fn namespace_injection_refusals_and_webhook_down() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let (mut virt, _registration) = start_virtual(&env, "eci").await;
    let ns = env.namespace().to_string();

    // Seed 004: `kubectl label namespace vk virtual-node-affinity-injection=enabled` then
    // `kubectl -n vk run nginx --image nginx`.
    env.kubectl([
        "label",
        "namespace",
        &ns,
        "virtual-node-affinity-injection=enabled",
    ])
    .await
    .assert_success();
    env.kubectl_ns(["run", "nginx", "--image", "nginx"])
        .await
        .assert_success();
    let pods: Api<Pod> = env.api();
    let nginx = wait_for(WAIT, POLL, async || {
        let p = pods.get("nginx").await.map_err(|e| e.to_string())?;
        if phase(&p).as_deref() == Some("Running") {
            Ok(p)
        } else {
            Err(format!("{:?} on {:?}", phase(&p), node_of(&p)))
        }
    })
    .await;
    assert_eq!(node_of(&nginx).as_deref(), Some(virt.node.as_str()));
    assert_eq!(
        annotation(&nginx, BURST_ANNOTATION)
            .unwrap_or_default()
            .split(';')
            .next(),
        Some(format!("enforce from namespace {ns} virtual-node-affinity-injection").as_str())
    );
    // ECI's default size for a pod that asks for nothing.
    assert_eq!(annotation(&nginx, SIZE_ANNOTATION).as_deref(), Some("2_4"));

    // An enforced pod that cannot run on a virtual node is refused with every reason.
    let host_net = write_manifest(
        &env,
        "hostnet.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hostnet\nspec:\n  hostNetwork: true\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: logs, hostPath: {path: /var/log}}]\n",
    );
    let out = env
        .kubectl_ns(["apply", "-f", &host_net.to_string_lossy()])
        .await
        .assert_failure();
    assert!(out.stderr.contains("denied the request"), "{out}");
    assert!(out.stderr.contains("hostNetwork is not supported"), "{out}");
    assert!(out.stderr.contains("hostPath volume \"logs\""), "{out}");

    // With the webhook down, pods are still created (failurePolicy: Ignore), just not mutated.
    assert!(virt.terminate(), "vkubelet did not stop cleanly");
    env.kubectl_ns(["run", "after", "--image", "nginx"])
        .await
        .assert_success();
    let after = pods
        .get("after")
        .await
        .expect("pod created without the webhook");
    assert_eq!(annotation(&after, BURST_ANNOTATION), None);
    env.cleanup().await;
}

/// Seed 003's pod: nodeSelector `type: virtual-kubelet` and a toleration `Equal` to the vendor's
/// taint value, on a node started with `--taint-value ucloud` and the Cube profile.
#[tokio::test]
async fn seed_003_vendor_taint_value_and_cube_flavour() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let virt = Vk::start_node(
        &env,
        "vk",
        json!({"capacity": {"cpu": "100", "memory": "400Gi", "pods": "1000"}}),
        &["--sizing-profile", "cube", "--taint-value", "ucloud"],
    );
    let node = virt.wait_ready(&env).await;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "virtual-kubelet.io/provider"
            && t.value.as_deref() == Some("ucloud")
            && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    let cap = node.status.and_then(|s| s.capacity).unwrap_or_default();
    assert_eq!(
        cap.get("pods").map(|q| q.0.as_str()),
        Some("200"),
        "Cube: 200 pods per node"
    );
    let manifest = write_manifest(&env, "seed-003.yaml", SEED_003);
    env.kubectl_ns(["apply", "-f", &manifest.to_string_lossy()])
        .await
        .assert_success();
    let pod = common::wait_pod_phase(&env, "nginx", "Running").await;
    assert_eq!(node_of(&pod).as_deref(), Some(virt.node.as_str()));
    assert_eq!(annotation(&pod, SIZE_ANNOTATION).as_deref(), Some("2_2"));

    // A size no Cube flavour holds fails on the node with the reason and the rule quoted.
    let big = SEED_003
        .replace("name: nginx", "name: too-big")
        .replace("cpu: \"2\"", "cpu: \"16\"");
    assert!(big.contains("cpu: \"16\""));
    let manifest = write_manifest(&env, "too-big.yaml", &big);
    env.kubectl_ns(["apply", "-f", &manifest.to_string_lossy()])
        .await
        .assert_success();
    let failed = common::wait_pod_phase(&env, "too-big", "Failed").await;
    assert_eq!(
        failed.status.and_then(|s| s.reason).as_deref(),
        Some("ResourceNormalizationFailed")
    );
    let event = common::wait_event(&env, "too-big", "ResourceNormalizationFailed").await;
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("profile cube"),
        "{event:?}"
    );
    env.cleanup().await;
}
