//! The kube provider end to end, cluster → cluster: a source control plane (A, the usual test
//! cluster) whose virtual node bursts into a second, real control plane (B,
//! `VKUBELET_TEST_BACKEND_KUBECONFIG`), where a second vkubelet on the `process` provider runs
//! the pods for real. So `kubectl exec` travels A's API server → vkubelet-A → B's API server →
//! vkubelet-B → the process.
//!
//! Each test has its own managed namespace on B (its own cluster id) and its own vkubelet-B
//! node, which the backend pods are pinned to (the provider's `nodeSelector`/`tolerations`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{POLL, Vk, WAIT, backend_cluster, ha_args, phase, wait_event, wait_running};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Volume, VolumeMount};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use vk_testkit::{TestEnv, wait_for};

/// Fields drop in order: vkubelet-A first (its cleanup empties B), then vkubelet-B (whose
/// cleanup stops the processes), then the namespaces.
struct Burst {
    /// The virtual node on A with the kube provider.
    va: Vk,
    /// Runs the backend's pods (on B).
    vb: Vk,
    a: TestEnv,
    b: TestEnv,
    managed: String,
}

impl Burst {
    async fn start() -> Option<Self> {
        Self::start_with(async |_, _| json!({})).await
    }

    /// Like `start`, with `settings(a, b)` merged over the provider config (a `null` removes a
    /// key); it runs before vkubelet-A starts, so it may prepare objects the config names.
    async fn start_with(
        settings: impl AsyncFnOnce(&TestEnv, &TestEnv) -> serde_json::Value,
    ) -> Option<Self> {
        Self::start_with_args(settings, |_| Vec::new()).await
    }

    /// Like `start_with`, with vkubelet-A's extra command-line arguments made from A's test
    /// environment.
    async fn start_with_args(
        settings: impl AsyncFnOnce(&TestEnv, &TestEnv) -> serde_json::Value,
        args: impl FnOnce(&TestEnv) -> Vec<String>,
    ) -> Option<Self> {
        let a = vk_testkit::env().await?;
        let b = backend_cluster().await?.namespace("kube-backend").await;
        let vb = Vk::start_process(&b, json!({}), &[]);
        vb.wait_ready(&b).await;
        let cluster_id = a.namespace().to_string();
        let managed = vk_provider_kube::managed_namespace_name(&cluster_id);
        let mut cfg = json!({
            "kubeconfig": b.kubeconfig_path(),
            "clusterID": cluster_id,
            "nodeSelector": {"kubernetes.io/hostname": vb.node},
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
        });
        if let serde_json::Value::Object(extra) = settings(&a, &b).await {
            for (k, v) in extra {
                if v.is_null() {
                    cfg.as_object_mut().expect("object").remove(&k);
                } else {
                    cfg[k] = v;
                }
            }
        }
        let args = args(&a);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let va = Vk::start_kube(&a, cfg, &args);
        va.wait_ready(&a).await;
        Some(Self {
            va,
            vb,
            a,
            b,
            managed,
        })
    }

    fn backend_pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.b.client(), &self.managed)
    }

    async fn backend_pods(&self) -> Vec<Pod> {
        self.backend_pods_api()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// A pod for the virtual node on A that runs for real on B.
    fn pod(&self, name: &str, script: &str) -> vk_testkit::PodBuilder {
        // `exec sleep` is PID 1 of its sandbox and ignores SIGTERM: keep the kill near.
        self.va
            .pod(name)
            .command(["sh", "-c", script])
            .termination_grace_period_seconds(2)
    }
}

fn uid(p: &impl kube::Resource) -> String {
    p.meta().uid.clone().unwrap_or_default()
}

/// Selects the backend objects of source pod `p` (by its UID label).
fn of_source_pod(p: &Pod) -> ListParams {
    ListParams::default().labels(&format!(
        "{}={}",
        vk_provider_kube::identity::SOURCE_UID_LABEL,
        uid(p)
    ))
}

fn source_uid(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("vkubelet.io/pod-uid"))
        .cloned()
        .unwrap_or_default()
}

/// Wait until B holds exactly the backend pods of `sources` (by source UID), all Running.
async fn wait_backend_running(t: &Burst, sources: &BTreeSet<String>) -> Vec<Pod> {
    wait_for(WAIT, POLL, async || {
        let pods = t.backend_pods().await;
        let got: BTreeSet<String> = pods.iter().map(source_uid).collect();
        let running = pods
            .iter()
            .filter(|p| phase(p).as_deref() == Some("Running"))
            .count();
        if &got == sources && pods.len() == sources.len() && running == pods.len() {
            Ok(pods)
        } else {
            Err(format!(
                "{} backend pods ({running} running) for {} sources",
                pods.len(),
                sources.len()
            ))
        }
    })
    .await
}

#[tokio::test]
async fn deployment_bursts_into_the_backend_with_env_volumes_logs_exec_and_cleanup_on_delete() {
    let Some(t) = Burst::start().await else {
        return;
    };
    let secret_value = format!("s3cr3t-{}", t.a.namespace());
    t.a.create(
        &serde_json::from_value::<Secret>(json!({
            "metadata": {"name": "creds"},
            "stringData": {"password": secret_value},
        }))
        .expect("secret"),
    )
    .await;
    t.a.create(
        &serde_json::from_value::<ConfigMap>(json!({
            "metadata": {"name": "conf"},
            "data": {"greeting": "hello from A"},
        }))
        .expect("configmap"),
    )
    .await;
    let template = common::pod_with(
        &t.va,
        "web",
        json!({
            "command": ["sh", "-c", "echo started-$POD_NAME; exec sleep 3600"],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            "volumeMounts": [
                {"name": "conf", "mountPath": "/etc/conf"},
                {"name": "creds", "mountPath": "/etc/creds"},
            ],
        }),
        json!({
            "terminationGracePeriodSeconds": 2,
            "volumes": [
                {"name": "conf", "configMap": {"name": "conf"}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            ],
        }),
    );
    let mut spec = serde_json::to_value(&template).expect("pod json");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": spec["spec"].take(),
            },
        },
    }))
    .expect("deployment");
    t.a.create(&dep).await;
    let pods = wait_running(&t.a, "app=web", 3).await;
    let sources: BTreeSet<String> = pods.iter().map(uid).collect();
    let backend = wait_backend_running(&t, &sources).await;
    assert!(
        backend
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                == Some(t.vb.node.as_str())),
        "backend pods run where the provider's nodeSelector sends them"
    );

    // Nothing of ours outside the managed namespace on B.
    let everywhere: Api<Pod> = Api::all(t.b.client());
    let ours = everywhere
        .list(&ListParams::default().labels(&format!("vkubelet.io/cluster-id={}", t.a.namespace())))
        .await
        .expect("list B");
    assert!(
        ours.items
            .iter()
            .all(|p| p.metadata.namespace.as_deref() == Some(t.managed.as_str())),
        "backend pods outside {}",
        t.managed
    );
    assert_eq!(ours.items.len(), 3);

    // The source pods report the backend's pod IPs; the host is the virtual node.
    for p in &pods {
        let s = p.status.clone().unwrap_or_default();
        let b = backend
            .iter()
            .find(|b| source_uid(b) == uid(p))
            .expect("backend pod for source");
        assert_eq!(
            s.pod_ip,
            b.status.as_ref().and_then(|s| s.pod_ip.clone()),
            "pod IP is the backend's"
        );
    }

    // Env and volume contents, seen from inside the container through kubectl on A.
    let name = pods[0].metadata.name.clone().expect("name");
    // The backend's own events about the pod (B's kubelet started the container) show on A.
    let started = wait_event(&t.a, &name, "Started").await;
    assert_eq!(
        started.message.as_deref(),
        Some("Started container main"),
        "re-emitted from B"
    );
    let out = t
        .a
        .kubectl_ns([
            "exec",
            &name,
            "--",
            "sh",
            "-c",
            "echo \"$GREETING|$PASSWORD|$POD_NAME\"; cat /etc/conf/greeting; echo; cat /etc/creds/password; echo; stat -L -c %a /etc/creds/password",
        ])
        .await
        .assert_success();
    let lines: Vec<&str> = out.stdout_lines();
    assert_eq!(
        lines[0],
        format!("hello from A|{secret_value}|{name}"),
        "{out}"
    );
    assert_eq!(lines[1], "hello from A", "{out}");
    assert_eq!(lines[2], secret_value, "{out}");
    assert_eq!(lines[3], "400", "mode kept: {out}");
    // Exit codes travel back.
    let out =
        t.a.kubectl_ns(["exec", &name, "--", "sh", "-c", "exit 7"])
            .await;
    assert_eq!(out.status.code(), Some(7), "{out}");
    // Stats: A's node summary carries the pod, measured by B's kubelet.
    let raw =
        t.a.kubectl([
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/stats/summary", t.va.node),
        ])
        .await
        .assert_success();
    let summary: serde_json::Value = serde_json::from_str(&raw.stdout).expect("summary json");
    let ours = summary["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("{name} missing from A's node summary: {summary}"));
    let memory = &ours["containers"][0]["memory"];
    assert!(
        memory["rssBytes"].as_u64().unwrap_or(0) > 0
            || memory["workingSetBytes"].as_u64().unwrap_or(0) > 0,
        "memory measured on B: {ours}"
    );
    // `/metrics/resource` (what metrics-server and `kubectl top` read) from the same numbers.
    let metrics =
        t.a.kubectl([
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/metrics/resource", t.va.node),
        ])
        .await
        .assert_success();
    let series = format!(
        r#"container_memory_working_set_bytes{{container="main",namespace="{}",pod="{name}"}} "#,
        t.a.namespace()
    );
    assert!(
        metrics.stdout.lines().any(|l| l.starts_with(&series)),
        "{series} missing:\n{}",
        metrics.stdout
    );
    // Logs.
    let out = t.a.kubectl_ns(["logs", &name]).await.assert_success();
    assert!(out.stdout.contains(&format!("started-{name}")), "{out}");

    // A ConfigMap update on A reaches the running container's volume on B.
    let cms: Api<ConfigMap> = t.a.api();
    cms.patch(
        "conf",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"greeting": "updated on A"}})),
    )
    .await
    .expect("update configmap");
    wait_for(WAIT, POLL, async || {
        let out =
            t.a.kubectl_ns(["exec", &name, "--", "cat", "/etc/conf/greeting"])
                .await;
        if out.stdout.trim() == "updated on A" {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;

    // No Secret value in clear on B.
    let yaml =
        t.b.kubectl(["get", "pods", "-n", &t.managed, "-o", "yaml"])
            .await
            .assert_success();
    assert!(
        !yaml.stdout.contains(&secret_value),
        "secret in a backend pod spec"
    );

    // Each backend pod has one per-pod Secret (env, the configMap and secret volumes and the
    // service-account token volume), owned by it, and no ConfigMap.
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=vkubelet");
    let per_pod_cms: Api<ConfigMap> = Api::namespaced(t.b.client(), &t.managed);
    let per_pod_secrets: Api<Secret> = Api::namespaced(t.b.client(), &t.managed);
    let cms = per_pod_cms
        .list(&ours)
        .await
        .expect("list B configmaps")
        .items;
    let secrets = per_pod_secrets
        .list(&ours)
        .await
        .expect("list B secrets")
        .items;
    assert_eq!(cms.len(), 0, "no per-pod ConfigMap");
    assert_eq!(secrets.len(), 3, "one per-pod Secret per pod");
    let backend_uids: BTreeSet<String> = backend.iter().map(uid).collect();
    let owners: BTreeSet<String> = secrets
        .iter()
        .map(|s| {
            let owners = s.metadata.owner_references.iter().flatten();
            let [owner] = owners.collect::<Vec<_>>()[..] else {
                panic!("one owner expected: {:?}", s.metadata);
            };
            owner.uid.clone()
        })
        .collect();
    assert_eq!(owners, backend_uids, "each owned by its backend pod");

    // Delete on A → gone on B, with the per-pod objects (the backend's garbage collector).
    let deps: Api<Deployment> = t.a.api();
    deps.delete("web", &DeleteParams::foreground())
        .await
        .expect("delete deployment");
    wait_for(WAIT, POLL, async || {
        let left = t.backend_pods().await.len();
        let ours = ListParams::default().labels("app.kubernetes.io/managed-by=vkubelet");
        let secrets: Api<Secret> = Api::namespaced(t.b.client(), &t.managed);
        let config_maps: Api<ConfigMap> = Api::namespaced(t.b.client(), &t.managed);
        let secrets = secrets
            .list(&ours)
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        let config_maps = config_maps
            .list(&ours)
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        if left == 0 && secrets == 0 && config_maps == 0 {
            Ok(())
        } else {
            Err(format!(
                "{left} pods, {secrets} per-pod Secrets, {config_maps} per-pod ConfigMaps left on B"
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn a_backend_pod_deleted_by_hand_follows_the_restart_policy() {
    let Some(t) = Burst::start().await else {
        return;
    };
    let pod = t.pod("lost", "exec sleep 3600").build();
    t.a.create(&pod).await;
    let running = common::wait_pod_phase(&t.a, "lost", "Running").await;
    let sources: BTreeSet<String> = [uid(&running)].into();
    let backend = wait_backend_running(&t, &sources).await;
    let backend_name = backend[0].metadata.name.clone().expect("name");
    let first_backend_uid = uid(&backend[0]);
    t.b.kubectl([
        "delete",
        "pod",
        "-n",
        &t.managed,
        &backend_name,
        "--wait=true",
    ])
    .await
    .assert_success();
    wait_event(&t.a, "lost", "ProviderPodLost").await;
    // restartPolicy Always: a new backend instance, and the restart is counted.
    let pods: Api<Pod> = t.a.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("lost").await.map_err(|e| e.to_string())?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        let b = t.backend_pods().await;
        let replaced = b.len() == 1
            && uid(&b[0]) != first_backend_uid
            && phase(&b[0]).as_deref() == Some("Running");
        if phase(&p).as_deref() == Some("Running") && restarts >= 1 && replaced {
            Ok(())
        } else {
            Err(format!(
                "phase {:?}, restarts {restarts}, backend {}",
                phase(&p),
                b.len()
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn kill9_mid_burst_never_duplicates_a_backend_pod() {
    let Some(mut t) = Burst::start().await else {
        return;
    };
    let template = serde_json::to_value(t.pod("burst", "exec sleep 3600").build()).expect("json");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "burst"},
        "spec": {
            "replicas": 60,
            "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}}, "spec": template["spec"]},
        },
    }))
    .expect("deployment");
    t.a.create(&dep).await;
    // Kill vkubelet-A once some backend pods exist, before all do.
    let at_kill = wait_for(WAIT, Duration::from_millis(20), async || {
        let n = t.backend_pods().await.len();
        if n >= 1 { Ok(n) } else { Err(n) }
    })
    .await;
    t.va.kill9();
    assert!(
        at_kill < 60,
        "not mid-burst: {at_kill} backend pods at the kill"
    );
    t.va.resume();
    let pods = wait_running(&t.a, "app=burst", 60).await;
    let sources: BTreeSet<String> = pods.iter().map(uid).collect();
    let backend = wait_backend_running(&t, &sources).await;
    assert_eq!(
        backend.len(),
        60,
        "one backend pod per source pod, no duplicate"
    );
}

#[tokio::test]
async fn cleanup_leaves_nothing_of_ours_and_touches_nothing_else() {
    let Some(mut t) = Burst::start().await else {
        return;
    };
    // Someone else's objects on B must survive.
    let bystander: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "bystander"},
        "data": {"k": "v"},
    }))
    .expect("cm");
    t.b.create(&bystander).await;
    let pod = t.pod("doomed", "exec sleep 3600").build();
    t.a.create(&pod).await;
    // A volume the backend cannot receive (the core lets NFS through; the kube provider has no
    // way to send it): refused with the reason and an event, nothing made on B.
    let claim = common::pod_with(
        &t.va,
        "claim",
        json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        json!({"volumes": [{"name": "data", "nfs": {"server": "127.0.0.1", "path": "/exports"}}]}),
    );
    t.a.create(&claim).await;
    let pods: Api<Pod> = t.a.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("claim").await.map_err(|e| e.to_string())?;
        let s = p.status.unwrap_or_default();
        if s.reason.as_deref() == Some("UnsupportedPodSpec")
            && s.message
                .as_deref()
                .is_some_and(|m| m.contains("volume \"data\" (nfs)"))
        {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", s.reason, s.message))
        }
    })
    .await;
    let refused = wait_event(&t.a, "claim", "ProviderCreateFailed").await;
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("(nfs) cannot be sent to the backend")),
        "{refused:?}"
    );
    common::wait_pod_phase(&t.a, "doomed", "Running").await;
    assert_eq!(
        t.backend_pods().await.len(),
        1,
        "nothing on B for the refused pod"
    );
    assert!(t.va.terminate(), "vkubelet-A did not stop cleanly");
    let out = t.va.cleanup_command().output().expect("run cleanup");
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 1 backend pod"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let namespaces: Api<Namespace> = Api::all(t.b.client());
    assert!(
        namespaces
            .get_opt(&t.managed)
            .await
            .expect("get ns")
            .is_none(),
        "the managed namespace is gone"
    );
    let cms: Api<ConfigMap> = t.b.api();
    assert!(cms.get_opt("bystander").await.expect("get").is_some());
    // Running it again is harmless.
    let again = t.va.cleanup_command().output().expect("run cleanup");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Runs its arguments (`kubectl exec -it ...`) on a pseudo-terminal of 31x97, waits for the
/// remote shell to see a terminal of that size, resizes to 42x111 and waits for the shell to see
/// that, then exits 6; prints everything the terminal showed and exits with kubectl's code
/// (90+ when something never showed up).
const TERMINAL: &str = r#"
import fcntl, os, pty, select, signal, struct, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
def resize(rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.kill(pid, signal.SIGWINCH)
shown = b""
def read(wait):
    global shown
    if select.select([fd], [], [], wait)[0]:
        try:
            shown += os.read(fd, 4096)
        except OSError:
            pass
def until(text, ask, code):
    end = time.time() + 60
    while text not in shown:
        if time.time() > end:
            sys.stderr.write("never saw %r: %r\n" % (text, shown))
            sys.exit(code)
        if ask:
            os.write(fd, ask)
        read(0.5)
resize(31, 97)
until(b"$ ", None, 90)
until(b"TTY-2-YES", b"test -t 0 && echo TTY-$((1+1))-YES\n", 91)
until(b"31 97", b"stty size\n", 92)
resize(42, 111)
until(b"42 111", b"stty size\n", 93)
os.write(fd, b"exit 6\n")
while True:
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    shown += data
_, status = os.waitpid(pid, 0)
sys.stdout.write(shown.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// `kubectl exec` (exit codes), `attach`, `port-forward` and `logs -f` on A reach the container
/// on B, with both kubectl generations (WebSocket and SPDY towards vkubelet-A).
#[tokio::test]
async fn streams_travel_through_the_backend_api() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let Some(t) = Burst::start().await else {
        return;
    };
    // The backend pods share B's host network (process provider): a free loopback port.
    let port = common::free_port();
    let web = t
        .pod(
            "web",
            &format!("exec python3 -m http.server {port} --bind 127.0.0.1"),
        )
        .build();
    t.a.create(&web).await;
    let ticker = t
        .pod(
            "ticker",
            "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
        )
        .build();
    t.a.create(&ticker).await;
    common::wait_pod_phase(&t.a, "web", "Running").await;
    common::wait_pod_phase(&t.a, "ticker", "Running").await;
    for (i, k) in common::kubectls().into_iter().enumerate() {
        // exec: arguments and the exit code.
        let (code, out, err) = k
            .run(
                &t.a,
                &["exec", "-i", "ticker", "--", "sh", "-c", "cat; exit 5"],
                b"through-b\n",
            )
            .await;
        assert_eq!(code, 5, "[{}] {out} {err}", k.label);
        assert_eq!(
            out.trim(),
            "through-b",
            "[{}] stdin reached the container",
            k.label
        );

        // exec -it: a terminal on B of the local size, resized, and the exit code back.
        let session = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(TERMINAL)
            .arg(&k.path)
            .arg("--kubeconfig")
            .arg(t.a.kubeconfig_path())
            .args(["-n", t.a.namespace(), "exec", "-it", "ticker", "--"])
            .args(["env", "PS1=$ ", "sh"])
            .kill_on_drop(true)
            .output();
        let session = tokio::time::timeout(Duration::from_secs(240), session)
            .await
            .unwrap_or_else(|_| panic!("[{}] the terminal session did not end", k.label))
            .expect("python3");
        assert_eq!(
            session.status.code(),
            Some(6),
            "[{}] {}\n{}",
            k.label,
            String::from_utf8_lossy(&session.stdout),
            String::from_utf8_lossy(&session.stderr)
        );

        // logs -f follows: lines written after the request arrive.
        let mut child = k
            .command(&t.a, &["logs", "-f", "--tail=1", "ticker"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl logs -f");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first: u64 = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("first log line")
            .expect("read")
            .and_then(|l| l.strip_prefix("tick-").and_then(|n| n.parse().ok()))
            .expect("a tick line");
        let later = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .expect("read")
                    .expect("stream ended");
                if let Some(n) = line
                    .strip_prefix("tick-")
                    .and_then(|n| n.parse::<u64>().ok())
                    && n >= first + 3
                {
                    return n;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("[{}] logs -f did not follow", k.label));
        assert!(later > first);
        child.kill().await.expect("kill logs");

        // attach: input in, output out.
        let name = format!("talk-{i}");
        let talk = common::pod_with(
            &t.va,
            &name,
            json!({"stdin": true, "command": ["sh", "-c", "while read l; do echo \"got $l\"; done"]}),
            json!({"terminationGracePeriodSeconds": 2}),
        );
        t.a.create(&talk).await;
        common::wait_pod_phase(&t.a, &name, "Running").await;
        let mut child = k
            .command(&t.a, &["attach", "-i", &name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl attach");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Input sent before the session is up would be lost by kubectl itself: keep sending
        // until an answer shows the session carries it.
        let answered = tokio::time::timeout(Duration::from_secs(60), async {
            let mut n = 0;
            loop {
                n += 1;
                stdin
                    .write_all(format!("hello-{n}\n").as_bytes())
                    .await
                    .expect("write");
                match tokio::time::timeout(Duration::from_secs(1), out.next_line()).await {
                    Ok(Ok(Some(line))) if line.starts_with("got hello-") => return line,
                    Ok(Ok(Some(_))) | Err(_) => continue,
                    Ok(other) => panic!("attach output ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("[{}] no answer through attach", k.label));
        assert!(answered.starts_with("got hello-"));
        child.kill().await.expect("kill attach");

        // port-forward carries HTTP, connection after connection.
        let mut child = k
            .command(
                &t.a,
                &[
                    "port-forward",
                    "--address",
                    "127.0.0.1",
                    "pod/web",
                    &format!(":{port}"),
                ],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let local: u16 = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read") {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return rest
                        .split_whitespace()
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("port");
                }
            }
            panic!("port-forward ended before forwarding");
        })
        .await
        .unwrap_or_else(|_| panic!("[{}] port-forward did not start", k.label));
        for _ in 0..3 {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .expect("connect");
            conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .expect("send");
            let mut response = String::new();
            tokio::time::timeout(Duration::from_secs(30), conn.read_to_string(&mut response))
                .await
                .unwrap_or_else(|_| panic!("[{}] no HTTP response", k.label))
                .expect("read");
            assert!(
                response.starts_with("HTTP/1.0 200"),
                "[{}] {response:?}",
                k.label
            );
        }
        child.kill().await.expect("kill port-forward");
    }
}

/// B's ResourceQuota used up: the next pod waits with `ProviderQuotaExceeded` and A's node gets
/// the sold-out taint; raising the quota brings both back.
#[tokio::test]
async fn backend_quota_exhausted_sells_the_node_out_until_raised() {
    use k8s_openapi::api::core::v1::{Node, ResourceQuota};
    let Some(t) = Burst::start().await else {
        return;
    };
    let quotas: Api<ResourceQuota> = Api::namespaced(t.b.client(), &t.managed);
    let quota = |pods: &str| -> ResourceQuota {
        serde_json::from_value(json!({
            "metadata": {"name": "burst"},
            "spec": {"hard": {"pods": pods}},
        }))
        .expect("quota")
    };
    quotas
        .create(&Default::default(), &quota("1"))
        .await
        .expect("create quota");
    let nodes: Api<Node> = Api::all(t.a.client());
    let node = t.va.node.clone();
    let sold_out = async |want: bool| {
        wait_for(WAIT, POLL, async || {
            let n = nodes.get(&node).await.map_err(|e| e.to_string())?;
            let tainted = n
                .spec
                .iter()
                .flat_map(|s| s.taints.iter().flatten())
                .any(|t| t.key == "virtual-kubelet.io/sold-out");
            if tainted == want {
                Ok(n)
            } else {
                Err(format!("sold-out taint: {tainted}"))
            }
        })
        .await
    };
    t.a.create(&t.pod("first", "exec sleep 3600").build()).await;
    common::wait_pod_phase(&t.a, "first", "Running").await;
    // The quota is used up: the node says so (allocatable pods 0) and stops attracting pods.
    let n = sold_out(true).await;
    let alloc = n.status.and_then(|s| s.allocatable).unwrap_or_default();
    assert_eq!(
        alloc.get("pods").map(|q| q.0.as_str()),
        Some("0"),
        "{alloc:?}"
    );
    // A pod bound anyway (past the scheduler, which sees no room) waits with the quota reason.
    t.a.create(
        &t.pod("second", "exec sleep 3600")
            .node_name(t.va.node.clone())
            .build(),
    )
    .await;
    let pods: Api<Pod> = t.a.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("second").await.map_err(|e| e.to_string())?;
        let s = p.status.unwrap_or_default();
        if s.reason.as_deref() == Some("ProviderQuotaExceeded") {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // A refused pod deleted while it waits leaves nothing on B: the Secret each attempt wrote
    // has no pod to own it, so the attempt itself takes it back.
    let third =
        t.a.create(
            &t.pod("third", "exec sleep 3600")
                .node_name(t.va.node.clone())
                .build(),
        )
        .await;
    wait_event(&t.a, "third", "ProviderCreateFailed").await;
    t.a.kubectl_ns(["delete", "pod", "third", "--wait=true"])
        .await
        .assert_success();
    let secrets: Api<Secret> = Api::namespaced(t.b.client(), &t.managed);
    let of_third = of_source_pod(&third);
    wait_for(WAIT, POLL, async || {
        let left = secrets.list(&of_third).await.map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} Secrets of the deleted pod", left.items.len()))
        }
    })
    .await;
    let mut raised = quotas.get("burst").await.expect("get quota");
    raised.spec = quota("5").spec;
    quotas
        .replace("burst", &Default::default(), &raised)
        .await
        .expect("raise quota");
    sold_out(false).await;
    common::wait_pod_phase(&t.a, "second", "Running").await;
}

/// B answers a pod create with a server error after the pod's Secret was written (an admission
/// webhook nobody serves, failing closed: a 500 for every pod create in this test's managed
/// namespace). B never has the pod, so nothing owns the Secret; a source pod deleted while it
/// waits must take it back all the same, rather than leave it on B until the next start's sweep.
#[tokio::test]
async fn a_create_failing_with_a_server_error_leaves_nothing_once_the_pod_is_deleted() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let Some(t) = Burst::start().await else {
        return;
    };
    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(t.b.client());
    let hook_name = format!("fail-pod-creates-{}", t.managed);
    let hook: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": hook_name},
        "webhooks": [{
            "name": "fail-pod-creates.vkubelet.test",
            // Loopback, a port nothing listens on: refused at once.
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": [{
                "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"],
            }],
            "namespaceSelector": {"matchLabels": {
                vk_provider_kube::identity::CLUSTER_ID_LABEL: t.a.namespace(),
            }},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 2,
        }],
    }))
    .expect("webhook configuration");
    hooks
        .create(&Default::default(), &hook)
        .await
        .expect("create the webhook configuration");
    // B's API server takes the configuration up a little later: a dry-run create says when.
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "none"}]},
    }))
    .expect("probe pod");
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(WAIT, POLL, async || {
        match t.backend_pods_api().create(&dry_run, &probe).await {
            Err(kube::Error::Api(s)) if s.code >= 500 => Ok(()),
            other => Err(format!("a pod create on B still gives {other:?}")),
        }
    })
    .await;

    let secrets: Api<Secret> = t.a.api();
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "creds"},
                "stringData": {"password": "hunter2"},
            }))
            .expect("secret"),
        )
        .await
        .expect("create secret");
    let doomed = t.a.create(&common::pod_with(
        &t.va,
        "doomed",
        json!({
            "command": ["sh", "-c", "exec sleep 3600"],
            "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        }),
        json!({"terminationGracePeriodSeconds": 2}),
    ))
    .await;
    let event = wait_event(&t.a, "doomed", "ProviderCreateFailed").await;
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("webhook"),
        "the create failed for the webhook: {event:?}"
    );
    // The window is real: B holds the pod's Secret, and no pod.
    let backend_secrets: Api<Secret> = Api::namespaced(t.b.client(), &t.managed);
    let of_doomed = of_source_pod(&doomed);
    let written = backend_secrets
        .list(&of_doomed)
        .await
        .expect("list Secrets");
    assert!(
        !written.items.is_empty(),
        "the failed create wrote the pod's Secret first"
    );
    assert!(t.backend_pods().await.is_empty(), "B has no pod");

    t.a.kubectl_ns(["delete", "pod", "doomed", "--wait=true"])
        .await
        .assert_success();
    // Gone from A means vkubelet-A asked B to delete first: nothing may be left by now.
    let left = backend_secrets
        .list(&of_doomed)
        .await
        .expect("list Secrets");
    assert!(
        left.items.is_empty(),
        "Secrets of the deleted pod left on B: {:?}",
        left.items
            .iter()
            .map(|s| &s.metadata.name)
            .collect::<Vec<_>>()
    );
    hooks
        .delete(&hook_name, &DeleteParams::default())
        .await
        .expect("delete the webhook configuration");
}

/// Whether A's node carries the sold-out taint, waited for until it is `want`.
async fn wait_sold_out(t: &Burst, want: bool) {
    use k8s_openapi::api::core::v1::Node;
    let nodes: Api<Node> = Api::all(t.a.client());
    wait_for(WAIT, POLL, async || {
        let n = nodes.get(&t.va.node).await.map_err(|e| e.to_string())?;
        let tainted = n
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .any(|t| t.key == "virtual-kubelet.io/sold-out");
        if tainted == want {
            Ok(())
        } else {
            Err(format!("sold-out taint: {tainted}"))
        }
    })
    .await
}

/// Backend pods B's scheduler has no room for: after `soldOutAfter` A's node is sold out; after
/// `evictUnschedulableAfter` a Deployment's pod is deleted (its ReplicaSet makes another) with
/// an event, while a bare pod stays, with an event saying why. Gone stuck pods end the spell.
#[tokio::test]
async fn unschedulable_backend_pods_sell_the_node_out_and_controller_owned_ones_are_evicted() {
    let Some(t) = Burst::start_with(
        async |_, _| json!({"soldOutAfter": "2s", "evictUnschedulableAfter": "3s"}),
    )
    .await
    else {
        return;
    };
    // More CPU than B's node has, well within what A's virtual node offers.
    let too_big = json!({"resources": {"requests": {"cpu": "64"}}});
    let bare = common::pod_with(
        &t.va,
        "bare",
        too_big.clone(),
        json!({"terminationGracePeriodSeconds": 2}),
    );
    let bare = t.a.create(&bare).await;
    let mut template = serde_json::to_value(common::pod_with(
        &t.va,
        "big",
        too_big,
        json!({"terminationGracePeriodSeconds": 2}),
    ))
    .expect("json");
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": template["spec"].take()},
        },
    }))
    .expect("deployment");
    t.a.create(&dep).await;
    let pods: Api<Pod> = t.a.api();
    let first = wait_for(WAIT, POLL, async || {
        let l = pods
            .list(&ListParams::default().labels("app=big"))
            .await
            .map_err(|e| e.to_string())?;
        l.items
            .into_iter()
            .next()
            .ok_or_else(|| "no pod yet".to_string())
    })
    .await;
    let first_name = first.metadata.name.clone().expect("name");
    // B really finds no room for them.
    wait_for(WAIT, POLL, async || {
        let stuck = t
            .backend_pods()
            .await
            .iter()
            .filter(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| {
                        c.type_ == "PodScheduled"
                            && c.reason.as_deref() == Some("Unschedulable")
                            && c.message
                                .as_deref()
                                .is_some_and(|m| m.contains("Insufficient cpu"))
                    })
            })
            .map(source_uid)
            .collect::<BTreeSet<_>>();
        if stuck.contains(&uid(&bare)) {
            Ok(())
        } else {
            Err(format!("unschedulable on B: {stuck:?}"))
        }
    })
    .await;
    wait_sold_out(&t, true).await;

    // The Deployment's pod: evicted with an event, its ReplicaSet makes a new one.
    let evicted = wait_event(&t.a, &first_name, "EvictedUnschedulable").await;
    assert!(
        evicted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("ReplicaSet/big-")),
        "{evicted:?}"
    );
    wait_for(WAIT, POLL, async || {
        let l = pods
            .list(&ListParams::default().labels("app=big"))
            .await
            .map_err(|e| e.to_string())?;
        let uids: BTreeSet<String> = l.items.iter().map(uid).collect();
        if !uids.contains(&uid(&first)) && !uids.is_empty() {
            Ok(())
        } else {
            Err(format!("pods of the Deployment: {uids:?}"))
        }
    })
    .await;

    // The bare pod: told why, and never deleted.
    let kept = wait_event(&t.a, "bare", "NotEvictedBarePod").await;
    assert!(
        kept.message
            .as_deref()
            .is_some_and(|m| m.contains("no controller")),
        "{kept:?}"
    );
    let still = pods.get("bare").await.expect("the bare pod is still there");
    assert_eq!(uid(&still), uid(&bare));
    assert!(still.metadata.deletion_timestamp.is_none());

    // Without stuck pods the node takes pods again.
    let deps: Api<Deployment> = t.a.api();
    deps.delete("big", &DeleteParams::foreground())
        .await
        .expect("delete deployment");
    pods.delete("bare", &DeleteParams::default())
        .await
        .expect("delete bare pod");
    wait_sold_out(&t, false).await;
}

/// vkubelet-A reads B's kubeconfig from a Secret in A; label and annotation changes on A's pod
/// reach the backend pod (changed, added, removed), and a label B's side added stays.
#[tokio::test]
async fn a_kubeconfig_secret_connects_and_label_changes_reach_the_backend() {
    let Some(t) = Burst::start_with(async |a, b| {
        let flat = b
            .kubectl(["config", "view", "--raw", "--flatten", "--minify"])
            .await
            .assert_success();
        assert!(
            flat.stdout.contains("certificate-authority-data"),
            "inline credentials: {}",
            flat.stdout
        );
        a.create(
            &serde_json::from_value::<Secret>(json!({
                "metadata": {"name": "backend-kubeconfig"},
                "stringData": {"config": flat.stdout},
            }))
            .expect("secret"),
        )
        .await;
        json!({
            "kubeconfig": null,
            "kubeconfigSecret": {"namespace": a.namespace(), "name": "backend-kubeconfig", "key": "config"},
        })
    })
    .await
    else {
        return;
    };
    let pod = common::pod_with(
        &t.va,
        "labelled",
        json!({}),
        json!({"terminationGracePeriodSeconds": 2}),
    );
    let mut pod = serde_json::to_value(pod).expect("json");
    pod["metadata"]["labels"] = json!({"tier": "web", "old": "1"});
    pod["metadata"]["annotations"] = json!({"team": "a"});
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    let running = t.a.create(&pod).await;
    common::wait_pod_phase(&t.a, "labelled", "Running").await;
    let backend = wait_backend_running(&t, &[uid(&running)].into()).await;
    let name = backend[0].metadata.name.clone().expect("name");
    let labels = backend[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("tier").map(String::as_str), Some("web"));
    assert_eq!(labels.get("old").map(String::as_str), Some("1"));
    t.b.kubectl(["label", "pod", "-n", &t.managed, &name, "backend-own=yes"])
        .await
        .assert_success();

    let pods: Api<Pod> = t.a.api();
    pods.patch(
        "labelled",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {
            "labels": {"tier": "api", "old": null, "new": "2"},
            "annotations": {"team": "b"},
        }})),
    )
    .await
    .expect("relabel");
    let backend_pods = t.backend_pods_api();
    wait_for(WAIT, POLL, async || {
        let p = backend_pods.get(&name).await.map_err(|e| e.to_string())?;
        let l = p.metadata.labels.clone().unwrap_or_default();
        let a = p.metadata.annotations.clone().unwrap_or_default();
        let get = |m: &std::collections::BTreeMap<String, String>, k: &str| m.get(k).cloned();
        let want = get(&l, "tier").as_deref() == Some("api")
            && get(&l, "new").as_deref() == Some("2")
            && !l.contains_key("old")
            && get(&a, "team").as_deref() == Some("b");
        if want {
            Ok(l)
        } else {
            Err(format!("labels {l:?}, annotations {a:?}"))
        }
    })
    .await;
    let p = backend_pods.get(&name).await.expect("backend pod");
    let l = p.metadata.labels.clone().unwrap_or_default();
    assert_eq!(l.get("backend-own").map(String::as_str), Some("yes"));
    assert_eq!(
        l.get("vkubelet.io/pod-uid").map(String::as_str),
        Some(uid(&running).as_str()),
        "identity labels stay"
    );
    assert_eq!(
        uid(&p),
        uid(&backend[0]),
        "updated in place, not re-created"
    );
}

/// Someone deletes the managed namespace on B under a running pod: vkubelet makes it again
/// (with its labels), and the pod, lost with it, comes back per its restartPolicy with its
/// per-pod objects.
#[tokio::test]
async fn a_deleted_managed_namespace_is_made_again_and_its_pods_come_back() {
    let Some(t) = Burst::start().await else {
        return;
    };
    let pod = common::pod_with(
        &t.va,
        "survivor",
        json!({"env": [{"name": "FROM_A", "value": "kept-across"}]}),
        json!({"terminationGracePeriodSeconds": 2}),
    );
    let running = t.a.create(&pod).await;
    common::wait_pod_phase(&t.a, "survivor", "Running").await;
    let before = wait_backend_running(&t, &[uid(&running)].into()).await;
    let namespaces: Api<Namespace> = Api::all(t.b.client());
    let first_ns_uid = uid(&namespaces.get(&t.managed).await.expect("managed namespace"));
    t.b.kubectl(["delete", "namespace", &t.managed, "--wait=false"])
        .await
        .assert_success();
    wait_event(&t.a, "survivor", "ProviderPodLost").await;
    let ns = wait_for(WAIT, POLL, async || {
        let ns = namespaces
            .get_opt(&t.managed)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no namespace")?;
        if uid(&ns) != first_ns_uid && ns.metadata.deletion_timestamp.is_none() {
            Ok(ns)
        } else {
            Err("the old namespace is still there".to_string())
        }
    })
    .await;
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("vkubelet")
    );
    assert_eq!(
        labels.get("vkubelet.io/cluster-id").map(String::as_str),
        Some(t.a.namespace())
    );
    let after = wait_backend_running(&t, &[uid(&running)].into()).await;
    assert_ne!(uid(&after[0]), uid(&before[0]), "a new backend instance");
    let pods: Api<Pod> = t.a.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get("survivor").await.map_err(|e| e.to_string())?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        if phase(&p).as_deref() == Some("Running") && restarts >= 1 {
            Ok(())
        } else {
            Err(format!("phase {:?}, restarts {restarts}", phase(&p)))
        }
    })
    .await;
    // Its env Secret went with the namespace and was made again.
    let out =
        t.a.kubectl_ns(["exec", "survivor", "--", "sh", "-c", "echo $FROM_A"])
            .await
            .assert_success();
    assert_eq!(out.stdout.trim(), "kept-across", "{out}");
}

/// `namespaceMapping: sameName`: the pod lands in a backend namespace of its source
/// namespace's name (made and labelled by vkubelet), not in the managed one; cleanup removes the
/// pod and its per-pod objects there (namespace by namespace: the API has no cross-namespace
/// delete) and leaves the namespace, which other installs may share.
#[tokio::test]
async fn same_name_mapping_uses_the_source_namespace_and_cleanup_empties_it() {
    let Some(mut t) = Burst::start_with(async |_, _| json!({"namespaceMapping": "sameName"})).await
    else {
        return;
    };
    let ns = t.a.namespace().to_string();
    let pod = common::pod_with(
        &t.va,
        "mirrored",
        json!({"env": [{"name": "X", "value": "y"}]}),
        json!({"terminationGracePeriodSeconds": 2}),
    );
    let running = t.a.create(&pod).await;
    common::wait_pod_phase(&t.a, "mirrored", "Running").await;
    let same: Api<Pod> = Api::namespaced(t.b.client(), &ns);
    let backend = wait_for(WAIT, POLL, async || {
        let l = same
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        match l.items.as_slice() {
            [p] if phase(p).as_deref() == Some("Running") => Ok(p.clone()),
            other => Err(format!("{} pods in {ns} on B", other.len())),
        }
    })
    .await;
    assert_eq!(source_uid(&backend), uid(&running));
    let namespaces: Api<Namespace> = Api::all(t.b.client());
    assert!(
        namespaces.get_opt(&t.managed).await.expect("get").is_none(),
        "no managed namespace with sameName"
    );
    let made = namespaces.get(&ns).await.expect("the same-name namespace");
    let labels = made.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("vkubelet.io/cluster-id").map(String::as_str),
        Some(ns.as_str())
    );
    let ours = ListParams::default().labels(&format!("vkubelet.io/cluster-id={ns}"));
    let secrets: Api<Secret> = Api::namespaced(t.b.client(), &ns);
    assert!(
        !secrets.list(&ours).await.expect("list").items.is_empty(),
        "per-pod objects live beside the pod"
    );

    assert!(t.va.terminate(), "vkubelet-A did not stop cleanly");
    let out = t.va.cleanup_command().output().expect("run cleanup");
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(same.list(&ours).await.expect("list").items.is_empty());
    assert!(secrets.list(&ours).await.expect("list").items.is_empty());
    let config_maps: Api<ConfigMap> = Api::namespaced(t.b.client(), &ns);
    assert!(
        config_maps
            .list(&ours)
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(namespaces.get_opt(&ns).await.expect("get").is_some());
    // The test's own tidy-up: B is shared by the other tests.
    t.b.kubectl(["delete", "namespace", &ns, "--wait=false"])
        .await
        .assert_success();
}

/// A token of B's ServiceAccount `limited`, which may do everything the provider needs except
/// `nodes/proxy`: `(token secret name, token)` once the token controller has filled it.
async fn service_account_token(b: &TestEnv, secret: &str) -> String {
    let secrets: Api<Secret> = b.api();
    wait_for(WAIT, POLL, async || {
        let s = secrets.get(secret).await.map_err(|e| e.to_string())?;
        s.data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .ok_or_else(|| format!("{secret} has no token yet"))
    })
    .await
}

fn token_secret(name: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": {"kubernetes.io/service-account.name": "limited"},
        },
        "type": "kubernetes.io/service-account-token",
    }))
    .expect("token secret")
}

/// `server` + `tokenFile` + `caFile` with a ServiceAccount of B that may not use `nodes/proxy`:
/// pods run, stats answer a clear 501, and when the token file is rewritten with a new token
/// (the old one revoked) vkubelet carries on with the new one.
#[tokio::test]
async fn a_rotating_token_file_keeps_working_and_stats_without_node_access_are_a_clear_501() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let dir = std::env::temp_dir().join(format!("vkubelet-e2e-token-{}", std::process::id()));
    let token_file = dir.join("token");
    let Some(t) = Burst::start_with(async |_, b| {
        std::fs::create_dir_all(&dir).expect("token dir");
        let rbac_name = format!("vkubelet-limited-{}", b.namespace());
        let roles: Api<ClusterRole> = Api::all(b.client());
        let _ = roles.delete(&rbac_name, &DeleteParams::default()).await;
        roles
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": rbac_name},
                    "rules": [
                        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "create"]},
                        {"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["*"]},
                        {"apiGroups": [""], "resources": ["pods/log", "pods/exec", "pods/attach", "pods/portforward"], "verbs": ["*"]},
                        {"apiGroups": [""], "resources": ["events", "resourcequotas"], "verbs": ["get", "list", "watch"]},
                    ],
                }))
                .expect("role"),
            )
            .await
            .expect("create cluster role");
        let bindings: Api<ClusterRoleBinding> = Api::all(b.client());
        let _ = bindings.delete(&rbac_name, &DeleteParams::default()).await;
        bindings
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": rbac_name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rbac_name},
                    "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": b.namespace()}],
                }))
                .expect("binding"),
            )
            .await
            .expect("create binding");
        b.create(
            &serde_json::from_value::<ServiceAccount>(json!({"metadata": {"name": "limited"}}))
                .expect("sa"),
        )
        .await;
        b.create(&token_secret("limited-first")).await;
        let token = service_account_token(b, "limited-first").await;
        std::fs::write(&token_file, token).expect("write token");
        let kc = kube::config::Kubeconfig::read_from(b.kubeconfig_path()).expect("kubeconfig");
        let cluster = kc.clusters[0].cluster.clone().expect("cluster");
        json!({
            "kubeconfig": null,
            "server": cluster.server,
            "tokenFile": token_file,
            "caFile": cluster.certificate_authority,
        })
    })
    .await
    else {
        return;
    };
    let first =
        t.a.create(&t.pod("first", "echo first-ran; exec sleep 3600").build())
            .await;
    common::wait_pod_phase(&t.a, "first", "Running").await;
    wait_backend_running(&t, &[uid(&first)].into()).await;

    // Stats: B refuses nodes/proxy to this identity, and A's node says so plainly.
    let path = format!("/api/v1/nodes/{}/proxy/stats/summary", t.va.node);
    let out = t.a.kubectl(["get", "--raw", &path]).await;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("(NotImplemented)") && out.stderr.contains("nodes/proxy"),
        "a 501 naming what is missing: {out}"
    );

    // Rotate: a new token in the file, the old one revoked.
    let old = std::fs::read_to_string(&token_file).expect("read token");
    t.b.create(&token_secret("limited-second")).await;
    let second = service_account_token(&t.b, "limited-second").await;
    let staged = dir.join("token.new");
    std::fs::write(&staged, second).expect("write token");
    std::fs::rename(&staged, &token_file).expect("replace token");
    let secrets: Api<Secret> = t.b.api();
    secrets
        .delete("limited-first", &DeleteParams::default())
        .await
        .expect("revoke the first token");
    // B really refuses the old token now (its token cache lags the delete by a moment).
    let kc = kube::config::Kubeconfig::read_from(t.b.kubeconfig_path()).expect("kubeconfig");
    let cluster = kc.clusters[0].cluster.clone().expect("cluster");
    let server = cluster.server.expect("server");
    let ca = cluster.certificate_authority.expect("ca");
    wait_for(WAIT, POLL, async || {
        let out = tokio::process::Command::new("kubectl")
            .args(["--kubeconfig", "/dev/null", "--server", &server])
            .args(["--certificate-authority", &ca, "--token", old.trim()])
            .args(["get", "--raw", "/api"])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("Unauthorized") {
            Ok(())
        } else {
            Err(format!("old token still accepted: {err}"))
        }
    })
    .await;
    // Until the client reads the file again, B answers 401; each `kubectl logs` is a fresh call
    // to B, so a success shows the new token in use.
    wait_for(WAIT, Duration::from_secs(1), async || {
        let out = t.a.kubectl_ns(["logs", "first"]).await;
        if out.status.success() && out.stdout.contains("first-ran") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;
    let after = t.a.create(&t.pod("after", "exec sleep 3600").build()).await;
    common::wait_pod_phase(&t.a, "after", "Running").await;
    wait_backend_running(&t, &[uid(&first), uid(&after)].into()).await;

    let rbac_name = format!("vkubelet-limited-{}", t.b.namespace());
    let roles: Api<ClusterRole> = Api::all(t.b.client());
    let _ = roles.delete(&rbac_name, &DeleteParams::default()).await;
    let bindings: Api<ClusterRoleBinding> = Api::all(t.b.client());
    let _ = bindings.delete(&rbac_name, &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A source pod deleted while vkubelet-A is down: after the restart its backend pod is deleted
/// (once both sides are fully listed), while the backend pod of a pod that still exists is
/// adopted as it is, not re-created. Per-pod Secrets a crash left without an owner are owned
/// again by their pod, or deleted when there is none.
#[tokio::test]
async fn after_a_restart_orphans_are_deleted_and_the_rest_adopted() {
    let Some(mut t) = Burst::start().await else {
        return;
    };
    let kept = t.a.create(&t.pod("kept", "exec sleep 3600").build()).await;
    let orphan =
        t.a.create(&t.pod("orphan", "exec sleep 3600").build())
            .await;
    common::wait_pod_phase(&t.a, "kept", "Running").await;
    common::wait_pod_phase(&t.a, "orphan", "Running").await;
    let before = wait_backend_running(&t, &[uid(&kept), uid(&orphan)].into()).await;
    let kept_instance = before
        .iter()
        .find(|p| source_uid(p) == uid(&kept))
        .map(uid)
        .expect("kept's backend pod");
    t.va.kill9();
    // Nobody answers for the node: only a forced delete removes the API object now.
    t.a.kubectl_ns(["delete", "pod", "orphan", "--grace-period=0", "--force"])
        .await
        .assert_success();
    let pods: Api<Pod> = t.a.api();
    wait_for(WAIT, POLL, async || match pods.get_opt("orphan").await {
        Ok(None) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(
        t.backend_pods().await.len(),
        2,
        "B keeps both while A is down"
    );
    // What a kill -9 between writing a pod's Secret and owning it leaves: kept's Secret without
    // its owner, and the Secret of a pod that was never made (its source gone since).
    let secrets: Api<Secret> = Api::namespaced(t.b.client(), &t.managed);
    let kept_secret = format!(
        "{}-data",
        before
            .iter()
            .find(|p| source_uid(p) == uid(&kept))
            .and_then(|p| p.metadata.name.clone())
            .expect("kept's backend name")
    );
    secrets
        .patch(
            &kept_secret,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .expect("disown kept's Secret");
    let ghost = vk_core::PodKey::new("ghost-uid", t.a.namespace(), "ghost");
    let ghost_secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("ghost-uid-data".into()),
            labels: Some(vk_provider_kube::identity::pod_labels(
                t.a.namespace(),
                &t.va.node,
                &ghost,
            )),
            ..Default::default()
        },
        string_data: Some([("A".to_string(), "1".to_string())].into()),
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &ghost_secret)
        .await
        .expect("plant a Secret without a pod");
    t.va.resume();
    let after = wait_backend_running(&t, &[uid(&kept)].into()).await;
    assert_eq!(uid(&after[0]), kept_instance, "adopted, not re-created");
    common::wait_pod_phase(&t.a, "kept", "Running").await;
    // The ghost's Secret is deleted, the orphan's goes with its pod, kept's is owned again.
    let left = wait_for(WAIT, POLL, async || {
        let ours = ListParams::default().labels(&vk_provider_kube::identity::install_selector(
            t.a.namespace(),
        ));
        let names: BTreeSet<String> = secrets
            .list(&ours)
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        if names == BTreeSet::from([kept_secret.clone()]) {
            Ok(names)
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    assert_eq!(left.len(), 1);
    let owners = secrets
        .get(&kept_secret)
        .await
        .expect("kept's Secret")
        .metadata
        .owner_references
        .unwrap_or_default();
    assert_eq!(
        owners.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
        [kept_instance.as_str()],
        "kept's Secret is owned by its backend pod again"
    );
}

/// The pod's registry credentials (resolved on A) reach B as one per-pod
/// `kubernetes.io/dockerconfigjson` Secret in the backend pod's `imagePullSecrets`; the source's
/// own pull-secret names (objects of A) are not sent.
#[tokio::test]
async fn registry_credentials_become_a_per_pod_pull_secret() {
    let Some(t) = Burst::start().await else {
        return;
    };
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("alice:pw-on-a")
    };
    let config = json!({"auths": {"registry.example.com": {"auth": auth}}});
    t.a.create(
        &serde_json::from_value::<Secret>(json!({
            "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config.to_string()},
        }))
        .expect("secret"),
    )
    .await;
    let pod = common::pod_with(
        &t.va,
        "pull",
        json!({}),
        json!({"imagePullSecrets": [{"name": "regcred"}], "terminationGracePeriodSeconds": 2}),
    );
    let pod = t.a.create(&pod).await;
    common::wait_pod_phase(&t.a, "pull", "Running").await;
    let backend = wait_backend_running(&t, &[uid(&pod)].into()).await;
    let refs: Vec<String> = backend[0]
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
        .map(|r| r.name.clone())
        .collect();
    let [name] = refs.as_slice() else {
        panic!("one pull secret expected: {refs:?}");
    };
    assert_ne!(name, "regcred", "A's Secret name means nothing on B");
    let secrets: Api<Secret> = Api::namespaced(t.b.client(), &t.managed);
    let pull = secrets.get(name).await.expect("the per-pod pull secret");
    assert_eq!(
        pull.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let data = pull
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .expect("data");
    let sent: serde_json::Value = serde_json::from_slice(&data.0).expect("json");
    let entry = &sent["auths"]["registry.example.com"];
    assert_eq!(entry["username"], "alice", "{sent}");
    assert_eq!(entry["password"], "pw-on-a", "{sent}");
    let owner = pull
        .metadata
        .owner_references
        .iter()
        .flatten()
        .next()
        .expect("owned");
    assert_eq!(owner.uid, uid(&backend[0]));
}

/// A replica keeps its provider (its backend watch) from one leadership term to the next, and
/// what the backend reported while the replica did not lead was pushed to no pod controller. The
/// next term must learn it from its first backend list, whatever the provider pushed before.
#[tokio::test]
async fn a_replica_that_leads_again_learns_what_the_backend_reported_meanwhile() {
    let Some(t) = Burst::start_with_args(async |_, _| json!({}), ha_args).await else {
        return;
    };
    // Runs until told to stop through its emptyDir, then exits 0: a status change on B that
    // the test triggers while no replica leads.
    let mut pod = t
        .pod(
            "between-terms",
            "while [ ! -e /flag/go ]; do sleep 0.2; done",
        )
        .restart_policy("Never")
        .build();
    let spec = pod.spec.as_mut().expect("spec");
    spec.volumes = Some(vec![Volume {
        name: "flag".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }]);
    spec.containers[0].volume_mounts = Some(vec![VolumeMount {
        name: "flag".into(),
        mount_path: "/flag".into(),
        ..Default::default()
    }]);
    t.a.create(&pod).await;
    let running = common::wait_pod_phase(&t.a, "between-terms", "Running").await;
    let backend = wait_backend_running(&t, &[uid(&running)].into()).await;
    let backend_name = backend[0].metadata.name.clone().expect("name");

    // Take the node's Lease from the replica, for as long as the test needs. Under load a term
    // may also end by itself (a renewal past its deadline) and the replica lead again, so terms
    // are counted: the replica leads no more once every term it began has ended.
    let terms = || t.va.log().matches("leading the node").count();
    let ended = || t.va.log().matches("leadership lost").count();
    let ended_before = ended();
    let leases: Api<Lease> = t.a.api();
    let lease = format!("vkubelet-{}", t.va.node);
    let hold = |holder: &str, secs: i32| json!({"spec": {"holderIdentity": holder, "leaseDurationSeconds": secs}});
    leases
        .patch(
            &lease,
            &PatchParams::default(),
            &Patch::Merge(&hold("e2e-thief", 3600)),
        )
        .await
        .expect("take the lease");
    wait_for(WAIT, POLL, async || {
        if ended() > ended_before && terms() == ended() {
            Ok(())
        } else {
            Err(format!(
                "the replica still leads: {} terms, {} ended",
                terms(),
                ended()
            ))
        }
    })
    .await;
    let terms_while_held = terms();

    // Meanwhile the container exits on B.
    t.b.kubectl([
        "exec",
        "-n",
        &t.managed,
        &backend_name,
        "--",
        "touch",
        "/flag/go",
    ])
    .await
    .assert_success();
    let backend_pods = t.backend_pods_api();
    wait_for(WAIT, POLL, async || {
        let p = backend_pods
            .get(&backend_name)
            .await
            .map_err(|e| e.to_string())?;
        match phase(&p).as_deref() {
            Some("Succeeded") => Ok(()),
            other => Err(format!("backend pod {other:?}")),
        }
    })
    .await;
    assert_eq!(
        terms(),
        terms_while_held,
        "no replica leads while the test holds the lease"
    );

    // Handed back: the replica's next term must see the pod Succeeded.
    leases
        .patch(&lease, &PatchParams::default(), &Patch::Merge(&hold("", 1)))
        .await
        .expect("release the lease");
    common::wait_pod_phase(&t.a, "between-terms", "Succeeded").await;
    assert!(
        terms() > terms_while_held,
        "the same replica led the node again"
    );
}
