//! vkubelet installed from deploy/ into the cluster it serves. The test control plane has no
//! real kubelet, so a bootstrap vkubelet node (process provider) runs the Deployment's replicas
//! as sandboxed processes: its `images:` setting maps deploy/'s image to a directory holding the
//! freshly built binary. The replicas then run exactly as in a cluster: with the
//! ServiceAccount's token and in-cluster config, registering their own virtual nodes. Also here:
//! deploy/'s ClusterRole with one verb taken out fails loudly, naming the verb.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DEPLOY_NAMESPACE, POLL, Vk, deploy_dir, phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vk_testkit::{TestEnv, wait_for};

/// The virtual nodes of deploy/overlays/test/nodes.yaml.
const TEST_NODES: [&str; 2] = ["vk-incluster-a", "vk-incluster-b"];
/// The Deployment's pods (deploy/base/deployment.yaml).
const SELECTOR: &str = "app.kubernetes.io/name=vkubelet";
/// Starting two replicas means the ServiceAccount's token Secret first (on 1.20 the pods are
/// refused until the tokens controller made it), then two processes that list and register.
const INSTALL_WAIT: Duration = Duration::from_secs(180);

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

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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
/// namespace would wait for them forever.
struct Install {
    admin: PathBuf,
    kustomization: PathBuf,
}

impl Drop for Install {
    fn drop(&mut self) {
        let kubectl = |args: &[&str]| {
            let _ = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.admin)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let dir = self.kustomization.to_string_lossy().into_owned();
        kubectl(&[
            "delete",
            "-k",
            &dir,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=90s",
        ]);
        kubectl(&[
            "-n",
            DEPLOY_NAMESPACE,
            "delete",
            "pods",
            "--all",
            "--force",
            "--grace-period=0",
        ]);
        for node in TEST_NODES {
            kubectl(&["delete", "node", node, "--ignore-not-found", "--wait=false"]);
        }
    }
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

#[tokio::test]
async fn deploy_installs_in_cluster_two_replicas_register_their_nodes() {
    let Some(env) = vk_testkit::env().await else {
        return;
    };
    let overlay = deploy_dir().join("overlays/test");
    let overlay = std::fs::canonicalize(&overlay).expect("deploy/overlays/test");
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

    // The test's kustomization: deploy/overlays/test, pinned to this bootstrap node (the cluster
    // may have other untainted test nodes).
    let kdir = std::env::temp_dir().join(format!("vkubelet-e2e-install-{}", env.namespace()));
    let _ = std::fs::remove_dir_all(&kdir);
    std::fs::create_dir_all(&kdir).expect("kustomization dir");
    let kdir = std::fs::canonicalize(&kdir).expect("kustomization dir");
    std::fs::write(
        kdir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {}\n\
             patches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      \
             metadata: {{name: vkubelet, namespace: {DEPLOY_NAMESPACE}}}\n      \
             spec: {{template: {{spec: {{nodeSelector: {{kubernetes.io/hostname: {}}}}}}}}}\n",
            relative(&kdir, &overlay).display(),
            bootstrap.node
        ),
    )
    .expect("write kustomization");
    let install = Install {
        admin: env.kubeconfig_path().to_path_buf(),
        kustomization: kdir.clone(),
    };
    let kdir = kdir.to_string_lossy().into_owned();

    // A server-side dry run needs the namespace (as for users: docs/install.md).
    env.kubectl([
        "apply",
        "-f",
        &deploy_dir().join("base/namespace.yaml").to_string_lossy(),
    ])
    .await
    .assert_success();
    let dry = env
        .kubectl(["apply", "-k", &kdir, "--dry-run=server"])
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
        "configmap/vkubelet-config",
        "secret/vkubelet-backend",
    ] {
        assert!(
            dry.stdout.contains(kind),
            "server dry run does not list {kind}:\n{dry}"
        );
    }

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
    env.kubectl(["apply", "-k", &kdir]).await.assert_success();

    // Two replicas, running on the bootstrap node.
    let pods: Api<Pod> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    let lp = ListParams::default().labels(SELECTOR);
    let replicas = wait_for(INSTALL_WAIT, POLL, async || {
        let list = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
        // Ready too: a container in a crash loop leaves its pod Running.
        let running: Vec<&Pod> = list
            .iter()
            .filter(|p| phase(p).as_deref() == Some("Running") && is_ready(p))
            .collect();
        if running.len() == 2 && list.len() == 2 {
            Ok(list)
        } else {
            Err(format!(
                "{} of {} replicas running and ready: {:?}\n{}",
                running.len(),
                list.len(),
                list.iter()
                    .map(|p| (p.metadata.name.clone(), phase(p), is_ready(p)))
                    .collect::<Vec<_>>(),
                replica_logs(&bootstrap)
            ))
        }
    })
    .await;
    for p in &replicas {
        assert_eq!(
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(bootstrap.node.as_str())
        );
    }
    let replica_names: BTreeSet<String> = replicas
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();

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

    // Each node has one leader: its Lease names a running replica.
    let leases: Api<Lease> = Api::namespaced(env.client(), DEPLOY_NAMESPACE);
    for name in TEST_NODES {
        let lease_name = format!("vkubelet-{name}");
        let holder = wait_for(INSTALL_WAIT, POLL, async || {
            let lease = leases
                .get_opt(&lease_name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no Lease {lease_name}"))?;
            lease
                .spec
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("Lease {lease_name} has no holder"))
        })
        .await;
        assert!(
            replica_names.iter().any(|r| holder.contains(r.as_str())),
            "Lease {lease_name} is held by {holder:?}, not by a running replica {replica_names:?}"
        );
    }

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
