//! vkubelet installed from deploy/ into the cluster it serves. The test control plane has no
//! real kubelet, so a bootstrap vkubelet node (process provider) runs the Deployment's replicas
//! as sandboxed processes: its `images:` setting maps deploy/'s image to a directory holding the
//! freshly built binary. The replicas then run exactly as in a cluster: with the
//! ServiceAccount's token and in-cluster config, registering their own virtual nodes. They run
//! deploy/overlays/test-kube: the kube provider, bursting into the second control plane (B),
//! whose pods a `sim` vkubelet node on B runs, recording every pod it ever created — so a
//! takeover, a rollout and the uninstall are judged from the backend's own records. Also here:
//! deploy/'s ClusterRole with one verb taken out fails loudly, naming the verb.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    DEPLOY_NAMESPACE, POLL, Vk, backend_cluster, deploy_dir, is_ready, phase, restarts,
    try_wait_running,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vk_testkit::{PodBuilder, TestEnv, wait_for};

/// The virtual nodes of deploy/overlays/test-kube/nodes.yaml, and their clusterID.
const TEST_NODES: [&str; 2] = ["vk-incluster-a", "vk-incluster-b"];
const TEST_CLUSTER_ID: &str = "vk-incluster-e2e";
/// The webhook configuration the replicas register (vkubelet's default name).
const WEBHOOK: &str = "vkubelet";
/// deploy/uninstall/job.yaml's Job.
const UNINSTALL_JOB: &str = "vkubelet-uninstall";
/// Pods in the burst the leader is killed in.
const BURST: usize = 1000;
/// The Deployment's pods (deploy/base/deployment.yaml).
const SELECTOR: &str = "app.kubernetes.io/name=vkubelet";
/// Starting two replicas means the ServiceAccount's token Secret first (on 1.20 the pods are
/// refused until the tokens controller made it), then two processes that list and register.
const INSTALL_WAIT: Duration = Duration::from_secs(180);
/// A killed leader's Lease runs out (15 s, deploy/'s default) before the other replica takes
/// the node, which then re-lists both clusters.
const TAKEOVER_WAIT: Duration = Duration::from_secs(120);
/// The burst's pods through both control planes on a busy 2-core machine.
const BURST_WAIT: Duration = Duration::from_secs(600);
/// The uninstall: the replicas stop, then B's pods and namespace are deleted.
const UNINSTALL_WAIT: Duration = Duration::from_secs(420);

/// Requests the API server's Priority and Fairness dispatched through deploy/'s FlowSchema
/// `vkubelet-leases` at the `leader-election` level (its `/metrics`; absent until the first).
async fn lease_requests_dispatched(env: &TestEnv) -> Result<f64, String> {
    let metrics = env
        .kubectl(["get", "--raw", "/metrics"])
        .await
        .assert_success();
    let series = "apiserver_flowcontrol_dispatched_requests_total{\
                  flow_schema=\"vkubelet-leases\",priority_level=\"leader-election\"}";
    match metrics.stdout.lines().find_map(|l| l.strip_prefix(series)) {
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e| format!("{series}: {value}: {e}")),
        None => Ok(0.0),
    }
}

/// `kubectl apply -k`'s rendering of a kustomization, as JSON objects.
async fn render(env: &TestEnv, dir: &Path) -> Vec<serde_json::Value> {
    let out = env
        .kubectl([
            "apply",
            "-k",
            &dir.to_string_lossy(),
            "--dry-run=client",
            "-o",
            "json",
        ])
        .await
        .assert_success();
    objects(&out.stdout)
}

/// Objects from kubectl's `-o json`: one List, or one object after another.
fn objects(json: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for value in serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>() {
        let value = value.expect("kubectl json");
        match value["items"].as_array() {
            Some(items) if value["kind"] == "List" => all.extend(items.iter().cloned()),
            _ => all.push(value),
        }
    }
    all
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

/// A read-only root for the image: the binary at `/vkubelet`, `setpriv` (the process provider
/// switches to the pod's `runAsUser` with it, inside the root) and the shared libraries `ldd`
/// says they load, at their own paths (the test build is not static, unlike the Containerfile's).
fn image_root(binary: &Path, root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    // Only what any image has: the volumes' mount points (/var/run/secrets/..., /etc/vkubelet/...)
    // are made by the process provider, traversable by the pod's non-root user (65532).
    for d in ["proc", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("root dirs");
    }
    let target = root.join("vkubelet");
    if std::fs::hard_link(binary, &target).is_err() {
        std::fs::copy(binary, &target).expect("copy vkubelet into the image root");
    }
    let setpriv = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v setpriv"])
            .output()
            .expect("look for setpriv")
            .stdout,
    )
    .expect("path");
    let setpriv = setpriv.trim();
    assert!(!setpriv.is_empty(), "setpriv (util-linux) is required");
    copy_into(root, setpriv);
    for exe in [binary.to_string_lossy().as_ref(), setpriv] {
        let out = Command::new("ldd").arg(exe).output().expect("run ldd");
        assert!(out.status.success(), "ldd {exe}");
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            copy_into(root, lib);
        }
    }
}

/// Copy the host file `path` to the same path under `root`.
fn copy_into(root: &Path, path: &str) {
    let dest = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().expect("parent dir")).expect("parent dir");
    std::fs::copy(path, &dest).unwrap_or_else(|e| panic!("copy {path}: {e}"));
}

/// `to` as seen from `from` (kustomize takes no absolute paths); both absolute.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

/// Everything the install made, removed on drop while the bootstrap node still runs (declare
/// it after the bootstrap `Vk`): the replicas' pods must be stopped by their node, or their
/// namespace would wait for them forever. After a failed test also what the uninstall would
/// have removed: the nodes, their Leases, the webhook configuration and B's managed namespace.
struct Install {
    admin: PathBuf,
    backend_admin: PathBuf,
    kustomization: PathBuf,
}

impl Drop for Install {
    fn drop(&mut self) {
        let kubectl = |kubeconfig: &Path, args: &[&str]| {
            let _ = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let admin = self.admin.as_path();
        let dir = self.kustomization.to_string_lossy().into_owned();
        kubectl(
            admin,
            &["-n", DEPLOY_NAMESPACE, "delete", "job", UNINSTALL_JOB],
        );
        kubectl(
            admin,
            &[
                "delete",
                "-k",
                &dir,
                "--ignore-not-found",
                "--wait=true",
                "--timeout=90s",
            ],
        );
        kubectl(
            admin,
            &[
                "-n",
                DEPLOY_NAMESPACE,
                "delete",
                "pods",
                "--all",
                "--force",
                "--grace-period=0",
            ],
        );
        kubectl(
            admin,
            &[
                "delete",
                "mutatingwebhookconfiguration",
                WEBHOOK,
                "--ignore-not-found",
            ],
        );
        for node in TEST_NODES {
            kubectl(
                admin,
                &["delete", "node", node, "--ignore-not-found", "--wait=false"],
            );
            kubectl(
                admin,
                &[
                    "-n",
                    "kube-node-lease",
                    "delete",
                    "lease",
                    node,
                    "--ignore-not-found",
                ],
            );
        }
        kubectl(
            &self.backend_admin,
            &[
                "delete",
                "namespace",
                &managed_namespace(),
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

/// The namespace on B that both test nodes' backend pods live in (deploy/overlays/test-kube's
/// clusterID).
fn managed_namespace() -> String {
    vk_provider_kube::managed_namespace_name(TEST_CLUSTER_ID)
}

/// Every log line of the replica pod `uid` (all its instances), from the bootstrap node's state.
fn replica_log(bootstrap: &Vk, uid: &str) -> String {
    let dir = bootstrap
        .dir
        .join("state/pods")
        .join(uid)
        .join("containers/vkubelet");
    // `<restart>.log` and its rotated `<restart>.log.<k>`.
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".log"))
        })
        .collect();
    logs.sort();
    logs.iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// The replicas' logs, for a failure message.
fn replica_logs(bootstrap: &Vk) -> String {
    let mut out = String::new();
    let pods = bootstrap.dir.join("state").join("pods");
    for entry in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        // The newest instance's log: `<restartCount>.log`.
        let dir = entry.path().join("containers/vkubelet");
        let newest = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max_by_key(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok())
            });
        let Some(log) = newest else { continue };
        if let Ok(text) = std::fs::read_to_string(&log) {
            // The last warnings and errors, then the last lines: what went wrong is rarely
            // what was logged last.
            let mut warned: Vec<&str> = text
                .lines()
                .rev()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(20)
                .collect();
            warned.reverse();
            out.push_str(&format!("--- {} (warnings)\n", log.display()));
            for l in warned {
                out.push_str(l);
                out.push('\n');
            }
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", log.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The host pid of the `vkubelet run` process inside the replica pod `uid` on the bootstrap
/// node: the container's process tree (from its shim's record, `shim.json`) searched for it.
fn replica_process(bootstrap: &Vk, uid: &str) -> Option<u32> {
    let shim = bootstrap
        .dir
        .join("state/pods")
        .join(uid)
        .join("containers/vkubelet/shim.json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shim).ok()?).ok()?;
    let container = u32::try_from(record["container"]["pid"].as_u64()?).ok()?;
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so after the last ')'.
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let argv = |pid: u32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut tree = vec![container];
    let mut changed = true;
    while changed {
        changed = false;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if !tree.contains(&pid) && parent_of(pid).is_some_and(|p| tree.contains(&p)) {
                tree.push(pid);
                changed = true;
            }
        }
    }
    tree.into_iter().find(|pid| {
        let a = argv(*pid);
        a.first().is_some_and(|c| c == "/vkubelet") && a.get(1).is_some_and(|c| c == "run")
    })
}

/// Who holds each test node's election Lease (`<pod name>_<pid>_<start>`), once all are held.
async fn holders(env: &TestEnv) -> Result<BTreeMap<String, String>, String> {
    let leases: Api<Lease> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    let mut out = BTreeMap::new();
    for node in TEST_NODES {
        let name = format!("vkubelet-{node}");
        let holder = leases
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no Lease {name}"))?
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("Lease {name} has no holder"))?;
        out.insert(node.to_string(), holder);
    }
    Ok(out)
}

/// The replica (pod name → uid) whose identity `holder` is.
fn holder_pod<'a>(holder: &str, replicas: &'a BTreeMap<String, String>) -> Option<&'a str> {
    replicas
        .keys()
        .find(|name| holder.starts_with(&format!("{name}_")))
        .map(String::as_str)
}

/// The Deployment's pods, name → uid, when exactly two exist and both are Running and Ready on
/// the bootstrap node.
async fn two_replicas(env: &TestEnv, bootstrap: &Vk) -> Result<BTreeMap<String, String>, String> {
    let pods: Api<Pod> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    let lp = ListParams::default().labels(SELECTOR);
    let list = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
    // Ready too: a container in a crash loop leaves its pod Running.
    let running: Vec<&Pod> = list
        .iter()
        .filter(|p| phase(p).as_deref() == Some("Running") && is_ready(p))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if running.len() != 2 || list.len() != 2 {
        return Err(format!(
            "{} of {} replicas running and ready: {:?}\n{}",
            running.len(),
            list.len(),
            list.iter()
                .map(|p| (p.metadata.name.clone(), phase(p), is_ready(p)))
                .collect::<Vec<_>>(),
            replica_logs(bootstrap)
        ));
    }
    for p in &list {
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(bootstrap.node.as_str())
        );
    }
    Ok(list
        .iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p.metadata.uid.clone()?)))
        .collect())
}

/// Wait until every node's Lease is held by one of `replicas` whose log says it has synced
/// that node with the API and the backend (so it has re-listed both and adopted what is
/// there); returns node → holder pod.
async fn wait_synced_leaders(
    env: &TestEnv,
    bootstrap: &Vk,
    replicas: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    wait_for(TAKEOVER_WAIT, POLL, async || {
        let held = holders(env).await?;
        let mut out = BTreeMap::new();
        for (node, holder) in &held {
            let pod = holder_pod(holder, replicas)
                .ok_or_else(|| format!("{node} held by {holder}, not one of {replicas:?}"))?;
            let log = replica_log(bootstrap, &replicas[pod]);
            let synced = log.lines().any(|l| {
                l.contains("pod controller synced with API and backend")
                    && l.contains(&format!("\"node\":\"{node}\""))
            });
            if !synced {
                return Err(format!("{pod} leads {node} but has not synced it yet"));
            }
            out.insert(node.clone(), pod.to_string());
        }
        Ok(out)
    })
    .await
}

/// B's pods of the install (its managed namespace).
async fn backend_pods(b: &TestEnv) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(b.client(), &managed_namespace());
    pods.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

/// The API pod a backend pod stands for.
fn source_uid(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("vkubelet.io/pod-uid"))
        .cloned()
        .unwrap_or_default()
}

/// The burst's pods on A once all `n` are Running. On timeout the failure shows what the
/// stragglers say and what the replicas logged: a count alone cannot be diagnosed from CI.
async fn wait_burst_running(env: &TestEnv, bootstrap: &Vk, n: usize) -> Vec<Pod> {
    match try_wait_running(env, "app=burst", n, BURST_WAIT).await {
        Ok(list) => list,
        Err(timeout) => panic!("wait_for timed out: {timeout}\n{}", replica_logs(bootstrap)),
    }
}

/// B holds exactly one Running pod per API pod of `api` (by source UID) and nothing else, and
/// B's runner created each of them exactly once (its journal's create history); returns B's pods
/// by UID.
async fn assert_backend_is_the_api(b: &TestEnv, vb: &Vk, api: &[Pod]) -> BTreeSet<String> {
    let sources: BTreeSet<String> = api.iter().map(uid).collect();
    let backend = wait_for(BURST_WAIT, POLL, async || {
        let pods = backend_pods(b).await;
        let got: BTreeSet<String> = pods.iter().map(source_uid).collect();
        let running = pods
            .iter()
            .filter(|p| phase(p).as_deref() == Some("Running"))
            .count();
        let created = vb.backend_creates().len();
        if got == sources
            && pods.len() == sources.len()
            && running == pods.len()
            && created >= pods.len()
        {
            Ok(pods)
        } else {
            Err(format!(
                "{} backend pods ({running} running, {created} created) for {} API pods",
                pods.len(),
                sources.len()
            ))
        }
    })
    .await;
    let backend_uids: BTreeSet<String> = backend.iter().map(uid).collect();
    let creates = vb.backend_creates();
    let unique: BTreeSet<String> = creates.iter().cloned().collect();
    assert_eq!(
        creates.len(),
        unique.len(),
        "B's runner created some backend pod twice"
    );
    assert_eq!(
        unique, backend_uids,
        "B's runner created exactly the backend pods B holds: none was replaced, none is extra"
    );
    backend_uids
}

/// Write the test's kustomization into `kdir`: `overlay` with cluster B's kubeconfig as the
/// backend credentials and the Deployment pinned to the bootstrap node (the cluster may have
/// other untainted test nodes).
fn write_kustomization(kdir: &Path, overlay: &Path, backend_kubeconfig: &str, node: &str) {
    std::fs::write(kdir.join("backend.kubeconfig"), backend_kubeconfig).expect("B's kubeconfig");
    std::fs::write(
        kdir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {}\n\
             generatorOptions:\n  disableNameSuffixHash: true\n\
             secretGenerator:\n  - name: vkubelet-backend\n    namespace: {DEPLOY_NAMESPACE}\n    \
             behavior: replace\n    files:\n      - kubeconfig=backend.kubeconfig\n\
             patches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      \
             metadata: {{name: vkubelet, namespace: {DEPLOY_NAMESPACE}}}\n      \
             spec: {{template: {{spec: {{nodeSelector: {{kubernetes.io/hostname: {node}}}}}}}}}\n",
            relative(kdir, overlay).display(),
        ),
    )
    .expect("write kustomization");
}

/// deploy/uninstall/job.yaml as it runs on the bootstrap node: pinned there, with the test's
/// API server address (as overlays/test-kube gives the replicas). Written to `kdir`.
async fn uninstall_job(env: &TestEnv, kdir: &Path, node: &str) -> PathBuf {
    let out = env
        .kubectl([
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &deploy_dir().join("uninstall/job.yaml").to_string_lossy(),
        ])
        .await
        .assert_success();
    let mut job = objects(&out.stdout).remove(0);
    let spec = &mut job["spec"]["template"]["spec"];
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    let env_vars = spec["containers"][0]["env"]
        .as_array_mut()
        .expect("the Job's env");
    env_vars.push(json!({"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}));
    env_vars.push(json!({"name": "KUBERNETES_SERVICE_PORT", "valueFrom": {
        "configMapKeyRef": {"name": "vkubelet-test-apiserver", "key": "port"}}}));
    let path = kdir.join("uninstall-job.json");
    std::fs::write(&path, serde_json::to_vec(&job).expect("json")).expect("write the Job");
    path
}

/// The output of the uninstall Job's pod `uid` on the bootstrap node (all its instances).
fn job_log(bootstrap: &Vk, uid: &str) -> String {
    let dir = bootstrap
        .dir
        .join("state/pods")
        .join(uid)
        .join("containers/uninstall");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Run the uninstall Job to completion; its log. The Job retries a failed attempt
/// (`backoffLimit`), so the first attempt must be the one that succeeded.
async fn run_uninstall_job(env: &TestEnv, job: &Path, bootstrap: &Vk) -> String {
    env.kubectl([
        "-n",
        DEPLOY_NAMESPACE,
        "delete",
        "job",
        UNINSTALL_JOB,
        "--ignore-not-found",
        "--wait=true",
    ])
    .await
    .assert_success();
    env.kubectl(["apply", "-f", &job.to_string_lossy()])
        .await
        .assert_success();
    let jobs: Api<Job> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    let lp = ListParams::default().labels(&format!("job-name={UNINSTALL_JOB}"));
    // The attempts' output as last seen on the bootstrap node (a failed Job's pods are deleted).
    let mut seen = String::new();
    let done = vk_testkit::try_wait_for(UNINSTALL_WAIT, POLL, async || {
        let attempts = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
        let output: String = attempts
            .iter()
            .map(|p| job_log(bootstrap, &uid(p)))
            .collect();
        if !output.is_empty() {
            seen = output;
        }
        let j = jobs.get(UNINSTALL_JOB).await.map_err(|e| e.to_string())?;
        let status = j.status.unwrap_or_default();
        if status.succeeded.unwrap_or(0) >= 1 {
            return Ok(Ok(()));
        }
        if status.failed.unwrap_or(0) >= 1
            || status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Failed" && c.status == "True")
        {
            return Ok(Err(()));
        }
        let attempts: Vec<(Option<String>, i32)> =
            attempts.iter().map(|p| (phase(p), restarts(p))).collect();
        Err(format!("uninstall Job not done: {attempts:?}"))
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(())) => panic!("the uninstall Job failed:\n{seen}"),
        Err(e) => panic!("{e}\n{seen}"),
    }
    let attempts = pods.list(&lp).await.expect("the Job's pods").items;
    let log = env
        .kubectl([
            "-n",
            DEPLOY_NAMESPACE,
            "logs",
            &format!("job/{UNINSTALL_JOB}"),
        ])
        .await
        .assert_success()
        .stdout;
    assert_eq!(attempts.len(), 1, "one attempt: {log}");
    assert_eq!(
        restarts(&attempts[0]),
        0,
        "the first attempt succeeded: {log}"
    );
    log
}

/// deploy/ installed on the test cluster, bursting into cluster B as in production: two
/// replicas, each node led by one of them; kill -9 of a node's leader process in the middle of
/// a burst of pods hands the node to the other replica with no pod lost, created twice on B,
/// restarted or orphaned (counted from B's own records); `kubectl rollout restart` re-creates
/// nothing and changes no pod; the uninstall Job, run on the bootstrap node, leaves no backend
/// object, Node, Lease or webhook configuration, and a second run is harmless.
#[tokio::test]
async fn deploy_runs_in_cluster_survives_kill9_and_a_rollout_then_uninstalls_to_nothing() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let Some(b) = backend_cluster().await else {
        return;
    };
    let b = b.namespace("in-cluster-backend").await;
    // B's node runs the backend pods: a sim node whose state directory records every create.
    let mut vb = Vk::start_node(
        &b,
        "vb",
        json!({}),
        &["--node-label", "vkubelet.io/e2e-backend=in-cluster"],
    );
    vb.wait_ready(&b).await;
    // What the replicas reach B with: its admin credentials, inline, at its loopback address.
    let backend_kubeconfig = b
        .kubectl(["config", "view", "--raw", "--flatten", "--minify"])
        .await
        .assert_success()
        .stdout;
    assert!(
        backend_kubeconfig.contains("server: https://127.0.0.1:"),
        "B is reached on loopback only: {backend_kubeconfig}"
    );

    let overlay = deploy_dir().join("overlays/test-kube");
    let overlay = std::fs::canonicalize(&overlay).expect("deploy/overlays/test-kube");
    let rendered = render(&env, &overlay).await;
    let deployment = find(&rendered, "Deployment", "vkubelet");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image")
        .to_string();
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "the base runs two replicas"
    );

    // The bootstrap node: deploy/'s image is the freshly built binary.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("image-{}", env.namespace()));
    image_root(Path::new(env!("CARGO_BIN_EXE_vkubelet")), &root);
    let bootstrap = Vk::start_process(
        &env,
        json!({
            "images": { image.clone(): { "root": root, "command": ["/vkubelet"] } },
            "enforceLimits": false,
            "capacity": { "cpu": "4", "memory": "8Gi", "pods": "10" },
        }),
        // The replicas do not tolerate the virtual-kubelet taint (they must stay off the nodes
        // they serve); this node is the test's stand-in for a real one.
        &["--disable-taint"],
    );
    bootstrap.wait_ready(&env).await;

    let kdir = std::env::temp_dir().join(format!("vkubelet-e2e-install-{}", env.namespace()));
    let _ = std::fs::remove_dir_all(&kdir);
    std::fs::create_dir_all(&kdir).expect("kustomization dir");
    let kdir = std::fs::canonicalize(&kdir).expect("kustomization dir");
    write_kustomization(&kdir, &overlay, &backend_kubeconfig, &bootstrap.node);
    let install = Install {
        admin: env.kubeconfig_path().to_path_buf(),
        backend_admin: b.kubeconfig_path().to_path_buf(),
        kustomization: kdir.clone(),
    };
    let kdir_s = kdir.to_string_lossy().into_owned();

    // A server-side dry run needs the namespace (as for users: docs/install.md).
    env.kubectl([
        "apply",
        "-f",
        &deploy_dir().join("base/namespace.yaml").to_string_lossy(),
    ])
    .await
    .assert_success();
    let dry = env
        .kubectl(["apply", "-k", &kdir_s, "--dry-run=server"])
        .await
        .assert_success();
    for kind in [
        "serviceaccount/vkubelet",
        "clusterrole.rbac.authorization.k8s.io/vkubelet",
        "role.rbac.authorization.k8s.io/vkubelet-node-lease",
        "role.rbac.authorization.k8s.io/vkubelet-leader-election",
        "deployment.apps/vkubelet",
        "service/vkubelet",
        "poddisruptionbudget.policy/vkubelet",
        "flowschema.flowcontrol.apiserver.k8s.io/vkubelet-leases",
        "configmap/vkubelet-config",
        "secret/vkubelet-backend",
    ] {
        assert!(
            dry.stdout.contains(kind),
            "server dry run does not list {kind}:\n{dry}"
        );
    }

    // The webhook's CA, made as docs/install.md says.
    let ca = kdir.join("webhook-ca");
    std::fs::create_dir_all(&ca).expect("CA dir");
    for args in [
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca.key",
        ][..],
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=vkubelet-webhook-ca",
            "-days",
            "1",
            "-out",
            "ca.crt",
        ][..],
    ] {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(&ca)
            .stdout(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    }
    env.kubectl([
        "-n",
        DEPLOY_NAMESPACE,
        "create",
        "secret",
        "generic",
        "vkubelet-webhook-ca",
        &format!("--from-file={}", ca.join("ca.crt").display()),
        &format!("--from-file={}", ca.join("ca.key").display()),
    ])
    .await
    .assert_success();
    // The only test-specific input: where the API server really is (the Service IP is virtual).
    let port = env
        .cluster()
        .config()
        .cluster_url
        .port_u16()
        .expect("API server port");
    env.kubectl([
        "-n",
        DEPLOY_NAMESPACE,
        "create",
        "configmap",
        "vkubelet-test-apiserver",
        &format!("--from-literal=port={port}"),
    ])
    .await
    .assert_success();
    env.kubectl(["apply", "-k", &kdir_s]).await.assert_success();

    // Two replicas, running on the bootstrap node.
    let replicas = wait_for(INSTALL_WAIT, POLL, async || {
        two_replicas(&env, &bootstrap).await
    })
    .await;

    // Their virtual nodes register and go Ready, at the address the replicas' pod IP gives.
    let nodes: Api<Node> = Api::all(env.client());
    for name in TEST_NODES {
        let node = wait_for(INSTALL_WAIT, POLL, async || {
            let n = nodes
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("node {name} not registered\n{}", replica_logs(&bootstrap))
                })?;
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            if ready.as_deref() == Some("True") {
                Ok(n)
            } else {
                Err(format!("node {name}: Ready={ready:?}"))
            }
        })
        .await;
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        assert_eq!(
            internal_ip.as_deref(),
            Some("127.0.0.1"),
            "node {name}: the InternalIP is the leader's pod IP (the bootstrap node's address)"
        );
    }
    // Each node has one leader, a running replica, which has taken the node on.
    let leaders = wait_synced_leaders(&env, &bootstrap, &replicas).await;
    // Their Lease writes are served at the leader-election priority level, not behind their own
    // pod writes in workload-low (deploy/base/flowschema.yaml): the API server's own count.
    let dispatched = wait_for(INSTALL_WAIT, POLL, async || {
        let n = lease_requests_dispatched(&env).await?;
        if n > 0.0 {
            Ok(n)
        } else {
            Err("no request dispatched by FlowSchema vkubelet-leases".to_string())
        }
    })
    .await;
    eprintln!("{dispatched} Lease requests through FlowSchema vkubelet-leases");
    // The replicas registered the burst-policy webhook (components/webhook, inert here).
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(env.client());
    wait_for(INSTALL_WAIT, POLL, async || {
        webhooks
            .get_opt(WEBHOOK)
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "no webhook configuration yet".to_string())
    })
    .await;

    // A burst onto one node; its leader's process dies by SIGKILL in the middle of it.
    let burst_node = TEST_NODES[0];
    let leader = leaders[burst_node].clone();
    let template = PodBuilder::new("burst")
        .image("busybox")
        .command(["sleep", "3600"])
        .node_selector("kubernetes.io/hostname", burst_node)
        .toleration_all()
        .termination_grace_period_seconds(2)
        .build_spec();
    let mut template = serde_json::to_value(template).expect("json");
    // Nothing but the pod on B (no token Secret per pod): the burst is about the pods.
    template["automountServiceAccountToken"] = false.into();
    // A size the nodes' sizing profile (cci) sells.
    template["containers"][0]["resources"] = json!({
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "250m", "memory": "512Mi"},
    });
    let dep: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "burst"},
        "spec": {
            "replicas": BURST,
            "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}}, "spec": template},
        },
    }))
    .expect("deployment");
    let leader_pid = replica_process(&bootstrap, &replicas[&leader]).unwrap_or_else(|| {
        panic!(
            "no vkubelet process in {leader}\n{}",
            replica_logs(&bootstrap)
        )
    });
    env.create(&dep).await;
    let at_kill = wait_for(BURST_WAIT, Duration::from_millis(20), async || {
        let n = backend_pods(&b).await.len();
        if n >= 50 { Ok(n) } else { Err(n) }
    })
    .await;
    let dead_holder = holders(&env).await.expect("holders")[burst_node].clone();
    assert!(
        dead_holder.starts_with(&format!("{leader}_")),
        "{dead_holder} is the leader about to be killed"
    );
    let killed_at = std::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-KILL", &leader_pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 {leader_pid}");
    assert!(
        at_kill < BURST,
        "not mid-burst: {at_kill} of {BURST} backend pods at the kill"
    );
    eprintln!("killed {leader} (pid {leader_pid}) at {at_kill}/{BURST} backend pods");
    // Another vkubelet process takes the node over: the standby replica, or the killed one's
    // container restarted in place by the bootstrap node (as a kubelet restarts it) —
    // whichever retries first once the dead holder's Lease has run out. Never the dead one.
    let lease_log = |bootstrap: &Vk| -> String {
        replicas
            .values()
            .flat_map(|u| {
                replica_log(bootstrap, u)
                    .lines()
                    .filter(|l| l.contains("vk_leader") || l.contains("leading the node"))
                    .map(|l| format!("{l}\n"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let new_holder = wait_for(TAKEOVER_WAIT, POLL, async || {
        let held = holders(&env).await?;
        let holder = &held[burst_node];
        if *holder != dead_holder && holder_pod(holder, &replicas).is_some() {
            Ok(holder.clone())
        } else {
            Err(format!(
                "{burst_node} held by {holder}\n{}",
                lease_log(&bootstrap)
            ))
        }
    })
    .await;
    eprintln!(
        "{burst_node}: {dead_holder} killed, taken over by {new_holder} after {:?}",
        killed_at.elapsed()
    );
    // The kill hit the replica: its container was restarted. (Once a loaded CI run saw a
    // second restart soon after the first; what the burst's pods must show is below, and the
    // count is printed for the record.)
    let deploy_pods: Api<Pod> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    let restarted = wait_for(TAKEOVER_WAIT, POLL, async || {
        let p = deploy_pods.get(&leader).await.map_err(|e| e.to_string())?;
        match restarts(&p) {
            0 => Err(format!("{leader} not restarted yet")),
            n => Ok(n),
        }
    })
    .await;
    eprintln!("{leader} restarted {restarted} time(s) after the kill");
    let api = wait_burst_running(&env, &bootstrap, BURST).await;
    for p in &api {
        assert_eq!(
            restarts(p),
            0,
            "pod {:?} was restarted instead of adopted by the new leader",
            p.metadata.name
        );
    }
    let backend_uids = assert_backend_is_the_api(&b, &vb, &api).await;

    // A rollout: every replica replaced, one at a time.
    let creates_before = vb.backend_creates();
    let before: BTreeMap<String, (Option<String>, i32)> = api
        .iter()
        .map(|p| (uid(p), (phase(p), restarts(p))))
        .collect();
    env.kubectl([
        "-n",
        DEPLOY_NAMESPACE,
        "rollout",
        "restart",
        "deployment/vkubelet",
    ])
    .await
    .assert_success();
    env.kubectl([
        "-n",
        DEPLOY_NAMESPACE,
        "rollout",
        "status",
        "deployment/vkubelet",
        "--timeout=300s",
    ])
    .await
    .assert_success();
    let new_replicas = wait_for(INSTALL_WAIT, POLL, async || {
        let r = two_replicas(&env, &bootstrap).await?;
        if r.keys().any(|n| replicas.contains_key(n)) {
            Err(format!("an old replica is still there: {r:?}"))
        } else {
            Ok(r)
        }
    })
    .await;
    // Each node led by a new replica, which has re-listed both sides.
    let new_leaders = wait_synced_leaders(&env, &bootstrap, &new_replicas).await;
    eprintln!("after the rollout: {new_leaders:?}");
    let after = wait_burst_running(&env, &bootstrap, BURST).await;
    let after: BTreeMap<String, (Option<String>, i32)> = after
        .iter()
        .map(|p| (uid(p), (phase(p), restarts(p))))
        .collect();
    assert_eq!(
        after, before,
        "the rollout changed no API pod, its phase or its restart count"
    );
    assert_eq!(
        vb.backend_creates(),
        creates_before,
        "the rollout created nothing on B"
    );
    let backend_after: BTreeSet<String> = backend_pods(&b).await.iter().map(uid).collect();
    assert_eq!(
        backend_after, backend_uids,
        "the same pods on B, none replaced"
    );

    // Uninstall, run as deploy/uninstall/job.yaml on the bootstrap node.
    let job = uninstall_job(&env, &kdir, &bootstrap.node).await;
    let log = run_uninstall_job(&env, &job, &bootstrap).await;
    eprintln!("uninstall: {log}");
    assert!(
        log.contains(&format!("removed {BURST} backend pod(s)")),
        "{log}"
    );
    let namespaces: Api<Namespace> = Api::all(b.client());
    assert!(
        backend_pods(&b).await.is_empty(),
        "no backend pod left on B"
    );
    assert!(
        namespaces
            .get_opt(&managed_namespace())
            .await
            .expect("B's namespaces")
            .is_none(),
        "B's managed namespace is gone"
    );
    let node_leases: Api<Lease> = Api::namespaced(env.client(), "kube-node-lease");
    let election: Api<Lease> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    for node in TEST_NODES {
        assert!(
            nodes.get_opt(node).await.expect("node").is_none(),
            "node {node} left"
        );
        assert!(
            node_leases.get_opt(node).await.expect("lease").is_none(),
            "heartbeat Lease of {node} left"
        );
        assert!(
            election
                .get_opt(&format!("vkubelet-{node}"))
                .await
                .expect("lease")
                .is_none(),
            "election Lease of {node} left"
        );
    }
    assert!(
        webhooks.get_opt(WEBHOOK).await.expect("webhook").is_none(),
        "the webhook configuration is gone"
    );
    let again = run_uninstall_job(&env, &job, &bootstrap).await;
    assert!(
        again.contains("removed 0 backend pod(s)"),
        "a second uninstall is harmless: {again}"
    );
    // B's runner holds nothing either (its own record, read while it is stopped).
    vb.kill9();
    assert_eq!(
        vb.backend_pods().await,
        Vec::<String>::new(),
        "nothing left in B's runner"
    );

    drop(install);
    drop(bootstrap);
    let _ = std::fs::remove_dir_all(&root);
}

/// deploy/'s RBAC objects, as `kubectl` reads them from rbac.yaml (nothing is applied: the
/// install test may be taking deploy/'s objects apart meanwhile).
async fn deploy_rbac(env: &TestEnv) -> Vec<serde_json::Value> {
    let out = env
        .kubectl([
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            &deploy_dir().join("base/rbac.yaml").to_string_lossy(),
        ])
        .await
        .assert_success();
    objects(&out.stdout)
}

/// Test-only RBAC objects (cluster-wide, and in kube-node-lease), removed on drop.
struct Grants {
    admin: PathBuf,
    name: String,
}

impl Drop for Grants {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(["delete", "clusterrole,clusterrolebinding", &self.name])
            .arg("--ignore-not-found")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args([
                "-n",
                "kube-node-lease",
                "delete",
                "role,rolebinding",
                &self.name,
            ])
            .arg("--ignore-not-found")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn a_verb_missing_from_the_cluster_role_fails_loudly_naming_it() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let ns = env.namespace().to_string();
    let account = "vk-missing-verb";
    let name = format!("e2e-{ns}");
    let _grants = Grants {
        admin: env.kubeconfig_path().to_path_buf(),
        name: name.clone(),
    };
    // deploy/'s ClusterRole without `patch` on pods/status, and its heartbeat Role as it is,
    // under this test's names.
    let rbac = deploy_rbac(&env).await;
    let full: ClusterRole =
        serde_json::from_value(find(&rbac, "ClusterRole", "vkubelet").clone()).expect("role");
    let heartbeat_rules = find(&rbac, "Role", "vkubelet-node-lease")["rules"].clone();
    let full_rules = full.rules.clone().unwrap_or_default();
    let mut removed = false;
    let without: Vec<PolicyRule> = full_rules
        .iter()
        .cloned()
        .map(|mut r| {
            if r.resources.as_deref() == Some(&["pods/status".to_string()][..]) {
                removed = r.verbs.iter().any(|v| v == "patch");
                r.verbs.retain(|v| v != "patch");
            }
            r
        })
        .filter(|r| !r.verbs.is_empty())
        .collect();
    assert!(removed, "deploy/'s ClusterRole grants patch on pods/status");
    let roles: Api<ClusterRole> = Api::all(env.client());
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": without,
    }))
    .expect("role");
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create the reduced ClusterRole");
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}});
    env.create::<k8s_openapi::api::core::v1::ServiceAccount>(
        &serde_json::from_value(sa).expect("sa"),
    )
    .await;
    let subject = json!([{"kind": "ServiceAccount", "name": account, "namespace": ns}]);
    let bindings = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name, "namespace": "kube-node-lease"},
               "rules": heartbeat_rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name, "namespace": "kube-node-lease"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": subject}),
    ];
    let manifest = std::env::temp_dir().join(format!("vkubelet-e2e-bindings-{ns}.json"));
    std::fs::write(
        &manifest,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": bindings}))
            .expect("json"),
    )
    .expect("write bindings");
    env.kubectl(["create", "-f", &manifest.to_string_lossy()])
        .await
        .assert_success();
    let _ = std::fs::remove_file(&manifest);

    let dir = std::env::temp_dir().join(format!("vkubelet-e2e-token-{ns}"));
    let kubeconfig = vk_testkit::service_account_kubeconfig(
        env.cluster(),
        &ns,
        account,
        Duration::from_secs(3600),
        &dir,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let vk = Vk::start_as(&env, kubeconfig, json!({}), &[]);
    vk.wait_ready(&env).await;

    env.create(&vk.pod("p").build()).await;
    let denial = format!(
        "User \\\"system:serviceaccount:{ns}:{account}\\\" cannot patch resource \\\"pods/status\\\""
    );
    let plain_denial = format!(
        "User \"system:serviceaccount:{ns}:{account}\" cannot patch resource \"pods/status\""
    );
    let said = wait_for(common::WAIT, POLL, async || {
        let log = vk.log();
        log.lines()
            .find(|l| {
                (l.contains("WARN") || l.contains("ERROR"))
                    && (l.contains(&denial) || l.contains(&plain_denial))
            })
            .map(str::to_string)
            .ok_or_else(|| "no warning naming the missing verb yet".to_string())
    })
    .await;
    eprintln!("vkubelet: {said}");
    let pods: Api<Pod> = env.api();
    let pod = pods.get("p").await.expect("pod");
    assert_ne!(
        phase(&pod).as_deref(),
        Some("Running"),
        "without pods/status patch the pod's status cannot have been written"
    );

    // The same account with the verb back: the pod runs, so the denial was the only obstacle.
    roles
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "rules": full_rules })),
        )
        .await
        .expect("restore the verb");
    common::wait_pod_phase(&env, "p", "Running").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// components/kubernetes-1.29 changes the API version of the base's two objects whose version
/// 1.20 serves and later releases removed, and nothing else: the same objects, the same specs.
#[tokio::test]
async fn the_kubernetes_1_29_component_changes_only_the_two_removed_api_versions() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let deploy = std::fs::canonicalize(deploy_dir()).expect("deploy/");
    let kdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("k129-{}", env.namespace()));
    std::fs::create_dir_all(&kdir).expect("kustomization dir");
    let kdir = std::fs::canonicalize(&kdir).expect("kustomization dir");
    // kustomize takes relative paths only: up to the root, then down into deploy/.
    let up = "../".repeat(kdir.components().count() - 1);
    let deploy_rel = format!("{up}{}", deploy.to_string_lossy().trim_start_matches('/'));
    std::fs::write(
        kdir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{deploy_rel}/overlays/kube]\n\
             components: [{deploy_rel}/components/kubernetes-1.29]\n"
        ),
    )
    .expect("write kustomization");

    // `kubectl kustomize` (YAML, keys sorted): a client-side `apply --dry-run` would still ask
    // this 1.20 server for the v1 kinds, which it does not serve.
    let build = async |dir: &Path| {
        let out = env
            .kubectl(["kustomize", &dir.to_string_lossy()])
            .await
            .assert_success();
        let mut docs: Vec<String> = out.stdout.split("\n---\n").map(str::to_string).collect();
        docs.sort();
        docs
    };
    let base = build(&deploy.join("overlays/kube")).await;
    let current = build(&kdir).await;
    let moved = [
        ("policy/v1beta1", "policy/v1", "PodDisruptionBudget"),
        (
            "flowcontrol.apiserver.k8s.io/v1beta1",
            "flowcontrol.apiserver.k8s.io/v1",
            "FlowSchema",
        ),
    ];
    let head = |version: &str, kind: &str| format!("apiVersion: {version}\nkind: {kind}\n");
    for (from, to, kind) in moved {
        let count = |docs: &[String], version: &str| {
            docs.iter()
                .filter(|d| d.starts_with(&head(version, kind)))
                .count()
        };
        assert_eq!(count(&base, from), 1, "the base's {kind} at {from}");
        assert_eq!(count(&current, to), 1, "the component's {kind} at {to}");
        assert_eq!(
            count(&current, from),
            0,
            "the component leaves {kind} at {from}"
        );
    }
    // Put the old versions back: what is left must be the base, object for object.
    let mut restored: Vec<String> = current
        .iter()
        .map(|doc| {
            moved.iter().fold(doc.clone(), |d, (from, to, kind)| {
                d.replacen(&head(to, kind), &head(from, kind), 1)
            })
        })
        .collect();
    restored.sort();
    assert_eq!(
        restored, base,
        "the component changes more than the two API versions"
    );
}
