//! Connecting to the test control plane and per-test namespaces.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::kubectl::{self, KubectlOutput};
use crate::names;

/// Environment variable holding the path of the test cluster's admin kubeconfig.
pub const KUBECONFIG_ENV: &str = "VKUBELET_TEST_KUBECONFIG";
/// Set to `1`/`true` to keep test namespaces instead of deleting them (for debugging).
pub const KEEP_NAMESPACES_ENV: &str = "VKUBELET_TEST_KEEP_NAMESPACES";
/// Label (value `"true"`) on every namespace the kit creates, so leftovers can be swept with
/// `kubectl delete ns -l vkubelet.io/test=true`.
pub const TEST_LABEL: &str = "vkubelet.io/test";
/// Label holding the (sanitised) test name on every namespace the kit creates.
pub const TEST_NAME_LABEL: &str = "vkubelet.io/test-name";

const SKIP_MESSAGE: &str = "skipping: no test cluster (run `make test` or `scripts/cluster.sh up`)";
/// How long the API server gets to answer the connectivity probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller-manager gets to create a namespace's `default` ServiceAccount.
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a drop waits for the namespace delete request.
const DROP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Set to `1`/`true` to make a missing test cluster fail tests instead of skipping them
/// (scripts/test.sh sets it once it has started the cluster). `CI=true` does the same.
pub const REQUIRE_CLUSTER_ENV: &str = "VKUBELET_TEST_REQUIRE_CLUSTER";

/// Whether a missing or unreachable test cluster must fail tests: under CI (`CI=true`/`CI=1`)
/// or with [`REQUIRE_CLUSTER_ENV`] set.
pub fn cluster_required() -> bool {
    env_flag("CI") || env_flag(REQUIRE_CLUSTER_ENV)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn keep_namespaces() -> bool {
    env_flag(KEEP_NAMESPACES_ENV)
}

/// The cluster from [`KUBECONFIG_ENV`], or `None` (after printing why) when there is none, so the
/// test can return early. Under `CI=true` a missing or unreachable cluster panics instead: tests
/// must fail, not silently skip, in CI.
pub async fn cluster() -> Option<TestCluster> {
    match TestCluster::connect().await {
        Ok(cluster) => Some(cluster),
        Err(e) if cluster_required() => panic!(
            "no usable test cluster, and CI=true or {REQUIRE_CLUSTER_ENV} is set, so this test \
             fails instead of skipping: {e}\n\
             Run the tests through `make test` (scripts/test.sh), which starts a control plane \
             and sets {KUBECONFIG_ENV}, or start one with `scripts/cluster.sh up DIR` and set \
             {KUBECONFIG_ENV}=DIR/admin.kubeconfig."
        ),
        Err(e) => {
            eprintln!("{SKIP_MESSAGE}\n  ({e})");
            None
        }
    }
}

/// [`cluster`] plus a fresh namespace named after the running test (see
/// [`names::current_test_name`]). Use as
/// `let Some(env) = vk_testkit::env().await else { return };`.
///
/// Panics if the cluster answers but the namespace cannot be set up.
pub async fn env() -> Option<TestEnv> {
    env_named(&names::current_test_name()).await
}

/// Like [`env`] with an explicit test name (the namespace prefix).
pub async fn env_named(test_name: &str) -> Option<TestEnv> {
    let cluster = cluster().await?;
    Some(cluster.namespace(test_name).await)
}

/// A connection to the test control plane.
#[derive(Clone)]
pub struct TestCluster {
    client: Client,
    config: Config,
    kubeconfig: PathBuf,
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster")
            .field("server", &self.config.cluster_url.to_string())
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Connects to the cluster whose kubeconfig [`KUBECONFIG_ENV`] names, and checks that its
    /// API server answers.
    pub async fn connect() -> Result<Self, Error> {
        match std::env::var_os(KUBECONFIG_ENV) {
            Some(path) if !path.is_empty() => Self::connect_to(path).await,
            _ => Err(Error::NotConfigured),
        }
    }

    /// Connects with the given kubeconfig (its current context) and checks that the API server
    /// answers.
    pub async fn connect_to(kubeconfig: impl AsRef<Path>) -> Result<Self, Error> {
        let path = std::path::absolute(kubeconfig.as_ref())
            .unwrap_or_else(|_| kubeconfig.as_ref().to_path_buf());
        let config_error = |source| Error::Kubeconfig {
            path: path.clone(),
            source,
        };
        let kc = Kubeconfig::read_from(&path).map_err(config_error)?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(config_error)?;
        config.connect_timeout = Some(Duration::from_secs(5));
        let client = Client::try_from(config.clone()).map_err(|e| Error::Unreachable {
            path: path.clone(),
            reason: format!("cannot build a client: {e}"),
        })?;
        match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Unreachable {
                    path,
                    reason: format!("{}: {e}", config.cluster_url),
                });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    path,
                    reason: format!(
                        "{} gave no answer within {PROBE_TIMEOUT:?}",
                        config.cluster_url
                    ),
                });
            }
        }
        Ok(Self {
            client,
            config,
            kubeconfig: path,
        })
    }

    /// A client for the cluster (cheap to clone).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client configuration built from the kubeconfig.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Absolute path of the admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl --kubeconfig <this cluster> ARGS...`. A non-zero exit is returned, not a
    /// panic; see [`KubectlOutput::assert_success`].
    pub async fn kubectl<I, S>(&self, args: I) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        kubectl::run(&self.kubeconfig, None, args).await
    }

    /// Creates a fresh namespace for `test_name` (see [`names::namespace_name`]), labelled
    /// [`TEST_LABEL`]`=true`, and waits until its `default` ServiceAccount exists. Panics on
    /// failure.
    pub async fn namespace(&self, test_name: &str) -> TestEnv {
        match self.try_namespace(test_name).await {
            Ok(env) => env,
            Err(e) => panic!("cannot set up a test namespace for {test_name}: {e}"),
        }
    }

    /// Like [`TestCluster::namespace`] but returns errors.
    pub async fn try_namespace(&self, test_name: &str) -> Result<TestEnv, Error> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let prefix = names::name_prefix(test_name);
        let mut attempt = 0;
        let name = loop {
            attempt += 1;
            let name = names::namespace_name(test_name);
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([
                        (TEST_LABEL.to_string(), "true".to_string()),
                        (TEST_NAME_LABEL.to_string(), prefix.clone()),
                    ])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => break name,
                // A suffix collision: astronomically unlikely, but cheap to handle.
                Err(kube::Error::Api(s)) if s.is_already_exists() && attempt < 3 => continue,
                Err(e) => return Err(Error::api(format!("creating namespace {name}"))(e)),
            }
        };
        // From here on the namespace exists: the TestEnv's drop deletes it on any failure.
        let env = TestEnv {
            cluster: self.clone(),
            namespace: name,
            cleaned_up: false,
        };
        env.wait_for_default_service_account().await?;
        Ok(env)
    }
}

/// A test's view of the cluster: a client and its own namespace, deleted when this is dropped
/// (or by [`TestEnv::cleanup`]).
pub struct TestEnv {
    cluster: TestCluster,
    namespace: String,
    cleaned_up: bool,
}

impl fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestEnv")
            .field("namespace", &self.namespace)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// The test's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn cluster(&self) -> &TestCluster {
        &self.cluster
    }

    /// A client for the cluster (cheap to clone).
    pub fn client(&self) -> Client {
        self.cluster.client()
    }

    /// Absolute path of the admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        self.cluster.kubeconfig_path()
    }

    /// An API for a namespaced kind in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client(), &self.namespace)
    }

    /// An API for a cluster-scoped kind, or a namespaced kind across all namespaces.
    pub fn api_all<K>(&self) -> Api<K>
    where
        K: Resource,
        K::DynamicType: Default,
    {
        Api::all(self.client())
    }

    /// Creates `obj` in the test's namespace and returns what the API server stored. Panics
    /// with the kind, name and error on failure.
    pub async fn create<K>(&self, obj: &K) -> K
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + fmt::Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let deadline = tokio::time::Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        loop {
            match api.create(&PostParams::default(), obj).await {
                Ok(created) => return created,
                // The API server asks for a retry while an admission cache catches up (e.g. the
                // ServiceAccount token informer right after the namespace appeared).
                Err(kube::Error::Api(status))
                    if status.reason == "ServerTimeout"
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!(
                    "creating {} {:?} in namespace {}: {e}",
                    K::kind(&K::DynamicType::default()),
                    obj.meta().name.as_deref().unwrap_or("<unnamed>"),
                    self.namespace
                ),
            }
        }
    }

    /// Runs `kubectl --kubeconfig <cluster> ARGS...` (no namespace added).
    pub async fn kubectl<I, S>(&self, args: I) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cluster.kubectl(args).await
    }

    /// Runs `kubectl --kubeconfig <cluster> -n <test namespace> ARGS...`.
    pub async fn kubectl_ns<I, S>(&self, args: I) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        kubectl::run(self.kubeconfig_path(), Some(&self.namespace), args).await
    }

    /// Deletes the namespace now (without waiting for it to disappear). Errors are printed,
    /// not returned: cleanup is best effort.
    pub async fn cleanup(mut self) {
        self.cleaned_up = true;
        if keep_namespaces() {
            eprintln!("[vk-testkit] keeping namespace {}", self.namespace);
            return;
        }
        if let Err(e) = delete_namespace(&self.cluster.client, &self.namespace).await {
            eprintln!("[vk-testkit] cleanup: {e}");
        }
    }

    async fn wait_for_default_service_account(&self) -> Result<(), Error> {
        let api: Api<ServiceAccount> = self.api();
        let what = format!(
            "the default ServiceAccount in namespace {} (made by kube-controller-manager)",
            self.namespace
        );
        let mut last_error = None;
        let deadline = tokio::time::Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            match api.get_opt("default").await {
                // On 1.20 the ServiceAccount admission plugin refuses pods (500, "No API token
                // found for service account") until the tokens controller has made the
                // account's token Secret, so the namespace is usable only once it is listed.
                Ok(Some(sa)) if sa.secrets.as_ref().is_some_and(|s| !s.is_empty()) => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(match last_error {
            Some(source) => Error::Api {
                context: format!("waiting for {what}"),
                source,
            },
            None => Error::Timeout {
                what,
                after: SERVICE_ACCOUNT_TIMEOUT,
            },
        })
    }
}

impl Drop for TestEnv {
    /// Deletes the namespace unless [`TestEnv::cleanup`] already did (or
    /// [`KEEP_NAMESPACES_ENV`] is set). Runs on a helper thread with its own runtime and client
    /// and waits (bounded) for the request to be sent: a task spawned on the test's runtime
    /// would be dropped unrun when `#[tokio::test]` shuts that runtime down right after the
    /// test body returns (or panics).
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        let ns = self.namespace.clone();
        if keep_namespaces() {
            eprintln!("[vk-testkit] keeping namespace {ns}");
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "[vk-testkit] test failed; deleting its namespace {ns} \
                 (set {KEEP_NAMESPACES_ENV}=1 to keep it for inspection)"
            );
        }
        let config = self.cluster.config.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("vk-testkit-cleanup".into())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(async {
                        let client = Client::try_from(config).map_err(Error::api("client"))?;
                        delete_namespace(&client, &ns).await
                    }),
                    Err(e) => Err(Error::Unreachable {
                        path: PathBuf::new(),
                        reason: format!("cannot start a runtime for cleanup: {e}"),
                    }),
                };
                // The receiver may have given up waiting; nothing else to do then.
                let _ = tx.send(result);
            });
        match spawned {
            Ok(_) => match rx.recv_timeout(DROP_CLEANUP_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("[vk-testkit] cleanup: {e}"),
                Err(_) => eprintln!(
                    "[vk-testkit] cleanup: deleting namespace {} timed out",
                    self.namespace
                ),
            },
            Err(e) => eprintln!("[vk-testkit] cleanup: cannot spawn a thread: {e}"),
        }
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(Error::api(format!("deleting namespace {name}"))(e)),
    }
}
