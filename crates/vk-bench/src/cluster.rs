//! Connecting to an API server from a kubeconfig, and the objects every run needs before its
//! first pod: the namespace, and a Node for the name the pods are bound to (the pod garbage
//! collector deletes pods bound to a node that does not exist).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

/// A client for the kubeconfig's current context. kube's hyper client speaks HTTP/1.1 only (its
/// rustls connector offers no `h2` in ALPN), so concurrency comes from its connection pool: one
/// TLS connection per request in flight.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    // Creates queue behind the API server's inflight limit while it saturates.
    config.read_timeout = Some(Duration::from_secs(120));
    kube::Client::try_from(config).context("build the API client")
}

/// Creates the namespace unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create namespace {name}")),
    }
}

/// Registers a bare Node object unless one of that name exists (vkubelet registers its own).
pub async fn ensure_node(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"type": "vk-bench", "kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": "vk-bench/null", "effect": "NoSchedule"}]},
    }))?;
    match Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create node {name}")),
    }
}

/// The status code of a kube error that the API server answered, if it did.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// How long a request is retried: long enough to ride out an API-server restart (a fault run
/// kills and restarts one mid-burst; at 100,000 pods the restart takes tens of seconds).
pub const RETRY_BUDGET: Duration = Duration::from_secs(180);

/// The pause before retry `attempt` (1-based): 20 ms more per attempt, at most 1 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis((20 * u64::from(attempt)).min(1000))
}

/// Whether a failed request is worth repeating: throttled, server-side trouble, or transport.
pub fn retryable(e: &kube::Error) -> bool {
    match api_code(e) {
        Some(code) => code == 429 || code >= 500,
        None => true,
    }
}
