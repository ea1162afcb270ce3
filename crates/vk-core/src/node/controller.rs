//! The node controller of one virtual node: registers the Node (or brings an existing one up to
//! date), patches its status when the backend changes and at least every `status_interval`, renews
//! its Lease, and re-creates it if it is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use super::{lease, spec};
use crate::error::{Error, api_status_code};
use crate::events::EventRecorder;
use crate::metrics::{Metrics, NodeLabels};
use crate::provider::{DynProvider, NodeResources};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The address the API server uses to reach our kubelet API.
    pub node_ip: String,
    /// The node's `Hostname` address. API servers with default
    /// `--kubelet-preferred-address-types` dial it first, so it must resolve: by default it is
    /// `node_ip` (a virtual node's name is rarely a DNS name).
    pub hostname: Option<String>,
    pub kubelet_port: u16,
    /// Extra labels on top of the standard virtual-kubelet ones.
    pub labels: BTreeMap<String, String>,
    /// Leave out vkubelet's taints (`virtual-kubelet.io/provider` NoSchedule and the
    /// `virtual-kubelet.io/prefer-local` PreferNoSchedule one).
    pub disable_taint: bool,
    /// Value of the `virtual-kubelet.io/provider` taint; `None`: the provider's name.
    pub taint_value: Option<String>,
    /// Add the `virtual-kubelet.io/prefer-local=true:PreferNoSchedule` taint, which burst
    /// pods (`auto`, `localPrefer`) do not tolerate, so the scheduler prefers real nodes.
    pub prefer_local_taint: bool,
    /// Caps the node's `pods` capacity below what the provider reports (a sizing profile's or
    /// the operator's limit).
    pub max_pods: Option<u32>,
    pub kubelet_version: String,
    pub status_interval: Duration,
    pub lease_duration_secs: i32,
    pub lease_renew_interval: Duration,
}

impl NodeConfig {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            node_ip: "127.0.0.1".into(),
            hostname: None,
            kubelet_port: 10250,
            labels: BTreeMap::new(),
            disable_taint: false,
            taint_value: None,
            prefer_local_taint: true,
            max_pods: None,
            kubelet_version: format!("v1.20.2-vk-{}", env!("CARGO_PKG_VERSION")),
            status_interval: Duration::from_secs(60),
            lease_duration_secs: 40,
            lease_renew_interval: Duration::from_secs(10),
        }
    }
}

pub struct NodeController {
    cfg: NodeConfig,
    client: kube::Client,
    /// Renews the node's Lease: a client of its own, so that a burst's requests never delay it.
    heartbeat_client: kube::Client,
    provider: DynProvider,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    changed: Notify,
    node_uid: Mutex<Option<String>>,
    last_resources: Mutex<Option<NodeResources>>,
}

impl NodeController {
    pub fn new(
        cfg: NodeConfig,
        client: kube::Client,
        heartbeat_client: kube::Client,
        provider: DynProvider,
        events: EventRecorder,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            client,
            heartbeat_client,
            provider,
            events,
            metrics,
            changed: Notify::new(),
            node_uid: Mutex::new(None),
            last_resources: Mutex::new(None),
        })
    }

    /// Callback for the provider: its node resources changed.
    pub fn notifier(self: &Arc<Self>) -> impl Fn() + Send + Sync + 'static {
        let weak = Arc::downgrade(self);
        move || {
            if let Some(this) = weak.upgrade() {
                this.changed.notify_one();
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Register the node once (retrying until the API server takes it), then keep it up to date
    /// until `cancel` fires.
    pub async fn run(
        self: Arc<Self>,
        registered: Option<tokio::sync::oneshot::Sender<()>>,
        cancel: CancellationToken,
    ) {
        let mut registered = registered;
        let mut failures = 0u32;
        // Only the first failure of a run, or one of another kind, is a warning: the sync is
        // retried for as long as it fails (through a whole API server outage).
        let mut last_error: Option<&'static str> = None;
        let mut tasks = tokio::task::JoinSet::new();
        let deleted = Arc::new(Notify::new());
        tasks.spawn(self.clone().watch_node(deleted.clone(), cancel.clone()));
        tasks.spawn(self.clone().renew_lease(cancel.clone()));
        let mut force = true;
        loop {
            match self.sync(force).await {
                Ok(()) => {
                    if failures > 0 {
                        info!(node = %self.cfg.name, failures, "node status sync recovered");
                    }
                    failures = 0;
                    last_error = None;
                    if let Some(tx) = registered.take() {
                        let _ = tx.send(());
                        self.events.node(
                            false,
                            "Starting",
                            format!(
                                "Started vkubelet on {} ({} provider)",
                                self.cfg.name,
                                self.provider.kind()
                            ),
                        );
                    }
                }
                Err(e) => {
                    failures += 1;
                    let kind = e.metric_label();
                    self.metrics.error(&self.cfg.name, "node_status", kind);
                    let delay = Duration::from_millis(500)
                        .saturating_mul(1 << failures.min(6))
                        .min(Duration::from_secs(30));
                    if last_error.replace(kind) == Some(kind) {
                        debug!(node = %self.cfg.name, error = %e, failures, ?delay, "node status sync failed again");
                    } else {
                        warn!(node = %self.cfg.name, error = %e, ?delay, "node status sync failed (repeats are logged at debug)");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.status_interval) => force = true,
                _ = self.changed.notified() => force = false,
                _ = deleted.notified() => {
                    info!(node = %self.cfg.name, "node object was deleted; registering it again");
                    *self.node_uid.lock() = None;
                    force = true;
                }
            }
        }
        tasks.abort_all();
    }

    async fn resources(&self) -> NodeResources {
        match self.provider.node_resources().await {
            Ok(r) => {
                *self.last_resources.lock() = Some(r.clone());
                r
            }
            Err(e) => {
                warn!(node = %self.cfg.name, error = %e, "provider did not report node resources; using the last known");
                self.metrics
                    .error(&self.cfg.name, "node_resources", e.metric_label());
                self.last_resources.lock().clone().unwrap_or(NodeResources {
                    accepting_pods: true,
                    ..Default::default()
                })
            }
        }
    }

    /// Make the Node say what it should. `force` writes the status even if only heartbeats changed.
    #[instrument(skip(self), fields(node = %self.cfg.name))]
    async fn sync(&self, force: bool) -> Result<(), Error> {
        let res = self.resources().await;
        let kind = self.provider.kind().to_string();
        let api: Api<Node> = Api::all(self.client.clone());
        let now = Timestamp::now();
        let Some(node) = api.get_opt(&self.cfg.name).await? else {
            let node = spec::new_node(&self.cfg, &kind, &res, now);
            let created = match api.create(&PostParams::default(), &node).await {
                Ok(n) => n,
                Err(e) if api_status_code(&e) == Some(409) => api.get(&self.cfg.name).await?,
                Err(e) => return Err(e.into()),
            };
            info!(node = %self.cfg.name, "registered node");
            *self.node_uid.lock() = created.metadata.uid.clone();
            // Creation may drop status on some servers; write it explicitly.
            self.patch_status(&api, spec::status(&self.cfg, &kind, &res, &[], now))
                .await?;
            return Ok(());
        };
        *self.node_uid.lock() = node.metadata.uid.clone();

        // Labels and taints: ours brought up to date, everyone else's kept.
        let want_labels = spec::labels(&self.cfg);
        let have_labels = node.metadata.labels.clone().unwrap_or_default();
        let labels_stale = want_labels
            .iter()
            .any(|(k, v)| have_labels.get(k) != Some(v));
        let have_taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let want_taints = spec::merged_taints(
            &have_taints,
            &spec::taints(&self.cfg, &kind, !res.accepting_pods),
        );
        let taints_stale = want_taints != have_taints;
        if labels_stale || taints_stale {
            let mut patch = serde_json::json!({});
            if labels_stale {
                patch["metadata"] = serde_json::json!({ "labels": want_labels });
            }
            if taints_stale {
                patch["spec"] = serde_json::json!({ "taints": want_taints });
            }
            api.patch(
                &self.cfg.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }

        let current = node.status.clone().unwrap_or_default();
        let previous = current.conditions.clone().unwrap_or_default();
        let desired = spec::status(&self.cfg, &kind, &res, &previous, now);
        if force || !owned_status_matches(&current, &desired) {
            self.patch_status(&api, desired).await?;
        }
        Ok(())
    }

    async fn patch_status(&self, api: &Api<Node>, status: NodeStatus) -> Result<(), Error> {
        // Strategic merge: conditions and addresses merge by type, so conditions others added stay.
        let patch = serde_json::json!({ "status": status });
        api.patch_status(
            &self.cfg.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
        Ok(())
    }

    async fn watch_node(self: Arc<Self>, deleted: Arc<Notify>, cancel: CancellationToken) {
        let api: Api<Node> = Api::all(self.client.clone());
        let stream = watcher::watch_object(api, &self.cfg.name);
        futures::pin_mut!(stream);
        let mut seen = false;
        // While the API server is away the watch fails again every few seconds (a second's pause
        // plus the client's retries): warn at the first failure of a run, debug for the rest.
        // Our own status writes (at least every status interval) show when it works again.
        let mut failing = false;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else { return };
            match ev {
                Ok(node) => {
                    if std::mem::take(&mut failing) {
                        info!(node = %self.cfg.name, "node watch recovered");
                    }
                    match node {
                        Some(_) => seen = true,
                        None => {
                            if seen {
                                seen = false;
                                deleted.notify_one();
                            }
                        }
                    }
                }
                Err(e) => {
                    if is_expired(&e) {
                        // Routine after a long disconnect: the watcher lists again.
                        debug!(node = %self.cfg.name, error = %e, "node watch expired; listing again");
                    } else if std::mem::replace(&mut failing, true) {
                        debug!(node = %self.cfg.name, error = %e, "node watch failed again; retrying");
                    } else {
                        warn!(node = %self.cfg.name, error = %e, "node watch failed; retrying (repeats are logged at debug until it recovers)");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn renew_lease(self: Arc<Self>, cancel: CancellationToken) {
        let labels = NodeLabels {
            node: self.cfg.name.clone(),
        };
        let mut failures = 0u32;
        loop {
            let uid = self.node_uid.lock().clone();
            let wait = match uid {
                None => Duration::from_millis(200),
                Some(uid) => match lease::renew(
                    &self.heartbeat_client,
                    &self.cfg.name,
                    &uid,
                    self.cfg.lease_duration_secs,
                )
                .await
                {
                    Ok(()) => {
                        if failures > 0 {
                            info!(node = %self.cfg.name, failures, "lease renewal recovered");
                        }
                        failures = 0;
                        self.metrics.lease_renewals.get_or_create(&labels).inc();
                        self.cfg.lease_renew_interval
                    }
                    Err(e) => {
                        failures += 1;
                        self.metrics.error(&self.cfg.name, "lease", "api");
                        // The first failure of a run warns; renewal is retried every few
                        // hundred milliseconds to seconds while it fails.
                        if failures == 1 {
                            warn!(node = %self.cfg.name, error = %e, "lease renewal failed (repeats are logged at debug)");
                        } else {
                            debug!(node = %self.cfg.name, error = %e, failures, "lease renewal failed again");
                        }
                        Duration::from_millis(200)
                            .saturating_mul(1 << failures.min(5))
                            .min(self.cfg.lease_renew_interval)
                    }
                },
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The API server no longer has the resource version a watch resumed from (410, after a long
/// disconnect or compaction): kube's watcher lists again, nothing is wrong.
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// Whether the node's status already says everything we own (ignoring heartbeats and fields
/// others own).
fn owned_status_matches(current: &NodeStatus, desired: &NodeStatus) -> bool {
    let mut ours = current.clone();
    ours.conditions = current.conditions.as_ref().map(|cs| {
        let mut owned: Vec<_> = cs
            .iter()
            .filter(|c| {
                desired
                    .conditions
                    .iter()
                    .flatten()
                    .any(|d| d.type_ == c.type_)
            })
            .cloned()
            .collect();
        owned.sort_by(|a, b| a.type_.cmp(&b.type_));
        owned
    });
    let mut want = desired.clone();
    if let Some(cs) = want.conditions.as_mut() {
        cs.sort_by(|a, b| a.type_.cmp(&b.type_));
    }
    ours.images = None;
    ours.volumes_attached = None;
    ours.volumes_in_use = None;
    ours.config = None;
    spec::same_status(&ours, &want)
}
