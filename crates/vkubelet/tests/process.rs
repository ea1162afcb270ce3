//! The process provider end to end: real pods as sandboxed local processes under a real control
//! plane, driven through `kubectl` and the API like a user would.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{
    POLL, Vk, WAIT, events_for, phase, pod_with, wait_event, wait_pod_phase, wait_running,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use serde_json::json;
use vk_testkit::{TestEnv, wait_for};

/// `kubectl apply` an object given as JSON, in the test's namespace.
async fn apply(env: &TestEnv, obj: &serde_json::Value) {
    let file = std::env::temp_dir().join(format!(
        "vk-apply-{}-{}.json",
        env.namespace(),
        obj["metadata"]["name"].as_str().unwrap_or("obj")
    ));
    std::fs::write(&file, obj.to_string()).expect("write manifest");
    let out = env
        .kubectl_ns(["apply", "-f", &file.to_string_lossy()])
        .await;
    let _ = std::fs::remove_file(&file);
    assert!(out.success(), "{out}");
}

fn start(env: &TestEnv) -> Vk {
    Vk::start_process(env, json!({}), &[])
}

/// vkubelet with JSON logs, for tests that read what the backend logged (see [`logged_exits`]).
fn start_json_logs(env: &TestEnv) -> Vk {
    Vk::start_process(env, json!({}), &["--log-format", "json"])
}

/// The exits the process provider logged ("container exited") for one container of one pod,
/// in order, as (exit code, reason). Needs [`start_json_logs`].
fn logged_exits(vk: &Vk, env: &TestEnv, pod: &str, container: &str) -> Vec<(i64, String)> {
    let pod = format!("{}/{pod}", env.namespace());
    vk.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"] == "container exited"
                && v["fields"]["container"] == container
                && v["span"]["pod"] == pod.as_str()
        })
        .map(|v| {
            (
                v["fields"]["exit_code"].as_i64().expect("exit_code"),
                v["fields"]["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect()
}

/// Wait until `pod`'s `container` has logged `n` exits; returns them.
async fn wait_exits(
    vk: &Vk,
    env: &TestEnv,
    pod: &str,
    container: &str,
    n: usize,
) -> Vec<(i64, String)> {
    wait_for(WAIT, POLL, async || {
        let exits = logged_exits(vk, env, pod, container);
        if exits.len() >= n {
            Ok(exits)
        } else {
            Err(format!("exits logged so far: {exits:?}"))
        }
    })
    .await
}

/// Wait until the pod object is gone from the API.
async fn wait_gone(env: &TestEnv, name: &str) {
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, POLL, async || {
        match pods.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("still there: {:?}", p.status)),
        }
    })
    .await
}

/// A listener a container connects to (pods share the host network): the test learns that the
/// container runs, and the container waits for the test's word.
async fn gate() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

async fn accept(listener: &tokio::net::TcpListener, what: &str) -> tokio::net::TcpStream {
    tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap_or_else(|_| panic!("{what} never connected"))
        .expect("accept")
        .0
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().expect("uid")
}

fn container_dir(vk: &Vk, uid: &str, container: &str) -> PathBuf {
    vk.state_dir()
        .join("pods")
        .join(uid)
        .join("containers")
        .join(container)
}

/// The content lines of one instance's CRI log.
fn log_text(vk: &Vk, uid: &str, container: &str, restart: u32) -> String {
    let path = container_dir(vk, uid, container).join(format!("{restart}.log"));
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in raw.lines() {
        // <timestamp> <stream> <P|F> <content>
        let mut parts = line.splitn(4, ' ');
        let (Some(_), Some(_), Some(tag), content) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        out.push_str(content.unwrap_or(""));
        if tag == "F" {
            out.push('\n');
        }
    }
    out
}

async fn wait_log(vk: &Vk, uid: &str, container: &str, restart: u32, needle: &str) -> String {
    wait_for(WAIT, POLL, async || {
        let text = log_text(vk, uid, container, restart);
        if text.contains(needle) {
            Ok(text)
        } else {
            Err(format!("log so far: {text:?}"))
        }
    })
    .await
}

/// The container's pid as its shim recorded it.
fn container_pid(vk: &Vk, uid: &str, container: &str) -> Option<u32> {
    let text = std::fs::read_to_string(container_dir(vk, uid, container).join("shim.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["container"]["pid"].as_u64().map(|p| p as u32)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn cstatus(p: &Pod, name: &str) -> Option<ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

fn condition(p: &Pod, t: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
}

async fn wait_pod(env: &TestEnv, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get(name).await.map_err(|e| e.to_string())?;
        if check(&p) {
            Ok(p)
        } else {
            Err(format!("waiting for {what}: {:?}", p.status))
        }
    })
    .await
}

#[tokio::test]
async fn deployment_of_processes_runs_and_scales() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sleepers"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "sleepers"}},
            "template": {
                "metadata": {"labels": {"app": "sleepers"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": vk.node},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]
                }
            }
        }
    });
    apply(&env, &deploy).await;
    let pods = wait_running(&env, "app=sleepers", 3).await;
    let mut pids = Vec::new();
    for p in &pods {
        let pid = wait_for(WAIT, POLL, async || {
            container_pid(&vk, &uid(p), "main").ok_or("no shim record yet")
        })
        .await;
        pids.push((uid(p), pid));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert_eq!(
            cmdline, b"sleep\x003600\x00",
            "pid {pid} is the container's command"
        );
        let s = cstatus(p, "main").expect("status");
        assert_eq!(s.restart_count, 0);
        assert!(s.container_id.unwrap_or_default().starts_with("process://"));
        assert_eq!(
            p.status.as_ref().and_then(|s| s.pod_ip.clone()).as_deref(),
            Some("127.0.0.1")
        );
    }
    let out = env
        .kubectl_ns(["scale", "deployment/sleepers", "--replicas=1"])
        .await;
    assert!(out.success(), "{}", out.stderr);
    let remaining = wait_running(&env, "app=sleepers", 1).await;
    let keep = uid(&remaining[0]);
    wait_for(WAIT, POLL, async || {
        let left: Vec<String> = std::fs::read_dir(vk.state_dir().join("pods"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if left == [keep.clone()] {
            Ok(())
        } else {
            Err(format!("pods on the backend: {left:?}"))
        }
    })
    .await;
    // The scaled-away pods' processes end; the kept one still runs.
    wait_for(WAIT, POLL, async || {
        let wrong: Vec<_> = pids
            .iter()
            .filter(|(u, pid)| alive(*pid) != (*u == keep))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("alive, or not, against the pod's fate: {wrong:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn env_and_volumes_are_visible_inside_the_process() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    apply(&env, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello from a configmap"}})).await;
    apply(&env, &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "stringData": {"password": "s3cret"}})).await;
    let script = "echo ENV_A=$A; echo ENV_POD=$POD_NAME; echo ENV_IP=$POD_IP; echo SECRET_ENV=$SECRET_ENV; \
                  echo CM=$(cat /etc/config/greeting); echo SECRET=$(cat /etc/secret/password); \
                  echo TOKEN_LEN=$(wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token); \
                  echo TOKEN_DOTS=$(tr -cd . < /var/run/secrets/kubernetes.io/serviceaccount/token | wc -c); \
                  echo NS=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); \
                  echo HOST=$(hostname); echo CWD=$(pwd); \
                  touch /etc/config/x 2>/dev/null && echo CM_WRITABLE || echo CM_READONLY; \
                  echo data > /scratch/file && echo SCRATCH_OK; exec sleep 3600";
    let pod = pod_with(
        &vk,
        "envvol",
        json!({
            "command": ["sh", "-c", script],
            "workingDir": "/scratch",
            "env": [
                {"name": "A", "value": "one two"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "SECRET_ENV", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}}
            ],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/config"},
                {"name": "sec", "mountPath": "/etc/secret"},
                {"name": "scratch", "mountPath": "/scratch"}
            ]
        }),
        json!({"volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "scratch", "emptyDir": {}}
        ]}),
    );
    let created = env.create(&pod).await;
    let u = uid(&created);
    let log = wait_log(&vk, &u, "main", 0, "SCRATCH_OK").await;
    for want in [
        "ENV_A=one two\n",
        "ENV_POD=envvol\n",
        "ENV_IP=127.0.0.1\n",
        "SECRET_ENV=s3cret\n",
        "CM=hello from a configmap\n",
        "SECRET=s3cret\n",
        &format!("NS={}\n", env.namespace()),
        "HOST=envvol\n",
        "CWD=/scratch\n",
        "CM_READONLY\n",
    ] {
        assert!(log.contains(want), "missing {want:?} in {log}");
    }
    let token_len: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN_LEN="))
        .and_then(|n| n.trim().parse().ok())
        .expect("token length");
    assert!(
        token_len > 100,
        "a real token is mounted ({token_len} bytes)"
    );
    assert!(
        log.contains("TOKEN_DOTS=2\n"),
        "the token is a JWT (header.payload.signature): {log}"
    );
    // Secret volumes never land in the state directory (they live in secretsDir, a tmpfs).
    let pod_dir = vk.state_dir().join("pods").join(&u);
    let grep = |needle: &str| {
        std::process::Command::new("grep")
            .args(["-rls", needle])
            .arg(pod_dir.join("volumes"))
            .output()
            .expect("grep")
    };
    // The search does look at the volumes: the ConfigMap's content is found there.
    let configmap = grep("hello from a configmap");
    assert_eq!(configmap.status.code(), Some(0), "{configmap:?}");
    let secret_in_state = grep("s3cret");
    assert_eq!(
        secret_in_state.status.code(),
        Some(1),
        "secret content found under the state dir (or grep failed): {secret_in_state:?}"
    );
    // Nor on any command line (world-readable in /proc).
    let on_cmdline = std::process::Command::new("pgrep")
        .args(["-f", "s3cret"])
        .output()
        .expect("pgrep");
    assert_eq!(
        on_cmdline.status.code(),
        Some(1),
        "secret env value visible in a command line (or pgrep failed): {on_cmdline:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let plan_mode = std::fs::metadata(pod_dir.join("pod.json"))
        .expect("plan")
        .permissions()
        .mode();
    assert_eq!(
        plan_mode & 0o077,
        0,
        "the plan (it holds env values) is private to root"
    );
    wait_pod_phase(&env, "envvol", "Running").await;
}

/// A non-root pod (runAsNonRoot, as deploy/ runs vkubelet) reaches its mounted ServiceAccount
/// token and a Secret mounted under directories the root does not have: the sandbox makes
/// those 0755, as a kubelet's runtime does (bubblewrap alone makes them 0700, and the user could
/// not get through). The Secret's files are `0440`, readable through the pod's fsGroup only,
/// which the volume's files belong to as with a kubelet.
#[tokio::test]
async fn a_non_root_pod_reads_its_token_and_a_secret_under_new_directories() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    apply(&env, &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "deep"}, "stringData": {"password": "d33p"}})).await;
    let token = "/var/run/secrets/kubernetes.io/serviceaccount";
    let deep = "/opt/vk-e2e/a/b/secret";
    for path in [token, deep] {
        assert!(
            !std::path::Path::new(path).exists(),
            "{path} exists on the host: the test needs the sandbox to make it"
        );
    }
    let script = format!(
        "echo UID=$(id -u); echo NS=$(cat {token}/namespace); \
         echo SECRET=$(cat {deep}/password); \
         stat -c 'MODE %a %n' /var/run/secrets /opt/vk-e2e /opt/vk-e2e/a; \
         stat -L -c 'FILE %a %g' {deep}/password; echo DONE; exec sleep 3600"
    );
    let pod = pod_with(
        &vk,
        "nonroot",
        json!({
            "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "deep", "mountPath": deep}],
            "securityContext": {"allowPrivilegeEscalation": false},
        }),
        json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65533},
            "volumes": [{"name": "deep", "secret": {"secretName": "deep", "defaultMode": 0o440}}],
        }),
    );
    let created = env.create(&pod).await;
    let u = uid(&created);
    let log = wait_log(&vk, &u, "main", 0, "DONE").await;
    for want in [
        "UID=65532\n".to_string(),
        format!("NS={}\n", env.namespace()),
        "SECRET=d33p\n".to_string(),
        "MODE 755 /var/run/secrets\n".to_string(),
        "MODE 755 /opt/vk-e2e/a\n".to_string(),
        "FILE 440 65533\n".to_string(),
    ] {
        assert!(log.contains(&want), "missing {want:?} in {log}");
    }
    wait_pod_phase(&env, "nonroot", "Running").await;
}

#[tokio::test]
async fn crashing_container_restarts_with_growing_backoff() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let pod = pod_with(
        &vk,
        "crasher",
        json!({"command": ["sh", "-c", "echo boom; echo bad news > /dev/termination-log; exit 3"]}),
        json!({}),
    );
    env.create(&pod).await;
    let p = wait_pod(&env, "crasher", "2 restarts", |p| {
        cstatus(p, "main").is_some_and(|s| s.restart_count >= 2)
    })
    .await;
    let s = cstatus(&p, "main").expect("status");
    let last = s
        .last_state
        .and_then(|l| l.terminated)
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(last.message.as_deref(), Some("bad news\n"));
    assert!(last.started_at.is_some() && last.finished_at.is_some());
    // Restarts 1 and 2: immediately, then after 10 s; the third waits 20 s.
    let p = wait_pod(&env, "crasher", "back-off 20s", |p| {
        cstatus(p, "main")
            .and_then(|s| s.state?.waiting?.message)
            .is_some_and(|m| m.contains("back-off 20s"))
    })
    .await;
    let s = cstatus(&p, "main").expect("status");
    assert_eq!(s.restart_count, 2, "{s:?}");
    assert_eq!(
        s.state
            .and_then(|st| st.waiting)
            .and_then(|w| w.reason)
            .as_deref(),
        Some("CrashLoopBackOff")
    );
    assert_eq!(phase(&p).as_deref(), Some("Running"));
    assert_eq!(log_text(&vk, &uid(&p), "main", 2), "boom\n");
    wait_event(&env, "crasher", "BackOff").await;
}

#[tokio::test]
async fn job_pods_end_with_the_exit_code() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": vk.node},
            "tolerations": [{"operator": "Exists"}],
            "initContainers": [{"name": "prepare", "image": "busybox", "command": ["sh", "-c", "echo ready > /work/flag"],
                                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "test \"$(cat /work/flag)\" = ready"],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}]
        }}}
    });
    apply(&env, &job).await;
    let out = env
        .kubectl_ns([
            "wait",
            "--for=condition=complete",
            "job/once",
            "--timeout=90s",
        ])
        .await;
    assert!(out.success(), "{}{}", out.stdout, out.stderr);

    let pod = pod_with(
        &vk,
        "fails",
        json!({"command": ["sh", "-c", "exit 5"]}),
        json!({"restartPolicy": "Never"}),
    );
    env.create(&pod).await;
    let p = wait_pod_phase(&env, "fails", "Failed").await;
    let t = cstatus(&p, "main")
        .and_then(|s| s.state?.terminated)
        .expect("terminated");
    assert_eq!(t.exit_code, 5);
    assert_eq!(t.reason.as_deref(), Some("Error"));
}

#[tokio::test]
async fn readiness_gates_ready_and_liveness_restarts() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    // Until the pod's server starts (only when the test says so, on the gate connection), the
    // test itself answers the readiness probes on the server's port, with 503.
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = probes.local_addr().expect("addr").port();
    let (probed_tx, mut probed) = tokio::sync::mpsc::unbounded_channel();
    let refuse = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut conn, _)) = probes.accept().await else {
                return;
            };
            let mut head = vec![0u8; 4096];
            let n = conn.read(&mut head).await.unwrap_or(0);
            let _ = conn
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            let _ = probed_tx.send(String::from_utf8_lossy(&head[..n]).into_owned());
        }
    });
    let (listener, gate_port) = gate().await;
    let web = pod_with(
        &vk,
        "web",
        json!({
            "command": ["python3", "-c", WAIT_THEN_SERVE, gate_port.to_string(), port.to_string()],
            "workingDir": "/tmp",
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
        }),
        json!({"terminationGracePeriodSeconds": 2}),
    );
    env.create(&web).await;
    let mut go = accept(&listener, "web's container").await;
    wait_pod_phase(&env, "web", "Running").await;
    // The probe runs and fails (three times: past its failureThreshold), and the pod is not Ready.
    for _ in 0..3 {
        let head = tokio::time::timeout(WAIT, probed.recv())
            .await
            .expect("a readiness probe")
            .expect("probe server");
        assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("kube-probe/"), "{head}");
    }
    let p = wait_pod(&env, "web", "a pod status", |_| true).await;
    assert_eq!(
        condition(&p, "Ready").as_deref(),
        Some("False"),
        "not ready while the probe fails: {:?}",
        p.status
    );
    assert!(cstatus(&p, "main").is_some_and(|s| !s.ready));
    // Hand the port over to the pod's server.
    refuse.abort();
    let _ = refuse.await; // the listener is closed once the task is gone
    tokio::io::AsyncWriteExt::write_all(&mut go, b"go\n")
        .await
        .expect("release the server");
    let p = wait_pod(&env, "web", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert!(cstatus(&p, "main").is_some_and(|s| s.ready));
    let body = reqwest_like_get(port).await;
    assert!(body.contains("Directory listing"), "{body}");

    let live = pod_with(
        &vk,
        "live",
        json!({
            "command": ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600"],
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
        }),
        json!({"terminationGracePeriodSeconds": 1}),
    );
    env.create(&live).await;
    let p = wait_pod(&env, "live", "a liveness restart", |p| {
        cstatus(p, "main").is_some_and(|s| s.restart_count >= 1)
    })
    .await;
    let last = cstatus(&p, "main")
        .and_then(|s| s.last_state?.terminated)
        .expect("lastState");
    assert_eq!(
        last.exit_code, 137,
        "killed after the grace period: {last:?}"
    );
    let unhealthy = wait_event(&env, "live", "Unhealthy").await;
    assert!(
        unhealthy
            .message
            .unwrap_or_default()
            .starts_with("Liveness probe failed")
    );
}

/// Connects to the gate port (argv 1), waits for a line, then serves HTTP on argv 2.
const WAIT_THEN_SERVE: &str = r#"
import os, socket, sys
gate = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
gate.makefile("r").readline()
os.execvp("python3", ["python3", "-m", "http.server", sys.argv[2], "--bind", "127.0.0.1"])
"#;

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A plain HTTP GET over a TcpStream (the test needs no HTTP client crate for one request).
async fn reqwest_like_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn kill9_and_restart_adopts_the_same_processes() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = start(&env);
    vk.wait_ready(&env).await;
    let mut uids = Vec::new();
    for i in 0..3 {
        // A heartbeat on stdout: the log grows only while the container and its shim (which
        // writes the log) both run.
        let p = pod_with(
            &vk,
            &format!("keep-{i}"),
            json!({"command": ["sh", "-c", "i=0; while :; do i=$((i+1)); echo beat-$i; sleep 0.2; done"]}),
            json!({}),
        );
        uids.push(uid(&env.create(&p).await));
    }
    for i in 0..3 {
        wait_pod_phase(&env, &format!("keep-{i}"), "Running").await;
    }
    let before: Vec<u32> = uids
        .iter()
        .map(|u| container_pid(&vk, u, "main").expect("pid"))
        .collect();
    vk.kill9();
    // vkubelet is gone (killed and reaped); every pod still beats after that.
    for u in &uids {
        let beats_at_kill = log_text(&vk, u, "main", 0).lines().count();
        wait_for(WAIT, POLL, async || {
            let beats = log_text(&vk, u, "main", 0).lines().count();
            if beats > beats_at_kill {
                Ok(())
            } else {
                Err(format!("pod {u}: no beat since the kill ({beats})"))
            }
        })
        .await;
    }
    assert!(
        before.iter().all(|p| alive(*p)),
        "pods keep running while vkubelet is down"
    );
    vk.resume();
    // A pod created while vkubelet is back must also run; the old ones stay untouched.
    let p = pod_with(
        &vk,
        "after",
        json!({"command": ["sleep", "3600"]}),
        json!({}),
    );
    env.create(&p).await;
    wait_pod_phase(&env, "after", "Running").await;
    for (i, u) in uids.iter().enumerate() {
        let p = wait_pod_phase(&env, &format!("keep-{i}"), "Running").await;
        assert_eq!(cstatus(&p, "main").map(|s| s.restart_count), Some(0));
        assert_eq!(
            container_pid(&vk, u, "main"),
            Some(before[i]),
            "same process adopted"
        );
        assert!(alive(before[i]));
        assert!(
            !container_dir(&vk, u, "main").join("1.log").exists(),
            "no second instance"
        );
    }
    let log = strip_ansi(&vk.log());
    assert!(log.contains("adopted=3"), "vkubelet reports the adoption");
}

#[tokio::test]
async fn delete_stops_the_process_within_the_grace_period() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start_json_logs(&env);
    vk.wait_ready(&env).await;
    // Says it got SIGTERM and carries on (like a PID 1 without a handler, which ignores it), so
    // only the SIGKILL at the end of the grace period stops it.
    let stubborn = pod_with(
        &vk,
        "stubborn",
        json!({"command": ["sh", "-c", "trap 'echo got TERM' TERM; i=0; while :; do i=$((i+1)); echo alive-$i; sleep 0.2; done"]}),
        json!({"terminationGracePeriodSeconds": 10}),
    );
    // This one exits 0 on SIGTERM; its grace period is far longer than the test waits.
    let polite = pod_with(
        &vk,
        "polite",
        json!({"command": ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.2; done"]}),
        json!({"terminationGracePeriodSeconds": 600}),
    );
    let s = env.create(&stubborn).await;
    let p = env.create(&polite).await;
    wait_pod_phase(&env, "stubborn", "Running").await;
    wait_pod_phase(&env, "polite", "Running").await;
    let pid_s = wait_for(WAIT, POLL, async || {
        container_pid(&vk, &uid(&s), "main").ok_or("pid")
    })
    .await;
    let pid_p = wait_for(WAIT, POLL, async || {
        container_pid(&vk, &uid(&p), "main").ok_or("pid")
    })
    .await;

    // The polite pod is gone (kubectl waits for that) long before its 600 s grace could end,
    // and its container's exit is the trap's 0, not the SIGKILL's 137.
    env.kubectl_ns(["delete", "pod", "polite", "--timeout=300s"])
        .await
        .assert_success();
    assert!(!alive(pid_p));
    assert_eq!(
        wait_exits(&vk, &env, "polite", "main", 1).await,
        [(0, "Completed".to_string())],
        "stopped by SIGTERM, not killed"
    );

    env.kubectl_ns(["delete", "pod", "stubborn", "--wait=false"])
        .await
        .assert_success();
    // SIGTERM arrives, and the container still runs after it: no SIGKILL came with it.
    let u = uid(&s);
    wait_for(WAIT, POLL, async || {
        let text = log_text(&vk, &u, "main", 0);
        match text.split_once("got TERM\n") {
            Some((_, after)) if after.contains("alive-") => Ok(()),
            _ => Err(format!("log so far: {text:?}")),
        }
    })
    .await;
    assert!(alive(pid_s), "running after SIGTERM");
    let pods: Api<Pod> = env.api();
    let deleting = pods.get("stubborn").await.expect("still in the API");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    // Then SIGKILL, and only then is the pod released.
    wait_gone(&env, "stubborn").await;
    assert!(!alive(pid_s));
    assert_eq!(
        wait_exits(&vk, &env, "stubborn", "main", 1).await,
        [(137, "Error".to_string())],
        "killed at the end of the grace period"
    );
    let pod_dir = vk.state_dir().join("pods").join(uid(&s));
    wait_for(WAIT, POLL, async || {
        if pod_dir.exists() {
            Err("pod files still there")
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn cleanup_leaves_no_process_behind() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let mut vk = start(&env);
    vk.wait_ready(&env).await;
    let mut uids = Vec::new();
    for i in 0..2 {
        let p = pod_with(
            &vk,
            &format!("c-{i}"),
            json!({"command": ["sleep", "3600"]}),
            json!({}),
        );
        uids.push(uid(&env.create(&p).await));
    }
    for i in 0..2 {
        wait_pod_phase(&env, &format!("c-{i}"), "Running").await;
    }
    let pids: Vec<u32> = uids
        .iter()
        .map(|u| container_pid(&vk, u, "main").expect("pid"))
        .collect();
    let state = vk.state_dir().join("pods").to_string_lossy().into_owned();
    let shims = || {
        std::process::Command::new("pgrep")
            .args(["-f", &state])
            .output()
            .expect("pgrep")
    };
    // The search finds the shims while they run (each names its pod directory)...
    let running = shims();
    assert_eq!(running.status.code(), Some(0), "{running:?}");
    vk.kill9();
    let out = vk.cleanup();
    assert!(out.contains("removed 2 backend pod(s)"), "{out}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived cleanup");
    }
    // ...and none after the cleanup.
    let leftovers = shims();
    assert_eq!(
        leftovers.status.code(),
        Some(1),
        "shims left (or pgrep failed): {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

/// A pod this host cannot run is refused by `create_pod` with an error, not accepted and left
/// Pending: the core fails it with the reason and a Warning event, and records no success.
#[tokio::test]
async fn a_pod_without_a_runnable_command_fails_with_a_clear_reason_and_no_success_event() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let mut pod = pod_with(&vk, "noimage", json!({"image": "nginx:1.25"}), json!({}));
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].command = None;
    }
    env.create(&pod).await;
    let p = wait_pod_phase(&env, "noimage", "Failed").await;
    let s = p.status.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("ProviderRejected"), "{s:?}");
    let msg = s.message.unwrap_or_default();
    assert!(
        msg.contains("InvalidImageName")
            && msg.contains("nginx:1.25")
            && msg.contains("names no command"),
        "{msg}"
    );
    let failed = wait_event(&env, "noimage", "ProviderCreateFailed").await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert!(
        failed
            .message
            .unwrap_or_default()
            .contains("InvalidImageName"),
        "the event names the kubelet's reason"
    );
    // The core emits ProviderRejected after ProviderCreateFailed, in the same reconcile as a
    // success event would have been: once it is there, a success event would be too.
    wait_event(&env, "noimage", "ProviderRejected").await;
    let reasons: Vec<String> = events_for(&env, "noimage")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        !reasons
            .iter()
            .any(|r| r == "ProviderCreateSuccess" || r == "Started"),
        "nothing was created or started: {reasons:?}"
    );
    // What a user sees: the reason in `kubectl get`, the kubelet's reason in `kubectl describe`.
    let get = env
        .kubectl_ns(["get", "pod", "noimage", "--no-headers"])
        .await
        .assert_success();
    assert!(get.stdout.contains("ProviderRejected"), "{}", get.stdout);
    let describe = env
        .kubectl_ns(["describe", "pod", "noimage"])
        .await
        .assert_success();
    assert!(
        describe.stdout.contains("InvalidImageName"),
        "{}",
        describe.stdout
    );
}

#[tokio::test]
async fn an_image_change_is_refused_honestly() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let pod = pod_with(
        &vk,
        "steady",
        json!({"command": ["sleep", "3600"]}),
        json!({}),
    );
    env.create(&pod).await;
    wait_pod(&env, "steady", "running", |p| {
        phase(p).as_deref() == Some("Running")
    })
    .await;
    env.kubectl_ns(["set", "image", "pod/steady", "main=busybox:1.36"])
        .await
        .assert_success();
    let ev = wait_event(&env, "steady", "ProviderUpdateUnsupported").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(
        ev.message
            .unwrap_or_default()
            .contains("does not change a running pod"),
        "the event says what happened"
    );
    // No success was claimed for the change.
    let reasons: Vec<String> = events_for(&env, "steady")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        !reasons.iter().any(|r| r == "ProviderUpdateSuccess"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn hooks_run_and_active_deadline_fails_the_pod() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start_json_logs(&env);
    vk.wait_ready(&env).await;
    // preStop calls back into the test over HTTP, so the test sees it run before the kill.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let pod = pod_with(
        &vk,
        "hooks",
        json!({
            "command": ["sh", "-c", "while [ ! -f /scratch/poststart ]; do sleep 0.1; done; trap 'echo got TERM; exit 0' TERM; echo saw poststart; while :; do sleep 0.1; done"],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            "lifecycle": {
                "postStart": {"exec": {"command": ["touch", "/scratch/poststart"]}},
                "preStop": {"httpGet": {"path": "/prestop", "port": port, "host": "127.0.0.1"}}
            }
        }),
        json!({"volumes": [{"name": "scratch", "emptyDir": {}}], "terminationGracePeriodSeconds": 2}),
    );
    let created = env.create(&pod).await;
    let u = uid(&created);
    wait_log(&vk, &u, "main", 0, "saw poststart").await;
    let pid = container_pid(&vk, &u, "main").expect("pid");
    let delete = tokio::spawn({
        let kubeconfig = env.kubeconfig_path().to_path_buf();
        let ns = env.namespace().to_string();
        async move {
            tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["-n", &ns, "delete", "pod", "hooks", "--wait=false"])
                .output()
                .await
        }
    });
    let (mut conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("preStop hook called")
        .expect("accept");
    let mut buf = vec![0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
        .await
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /prestop "));
    // The hook runs first: while it is unanswered the container runs and has had no SIGTERM.
    assert!(alive(pid), "the container runs during preStop");
    assert!(
        !log_text(&vk, &u, "main", 0).contains("got TERM"),
        "SIGTERM came before preStop returned"
    );
    let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"HTTP/1.0 200 OK\r\n\r\n").await;
    drop(conn);
    let out = delete.await.expect("join").expect("kubectl");
    assert!(out.status.success(), "{out:?}");
    // Then SIGTERM: the trap's exit 0 (the 2 s grace period's SIGKILL would be 137).
    assert_eq!(
        wait_exits(&vk, &env, "hooks", "main", 1).await,
        [(0, "Completed".to_string())]
    );

    let doomed = pod_with(
        &vk,
        "doomed",
        json!({"command": ["sleep", "3600"]}),
        json!({"activeDeadlineSeconds": 3, "terminationGracePeriodSeconds": 1}),
    );
    env.create(&doomed).await;
    let p = wait_pod_phase(&env, "doomed", "Failed").await;
    let status = p.status.clone().expect("status");
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    wait_event(&env, "doomed", "DeadlineExceeded").await;
    // The phase is Failed at once; the container is killed at the end of its grace period.
    let p = wait_pod(&env, "doomed", "a terminated container", |p| {
        cstatus(p, "main")
            .and_then(|s| s.state?.terminated)
            .is_some()
    })
    .await;
    let t = cstatus(&p, "main")
        .and_then(|s| s.state?.terminated)
        .expect("terminated");
    assert_eq!(
        t.exit_code, 137,
        "sleep as PID 1 ignores SIGTERM and is killed: {t:?}"
    );
}

#[tokio::test]
async fn failed_init_container_fails_a_never_restart_pod() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let mut v = serde_json::to_value(pod_with(
        &vk,
        "badinit",
        json!({"command": ["sleep", "3600"]}),
        json!({"restartPolicy": "Never"}),
    ))
    .expect("json");
    v["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox", "command": ["sh", "-c", "echo nope; exit 4"]}]);
    let pod: Pod = serde_json::from_value(v).expect("pod");
    env.create(&pod).await;
    let p = wait_pod_phase(&env, "badinit", "Failed").await;
    let init = p
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|l| l.first().cloned())
        .expect("init status");
    // The init container ran (it has a container ID and an exit code)...
    assert!(
        init.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("process://")),
        "{init:?}"
    );
    assert_eq!(
        init.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(4)
    );
    // ...the app container never did: still waiting, never given an ID, never restarted.
    let main = cstatus(&p, "main").expect("main status");
    assert_eq!(main.container_id, None, "{main:?}");
    assert_eq!(main.restart_count, 0);
    assert_eq!(
        main.state
            .and_then(|s| s.waiting)
            .and_then(|w| w.reason)
            .as_deref(),
        Some("PodInitializing"),
        "the app container never started"
    );
    assert!(container_pid(&vk, &uid(&p), "main").is_none());
}

#[tokio::test]
async fn memory_limit_is_enforced_or_the_node_says_it_is_not() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    let node = vk.wait_ready(&env).await;
    let limits = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "vkubelet.io/ResourceLimitsEnforced")
        .expect("the node reports whether limits are enforced");
    if limits.status != "True" {
        // A host without a writable cgroup hierarchy: the node must say why.
        assert_eq!(limits.reason.as_deref(), Some("CgroupsUnavailable"));
        let message = limits.message.unwrap_or_default();
        assert!(message.contains("NOT enforced"), "{message}");
        // CI machines have cgroups (the v1 memory controller at least): there, this is a bug.
        assert!(
            !vk_testkit::cluster_required(),
            "resource limits are not enforced on this node ({message}), and CI=true or \
             VKUBELET_TEST_REQUIRE_CLUSTER is set, so this test fails instead of skipping"
        );
        eprintln!(
            "skipping the OOM kill: cgroups unavailable here ({message}); checked the node condition only"
        );
        return;
    }
    assert_eq!(
        limits.reason.as_deref(),
        Some("CgroupsAvailable"),
        "{limits:?}"
    );
    let hog = pod_with(
        &vk,
        "hog",
        json!({
            "command": ["python3", "-c", "import time; b = bytearray(400 * 1024 * 1024); time.sleep(3600)"],
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}
        }),
        json!({"restartPolicy": "Never"}),
    );
    env.create(&hog).await;
    let p = wait_pod_phase(&env, "hog", "Failed").await;
    let t = cstatus(&p, "main")
        .and_then(|s| s.state?.terminated)
        .expect("terminated");
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"), "{t:?}");
    assert_eq!(t.exit_code, 137);
}
