//! Drives a real `vkubelet` process against the test cluster: start it with a sim or process
//! backend whose state lives in a per-test directory, kill -9 / SIGTERM / restart it, flip backend
//! failures, and read what the backend holds.
//!
//! With `VKUBELET_TEST_RBAC=deploy` every vkubelet a test starts runs as deploy/'s
//! ServiceAccount (a TokenRequest token, after applying deploy/'s RBAC) instead of the admin:
//! the suites then prove that the install's ClusterRole covers what they exercise.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{ListParams, PostParams};
use tokio::io::AsyncWriteExt as _;
use vk_core::Provider;
use vk_testkit::{PodBuilder, TestCluster, TestEnv, wait_for};

pub const WAIT: Duration = Duration::from_secs(90);
pub const POLL: Duration = Duration::from_millis(250);

pub struct Vk {
    child: Option<Child>,
    provider: &'static str,
    pub node: String,
    pub dir: PathBuf,
    /// What vkubelet runs with: the admin's, or deploy/'s ServiceAccount's (see [`RBAC_ENV`]).
    kubeconfig: PathBuf,
    /// The test's own access (node cleanup).
    admin_kubeconfig: PathBuf,
    /// Test-only RBAC objects made for this vkubelet, removed on drop.
    extra_grant: Option<String>,
    extra_args: Vec<String>,
    /// The log file in `dir` (replicas of one node share the dir, not the log).
    log_name: String,
}

impl Vk {
    /// Start vkubelet for a node named after the test namespace, with `sim` settings merged over a
    /// persistent state dir and a control file.
    pub fn start(env: &TestEnv, sim: serde_json::Value) -> Self {
        Self::start_with_args(env, sim, &[])
    }

    pub fn start_with_args(env: &TestEnv, sim: serde_json::Value, extra_args: &[&str]) -> Self {
        Self::start_node(env, "vk", sim, extra_args)
    }

    /// A second (third, ...) sim node in the same test: named `<prefix>-<namespace>` (`vk` is
    /// the default node's prefix; keep it to 2 characters so the name stays a label value).
    pub fn start_node(
        env: &TestEnv,
        prefix: &str,
        mut sim: serde_json::Value,
        extra_args: &[&str],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("vkubelet-e2e-{prefix}-{}", env.namespace()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        if sim.get("stateDir").is_none() {
            sim["stateDir"] = dir.join("state").to_string_lossy().into();
        }
        sim["controlFile"] = dir.join("control.json").to_string_lossy().into();
        if sim.get("recordResolved").is_none() {
            sim["recordResolved"] = true.into();
        }
        Self::launch(env, "sim", prefix, dir, sim, extra_args)
    }

    /// A sim node (as [`Vk::start_node`] with prefix `vk`) whose vkubelet runs with
    /// `kubeconfig`, whatever [`RBAC_ENV`] says: for tests of a particular identity.
    pub fn start_as(
        env: &TestEnv,
        kubeconfig: PathBuf,
        sim: serde_json::Value,
        extra_args: &[&str],
    ) -> Self {
        let mut sim = sim;
        let dir = std::env::temp_dir().join(format!("vkubelet-e2e-as-{}", env.namespace()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        sim["stateDir"] = dir.join("state").to_string_lossy().into();
        sim["controlFile"] = dir.join("control.json").to_string_lossy().into();
        Self::launch_as(env, "sim", "vk", dir, sim, extra_args, Some(kubeconfig))
    }

    /// Start vkubelet with the process provider; its state and secrets live in the test's dir.
    pub fn start_process(env: &TestEnv, mut cfg: serde_json::Value, extra_args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vkubelet-e2e-{}", env.namespace()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        cfg["stateDir"] = dir.join("state").to_string_lossy().into();
        cfg["secretsDir"] = dir.join("secrets").to_string_lossy().into();
        Self::launch(env, "process", "vk", dir, cfg, extra_args)
    }

    /// Start vkubelet with the kube provider (`cfg` is its provider config).
    pub fn start_kube(env: &TestEnv, cfg: serde_json::Value, extra_args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vkubelet-e2e-kube-{}", env.namespace()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self::launch(env, "kube", "vk", dir, cfg, extra_args)
    }

    fn launch(
        env: &TestEnv,
        provider: &'static str,
        prefix: &str,
        dir: PathBuf,
        cfg: serde_json::Value,
        extra_args: &[&str],
    ) -> Self {
        Self::launch_as(env, provider, prefix, dir, cfg, extra_args, None)
    }

    fn launch_as(
        env: &TestEnv,
        provider: &'static str,
        prefix: &str,
        dir: PathBuf,
        cfg: serde_json::Value,
        extra_args: &[&str],
        kubeconfig: Option<PathBuf>,
    ) -> Self {
        let node = format!("{prefix}-{}", env.namespace());
        std::fs::write(
            dir.join("provider.json"),
            serde_json::to_vec_pretty(&cfg).expect("json"),
        )
        .expect("write provider config");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (kubeconfig, extra_grant) = match kubeconfig {
            Some(k) => (k, None),
            None => vkubelet_kubeconfig(env, &dir, &extra_args),
        };
        let mut vk = Self {
            child: None,
            provider,
            node,
            dir,
            kubeconfig,
            admin_kubeconfig: env.kubeconfig_path().to_path_buf(),
            extra_grant,
            extra_args,
            log_name: "vkubelet.log".into(),
        };
        vk.spawn();
        vk
    }

    /// Another vkubelet process for the same node, provider config and state (HA replicas);
    /// it logs to `vkubelet-<n>.log`.
    pub fn replica(&self, n: usize) -> Self {
        self.replica_with(n, &[])
    }

    /// A replica with more arguments (e.g. its own `--node-ip` and `--kubelet-bind-address`).
    pub fn replica_with(&self, n: usize, more_args: &[&str]) -> Self {
        let mut extra_args = self.extra_args.clone();
        extra_args.extend(more_args.iter().map(|s| s.to_string()));
        let mut vk = Self {
            child: None,
            provider: self.provider,
            node: self.node.clone(),
            dir: self.dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
            admin_kubeconfig: self.admin_kubeconfig.clone(),
            // The grant belongs to the first process; a replica must not remove it.
            extra_grant: None,
            extra_args,
            log_name: format!("vkubelet-{n}.log"),
        };
        vk.spawn();
        vk
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(&self.log_name))
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_vkubelet"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &self.node, "--provider", self.provider])
            .args(if self.extra_args.iter().any(|a| a == "--metrics-addr") {
                &[][..]
            } else {
                &["--metrics-addr", ""][..]
            })
            .arg("--provider-config")
            .arg(self.dir.join("provider.json"))
            // The kubelet API on loopback, on a free port (advertised in the node's status)
            // unless the test picks one; tests run side by side.
            .args(if self.extra_args.iter().any(|a| a == "--kubelet-port") {
                &[][..]
            } else {
                &["--kubelet-port", "0"][..]
            })
            .args(
                if self
                    .extra_args
                    .iter()
                    .any(|a| a == "--kubelet-bind-address")
                {
                    &[][..]
                } else {
                    &["--kubelet-bind-address", "127.0.0.1"][..]
                },
            )
            .args(&self.extra_args)
            .env("VKUBELET_LOG", "info,vk_core=debug,vk_kubelet_api=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn vkubelet");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Start again after a stop.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "vkubelet is still running");
        self.spawn();
    }

    /// Run `vkubelet cleanup` for this node's provider config; returns its stdout.
    pub fn cleanup(&self) -> String {
        let out = self.cleanup_command().output().expect("run cleanup");
        assert!(
            out.status.success(),
            "cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vkubelet cleanup` for this node's provider (with the source cluster's kubeconfig).
    pub fn cleanup_command(&self) -> Command {
        self.admin_command("cleanup")
    }

    /// `vkubelet <subcommand>` (cleanup, uninstall) for this node's provider and cluster.
    pub fn admin_command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vkubelet"));
        cmd.arg(subcommand)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--provider", self.provider, "--node-name", &self.node])
            .arg("--provider-config")
            .arg(self.dir.join("provider.json"));
        cmd
    }

    /// Override the sim backend's behaviour at runtime (see vk-provider-sim's controlFile).
    pub fn control(&self, json: serde_json::Value) {
        let tmp = self.dir.join("control.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&json).expect("json")).expect("write control");
        std::fs::rename(&tmp, self.dir.join("control.json")).expect("rename control");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(&self.log_name)).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// What the backend received for a pod (env, volumes, credentials), once it has.
    pub fn received(&self, uid: &str) -> Option<serde_json::Value> {
        let path = self
            .state_dir()
            .join("received")
            .join(format!("{uid}.json"));
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Wait until the backend's record for `uid` satisfies `check` (which explains what is
    /// missing otherwise).
    pub async fn wait_received(
        &self,
        uid: &str,
        check: impl Fn(&serde_json::Value) -> Result<(), String>,
    ) -> serde_json::Value {
        wait_for(WAIT, POLL, async || {
            let r = self
                .received(uid)
                .ok_or_else(|| "nothing received yet".to_string())?;
            check(&r)?;
            Ok::<_, String>(r)
        })
        .await
    }

    /// UIDs the backend ever created, one entry per real create (the sim journal's history).
    pub fn backend_creates(&self) -> Vec<String> {
        vk_provider_sim::state::creates(&self.state_dir()).expect("read the sim's journal")
    }

    /// Pods the backend holds, read from its persisted state (only while vkubelet is stopped).
    pub async fn backend_pods(&self) -> Vec<String> {
        assert!(
            self.child.is_none(),
            "read backend state only while vkubelet is stopped"
        );
        let cfg = vk_provider_sim::SimConfig::from_json_str(
            &serde_json::json!({ "stateDir": self.state_dir() }).to_string(),
        )
        .expect("sim config");
        let sim = vk_provider_sim::SimProvider::new(cfg, "127.0.0.1".into()).expect("sim");
        sim.start(vk_core::ProviderSinks::discard())
            .await
            .expect("start sim");
        let mut uids: Vec<String> = sim
            .list_pods()
            .await
            .expect("list")
            .into_iter()
            .map(|p| p.key.uid)
            .collect();
        uids.sort();
        uids
    }

    /// Pod builder that lands on this node only.
    pub fn pod(&self, name: &str) -> PodBuilder {
        PodBuilder::new(name)
            .image("busybox")
            .command(["sleep", "3600"])
            .node_selector("kubernetes.io/hostname", self.node.clone())
            .node_selector("type", "virtual-kubelet")
            .toleration_all()
    }

    pub async fn wait_ready(&self, env: &TestEnv) -> Node {
        let nodes: Api<Node> = Api::all(env.client());
        let node = self.node.clone();
        wait_for(WAIT, POLL, async || {
            let n = nodes
                .get_opt(&node)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no node yet".to_string())?;
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            if ready.as_deref() == Some("True") {
                Ok(n)
            } else {
                Err(format!("Ready={ready:?}"))
            }
        })
        .await
    }
}

impl Drop for Vk {
    fn drop(&mut self) {
        self.kill9();
        if self.provider == "process" || self.provider == "kube" {
            // Pods outlive vkubelet by design; never leave a test's processes (or backend
            // objects) behind.
            let _ = self
                .cleanup_command()
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- vkubelet log tail ({}) ----", self.dir.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        if let Some(grant) = &self.extra_grant {
            let _ = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.admin_kubeconfig)
                .args(["delete", "clusterrole,clusterrolebinding", grant])
                .arg("--ignore-not-found")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args([
                "delete",
                "node",
                &self.node,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `VKUBELET_TEST_RBAC`: unset, empty or `admin` runs vkubelet with the admin kubeconfig;
/// `deploy` with a token of deploy/'s ServiceAccount, holding only deploy/'s RBAC.
pub const RBAC_ENV: &str = "VKUBELET_TEST_RBAC";
/// Where deploy/ puts vkubelet, and the identity it runs as.
pub const DEPLOY_NAMESPACE: &str = "vkubelet-system";
pub const DEPLOY_SERVICE_ACCOUNT: &str = "vkubelet";
/// The webhook configuration name deploy/'s ClusterRole is limited to.
const DEPLOY_WEBHOOK_NAME: &str = "vkubelet";

/// Where the second control plane's kubeconfig is: cluster B, the kube provider's backend.
pub const BACKEND_ENV: &str = "VKUBELET_TEST_BACKEND_KUBECONFIG";

/// Cluster B, or `None` (skip) when it is not configured and CI does not require it.
pub async fn backend_cluster() -> Option<TestCluster> {
    match std::env::var(BACKEND_ENV) {
        Ok(path) if !path.is_empty() => Some(
            TestCluster::connect_to(&path)
                .await
                .unwrap_or_else(|e| panic!("backend cluster {path}: {e}")),
        ),
        _ if vk_testkit::cluster_required() => panic!(
            "{BACKEND_ENV} is not set, and CI=true or VKUBELET_TEST_REQUIRE_CLUSTER is set: \
             run the tests through `make test` (scripts/test.sh starts both control planes)"
        ),
        _ => {
            eprintln!("skipping: no backend cluster ({BACKEND_ENV} unset)");
            None
        }
    }
}

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Whether vkubelet runs as deploy/'s ServiceAccount (see [`RBAC_ENV`]).
pub fn rbac_mode() -> bool {
    match std::env::var(RBAC_ENV) {
        Err(_) => false,
        Ok(v) if v.is_empty() || v == "admin" => false,
        Ok(v) if v == "deploy" => true,
        Ok(v) => panic!("{RBAC_ENV}={v:?}: expected `deploy` or `admin`"),
    }
}

/// The kubeconfig a vkubelet started with `extra_args` runs with, and the name of a test-only
/// grant made for it (see [`deploy_kubeconfig`]).
fn vkubelet_kubeconfig(
    env: &TestEnv,
    dir: &Path,
    extra_args: &[String],
) -> (PathBuf, Option<String>) {
    if !rbac_mode() {
        return (env.kubeconfig_path().to_path_buf(), None);
    }
    let admin = env.kubeconfig_path().to_path_buf();
    let dir = dir.to_path_buf();
    let webhook_name = extra_args
        .iter()
        .position(|a| a == "--webhook-name")
        .and_then(|i| extra_args.get(i + 1))
        .cloned();
    // Called from sync code inside the test's runtime: a thread of its own with its own
    // runtime and client (a client is tied to the runtime that made it).
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(deploy_kubeconfig(&admin, &dir, webhook_name.as_deref()))
    })
    .join()
    .expect("minting deploy/'s kubeconfig")
}

/// Apply deploy/'s Namespace, ServiceAccount and RBAC, and write into `dir` a kubeconfig with a
/// TokenRequest token of that ServiceAccount. deploy/ grants the webhook configuration by its
/// default name only; a test that registers another name (to run beside other tests) gets
/// deploy/'s own rule for that name in a ClusterRole of its own (returned, for cleanup).
pub async fn deploy_kubeconfig(
    admin: &Path,
    dir: &Path,
    webhook_name: Option<&str>,
) -> (PathBuf, Option<String>) {
    let cluster = TestCluster::connect_to(admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let base = deploy_dir().join("base");
    let files = ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"].map(|f| base.join(f));
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    vk_testkit::apply_manifests(&cluster, &files)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let grant = match webhook_name {
        Some(name) if name != DEPLOY_WEBHOOK_NAME => Some(grant_webhook_name(&cluster, name).await),
        _ => None,
    };
    let kubeconfig = vk_testkit::service_account_kubeconfig(
        &cluster,
        DEPLOY_NAMESPACE,
        DEPLOY_SERVICE_ACCOUNT,
        Duration::from_secs(6 * 3600),
        dir,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    (kubeconfig, grant)
}

/// deploy/'s rule for its webhook configuration, for `name` instead, bound to its account.
async fn grant_webhook_name(cluster: &TestCluster, name: &str) -> String {
    let roles: Api<ClusterRole> = Api::all(cluster.client());
    let deployed = roles
        .get(DEPLOY_SERVICE_ACCOUNT)
        .await
        .expect("deploy/'s ClusterRole");
    let mut rule = deployed
        .rules
        .iter()
        .flatten()
        .find(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|res| res == "mutatingwebhookconfigurations")
                && r.resource_names
                    .iter()
                    .flatten()
                    .any(|n| n == DEPLOY_WEBHOOK_NAME)
        })
        .cloned()
        .expect("deploy/'s ClusterRole has a rule for its webhook configuration by name");
    rule.resource_names = Some(vec![name.to_string()]);
    let grant = format!("e2e-{name}");
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": grant, "labels": {"vkubelet.io/test": "true"}},
        "rules": [rule],
    }))
    .expect("role");
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": grant, "labels": {"vkubelet.io/test": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant},
        "subjects": [{"kind": "ServiceAccount", "name": DEPLOY_SERVICE_ACCOUNT,
                      "namespace": DEPLOY_NAMESPACE}],
    }))
    .expect("binding");
    for result in [
        roles
            .create(&PostParams::default(), &role)
            .await
            .map(|_| ()),
        Api::<ClusterRoleBinding>::all(cluster.client())
            .create(&PostParams::default(), &binding)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("granting webhook configuration {name}: {e}"),
        }
    }
    grant
}

/// Container restarts of a pod, summed.
pub fn restarts(p: &Pod) -> i32 {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum()
}

impl Vk {
    /// Every API pod in `running` was created exactly once on the (sim) backend and nothing else
    /// is there. Reads the backend's state, so only while vkubelet is stopped.
    pub async fn assert_backend_matches(&self, running: &[Pod]) {
        let api_uids: std::collections::BTreeSet<String> = running
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let creates = self.backend_creates();
        let unique: std::collections::BTreeSet<String> = creates.iter().cloned().collect();
        assert_eq!(
            creates.len(),
            unique.len(),
            "some pod was created twice on the backend"
        );
        assert_eq!(
            unique, api_uids,
            "backend creates match the API pods one to one"
        );
        let on_backend: std::collections::BTreeSet<String> =
            self.backend_pods().await.into_iter().collect();
        assert_eq!(on_backend, api_uids, "no orphans, nothing missing");
    }
}

pub fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.phase.clone())
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One line on a pod that is not Running: where it is bound, its phase and what its
/// conditions and containers say.
pub fn straggler(p: &Pod) -> String {
    let status = p.status.clone().unwrap_or_default();
    let conditions: Vec<String> = status
        .conditions
        .unwrap_or_default()
        .iter()
        .map(|c| {
            format!(
                "{}={}{}",
                c.type_,
                c.status,
                c.reason
                    .as_deref()
                    .map(|r| format!("({r})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let containers: Vec<String> = status
        .container_statuses
        .unwrap_or_default()
        .iter()
        .map(|c| format!("{}:{:?}", c.name, c.state))
        .collect();
    format!(
        "  {} uid={} node={:?} phase={:?} reason={:?} conditions=[{}] containers=[{}]",
        p.metadata.name.as_deref().unwrap_or_default(),
        p.metadata.uid.as_deref().unwrap_or_default(),
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        status.phase,
        status.reason,
        conditions.join(" "),
        containers.join(" ")
    )
}

/// `--leader-elect` with the default election timings, the Lease in
/// the test's namespace.
pub fn ha_args(env: &TestEnv) -> Vec<String> {
    // The defaults (15 s, 10 s, 2 s). Shorter ones made takeovers quicker, but with both control
    // planes and every suite on two cores a renewal sometimes took longer than a 4 s deadline,
    // and a term ended by itself in the middle of a test (seen in CI, twice in one run).
    [
        "--leader-elect",
        "--leader-elect-namespace",
        env.namespace(),
        "--leader-elect-lease-duration",
        "15",
        "--leader-elect-renew-deadline",
        "10",
        "--leader-elect-retry-period",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Wait until every pod matching `selector` in the namespace is Running, and there are `n`.
pub async fn wait_running(env: &TestEnv, selector: &str, n: usize) -> Vec<Pod> {
    match try_wait_running(env, selector, n, WAIT).await {
        Ok(pods) => pods,
        Err(e) => panic!("wait_for timed out: {e}"),
    }
}

/// Like [`wait_running`] within `timeout`, returning the timeout (whose last state names up to
/// five pods that are not Running, with what they say) for the caller to add to.
pub async fn try_wait_running(
    env: &TestEnv,
    selector: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Pod>, vk_testkit::WaitTimeout<String>> {
    let pods: Api<Pod> = env.api();
    let lp = kube::api::ListParams::default().labels(selector);
    vk_testkit::try_wait_for(timeout, POLL, async || {
        let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
        let running = list
            .items
            .iter()
            .filter(|p| phase(p).as_deref() == Some("Running"))
            .count();
        if running == n && list.items.len() == n {
            Ok(list.items)
        } else {
            let sample: Vec<String> = list
                .items
                .iter()
                .filter(|p| phase(p).as_deref() != Some("Running"))
                .take(5)
                .map(straggler)
                .collect();
            Err(format!(
                "{running}/{} running, want {n}; not running, for example:\n{}",
                list.items.len(),
                sample.join("\n")
            ))
        }
    })
    .await
}

pub async fn wait_pod_phase(env: &TestEnv, name: &str, want: &str) -> Pod {
    let pods: Api<Pod> = env.api();
    wait_for(WAIT, POLL, async || {
        let p = pods.get(name).await.map_err(|e| e.to_string())?;
        if phase(&p).as_deref() == Some(want) {
            Ok(p)
        } else {
            Err(format!("{:?}", p.status))
        }
    })
    .await
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub async fn events_for(env: &TestEnv, pod: &str) -> Vec<Event> {
    let events: Api<Event> = env.api();
    let lp = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    events.list(&lp).await.map(|l| l.items).unwrap_or_default()
}

pub async fn wait_event(env: &TestEnv, pod: &str, reason: &str) -> Event {
    wait_for(WAIT, POLL, async || {
        let evs = events_for(env, pod).await;
        evs.iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .cloned()
            .ok_or_else(|| {
                evs.iter()
                    .map(|e| e.reason.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
            })
    })
    .await
}

/// A pod for this node from `vk.pod(name)`, with `container` merged into its container and
/// `spec` merged into its spec (JSON merge: objects merge, everything else replaces).
pub fn pod_with(vk: &Vk, name: &str, container: serde_json::Value, spec: serde_json::Value) -> Pod {
    let mut v = serde_json::to_value(vk.pod(name).build()).expect("pod json");
    merge(&mut v["spec"]["containers"][0], container);
    merge(&mut v["spec"], spec);
    serde_json::from_value(v).expect("pod from json")
}

fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// A kubectl a test runs with, and the wire protocol it makes the kubelet speak.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub label: &'static str,
    pub path: PathBuf,
}

/// The installed kubectl, and kubectl 1.20 when available (required under CI).
pub fn kubectls() -> Vec<Kubectl> {
    let mut all = vec![Kubectl {
        label: "websocket (installed kubectl)",
        path: std::env::var_os("VKUBELET_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| "kubectl".into()),
    }];
    match std::env::var_os("VKUBELET_KUBECTL_LEGACY") {
        Some(p) => all.push(Kubectl {
            label: "spdy (kubectl 1.20)",
            path: p.into(),
        }),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "VKUBELET_KUBECTL_LEGACY (kubectl 1.20) is required under CI; \
                 see `scripts/cluster.sh legacy-kubectl`"
            );
            eprintln!("VKUBELET_KUBECTL_LEGACY not set: testing the WebSocket path only");
        }
    }
    all
}

impl Kubectl {
    pub fn command(&self, env: &TestEnv, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .args(["-n", env.namespace()])
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Run to completion with `input` on stdin: (exit code, stdout, stderr).
    pub async fn run(&self, env: &TestEnv, args: &[&str], input: &[u8]) -> (i32, String, String) {
        let mut child = self
            .command(env, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("[{}] kubectl {args:?} did not finish", self.label))
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `name{labels} value` lines of a Prometheus scrape whose name and labels contain every
/// `needle`, summed (0 when the series was never written).
pub fn metric_sum(text: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// vkubelet's `/metrics` at `addr` (its `--metrics-addr`).
pub fn scrape(addr: &str) -> Result<String, String> {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("curl /metrics: {}", out.status))
    }
}

/// (name, resourceVersion) of every listed pod, sorted: equal before and after means nobody
/// wrote any of them in between.
pub fn resource_versions(l: &kube::core::ObjectList<Pod>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = l
        .items
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}
