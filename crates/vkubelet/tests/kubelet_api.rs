//! The kubelet HTTPS API end to end: `kubectl logs` (every option, `-f`), the node proxy's
//! `/stats/summary`, `/metrics/resource`, `/pods`, and authentication/authorization on the
//! kubelet port itself — through the real API server, with the process provider.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::{POLL, Vk, WAIT, pod_with, wait_pod_phase};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vk_testkit::{TestEnv, wait_for};

fn start(env: &TestEnv) -> Vk {
    Vk::start_process(env, json!({}), &[])
}

/// The kubelet port the node advertises (the harness asks for a free one).
async fn kubelet_port(env: &TestEnv, vk: &Vk) -> u16 {
    let node: Node = Api::all(env.client()).get(&vk.node).await.expect("node");
    let port = node
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .expect("daemonEndpoints");
    assert!(port > 0, "advertised port {port}");
    u16::try_from(port).expect("port")
}

/// A pod on this node running `script` with `sh -c`.
fn sh_pod(vk: &Vk, name: &str, script: &str) -> Pod {
    pod_with(
        vk,
        name,
        json!({ "command": ["sh", "-c", script] }),
        json!({}),
    )
}

/// `kubectl logs ARGS` in the test namespace; stdout on success.
async fn logs(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    env.kubectl_ns(all).await.assert_success().stdout
}

/// Wait until `kubectl logs pod` shows `needle`.
async fn wait_logs(env: &TestEnv, pod: &str, needle: &str) -> String {
    wait_for(WAIT, POLL, async || {
        let out = env.kubectl_ns(["logs", pod]).await;
        if out.success() && out.stdout.contains(needle) {
            Ok(out.stdout)
        } else {
            Err(out.to_string())
        }
    })
    .await
}

/// A direct HTTPS request to the kubelet port with curl (`-k`: the serving certificate is
/// self-signed). Returns the HTTP code and the body.
fn curl(port: u16, method: &str, path: &str, auth: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "20",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(auth)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl: {text:?} {out:?}")),
        body.to_string(),
    )
}

fn bearer(token: &str) -> [String; 2] {
    ["-H".to_string(), format!("Authorization: Bearer {token}")]
}

fn status_reason(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not a Status ({e}): {body}"));
    assert_eq!(v["kind"], "Status", "{body}");
    assert_eq!(v["status"], "Failure", "{body}");
    v["reason"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn kubectl_logs_options_through_the_api_server() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    // Three early lines, a pause long enough to tell them from the late ones by age, two late
    // lines, then quiet.
    env.create(&sh_pod(
        &vk,
        "talker",
        "echo early-1; echo early-2; echo early-3; sleep 12; echo late-1; echo late-2; exec sleep 3600",
    ))
    .await;
    wait_logs(&env, "talker", "late-2").await;

    let all = logs(&env, &["talker"]).await;
    assert_eq!(all, "early-1\nearly-2\nearly-3\nlate-1\nlate-2\n");
    // --since=6s right after the late lines: they are at most a few seconds old, the early
    // ones at least 12.
    let since = logs(&env, &["talker", "--since=6s"]).await;
    assert_eq!(since, "late-1\nlate-2\n");
    assert_eq!(
        logs(&env, &["talker", "--tail=2"]).await,
        "late-1\nlate-2\n"
    );
    assert_eq!(logs(&env, &["talker", "--tail=0"]).await, "");
    assert_eq!(
        logs(&env, &["talker", "--limit-bytes=11"]).await,
        "early-1\near"
    );

    let stamped = logs(&env, &["talker", "--timestamps"]).await;
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 5, "{stamped}");
    let mut stamps = Vec::new();
    for (line, want) in lines
        .iter()
        .zip(["early-1", "early-2", "early-3", "late-1", "late-2"])
    {
        let (ts, text) = line.split_once(' ').expect("timestamp, space, line");
        assert_eq!(text, want, "{stamped}");
        let ts: k8s_openapi::jiff::Timestamp = ts
            .parse()
            .unwrap_or_else(|e| panic!("{ts:?} is not RFC 3339: {e}"));
        stamps.push(ts);
    }
    // --since-time (whole seconds on the way through the API server) at the first late line.
    let since_time = stamps[3].strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(
        logs(&env, &["talker", &format!("--since-time={since_time}")]).await,
        "late-1\nlate-2\n"
    );

    // A pod that never restarted has no previous log.
    let out = env.kubectl_ns(["logs", "talker", "--previous"]).await;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("previous"), "{out}");
}

#[tokio::test]
async fn kubectl_logs_previous_after_a_restart() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    // Each instance counts itself in an emptyDir; the first exits, the second stays.
    let script = "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; \
                  echo instance-$n; if [ $n -ge 2 ]; then exec sleep 3600; fi; exit 1";
    let pod = pod_with(
        &vk,
        "restarter",
        json!({ "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}] }),
        json!({ "restartPolicy": "Always", "volumes": [{"name": "data", "emptyDir": {}}] }),
    );
    env.create(&pod).await;
    wait_logs(&env, "restarter", "instance-2").await;
    assert_eq!(logs(&env, &["restarter"]).await, "instance-2\n");
    assert_eq!(
        logs(&env, &["restarter", "--previous"]).await,
        "instance-1\n"
    );
}

/// A container that prints each line the test sends it over TCP (pods share the host network)
/// and exits 0 when the test closes the connection: its output is written only when, and in
/// the order, the test decides.
const RELAY: &str = r#"
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for line in conn.makefile("r"):
    print(line.rstrip("\n"), flush=True)
"#;

/// Create a [`RELAY`] pod and return the connection that feeds it, once its container runs.
async fn relay(
    env: &TestEnv,
    vk: &Vk,
    name: &str,
    spec: serde_json::Value,
) -> tokio::net::TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    env.create(&pod_with(
        vk,
        name,
        json!({ "command": ["python3", "-u", "-c", RELAY, port] }),
        spec,
    ))
    .await;
    let (conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap_or_else(|_| panic!("{name}'s container never connected"))
        .expect("accept");
    conn
}

async fn send(feed: &mut tokio::net::TcpStream, line: &str) {
    feed.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("feed the container");
}

/// `kubectl logs -f ARGS` as a child, with its stdout as lines.
fn follow(
    env: &TestEnv,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(
        std::env::var("VKUBELET_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
    )
    .arg("--kubeconfig")
    .arg(env.kubeconfig_path())
    .args(["-n", env.namespace(), "logs", "-f"])
    .args(args)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("kubectl logs -f");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    want: &str,
) -> Option<String> {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("kubectl logs -f: no line while waiting for {want:?}"))
        .expect("read")
}

#[tokio::test]
async fn kubectl_logs_follow_streams_lines_as_they_are_written() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let mut feed = relay(&env, &vk, "ticker", json!({})).await;
    send(&mut feed, "tick-1").await;
    wait_logs(&env, "ticker", "tick-1").await;

    let (mut child, mut lines) = follow(&env, &["ticker", "--tail=1"]);
    assert_eq!(
        next_line(&mut lines, "tick-1").await.as_deref(),
        Some("tick-1"),
        "--tail=1 starts at the last line"
    );
    // Each tick is written only after the previous one came through the open follow: lines
    // arrive one by one as they are written, in order, none lost, none repeated.
    for n in 2..=7 {
        let tick = format!("tick-{n}");
        send(&mut feed, &tick).await;
        assert_eq!(next_line(&mut lines, &tick).await, Some(tick));
    }
    drop(lines);
    let _ = child.kill().await;

    // A container that ends ends the follow.
    let mut feed = relay(&env, &vk, "brief", json!({ "restartPolicy": "Never" })).await;
    send(&mut feed, "one").await;
    wait_logs(&env, "brief", "one").await;
    let (child, mut lines) = follow(&env, &["brief"]);
    // The container cannot end before this: it waits for the test's next line.
    assert_eq!(next_line(&mut lines, "one").await.as_deref(), Some("one"));
    send(&mut feed, "two").await;
    send(&mut feed, "three").await;
    drop(feed); // end of input: the container exits 0
    for want in ["two", "three"] {
        assert_eq!(next_line(&mut lines, want).await.as_deref(), Some(want));
    }
    assert_eq!(
        next_line(&mut lines, "the end of the stream").await,
        None,
        "the follow ends with the container"
    );
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("kubectl logs -f exits once the container ended")
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let p = wait_pod_phase(&env, "brief", "Succeeded").await;
    let t = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c[0].state.clone()?.terminated)
        .expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
}

#[tokio::test]
async fn stats_metrics_and_pods_through_the_node_proxy() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let busy = pod_with(
        &vk,
        "busy",
        json!({ "command": ["sh", "-c", "while :; do :; done"],
                "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}} }),
        json!({}),
    );
    env.create(&busy).await;
    let pod = wait_pod_phase(&env, "busy", "Running").await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let ns = env.namespace().to_string();
    let proxy = |path: &str| format!("/api/v1/nodes/{}/proxy{path}", vk.node);

    // The first scrape has cumulative CPU; a later one also the rate (from two samples).
    let summary = wait_for(WAIT, POLL, async || {
        let out = env
            .kubectl(["get", "--raw", &proxy("/stats/summary")])
            .await;
        if !out.success() {
            return Err(out.to_string());
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
        let cpu = &v["pods"][0]["containers"][0]["cpu"];
        if cpu["usageNanoCores"].as_u64().unwrap_or(0) > 0 {
            Ok(v)
        } else {
            Err(out.stdout)
        }
    })
    .await;
    assert_eq!(summary["node"]["nodeName"], vk.node.as_str());
    let p = &summary["pods"][0];
    assert_eq!(
        p["podRef"],
        json!({"name": "busy", "namespace": ns, "uid": uid})
    );
    let c = &p["containers"][0];
    assert_eq!(c["name"], "main");
    assert!(
        c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0,
        "{c}"
    );
    // In nanocores, not some other unit: a busy loop (limited to 200m) uses more than a
    // thousandth of a core and less than the machine's two.
    let nano_cores = c["cpu"]["usageNanoCores"].as_u64().unwrap();
    assert!(
        (1_000_000..=2_000_000_000).contains(&nano_cores),
        "{nano_cores} nanocores"
    );
    assert!(c["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{c}");
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );

    let text = env
        .kubectl(["get", "--raw", &proxy("/metrics/resource")])
        .await
        .assert_success()
        .stdout;
    let sample = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad sample {line:?}"))
    };
    let labels = format!(r#"{{container="main",namespace="{ns}",pod="busy"}} "#);
    assert!(sample(&format!("container_cpu_usage_seconds_total{labels}")) > 0.0);
    assert!(sample(&format!("container_memory_working_set_bytes{labels}")) > 0.0);
    assert!(
        sample(&format!(
            r#"pod_cpu_usage_seconds_total{{namespace="{ns}",pod="busy"}} "#
        )) > 0.0
    );
    assert!(sample("node_cpu_usage_seconds_total ") > 0.0);
    assert!(sample("node_memory_working_set_bytes ") > 0.0);
    assert_eq!(sample("scrape_error "), 0.0);
    assert!(
        text.contains("# TYPE container_cpu_usage_seconds_total counter"),
        "{text}"
    );

    let pods = env
        .kubectl(["get", "--raw", &proxy("/pods")])
        .await
        .assert_success()
        .stdout;
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("PodList");
    assert_eq!(pods["kind"], "PodList");
    let item = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["metadata"]["uid"] == uid.as_str())
        .unwrap_or_else(|| panic!("busy not in /pods: {pods}"));
    assert_eq!(item["spec"]["containers"][0]["name"], "main");
    assert_eq!(item["spec"]["nodeName"], vk.node.as_str());

    let running = env
        .kubectl(["get", "--raw", &proxy("/runningpods/")])
        .await
        .assert_success()
        .stdout;
    assert!(running.contains(&uid), "{running}");
    let healthz = env
        .kubectl(["get", "--raw", &proxy("/healthz")])
        .await
        .assert_success();
    assert_eq!(healthz.stdout.trim(), "ok");
    // The process's own metrics count those requests.
    let metrics = env
        .kubectl(["get", "--raw", &proxy("/metrics")])
        .await
        .assert_success()
        .stdout;
    let want = format!(
        r#"vkubelet_kubelet_api_requests_total{{node="{}",route="stats",code="200"}}"#,
        vk.node
    );
    assert!(metrics.contains(&want), "no {want} in\n{metrics}");
}

/// RBAC objects of one test (cluster-scoped, so deleted explicitly, also when the test fails).
struct Rbac {
    kubeconfig: std::path::PathBuf,
    name: String,
}

impl Drop for Rbac {
    fn drop(&mut self) {
        // kubectl, not the test's client: Drop cannot await, and blocking the test's runtime
        // would stall the client's own background tasks.
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "clusterrolebinding,clusterrole", &self.name])
            .args(["--ignore-not-found", "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A ServiceAccount's legacy token (the 1.20 token controller makes one per account).
async fn sa_token(env: &TestEnv, name: &str) -> String {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    env.create(&sa).await;
    let secrets: Api<Secret> = env.api();
    wait_for(WAIT, POLL, async || {
        let list = secrets
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|s| {
                s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                    && s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/service-account.name"))
                        .is_some_and(|n| n == name)
            })
            .and_then(|s| s.data?.remove("token"))
            .map(|t| String::from_utf8(t.0).expect("token text"))
            .ok_or_else(|| format!("no token secret for {name} yet"))
    })
    .await
}

/// Wait until the API server's RBAC grants (or refuses) `user` `verb` on `nodes/<sub>`, so the
/// kubelet's first SubjectAccessReview sees the final answer.
async fn wait_rbac(env: &TestEnv, user: &str, verb: &str, sub: &str, node: &str, want: bool) {
    let api: Api<SubjectAccessReview> = Api::all(env.client());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                resource: Some("nodes".into()),
                subresource: Some(sub.into()),
                verb: Some(verb.into()),
                name: Some(node.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    wait_for(WAIT, POLL, async || {
        let out = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| e.to_string())?;
        let allowed = out.status.is_some_and(|s| s.allowed);
        if allowed == want {
            Ok(())
        } else {
            Err(format!("allowed={allowed}"))
        }
    })
    .await
}

#[tokio::test]
async fn kubelet_port_authenticates_and_authorizes_with_the_kubelet_mapping() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let vk = start(&env);
    vk.wait_ready(&env).await;
    let port = kubelet_port(&env, &vk).await;
    env.create(&vk.pod("target").build()).await;
    wait_pod_phase(&env, "target", "Running").await;
    let ns = env.namespace().to_string();
    let exec_path = format!("/exec/{ns}/target/main?command=true&output=1");
    let logs_path = format!("/containerLogs/{ns}/target/main");

    // No credentials: 401 with a Status, for every path.
    for path in ["/pods", "/healthz", exec_path.as_str()] {
        let (code, body) = curl(port, "GET", path, &[]);
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(status_reason(&body), "Unauthorized");
    }
    let (code, body) = curl(
        port,
        "GET",
        "/pods",
        &bearer("not-a-token").each_ref().map(String::as_str),
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(status_reason(&body), "Unauthorized");

    // A client certificate from the cluster CA (admin, in system:masters).
    let pki = env.kubeconfig_path().with_file_name("pki");
    let cert = pki.join("admin.crt").to_string_lossy().into_owned();
    let key = pki.join("admin.key").to_string_lossy().into_owned();
    let (code, body) = curl(port, "GET", "/healthz", &["--cert", &cert, "--key", &key]);
    assert_eq!((code, body.as_str()), (200, "ok"));

    // A ServiceAccount without RBAC on the node: authenticated, then forbidden.
    let nobody = sa_token(&env, "nobody").await;
    let nobody = bearer(&nobody);
    let nobody = nobody.each_ref().map(String::as_str);
    for (method, path, verb) in [
        ("GET", "/pods", "get"),
        ("POST", exec_path.as_str(), "create"),
    ] {
        let (code, body) = curl(port, method, path, &nobody);
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert_eq!(status_reason(&body), "Forbidden");
        let want = format!(
            "user=system:serviceaccount:{ns}:nobody, verb={verb}, resource=nodes, subresource(s)=[proxy]"
        );
        assert!(
            body.contains(&want),
            "{method} {path}: no {want:?} in {body}"
        );
    }

    // Another account with nodes/proxy (get, create) on this node only.
    let name = format!("{ns}-kubelet-proxy");
    let _rbac = Rbac {
        kubeconfig: env.kubeconfig_path().to_path_buf(),
        name: name.clone(),
    };
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "resourceNames": [vk.node],
                   "verbs": ["get", "create"]}]
    }))
    .expect("role");
    Api::<ClusterRole>::all(env.client())
        .create(&PostParams::default(), &role)
        .await
        .expect("create ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "prober", "namespace": ns}]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(env.client())
        .create(&PostParams::default(), &binding)
        .await
        .expect("create ClusterRoleBinding");
    let prober_user = format!("system:serviceaccount:{ns}:prober");
    let token = sa_token(&env, "prober").await;
    wait_rbac(&env, &prober_user, "create", "proxy", &vk.node, true).await;
    wait_rbac(&env, &prober_user, "get", "proxy", &vk.node, true).await;
    let prober = bearer(&token);
    let prober = prober.each_ref().map(String::as_str);

    let (code, body) = curl(port, "GET", "/pods", &prober);
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("PodList");
    assert_eq!(list["kind"], "PodList");
    assert!(body.contains("\"target\""), "{body}");
    // exec is allowed past auth and reaches the streaming layer, which refuses a request
    // without upgrade headers (and nothing else: not 401/403, not a 5xx).
    let (code, body) = curl(port, "POST", &exec_path, &prober);
    assert_eq!(code, 400, "{body}");
    assert_eq!(status_reason(&body), "BadRequest");
    assert!(body.contains("missing upgrade headers"), "{body}");
    // containerLogs is nodes/proxy for the kubelet, not nodes/log.
    let (code, body) = curl(port, "GET", &logs_path, &prober);
    assert_eq!(code, 200, "{body}");
    // nodes/stats and nodes/metrics were not granted.
    for (path, sub) in [
        ("/stats/summary", "stats"),
        ("/metrics/resource", "metrics"),
        ("/metrics", "metrics"),
    ] {
        let (code, body) = curl(port, "GET", path, &prober);
        assert_eq!(code, 403, "{path}: {body}");
        assert_eq!(status_reason(&body), "Forbidden");
        let want = format!("verb=get, resource=nodes, subresource(s)=[{sub}]");
        assert!(body.contains(&want), "{path}: no {want:?} in {body}");
    }
    // Unknown paths are authorized (as nodes/proxy) before they are found missing.
    let (code, body) = curl(port, "GET", "/no/such/thing", &prober);
    assert_eq!(code, 404, "{body}");
    assert_eq!(status_reason(&body), "NotFound");
    let (code, body) = curl(port, "GET", "/no/such/thing", &nobody);
    assert_eq!(code, 403, "{body}");
    assert_eq!(status_reason(&body), "Forbidden");
    assert!(body.contains("subresource(s)=[proxy]"), "{body}");
}
