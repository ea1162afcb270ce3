//! One virtual node: a provider instance wired to its node controller and pod controller.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
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
    handoff: Option<ProviderHandoff>,
}

/// A provider kept across several runs of its node — leader election hands a node from term to
/// term, and a backend's own state (watches, local processes) must not be rebuilt or doubled each
/// time. It is started once; its pushes go to the run of the moment and are dropped between runs,
/// which loses nothing because every run begins with a full list of the backend.
#[derive(Clone)]
pub struct ProviderHandoff {
    provider: DynProvider,
    current: Arc<parking_lot::RwLock<Option<ProviderSinks>>>,
    started: Arc<tokio::sync::OnceCell<()>>,
}

impl ProviderHandoff {
    pub fn new(provider: DynProvider) -> Self {
        Self {
            provider,
            current: Arc::default(),
            started: Arc::default(),
        }
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Route the provider's pushes to `sinks`, starting the provider on first use.
    async fn attach(&self, sinks: ProviderSinks) -> Result<(), Error> {
        *self.current.write() = Some(sinks);
        let current = self.current.clone();
        let to_pods = current.clone();
        let forwarding = ProviderSinks::new(
            move |uid, update| {
                if let Some(s) = to_pods.read().as_ref() {
                    s.pod(uid, update);
                }
            },
            move || {
                if let Some(s) = current.read().as_ref() {
                    s.node_changed();
                }
            },
        );
        self.started
            .get_or_try_init(|| self.provider.start(forwarding))
            .await?;
        Ok(())
    }

    fn detach(&self) {
        *self.current.write() = None;
    }
}

impl VirtualNode {
    pub fn new(
        node_cfg: NodeConfig,
        pod_cfg: PodControllerConfig,
        event_opts: EventOptions,
        client: kube::Client,
        heartbeat_client: kube::Client,
        provider: DynProvider,
        metrics: Arc<Metrics>,
    ) -> Self {
        let events =
            EventRecorder::start(client.clone(), &node_cfg.name, event_opts, metrics.clone());
        let node = NodeController::new(
            node_cfg,
            client.clone(),
            heartbeat_client,
            provider.clone(),
            events.clone(),
            metrics.clone(),
        );
        let pods = PodController::new(pod_cfg, client, provider.clone(), events, metrics);
        Self {
            node,
            pods,
            provider,
            handoff: None,
        }
    }

    /// Run on a provider that outlives this run (see [`ProviderHandoff`]); `handoff` must hold
    /// the provider this node was made with.
    pub fn handed_off(mut self, handoff: ProviderHandoff) -> Self {
        self.handoff = Some(handoff);
        self
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// What `/healthz` needs to know about this node right now.
    pub fn health(&self) -> NodeHealth {
        self.pods.health()
    }

    /// Start the provider, register the node, then run both controllers until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let sinks = ProviderSinks::new(self.pods.pod_sink(), self.node.notifier());
        match &self.handoff {
            Some(handoff) => handoff.attach(sinks).await?,
            None => self.provider.start(sinks).await?,
        }
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
        if let Some(handoff) = &self.handoff {
            handoff.detach();
        }
        Ok(())
    }
}

/// How long a node's pod watch may keep failing before `/healthz` reports it. kube's watcher
/// retries with backoff (tens of seconds between attempts once it has grown), and our client
/// retries each attempt for a while too: a short API server restart must not make a liveness
/// probe restart vkubelet, while a watch that stays broken means the node no longer sees its
/// pods and should.
pub const WATCH_FAILURE_TOLERANCE: Duration = Duration::from_secs(60);

/// One node's state as far as `/healthz` is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    pub node: String,
    /// The pod controller has had its first full lists of API and backend pods.
    pub synced: bool,
    /// Since when the node's pod watch has been failing without a successful answer, if it is.
    pub watch_failing_since: Option<Instant>,
}

impl NodeHealth {
    /// Why this node is unhealthy at `now`, if it is.
    pub fn problem(&self, now: Instant) -> Option<String> {
        if !self.synced {
            return Some(format!(
                "node {}: pod controller has not finished its first sync",
                self.node
            ));
        }
        let failing = now.saturating_duration_since(self.watch_failing_since?);
        (failing > WATCH_FAILURE_TOLERANCE).then(|| {
            format!(
                "node {}: pod watch failing for {}s",
                self.node,
                failing.as_secs()
            )
        })
    }
}

/// The `/healthz` verdict over every node: `Ok` when all are synced and no pod watch has been
/// failing for longer than [`WATCH_FAILURE_TOLERANCE`]; otherwise every reason, joined by `; `.
pub fn health_verdict(nodes: &[NodeHealth], now: Instant) -> Result<(), String> {
    let problems: Vec<String> = nodes.iter().filter_map(|n| n.problem(now)).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, synced: bool, failing_since: Option<Instant>) -> NodeHealth {
        NodeHealth {
            node: name.into(),
            synced,
            watch_failing_since: failing_since,
        }
    }

    #[test]
    fn unhealthy_until_every_node_synced() {
        let now = Instant::now();
        let nodes = [node("vk-1", true, None), node("vk-2", false, None)];
        assert_eq!(
            health_verdict(&nodes, now),
            Err("node vk-2: pod controller has not finished its first sync".into())
        );
        let nodes = [node("vk-1", true, None), node("vk-2", true, None)];
        assert_eq!(health_verdict(&nodes, now), Ok(()));
        assert_eq!(health_verdict(&[], now), Ok(()));
    }

    #[test]
    fn a_watch_failing_for_over_a_minute_is_unhealthy() {
        let since = Instant::now();
        let nodes = [node("vk-1", true, Some(since)), node("vk-2", true, None)];
        // Within the tolerance (an API server restart): still healthy.
        assert_eq!(health_verdict(&nodes, since), Ok(()));
        assert_eq!(
            health_verdict(&nodes, since + WATCH_FAILURE_TOLERANCE),
            Ok(())
        );
        assert_eq!(
            health_verdict(&nodes, since + Duration::from_secs(75)),
            Err("node vk-1: pod watch failing for 75s".into())
        );
        // Recovered: the controller clears the mark.
        let nodes = [node("vk-1", true, None)];
        assert_eq!(
            health_verdict(&nodes, since + Duration::from_secs(75)),
            Ok(())
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let since = Instant::now();
        let nodes = [node("vk-1", false, None), node("vk-2", true, Some(since))];
        assert_eq!(
            health_verdict(&nodes, since + Duration::from_secs(61)),
            Err(
                "node vk-1: pod controller has not finished its first sync; \
                 node vk-2: pod watch failing for 61s"
                    .into()
            )
        );
    }
}
