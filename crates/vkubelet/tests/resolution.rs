//! End-to-end: what the backend receives for a pod — env, volume contents, service-account
//! tokens, registry credentials — resolved by vkubelet from the real control plane, as the sim
//! provider records it.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{POLL, Vk, WAIT, events_for, pod_with, wait_event, wait_pod_phase};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vk_testkit::{TestEnv, wait_for};

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().expect("uid")
}

/// The ordered env of `container` as the backend received it.
fn env_of(received: &Value, container: &str) -> Vec<(String, String)> {
    received["env"][container]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap_or_default().to_string(),
                        p[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn file<'a>(received: &'a Value, volume: &str, path: &str) -> &'a Value {
    &received["volumes"][volume]["files"]["files"][path]
}

fn file_text(received: &Value, volume: &str, path: &str) -> String {
    file(received, volume, path)[1]
        .as_str()
        .unwrap_or("<absent>")
        .to_string()
}

async fn create_from_json<K>(env: &TestEnv, v: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    env.create(&serde_json::from_value::<K>(v).expect("object from json"))
        .await
}

async fn waiting_reason(env: &TestEnv, name: &str) -> Option<(String, String)> {
    let pods: Api<Pod> = env.api();
    let p = pods.get(name).await.ok()?;
    let w = p
        .status?
        .container_statuses?
        .first()?
        .state
        .clone()?
        .waiting?;
    Some((w.reason?, w.message.unwrap_or_default()))
}

#[tokio::test]
async fn env_is_resolved_in_declared_order_with_kubernetes_semantics() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(
        &env,
        json!({ "capacity": { "cpu": "48", "memory": "64Gi" } }),
    );
    vk.wait_ready(&env).await;
    create_from_json::<ConfigMap>(
        &env,
        json!({"metadata": {"name": "app-config"},
               "data": {"mode": "fast", "LEVEL": "debug", "1invalid": "x"}}),
    )
    .await;
    create_from_json::<Secret>(
        &env,
        json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}),
    )
    .await;
    create_from_json::<Service>(
        &env,
        json!({"metadata": {"name": "my-db"},
               "spec": {"ports": [{"name": "pg", "port": 5432}]}}),
    )
    .await;

    let pod = pod_with(
        &vk,
        "env",
        json!({
            "command": ["sh", "-c", "echo $(GREETING) $(POD_IP)"],
            "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
            "envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"},
                        {"configMapRef": {"name": "app-config"}}],
            "env": [
                {"name": "Z_FIRST", "value": "z"},
                {"name": "GREETING", "value": "hello $(Z_FIRST) $$(Z_FIRST) $(LATER)"},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "mode"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "LATER", "value": "late"},
                {"name": "LEVEL", "value": "override"}
            ]
        }),
        json!({"metadata": {}}),
    );
    let mut pod = pod;
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("app".into(), "shop".into());
    let pod = env.create(&pod).await;
    wait_pod_phase(&env, "env", "Running").await;
    let r = vk.wait_received(&uid(&pod), |_| Ok(())).await;
    let got = env_of(&r, "main");
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();

    // envFrom first (keys sorted within a source, invalid names skipped), then env in order; a
    // redefinition takes its own place; service links last.
    let explicit: Vec<&str> = names
        .iter()
        .copied()
        .take_while(|n| !n.ends_with("_SERVICE_HOST") && !n.contains("_PORT"))
        .collect();
    assert_eq!(
        explicit,
        [
            "CFG_1invalid",
            "CFG_LEVEL",
            "CFG_mode",
            "mode",
            "Z_FIRST",
            "GREETING",
            "MODE",
            "PASSWORD",
            "POD_NAME",
            "POD_NS",
            "POD_UID",
            "APP",
            "NODE",
            "SA",
            "POD_IP",
            "HOST_IP",
            "MEM_MI",
            "CPU_REQ_M",
            "CPU_LIMIT",
            "LATER",
            "LEVEL",
        ],
        "{got:?}"
    );
    let value = |k: &str| {
        got.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing from {got:?}"))
    };
    assert_eq!(value("GREETING"), "hello z $(Z_FIRST) $(LATER)");
    assert_eq!(value("MODE"), "fast");
    assert_eq!(value("PASSWORD"), "hunter2");
    assert_eq!(value("POD_NAME"), "env");
    assert_eq!(value("POD_NS"), env.namespace());
    assert_eq!(value("POD_UID"), uid(&pod));
    assert_eq!(value("APP"), "shop");
    assert_eq!(value("NODE"), vk.node);
    assert_eq!(value("SA"), "default");
    assert_eq!(value("POD_IP"), "127.0.0.1");
    assert_eq!(value("HOST_IP"), "127.0.0.1");
    assert_eq!(value("MEM_MI"), "256");
    assert_eq!(value("CPU_REQ_M"), "250");
    assert_eq!(
        value("CPU_LIMIT"),
        "48",
        "no cpu limit: the node's allocatable"
    );
    assert_eq!(value("LEVEL"), "override");
    assert!(!names.contains(&"OPTIONAL"));
    // "1invalid" is a valid name only with the prefix.
    assert_eq!(value("CFG_1invalid"), "x");
    assert!(!names.contains(&"1invalid"));
    // Service links: this namespace's Service and the API server's own.
    assert_eq!(value("MY_DB_SERVICE_PORT"), "5432");
    assert_eq!(value("MY_DB_SERVICE_PORT_PG"), "5432");
    assert!(value("MY_DB_PORT").starts_with("tcp://10.0.0."));
    assert_eq!(value("KUBERNETES_SERVICE_PORT"), "443");
    // Commands are expanded against the final env; pod addresses are late-bound.
    assert_eq!(
        r["command"]["main"],
        json!(["sh", "-c", "echo hello z $(Z_FIRST) $(LATER) 127.0.0.1"])
    );

    let warning = wait_event(&env, "env", "InvalidEnvironmentVariableNames").await;
    assert_eq!(
        warning.message.as_deref(),
        Some(
            format!(
                "Keys [1invalid] from the EnvFrom configmap {}/app-config were skipped since they are considered invalid environment variable names.",
                env.namespace()
            )
            .as_str()
        )
    );

    // enableServiceLinks: false drops the namespace's Services but keeps the API server's.
    let quiet = pod_with(
        &vk,
        "no-links",
        json!({}),
        json!({"enableServiceLinks": false}),
    );
    let quiet = env.create(&quiet).await;
    let r = vk.wait_received(&uid(&quiet), |_| Ok(())).await;
    let names: Vec<String> = env_of(&r, "main").into_iter().map(|(k, _)| k).collect();
    assert!(
        names.iter().any(|n| n == "KUBERNETES_SERVICE_HOST"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("MY_DB_")), "{names:?}");
}

#[tokio::test]
async fn volumes_tokens_and_downward_api_reach_the_backend() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    create_from_json::<ConfigMap>(
        &env,
        json!({"metadata": {"name": "web"},
               "data": {"index.html": "<h1>hi</h1>", "nginx.conf": "listen 80;"},
               "binaryData": {"logo.bin": "AAEC"}}),
    )
    .await;
    create_from_json::<Secret>(
        &env,
        json!({"metadata": {"name": "tls"}, "stringData": {"tls.key": "KEY", "tls.crt": "CRT"}}),
    )
    .await;
    let pod = pod_with(
        &vk,
        "vols",
        json!({"resources": {"limits": {"memory": "64Mi"}}}),
        json!({"volumes": [
            {"name": "site", "configMap": {"name": "web", "defaultMode": 0o440,
                "items": [{"key": "index.html", "path": "html/index.html"},
                          {"key": "logo.bin", "path": "logo.bin", "mode": 0o400}]}},
            {"name": "whole", "configMap": {"name": "web"}},
            {"name": "certs", "secret": {"secretName": "tls"}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}]}},
            {"name": "vault", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "token"}},
                {"configMap": {"name": "web", "items": [{"key": "nginx.conf", "path": "nginx.conf"}]}},
                {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "data", "nfs": {"server": "nfs.example.invalid", "path": "/exports"}}
        ]}),
    );
    let mut pod = pod;
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "web".into());
    let pod = env.create(&pod).await;
    wait_pod_phase(&env, "vols", "Running").await;
    let r = vk.wait_received(&uid(&pod), |_| Ok(())).await;

    assert_eq!(
        file(&r, "site", "html/index.html"),
        &json!([0o440, "<h1>hi</h1>"])
    );
    assert_eq!(
        file(&r, "site", "logo.bin"),
        &json!([0o400, "\u{0}\u{1}\u{2}"])
    );
    assert!(
        file(&r, "site", "nginx.conf").is_null(),
        "items select keys"
    );
    assert_eq!(
        file(&r, "whole", "nginx.conf"),
        &json!([0o644, "listen 80;"])
    );
    assert_eq!(file_text(&r, "certs", "tls.key"), "KEY");
    assert_eq!(file_text(&r, "info", "labels"), "tier=\"web\"");
    assert_eq!(file_text(&r, "info", "mem"), "64");
    assert_eq!(file_text(&r, "vault", "nginx.conf"), "listen 80;");
    assert_eq!(file_text(&r, "vault", "ns"), env.namespace());
    assert_eq!(
        r["volumes"]["scratch"],
        json!({"emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}})
    );
    assert_eq!(r["volumes"]["data"], json!("passthrough"));

    // The projected token is a real bound token for the audience, minted by TokenRequest.
    let token = file_text(&r, "vault", "token");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let reviews: Api<TokenReview> = Api::all(env.client());
    let review = reviews
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token,
                    audiences: Some(vec!["vault".into()]),
                },
                ..Default::default()
            },
        )
        .await
        .expect("token review");
    let status = review.status.expect("review status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:default", env.namespace()).as_str())
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["vols".to_string()]),
        "bound to the pod: {extra:?}"
    );

    // The 1.20 API server mounts the service account as a Secret volume: resolved as such.
    let legacy = r["volumes"]
        .as_object()
        .expect("volumes")
        .iter()
        .find(|(name, _)| name.starts_with("default-token-"))
        .map(|(_, v)| v.clone())
        .expect("the API server's service-account volume");
    assert_eq!(legacy["files"]["kind"], json!("serviceAccountTokenSecret"));
    let files = legacy["files"]["files"].as_object().expect("files");
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(names, ["ca.crt", "namespace", "token"]);
    assert_eq!(files["namespace"][1], json!(env.namespace()));
}

#[tokio::test]
async fn missing_reference_keeps_the_pod_waiting_until_it_is_created() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    let env_pod = pod_with(
        &vk,
        "needs-env",
        json!({"env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}}]}),
        json!({}),
    );
    let env_pod = env.create(&env_pod).await;
    let vol_pod = pod_with(
        &vk,
        "needs-volume",
        json!({}),
        json!({"volumes": [{"name": "creds", "secret": {"secretName": "late-secret"}}]}),
    );
    let vol_pod = env.create(&vol_pod).await;

    let (reason, message) = wait_for(WAIT, POLL, async || {
        waiting_reason(&env, "needs-env")
            .await
            .ok_or("no waiting container yet")
    })
    .await;
    assert_eq!(reason, "CreateContainerConfigError");
    assert_eq!(message, "configmap \"late\" not found");
    let ev = wait_event(&env, "needs-env", "Failed").await;
    assert_eq!(
        ev.message.as_deref(),
        Some("Error: configmap \"late\" not found")
    );
    let ev = wait_event(&env, "needs-volume", "FailedMount").await;
    assert_eq!(
        ev.message.as_deref(),
        Some("MountVolume.SetUp failed for volume \"creds\" : secret \"late-secret\" not found")
    );
    let (reason, _) = waiting_reason(&env, "needs-volume").await.expect("waiting");
    assert_eq!(reason, "CreateContainerConfigError");
    let pods: Api<Pod> = env.api();
    let p = pods.get("needs-env").await.expect("pod");
    assert_eq!(common::phase(&p).as_deref(), Some("Pending"));
    assert!(
        vk.received(&uid(&env_pod)).is_none(),
        "nothing reached the backend"
    );

    // A key that is still missing gets the kubelet's key message.
    create_from_json::<ConfigMap>(
        &env,
        json!({"metadata": {"name": "late"}, "data": {"other": "x"}}),
    )
    .await;
    wait_for(WAIT, POLL, async || {
        match waiting_reason(&env, "needs-env").await {
            Some((_, m))
                if m == format!("couldn't find key k in ConfigMap {}/late", env.namespace()) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Once the objects exist, the pods start without waiting out a long backoff.
    let cms: Api<ConfigMap> = env.api();
    cms.patch(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .expect("patch");
    create_from_json::<Secret>(
        &env,
        json!({"metadata": {"name": "late-secret"}, "stringData": {"a": "b"}}),
    )
    .await;
    wait_pod_phase(&env, "needs-env", "Running").await;
    wait_pod_phase(&env, "needs-volume", "Running").await;
    let r = vk.wait_received(&uid(&env_pod), |_| Ok(())).await;
    assert!(env_of(&r, "main").contains(&("K".into(), "v".into())));
    let r = vk.wait_received(&uid(&vol_pod), |_| Ok(())).await;
    assert_eq!(file_text(&r, "creds", "a"), "b");
}

#[tokio::test]
async fn config_map_and_secret_updates_reach_running_volumes_but_not_env() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    create_from_json::<ConfigMap>(
        &env,
        json!({"metadata": {"name": "live"}, "data": {"v": "1"}}),
    )
    .await;
    create_from_json::<Secret>(
        &env,
        json!({"metadata": {"name": "live"}, "stringData": {"s": "a"}}),
    )
    .await;
    let pod = pod_with(
        &vk,
        "watcher",
        json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "live", "key": "v"}}}]}),
        json!({"volumes": [
            {"name": "cfg", "configMap": {"name": "live"}},
            {"name": "sec", "projected": {"sources": [{"secret": {"name": "live"}}]}}
        ]}),
    );
    let pod = env.create(&pod).await;
    wait_pod_phase(&env, "watcher", "Running").await;
    let uid = uid(&pod);
    vk.wait_received(&uid, |r| {
        (file_text(r, "cfg", "v") == "1")
            .then_some(())
            .ok_or("no content".into())
    })
    .await;

    let cms: Api<ConfigMap> = env.api();
    cms.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2", "new": "n"}})),
    )
    .await
    .expect("patch configmap");
    let r = vk
        .wait_received(&uid, |r| {
            if file_text(r, "cfg", "v") == "2" && file_text(r, "cfg", "new") == "n" {
                Ok(())
            } else {
                Err(format!("volumes: {}", r["volumes"]["cfg"]))
            }
        })
        .await;
    assert!(r["volumeUpdates"].as_u64() >= Some(1));
    assert!(
        env_of(&r, "main").contains(&("V".into(), "1".into())),
        "env of a running pod does not change"
    );

    let secrets: Api<Secret> = env.api();
    secrets
        .patch(
            "live",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"s": "b"}})),
        )
        .await
        .expect("patch secret");
    vk.wait_received(&uid, |r| {
        (file_text(r, "sec", "s") == "b")
            .then_some(())
            .ok_or(format!("volumes: {}", r["volumes"]["sec"]))
    })
    .await;
}

#[tokio::test]
async fn after_a_restart_adopted_pods_still_get_volume_updates() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    create_from_json::<ConfigMap>(
        &env,
        json!({"metadata": {"name": "cfg"}, "data": {"v": "1"}}),
    )
    .await;
    let pod = pod_with(
        &vk,
        "adopted",
        json!({}),
        json!({"volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}),
    );
    let pod = env.create(&pod).await;
    wait_pod_phase(&env, "adopted", "Running").await;
    let uid = uid(&pod);
    vk.wait_received(&uid, |r| {
        (file_text(r, "cfg", "v") == "1")
            .then_some(())
            .ok_or("no content".into())
    })
    .await;

    vk.kill9();
    vk.resume();
    vk.wait_ready(&env).await;
    // The restarted process adopts the pod (same backend instance) and watches its ConfigMap.
    let cms: Api<ConfigMap> = env.api();
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch");
    vk.wait_received(&uid, |r| {
        (file_text(r, "cfg", "v") == "2")
            .then_some(())
            .ok_or(format!("backend has {}", r["volumes"]["cfg"]))
    })
    .await;
    assert_eq!(vk.backend_creates(), vec![uid], "adopted, not re-created");
}

#[tokio::test]
async fn image_pull_secrets_of_pod_and_service_account_become_credentials() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({}));
    vk.wait_ready(&env).await;
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let config_json = json!({"auths": {"registry.example.com": {"auth": b64("alice:pw1")}}});
    create_from_json::<Secret>(
        &env,
        json!({"metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
               "stringData": {".dockerconfigjson": config_json.to_string()}}),
    )
    .await;
    let legacy = json!({"https://index.docker.io/v1/": {"username": "bob", "password": "pw2"}});
    create_from_json::<Secret>(
        &env,
        json!({"metadata": {"name": "legacy"}, "type": "kubernetes.io/dockercfg",
               "stringData": {".dockercfg": legacy.to_string()}}),
    )
    .await;
    create_from_json::<ServiceAccount>(
        &env,
        json!({"metadata": {"name": "puller"},
               "imagePullSecrets": [{"name": "legacy"}, {"name": "gone"}]}),
    )
    .await;
    let pod = pod_with(
        &vk,
        "pull",
        json!({}),
        json!({"serviceAccountName": "puller", "imagePullSecrets": [{"name": "regcred"}]}),
    );
    let pod = env.create(&pod).await;
    wait_pod_phase(&env, "pull", "Running").await;
    let r = vk.wait_received(&uid(&pod), |_| Ok(())).await;
    assert_eq!(
        r["registryCredentials"],
        json!([
            {"registry": "registry.example.com", "username": "alice", "password": "pw1", "secret": "regcred"},
            {"registry": "https://index.docker.io/v1/", "username": "bob", "password": "pw2", "secret": "legacy"}
        ])
    );
    let ev = wait_event(&env, "pull", "FailedToRetrieveImagePullSecret").await;
    assert_eq!(
        ev.message.as_deref(),
        Some(
            format!(
                "Unable to retrieve some image pull secrets ({}/gone); attempting to pull the image may not succeed.",
                env.namespace()
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn oversized_volume_data_fails_the_pod_with_a_clear_reason() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = Vk::start(&env, json!({ "maxVolumeBytes": 1024 }));
    vk.wait_ready(&env).await;
    create_from_json::<ConfigMap>(
        &env,
        json!({"metadata": {"name": "big"}, "data": {"blob": "x".repeat(4096)}}),
    )
    .await;
    let pod = pod_with(
        &vk,
        "big",
        json!({}),
        json!({"automountServiceAccountToken": false,
               "volumes": [{"name": "blob", "configMap": {"name": "big"}}]}),
    );
    let pod = env.create(&pod).await;
    let failed = wait_pod_phase(&env, "big", "Failed").await;
    let status = failed.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("VolumeDataTooLarge"));
    assert_eq!(
        status.message.as_deref(),
        Some(
            "the pod's ConfigMap, Secret and downward API volumes hold 4096 bytes, more than the 1024 bytes this backend accepts"
        )
    );
    let evs = events_for(&env, "big").await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("VolumeDataTooLarge")),
        "{evs:?}"
    );
    assert!(vk.received(&uid(&pod)).is_none());
}
