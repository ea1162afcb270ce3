//! Running one virtual node: its provider, controllers and kubelet API, for as long as a
//! cancellation token allows — the whole process lifetime, or one leadership term (`ha`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vk_core::events::EventOptions;
use vk_core::metrics::Metrics;
use vk_core::node::NodeConfig;
use vk_core::pod::{PodController, PodControllerConfig};
use vk_core::virtual_node::{NodeHealth, ProviderHandoff};
use vk_core::{DynProvider, VirtualNode};
use vk_kubelet_api::tls::CertificateDer;
use vk_kubelet_api::{
    ApiMetrics, Auth, AuthConfig, ControllerPods, KubeletServer, NodeApi,
    SubjectAccessReviewAuthorizer, TokenReviewAuthenticator, tls,
};

use crate::providers;

/// What every node of this process shares.
#[derive(Clone)]
pub struct Common {
    pub client: kube::Client,
    /// For Leases alone (the node's heartbeat, leader election): see `main.rs`.
    pub heartbeat_client: kube::Client,
    pub metrics: Arc<Metrics>,
    pub api_metrics: ApiMetrics,
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
    pub files_cert: Option<(PathBuf, PathBuf)>,
    pub auth: AuthConfig,
    pub kubelet_bind_address: std::net::IpAddr,
    pub health: HealthBoard,
}

/// Everything needed to (re)start one node.
#[derive(Clone)]
pub struct NodePlan {
    pub node: NodeConfig,
    pub pods: PodControllerConfig,
    pub events: EventOptions,
    pub provider: String,
    pub settings: serde_json::Value,
    /// Requested kubelet API port (0: any free one).
    pub port: u16,
}

impl NodePlan {
    pub fn name(&self) -> &str {
        &self.node.name
    }

    pub async fn build_provider(&self, common: &Common) -> anyhow::Result<DynProvider> {
        let ctx = providers::BuildContext {
            node_name: &self.node.name,
            node_ip: &self.node.node_ip,
            source: Some(&common.client),
            metrics: common.metrics.clone(),
        };
        providers::build(&self.provider, self.settings.clone(), &ctx)
            .await
            .with_context(|| format!("node {}: provider {}", self.node.name, self.provider))
    }
}

/// The pod controllers currently running in this process, for `/healthz` and `/metrics`. With
/// leader election the set changes as terms begin and end.
#[derive(Clone, Default)]
pub struct HealthBoard(Arc<Mutex<BTreeMap<String, Arc<PodController>>>>);

impl HealthBoard {
    pub fn health(&self) -> Vec<NodeHealth> {
        self.0.lock().values().map(|c| c.health()).collect()
    }

    fn enter(&self, name: &str, controller: Arc<PodController>) {
        self.0.lock().insert(name.to_string(), controller);
    }

    fn leave(&self, name: &str) {
        self.0.lock().remove(name);
    }
}

/// A node ready to run: its kubelet API bound (so the status advertises the port really served
/// and a taken port stops start-up) and its controllers built.
pub struct ReadyNode {
    name: String,
    node: VirtualNode,
    server: KubeletServer,
    listener: tokio::net::TcpListener,
    health: HealthBoard,
}

/// Bind the node's kubelet API and build its controllers on `provider`.
pub async fn prepare(
    plan: &NodePlan,
    common: &Common,
    provider: DynProvider,
    handoff: Option<ProviderHandoff>,
) -> anyhow::Result<ReadyNode> {
    let name = plan.name().to_string();
    let listener = vk_kubelet_api::bind(SocketAddr::new(common.kubelet_bind_address, plan.port))
        .await
        .with_context(|| format!("node {name}: kubelet API"))?;
    let served_port = listener
        .local_addr()
        .with_context(|| format!("node {name}: kubelet API address"))?
        .port();
    let serving = match &common.files_cert {
        Some((cert, key)) => tls::serving_cert_from_files(cert, key)?,
        None => tls::self_signed(&name, &[plan.node.node_ip.clone(), name.clone()])
            .with_context(|| format!("node {name}"))?,
    };
    let tls_config = tls::server_config(serving, common.client_ca.as_deref())
        .with_context(|| format!("node {name}: kubelet API TLS"))?;
    let mut node_cfg = plan.node.clone();
    node_cfg.kubelet_port = served_port;
    let mut node = VirtualNode::new(
        node_cfg,
        plan.pods.clone(),
        plan.events,
        common.client.clone(),
        common.heartbeat_client.clone(),
        provider.clone(),
        common.metrics.clone(),
    );
    if let Some(handoff) = handoff {
        node = node.handed_off(handoff);
    }
    let auth = Auth::new(
        &name,
        common.auth.clone(),
        Some(Arc::new(TokenReviewAuthenticator::new(
            common.client.clone(),
        ))),
        Arc::new(SubjectAccessReviewAuthorizer::new(common.client.clone())),
        common.api_metrics.clone(),
    );
    let pods = ControllerPods::new(node.pods.clone(), common.client.clone(), &name);
    let api = NodeApi::new(
        &name,
        provider,
        Arc::new(pods),
        common.api_metrics.clone(),
        Some(common.metrics.clone()),
    );
    let server = KubeletServer::new(
        tls_config,
        Arc::new(auth),
        Arc::new(api),
        common.api_metrics.clone(),
    );
    Ok(ReadyNode {
        name,
        node,
        server,
        listener,
        health: common.health.clone(),
    })
}

impl ReadyNode {
    /// Serve the kubelet API and run the controllers until `cancel`; returns once both stopped.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), vk_core::Error> {
        self.health.enter(&self.name, self.node.pods.clone());
        let server = tokio::spawn(self.server.serve(self.listener, cancel.clone()));
        let result = self.node.run(cancel.clone()).await;
        // The node may have stopped on its own (an error): the kubelet API goes with it.
        cancel.cancel();
        let _ = server.await;
        self.health.leave(&self.name);
        result
    }
}

/// Bind with retries: after a takeover on the same machine (tests, or a replica restarted in
/// place) the previous leader may need a moment to close the port.
pub async fn prepare_with_retry(
    plan: &NodePlan,
    common: &Common,
    provider: DynProvider,
    handoff: ProviderHandoff,
    cancel: &CancellationToken,
) -> Option<ReadyNode> {
    let mut delay = Duration::from_millis(200);
    loop {
        match prepare(plan, common, provider.clone(), Some(handoff.clone())).await {
            Ok(ready) => return Some(ready),
            Err(e) => {
                warn!(node = %plan.name(), error = format!("{e:#}"), "cannot start the node yet; retrying");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
        info!(node = %plan.name(), "retrying node start");
    }
}
