//! One virtual node: a provider instance wired to its node controller and pod controller.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::error::Error;
use crate::events::{EventOptions, EventRecorder};
use crate::metrics::Metrics;
use crate::node::{NodeConfig, NodeController};
use crate::pod::{PodController, PodControllerConfig};
use crate::provider::{DynProvider, ProviderSinks};

pub struct VirtualNode {
    pub node: Arc<NodeController>,
    pub pods: Arc<PodController>,
    provider: DynProvider,
}

impl VirtualNode {
    pub fn new(
        node_cfg: NodeConfig,
        pod_cfg: PodControllerConfig,
        event_opts: EventOptions,
        client: kube::Client,
        provider: DynProvider,
        metrics: Arc<Metrics>,
    ) -> Self {
        let events =
            EventRecorder::start(client.clone(), &node_cfg.name, event_opts, metrics.clone());
        let node = NodeController::new(
            node_cfg,
            client.clone(),
            provider.clone(),
            events.clone(),
            metrics.clone(),
        );
        let pods = PodController::new(pod_cfg, client, provider.clone(), events, metrics);
        Self {
            node,
            pods,
            provider,
        }
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Start the provider, register the node, then run both controllers until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let sinks = ProviderSinks::new(self.pods.pod_sink(), self.node.notifier());
        self.provider.start(sinks).await?;
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel();
        let node_task = tokio::spawn(self.node.clone().run(Some(registered_tx), cancel.clone()));
        // Pods are only taken on once the node exists, so the first status write finds its node.
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = registered_rx => {}
        }
        info!(node = %self.node.name(), provider = self.provider.kind(), "virtual node running");
        let pods_task = tokio::spawn(self.pods.clone().run(cancel.clone()));
        let _ = tokio::join!(node_task, pods_task);
        Ok(())
    }
}
