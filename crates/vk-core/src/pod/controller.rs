//! The pod controller of one virtual node.
//!
//! One watch (`spec.nodeName=<node>`) feeds a per-UID state table; provider pushes land in the same
//! table. Every change enqueues the pod's UID into a [`WorkQueue`]; a bounded set of workers runs
//! [`PodController::reconcile`], which is level-triggered: it looks at the API object and the
//! backend's latest word and does whatever brings them together (create, update, delete on the
//! backend; patch `pods/status`; delete the API object once the backend has let go). What to do
//! is decided in `decide.rs`, without I/O; this module owns the inputs, the per-pod table and the
//! thin async shell that carries the decisions out.
//!
//! Invariants:
//! - nothing is created on the backend before the first full list of API pods *and* of backend
//!   pods is known, so a restart adopts what runs instead of duplicating it;
//! - a backend pod without an API pod is deleted only after that first list (and on every periodic
//!   reconciliation after it);
//! - a pod whose backend instance vanished follows its restartPolicy, with an event;
//! - a pod's [`PodState`] is changed only by the worker holding its key; inputs (watch, provider
//!   pushes, referenced-object changes) change only what they observe;
//! - which copy of an API pod is newest follows the watch's order ([`CopyOrder`]), never an
//!   ordering of `resourceVersion`, which is opaque.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Span, debug, info, instrument, warn};

use super::decide::{
    Action, Backend, CreateResult, DeletePurpose, Done, Effect, Facts, Next, PodState, Policy,
    Then, VolumesResult, after, decide, fingerprint, spec_hash,
};
use super::stored::{StoredPod, StoredStatus};
use super::versions::{CopyOrder, Source};
use crate::error::{Error, ProviderError, api_status_code};
use crate::events::EventRecorder;
use crate::metrics::{Metrics, NodeLabels, PhaseLabels, ProviderCallLabels, ReconcileLabels};
use crate::provider::{DynProvider, PodKey, PodUpdate, ResolvedPod};
use crate::queue::{Backoff, WorkQueue};
use crate::resolve::{ResolveError, Resolver, volumes_fingerprint};
use crate::sizing::{PodSize, SIZE_ANNOTATION, SizingProfile};
use crate::virtual_node::NodeHealth;

/// Pods reconciled at once unless configured otherwise. Almost every pass of a burst waits on
/// one API write (the pod's status, or its final delete), so this is how many writes are in
/// flight: at 64, a burst of 10,000 pods queued in vkubelet for tens of seconds while the API
/// server had room (docs/testing.md, "Benchmark"). The API server's in-flight limits and its
/// 429s, which the client honours, are what protect it, as for any client.
pub const DEFAULT_POD_WORKERS: usize = 256;

#[derive(Debug, Clone)]
pub struct PodControllerConfig {
    pub node_name: String,
    /// Pods reconciled at once (bounds concurrent provider calls).
    pub workers: usize,
    /// How often API and backend are compared in full.
    pub resync_interval: Duration,
    /// Mark a pod Failed at the first provider failure instead of retrying while it exists.
    pub fail_fast: bool,
    pub backoff: Backoff,
    /// The node's sizing profile, applied to every pod before the provider sees it.
    pub sizing: Arc<SizingProfile>,
}

impl PodControllerConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            workers: DEFAULT_POD_WORKERS,
            resync_interval: Duration::from_secs(60),
            fail_fast: false,
            backoff: Backoff::default(),
            sizing: Arc::new(SizingProfile::none()),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: PodKey,
    api: Option<StoredPod>,
    /// Which copy of the API pod is the newest ([`CopyOrder`]: the watch's order, never the
    /// resourceVersion's).
    api_order: CopyOrder,
    backend: Backend,
    backend_status: Option<StoredStatus>,
    /// Hash of the API object's spec, taken before the stored copy was slimmed.
    api_spec: u64,
    restart_policy: Option<String>,
    /// The controller's progress with the pod; only the worker reconciling it changes it.
    state: PodState,
    /// How often a ConfigMap or Secret behind one of the pod's volumes changed.
    references_changed: u64,
    created_at: Option<Instant>,
    /// When the backend last said the pod is there (a status push, or our own create).
    backend_seen_at: Option<Instant>,
    status_writes: u32,
    /// What we last wrote, and the API server's echo of it: while both still hold, there is
    /// nothing to write even if the server dropped fields it does not know (hostIPs on 1.20).
    /// Kept as hashes: a parsed JSON tree per pod would cost kilobytes at 10,000 pods.
    written: Option<(u64, u64)>,
    /// The kind of the error the last reconcile failed with, until one succeeds: a pod that
    /// keeps failing the same way is retried for as long as it exists, so only the first failure
    /// (and a change of kind) is worth a warning; repeats go to debug.
    last_error: Option<&'static str>,
}

impl Entry {
    fn new(key: PodKey) -> Self {
        Self {
            key,
            api: None,
            api_order: CopyOrder::default(),
            backend: Backend::Unknown,
            backend_status: None,
            api_spec: 0,
            restart_policy: None,
            state: PodState::New {
                verdict: None,
                unsettled: false,
            },
            references_changed: 0,
            created_at: None,
            backend_seen_at: None,
            status_writes: 0,
            written: None,
            last_error: None,
        }
    }

    /// What the decision step reads, less the API pod and the backend status: the caller parses
    /// those from this entry's copies once the table's lock is released.
    fn facts_unparsed(&self) -> Facts {
        Facts {
            uid: self.key.uid.clone(),
            api: None,
            api_spec: self.api_spec,
            restart_policy: self.restart_policy.clone(),
            backend: self.backend,
            backend_status: None,
            references_changed: self.references_changed,
            written: self.written,
            now: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }
}

/// A pass that would take more actions than this is cut short (its state kept) and requeued: a
/// decision loop would otherwise spin a worker forever. No real pass comes near it (the longest:
/// update, track, refresh volumes, patch status).
const MAX_STEPS: usize = 12;

/// A read-only view of one pod, for the kubelet API and tests.
#[derive(Debug, Clone)]
pub struct PodSummary {
    pub key: PodKey,
    pub pod: Option<Arc<Pod>>,
    pub on_backend: bool,
}

pub struct PodController {
    cfg: PodControllerConfig,
    client: kube::Client,
    provider: DynProvider,
    resolver: Resolver,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    pods: Mutex<HashMap<String, Entry>>,
    queue: TimedQueue,
    synced: AtomicBool,
    /// When the current run of pod-watch errors began; `None` while the watch works.
    watch_failing_since: Mutex<Option<Instant>>,
    api_listed: tokio::sync::Notify,
    node_label: NodeLabels,
}

impl PodController {
    pub fn new(
        cfg: PodControllerConfig,
        client: kube::Client,
        provider: DynProvider,
        events: EventRecorder,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let node_label = NodeLabels {
            node: cfg.node_name.clone(),
        };
        let queue_latency = metrics
            .queue_latency_seconds
            .get_or_create(&node_label)
            .clone();
        Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let weak = weak.clone();
            let wake = Arc::new(move |uid: &str, volume: bool| {
                if let Some(this) = weak.upgrade() {
                    this.referenced_object_changed(uid, volume);
                }
            });
            Self {
                queue: TimedQueue::new(cfg.backoff, queue_latency),
                resolver: Resolver::new(client.clone(), wake),
                cfg,
                client,
                provider,
                events,
                metrics,
                pods: Mutex::new(HashMap::new()),
                synced: AtomicBool::new(false),
                watch_failing_since: Mutex::new(None),
                api_listed: tokio::sync::Notify::new(),
                node_label,
            }
        })
    }

    /// What the resolver holds for this node's pods.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// A ConfigMap or Secret a pod references changed (or appeared): a pod waiting for it is
    /// retried now; a running pod's volumes are refreshed.
    fn referenced_object_changed(&self, uid: &str, volume: bool) {
        if volume {
            self.update_entry(uid, |e| e.references_changed += 1);
        }
        self.queue.add(uid.to_string());
    }

    /// The sink the provider pushes pod updates into.
    pub fn pod_sink(self: &Arc<Self>) -> impl Fn(&str, PodUpdate) + Send + Sync + 'static {
        let weak = Arc::downgrade(self);
        move |uid: &str, update: PodUpdate| {
            if let Some(this) = weak.upgrade() {
                this.on_provider_update(uid, update);
            }
        }
    }

    /// Run until `cancel` fires. The provider must already be started with [`Self::pod_sink`].
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        self.register_metrics();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.clone().watch_pods(cancel.clone()));
        tasks.spawn(self.clone().initial_sync_then_resync(cancel.clone()));
        for _ in 0..self.cfg.workers.max(1) {
            tasks.spawn(self.clone().worker());
        }
        cancel.cancelled().await;
        self.queue.shutdown();
        while tasks.join_next().await.is_some() {}
    }

    /// Pods this node knows, for `/pods`-style listings.
    pub fn snapshot(&self) -> Vec<PodSummary> {
        // Stored pods are parsed after the table's lock is released: every worker needs it.
        let stored: Vec<(PodKey, Option<StoredPod>, bool)> = self
            .pods
            .lock()
            .values()
            .map(|e| (e.key.clone(), e.api.clone(), e.backend == Backend::Present))
            .collect();
        stored
            .into_iter()
            .map(|(key, api, on_backend)| PodSummary {
                key,
                pod: api.as_ref().map(StoredPod::to_pod),
                on_backend,
            })
            .collect()
    }

    /// The pod named `namespace/name` on this node, for the kubelet API's per-pod routes. When a
    /// pod was deleted and re-created under the same name, the one the API still has wins (the
    /// newer one if both are still listed). The stored pod may lack its spec: the copy of a pod
    /// that runs as specified is slimmed (docs/architecture.md, "Memory").
    pub fn find(&self, namespace: &str, name: &str) -> Option<PodSummary> {
        let (key, api, on_backend) = {
            let pods = self.pods.lock();
            let e = pods
                .values()
                .filter(|e| e.key.namespace == namespace && e.key.name == name)
                .max_by_key(|e| {
                    let created = e
                        .api
                        .as_ref()
                        .and_then(|p| p.metadata().creation_timestamp.as_ref())
                        .map(|t| t.0);
                    (e.api.is_some(), created)
                })?;
            (e.key.clone(), e.api.clone(), e.backend == Backend::Present)
        };
        Some(PodSummary {
            key,
            pod: api.as_ref().map(StoredPod::to_pod),
            on_backend,
        })
    }

    /// Whether the first API and backend lists are done.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// What `/healthz` needs to know: synced yet, and since when the pod watch fails, if it does.
    pub fn health(&self) -> NodeHealth {
        NodeHealth {
            node: self.cfg.node_name.clone(),
            synced: self.is_synced(),
            watch_failing_since: *self.watch_failing_since.lock(),
        }
    }

    fn register_metrics(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let metrics = self.metrics.clone();
        self.metrics.on_scrape(move || {
            let Some(this) = weak.upgrade() else { return };
            let mut counts: BTreeMap<String, i64> =
                ["Pending", "Running", "Succeeded", "Failed", "Unknown"]
                    .iter()
                    .map(|p| (p.to_string(), 0))
                    .collect();
            for e in this.pods.lock().values() {
                if let Some(pod) = &e.api {
                    let phase = pod.phase().unwrap_or("Pending").to_string();
                    *counts.entry(phase).or_default() += 1;
                }
            }
            for (phase, n) in counts {
                metrics
                    .pods
                    .get_or_create(&PhaseLabels {
                        node: this.cfg.node_name.clone(),
                        phase,
                    })
                    .set(n);
            }
            metrics
                .queue_depth
                .get_or_create(&this.node_label)
                .set(this.queue.len() as i64);
            let footprint = this.resolver.footprint();
            metrics
                .resolver_objects
                .get_or_create(&this.node_label)
                .set(footprint.kept_objects as i64);
            metrics
                .resolver_watches
                .get_or_create(&this.node_label)
                .set(footprint.watched_namespaces as i64);
        });
    }

    // ---- inputs -------------------------------------------------------------------------------

    fn on_provider_update(&self, uid: &str, update: PodUpdate) {
        let mut pods = self.pods.lock();
        match update {
            PodUpdate::Status(status) => {
                let e = pods
                    .entry(uid.to_string())
                    .or_insert_with(|| Entry::new(unknown_key(uid)));
                if e.backend != Backend::Gone {
                    e.backend = Backend::Present;
                }
                e.backend_status = Some(StoredStatus::new(status));
                e.backend_seen_at = Some(Instant::now());
            }
            PodUpdate::Gone => {
                let Some(e) = pods.get_mut(uid) else { return };
                e.backend = Backend::Gone;
            }
            PodUpdate::Event {
                warning,
                reason,
                message,
            } => {
                if let Some(e) = pods.get(uid) {
                    self.events.pod(&e.key, warning, &reason, message);
                }
                return;
            }
        }
        drop(pods);
        // Ahead of pods still waiting to be created: in a burst the queue holds thousands of
        // those, and this pod's status (or loss) would otherwise wait for all of them.
        self.queue.add_urgent(uid.to_string());
    }

    /// Keep `pod` as the API's word on it, if it is newer than the copy kept (see [`CopyOrder`]).
    fn upsert_api_pod(&self, mut pod: Pod, source: Source) -> Option<String> {
        let key = PodKey::of(&pod)?;
        pod.metadata.managed_fields = None;
        let uid = key.uid.clone();
        // After the first backend list, a pod we have never seen cannot be on the backend: we
        // create everything there ourselves.
        let synced = self.is_synced();
        let mut pods = self.pods.lock();
        let e = pods.entry(uid.clone()).or_insert_with(|| {
            let mut e = Entry::new(key.clone());
            if synced {
                e.backend = Backend::Absent;
            }
            e
        });
        e.key = key;
        let kept = e
            .api
            .as_ref()
            .and_then(|p| p.metadata().resource_version.as_deref());
        let newer = e
            .api_order
            .accept(source, kept, pod.metadata.resource_version.as_deref());
        if newer {
            if pod.spec.is_some() {
                e.api_spec = spec_hash(&pod);
                e.restart_policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone());
            }
            // A pod running as specified needs only its metadata and status from here on; the
            // spec is the bulk of a Pod's memory (10,000 pods, one node). It is fetched again if
            // the backend ever needs it (a lost instance is re-created).
            let slim = e.backend == Backend::Present && e.state.runs_spec(e.api_spec);
            e.api = Some(StoredPod::new(pod, slim));
        }
        Some(uid)
    }

    fn api_pod_deleted(&self, uid: &str) {
        if let Some(e) = self.pods.lock().get_mut(uid) {
            e.api = None;
            e.api_order.deleted();
        }
        self.queue.add(uid.to_string());
    }

    /// A watch error: the first of a run is a warning and starts the clock `/healthz` reads; the
    /// rest (the watcher retries with backoff for as long as the API server is away) go to debug.
    fn watch_failed(&self, error: &watcher::Error) {
        self.metrics
            .error(&self.cfg.node_name, "watch_pods", "watch");
        if is_expired(error) {
            // The watcher lists again (soon, or after its grown backoff); a watch that stays
            // broken shows up as other errors.
            debug!(node = %self.cfg.node_name, error = %error, "pod watch expired; listing again");
            return;
        }
        let first = {
            let mut since = self.watch_failing_since.lock();
            let first = since.is_none();
            since.get_or_insert_with(Instant::now);
            first
        };
        if first {
            warn!(node = %self.cfg.node_name, error = %error, "pod watch failed; retrying (repeats are logged at debug until it recovers)");
        } else {
            debug!(node = %self.cfg.node_name, error = %error, "pod watch failed again; retrying");
        }
    }

    /// The watch delivered, or the API server answered one of its requests.
    fn watch_healthy(&self) {
        let since = self.watch_failing_since.lock().take();
        if let Some(since) = since {
            info!(node = %self.cfg.node_name, failed_for = ?since.elapsed(), "pod watch recovered");
        }
    }

    /// The client the pod watch runs on: the shared one, with every successful answer reported
    /// to [`Self::watch_healthy`]. kube's watcher resumes a broken watch without emitting
    /// anything, so on a node where no pod changes, a recovered watch would otherwise look
    /// broken (and `/healthz` fail) until the next pod event.
    fn watch_client(self: &Arc<Self>) -> kube::Client {
        let inner = self.client.clone();
        let namespace = inner.default_namespace().to_string();
        let weak = Arc::downgrade(self);
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let inner = inner.clone();
            let weak = weak.clone();
            async move {
                let res = inner.send(req).await;
                if res.as_ref().is_ok_and(|r| r.status().is_success())
                    && let Some(this) = weak.upgrade()
                {
                    this.watch_healthy();
                }
                res
            }
        });
        kube::Client::new(service, namespace)
    }

    async fn watch_pods(self: Arc<Self>, cancel: CancellationToken) {
        let api: Api<Pod> = Api::all(self.watch_client());
        // A (re)list is read from etcd in pages of 500 (`MostRecent`), not from the watch cache
        // (`Any`), which a 1.20 API server answers in one piece whatever the limit: at 10,000
        // pods a relist held ~70 MB of Pods at once, and it grows with the node. (Decoding that
        // one piece as it streams in was tried: at 100,000 pods mid-burst the API server cut the
        // response at its request timeout, every time.)
        let cfg = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.cfg.node_name))
            .list_semantic(watcher::ListSemantic::MostRecent);
        let stream = watcher::watcher(api, cfg).default_backoff();
        futures::pin_mut!(stream);
        let mut relist: Option<(HashSet<String>, Instant)> = None;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else { return };
            // `Init` comes before the list is even requested: it proves nothing.
            if ev.as_ref().is_ok_and(|e| !matches!(e, Event::Init)) {
                self.watch_healthy();
            }
            match ev {
                Ok(Event::Init) => relist = Some((HashSet::new(), Instant::now())),
                Ok(Event::InitApply(pod)) => {
                    if let Some(uid) = self.upsert_api_pod(pod, Source::Relist) {
                        // A list's pages are one consistent snapshot: each pod in them can be
                        // reconciled as its page arrives. Waiting for the last page held back
                        // every pod created meanwhile for as long as the list took (minutes at
                        // 100,000 pods). Before the first backend sync nothing is queued: the
                        // sync queues every pod.
                        if self.is_synced() {
                            self.queue.add(uid.clone());
                        }
                        if let Some((seen, _)) = relist.as_mut() {
                            seen.insert(uid);
                        }
                    }
                }
                Ok(Event::InitDone) => {
                    let (seen, started) = relist
                        .take()
                        .unwrap_or_else(|| (HashSet::new(), Instant::now()));
                    self.metrics
                        .pod_watch_lists
                        .get_or_create(&self.node_label)
                        .inc();
                    self.metrics
                        .pod_watch_list_seconds
                        .get_or_create(&self.node_label)
                        .observe(started.elapsed().as_secs_f64());
                    info!(node = %self.cfg.node_name, pods = seen.len(), took = ?started.elapsed(), "pod watch listed the node's pods");
                    // Pods deleted while the watch was down never produce a Delete event.
                    let vanished: Vec<String> = self
                        .pods
                        .lock()
                        .iter()
                        .filter(|(uid, e)| e.api.is_some() && !seen.contains(*uid))
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    for uid in vanished {
                        self.api_pod_deleted(&uid);
                    }
                    self.api_listed.notify_one();
                }
                Ok(Event::Apply(pod)) => {
                    if let Some(uid) = self.upsert_api_pod(pod, Source::Watch) {
                        self.queue.add(uid);
                    }
                }
                Ok(Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.api_pod_deleted(uid);
                    }
                }
                Err(e) => self.watch_failed(&e),
            }
        }
    }

    async fn initial_sync_then_resync(self: Arc<Self>, cancel: CancellationToken) {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = self.api_listed.notified() => {}
        }
        let mut failures = 0u32;
        loop {
            match self.sync_with_backend().await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    let delay = self.cfg.backoff.delay(failures);
                    warn!(node = %self.cfg.node_name, error = %e, ?delay, "listing backend pods failed; pods wait until it succeeds");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.synced.store(true, Ordering::Release);
        let all: Vec<String> = self.pods.lock().keys().cloned().collect();
        info!(node = %self.cfg.node_name, pods = all.len(), "pod controller synced with API and backend");
        for uid in all {
            self.queue.add(uid);
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.resync_interval) => {}
            }
            if let Err(e) = self.sync_with_backend().await {
                warn!(node = %self.cfg.node_name, error = %e, "periodic reconciliation failed");
                continue;
            }
            let all: Vec<String> = self.pods.lock().keys().cloned().collect();
            for uid in all {
                self.queue.add(uid);
            }
        }
    }

    /// Compare the backend's pod list with what we know: adopt what runs, spot orphans (handled
    /// by reconcile as API-less pods) and pods the backend lost.
    async fn sync_with_backend(&self) -> Result<(), ProviderError> {
        let started = Instant::now();
        let listed = self.call("list", self.provider.list_pods()).await?;
        let mut pods = self.pods.lock();
        let mut on_backend = HashSet::with_capacity(listed.len());
        for bp in listed {
            on_backend.insert(bp.key.uid.clone());
            let e = pods
                .entry(bp.key.uid.clone())
                .or_insert_with(|| Entry::new(bp.key.clone()));
            if matches!(e.backend, Backend::Unknown | Backend::Absent) {
                e.backend = Backend::Present;
            }
            if e.backend_status.is_none() {
                e.backend_status = bp.status.map(StoredStatus::new);
            }
            if e.api.is_none() {
                e.key = bp.key;
            }
        }
        for (uid, e) in pods.iter_mut() {
            if on_backend.contains(uid) {
                continue;
            }
            e.backend = unlisted(e.backend, e.backend_seen_at, started);
        }
        Ok(())
    }

    // ---- the work loop ------------------------------------------------------------------------

    async fn worker(self: Arc<Self>) {
        while let Some(uid) = self.queue.next().await {
            self.process(&uid).await;
            self.queue.done(&uid);
        }
    }

    /// Reconcile one pod, time it, and schedule what comes next.
    #[instrument(
        name = "reconcile_pod",
        skip_all,
        fields(node = %self.cfg.node_name, namespace = Empty, name = Empty, uid = %uid)
    )]
    async fn process(&self, uid: &str) {
        if let Some(key) = self.pods.lock().get(uid).map(|e| e.key.clone())
            && !key.name.is_empty()
        {
            let span = Span::current();
            span.record("namespace", key.namespace.as_str());
            span.record("name", key.name.as_str());
        }
        let start = Instant::now();
        let result = self.reconcile(uid).await;
        let (outcome, error) = match &result {
            Ok(Next::Done) => ("done", ""),
            Ok(Next::After(_)) => ("requeue", ""),
            Ok(Next::Retry(_)) => ("retry", ""),
            Err(e) => ("error", e.metric_label()),
        };
        self.metrics
            .reconcile_seconds
            .get_or_create(&ReconcileLabels {
                node: self.cfg.node_name.clone(),
                outcome,
                error,
            })
            .observe(start.elapsed().as_secs_f64());
        let key = uid.to_string();
        match result {
            Ok(Next::Done) => {
                self.queue.forget(&key);
                self.update_entry(uid, |e| e.last_error = None);
            }
            Ok(Next::After(d)) => {
                self.queue.forget(&key);
                self.queue.add_after(key, d);
                self.update_entry(uid, |e| e.last_error = None);
            }
            Ok(Next::Retry(min)) => {
                self.queue.retry_at_least(key, min);
            }
            Err(e) => {
                let kind = e.metric_label();
                self.metrics.error(&self.cfg.node_name, "reconcile", kind);
                let delay = self.queue.retry(key.clone());
                let attempt = self.queue.failures(&key);
                let repeat = self.note_reconcile_error(uid, kind);
                if repeat || is_api_unreachable(&e) {
                    debug!(error = %e, error_kind = kind, attempt, ?delay, "reconcile failed; will retry");
                } else {
                    warn!(error = %e, error_kind = kind, attempt, ?delay, "reconcile failed; will retry (repeats of this error are logged at debug)");
                }
            }
        }
    }

    /// Remember that the pod's reconcile failed with `kind`; whether it failed that way last time.
    fn note_reconcile_error(&self, uid: &str, kind: &'static str) -> bool {
        self.pods
            .lock()
            .get_mut(uid)
            .is_some_and(|e| e.last_error.replace(kind) == Some(kind))
    }

    fn entry(&self, uid: &str) -> Option<Entry> {
        self.pods.lock().get(uid).cloned()
    }

    fn update_entry(&self, uid: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.pods.lock().get_mut(uid) {
            f(e);
        }
    }

    fn policy(&self) -> Policy<'_> {
        Policy {
            node_name: &self.cfg.node_name,
            provider_kind: self.provider.kind(),
            fail_fast: self.cfg.fail_fast,
            sizing: &self.cfg.sizing,
        }
    }

    /// The pod's key, state and facts, with `api` (the pass's copy) instead of the stored one
    /// when given.
    fn observe(
        &self,
        uid: &str,
        api: Option<Option<Arc<Pod>>>,
    ) -> Option<(PodKey, PodState, Facts)> {
        let (key, state, stored, backend_status, facts) = {
            let pods = self.pods.lock();
            let e = pods.get(uid)?;
            let stored = if api.is_none() { e.api.clone() } else { None };
            (
                e.key.clone(),
                e.state.clone(),
                stored,
                e.backend_status.clone(),
                e.facts_unparsed(),
            )
        };
        // Parsed with the table unlocked (see `snapshot`).
        let api = api.unwrap_or_else(|| stored.as_ref().map(StoredPod::to_pod));
        let backend_status = backend_status.as_ref().and_then(StoredStatus::get);
        Some((
            key,
            state,
            Facts {
                api,
                backend_status,
                ..facts
            },
        ))
    }

    /// Bring one pod's API object and backend instance into agreement: the decision step says
    /// what to do ([`decide`], [`after`]); this runs it. The pass keeps the API copy it started
    /// with (or the whole pod, once fetched); everything else is read again after each action.
    async fn reconcile(&self, uid: &str) -> Result<Next, Error> {
        if !self.is_synced() {
            return Ok(Next::Done); // everything is enqueued once the first lists are in
        }
        let Some((key, mut state, facts)) = self.observe(uid, None) else {
            return Ok(Next::Done);
        };
        let mut pass_pod = facts.api.clone();
        let policy = self.policy();
        let mut step = decide(&mut state, &facts, &policy);
        let mut steps = 0;
        loop {
            self.apply(&key, &state, step.effects);
            let action = match step.then {
                Then::Finish(next) => return Ok(next),
                Then::Do(action) => action,
            };
            steps += 1;
            if steps > MAX_STEPS {
                warn!(pod = %key, next = action.name(), "reconcile took too many steps; requeued");
                return Ok(Next::After(Duration::ZERO));
            }
            let done = match action {
                Action::PatchStatus {
                    patch,
                    desired_print,
                    then,
                } => {
                    self.patch_status(&key, patch, desired_print).await?;
                    return Ok(then);
                }
                Action::FetchSpec => {
                    let fetched = self.fetch_pod(&key).await?;
                    let found = fetched.is_some();
                    if let Some(pod) = fetched {
                        pass_pod = Some(pod);
                    }
                    Done::SpecFetched { found }
                }
                action => self.execute(&key, pass_pod.as_ref(), action).await?,
            };
            let Some((_, _, facts)) = self.observe(uid, Some(pass_pod.clone())) else {
                return Ok(Next::Done);
            };
            step = after(&mut state, &facts, &policy, done);
        }
    }

    /// Keep the decision's state and carry out its effects.
    fn apply(&self, key: &PodKey, state: &PodState, effects: Vec<Effect>) {
        let uid = key.uid.as_str();
        self.update_entry(uid, |e| e.state = state.clone());
        for effect in effects {
            match effect {
                Effect::Event {
                    warning,
                    reason,
                    message,
                } => self.events.pod(key, warning, &reason, message),
                Effect::Rejected { reason, message } => {
                    warn!(pod = %key, reason, %message, "rejecting pod");
                }
                Effect::ForgetReferences => self.resolver.forget(uid),
                Effect::DropPod => self.drop_pod(uid),
                Effect::BackendCreated => {
                    self.update_entry(uid, |e| {
                        if e.backend != Backend::Gone {
                            e.backend = Backend::Present;
                        }
                        let now = Instant::now();
                        e.created_at = Some(now);
                        e.backend_seen_at = Some(now);
                    });
                    self.metrics
                        .pods_created
                        .get_or_create(&self.node_label)
                        .inc();
                }
                Effect::BackendReplaced => self.update_entry(uid, |e| {
                    e.backend = Backend::Absent;
                    e.backend_status = None;
                }),
                Effect::BackendGone => self.update_entry(uid, |e| e.backend = Backend::Gone),
                Effect::StatusMatches {
                    desired_print,
                    current_print,
                } => self.update_entry(uid, |e| {
                    e.written = Some((desired_print, current_print));
                }),
            }
        }
    }

    /// Forget a pod that has neither an API object nor a backend instance.
    fn drop_pod(&self, uid: &str) {
        let removed = {
            let mut pods = self.pods.lock();
            // Something may have arrived meanwhile (a re-listed API pod); only drop a still-orphaned entry.
            match pods.get(uid) {
                Some(e) if e.api.is_none() => pods.remove(uid),
                _ => None,
            }
        };
        if let Some(e) = removed {
            self.resolver.forget(uid);
            if e.created_at.is_some() {
                self.metrics
                    .status_writes_per_pod
                    .get_or_create(&self.node_label)
                    .observe(f64::from(e.status_writes));
            }
            self.queue.remove(&uid.to_string());
        }
    }

    /// Run one action and say what it came to. `pod` is the pass's copy of the API pod.
    async fn execute(
        &self,
        key: &PodKey,
        pod: Option<&Arc<Pod>>,
        action: Action,
    ) -> Result<Done, Error> {
        let uid = key.uid.as_str();
        Ok(match action {
            Action::DeleteBackend { grace, purpose } => {
                let result = self
                    .call("delete", self.provider.delete_pod(key, grace))
                    .await;
                if purpose == DeletePurpose::Orphan
                    && result.is_ok()
                    && self
                        .entry(uid)
                        .is_some_and(|e| e.created_at.is_none() && e.status_writes == 0)
                {
                    info!(pod = %key, "deleted backend pod that has no API pod");
                }
                Done::BackendDeleted { purpose, result }
            }
            Action::DeleteApi => Done::ApiDeleted {
                existed: self.delete_api_pod(key).await?,
            },
            Action::Create {
                sized,
                size,
                restart_base,
                spec,
            } => {
                let seen = self.entry(uid).map(|e| e.references_changed).unwrap_or(0);
                if let Some(pod) = pod {
                    self.record_size(key, pod, size).await;
                }
                let result = self.create_on_backend(key, sized, restart_base).await?;
                Done::Created { spec, seen, result }
            }
            Action::Update {
                sized,
                restart_base,
                spec,
            } => {
                let resolved =
                    ResolvedPod::new(key.clone(), sized).with_restart_count_base(restart_base);
                let result = self
                    .call("update", self.provider.update_pod(&resolved))
                    .await;
                Done::Updated { spec, result }
            }
            Action::Track => Done::Tracked {
                seen: self.entry(uid).map(|e| e.references_changed).unwrap_or(0),
                refresh_at: pod.and_then(|pod| self.track_references(key, pod)),
            },
            Action::RefreshVolumes { applied } => {
                let seen = self.entry(uid).map(|e| e.references_changed).unwrap_or(0);
                let result = match pod {
                    Some(pod) => self.refresh_volumes(key, pod, applied).await?,
                    None => VolumesResult::PodGone,
                };
                Done::VolumesRefreshed { seen, result }
            }
            // Run by the pass itself: they end it, or change the pass's copy of the pod.
            Action::PatchStatus { .. } | Action::FetchSpec => {
                return Err(Error::Provider(ProviderError::Other(
                    "internal: action run outside its pass".into(),
                )));
            }
        })
    }

    /// The whole API pod by GET (the stored copy was slimmed), if it is still the same pod.
    async fn fetch_pod(&self, key: &PodKey) -> Result<Option<Arc<Pod>>, Error> {
        let ticket = self.api_ticket(&key.uid);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        match api.get_opt(&key.name).await? {
            Some(p) if p.metadata.uid.as_deref() == Some(key.uid.as_str()) => {
                self.upsert_api_pod(p.clone(), Source::Answer { ticket });
                Ok(Some(Arc::new(p)))
            }
            _ => Ok(None),
        }
    }

    /// Remove the API object for good: grace 0, guarded by UID so a re-created pod of the same
    /// name is never hit. `false` when it was gone (or replaced) already.
    async fn delete_api_pod(&self, key: &PodKey) -> Result<bool, Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(key.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&key.name, &dp).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(api_status_code(&e), Some(404 | 409)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolve what the backend needs and create the pod there. A missing reference, an invalid
    /// one, too much volume data and a provider failure are results for the decision step; only
    /// an unreachable API server is an error.
    async fn create_on_backend(
        &self,
        key: &PodKey,
        sized: Arc<Pod>,
        restart_base: i32,
    ) -> Result<CreateResult, Error> {
        let provider = self.provider.clone();
        let result = self
            .resolver
            .resolve(
                &sized,
                || async move { node_allocatable(&provider).await },
                self.max_volume_bytes(),
            )
            .await;
        let resolved = match result {
            Ok(r) => r,
            Err(error) => {
                self.metrics
                    .error(&self.cfg.node_name, "resolve", resolve_error_label(&error));
                return match error {
                    ResolveError::Missing {
                        message, volume, ..
                    } => {
                        debug!(pod = %key, %message, "pod waits for a referenced object");
                        Ok(CreateResult::MissingReference {
                            message,
                            volume: volume.is_some(),
                        })
                    }
                    ResolveError::Invalid(message) => Ok(CreateResult::InvalidReference(message)),
                    e @ ResolveError::TooLarge { .. } => Ok(CreateResult::TooLarge(e.to_string())),
                    ResolveError::Api(e) => Err(e.into()),
                };
            }
        };
        for w in &resolved.warnings {
            self.events.pod(key, true, w.reason, w.message.clone());
        }
        let volumes_print = volumes_fingerprint(&resolved.resolution.volumes);
        let refresh_at = resolved.refresh_at;
        let pod = ResolvedPod::new(key.clone(), sized)
            .with_restart_count_base(restart_base)
            .with_resolution(resolved.resolution);
        Ok(
            match self.call("create", self.provider.create_pod(&pod)).await {
                Ok(()) => CreateResult::Created {
                    volumes_print,
                    refresh_at,
                },
                Err(e) => CreateResult::ProviderFailed(e),
            },
        )
    }

    /// Write the size the backend runs (`virtual-kubelet.io/size: <cores>_<GiB>`, CCI's own
    /// format) on the API pod, once. A failed write is not worth failing the pod over.
    async fn record_size(&self, key: &PodKey, pod: &Pod, size: Option<PodSize>) {
        let Some(size) = size else {
            return;
        };
        let size = size.to_string();
        let current = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIZE_ANNOTATION));
        if current == Some(&size) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({
            "metadata": {
                "uid": key.uid,
                "annotations": { SIZE_ANNOTATION: size },
            }
        });
        if let Err(e) = api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(pod = %key, error = %e, "cannot record the pod's size annotation");
            self.metrics
                .error(&self.cfg.node_name, "size_annotation", "api");
        }
    }

    /// A pod found running on the backend at start-up (created before a restart): watch what it
    /// references from now on, and refresh its service-account tokens soon, since when they were
    /// minted is unknown. The refresh is spread over a few minutes so a restart with many pods
    /// does not mint all tokens at once. Returns when the tokens are due.
    fn track_references(&self, key: &PodKey, pod: &Pod) -> Option<std::time::SystemTime> {
        self.resolver.track(&key.uid, pod);
        let has_tokens = !crate::resolve::volumes::token_specs(pod).is_empty();
        let spread = Duration::from_millis(rand_below(ADOPTED_TOKEN_REFRESH_SPREAD.as_millis()));
        has_tokens.then(|| std::time::SystemTime::now() + spread)
    }

    /// Re-resolve a running pod's volumes after a referenced object changed or a token came due,
    /// and hand the backend the new content if it differs from `applied`.
    async fn refresh_volumes(
        &self,
        key: &PodKey,
        pod: &Arc<Pod>,
        applied: Option<u64>,
    ) -> Result<VolumesResult, Error> {
        let fetched;
        let pod = if pod.spec.is_some() {
            pod
        } else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
            match api.get_opt(&key.name).await? {
                Some(p) if p.metadata.uid.as_deref() == Some(key.uid.as_str()) => {
                    fetched = Arc::new(p);
                    &fetched
                }
                _ => return Ok(VolumesResult::PodGone),
            }
        };
        let provider = self.provider.clone();
        let result = self
            .resolver
            .resolve_volumes(
                pod,
                || async move { node_allocatable(&provider).await },
                self.max_volume_bytes(),
            )
            .await;
        let refreshed = match result {
            Ok(r) => r,
            Err(ResolveError::Api(e)) => return Err(e.into()),
            Err(e) => {
                self.metrics
                    .error(&self.cfg.node_name, "resolve", resolve_error_label(&e));
                return Ok(VolumesResult::Unresolvable(e.to_string()));
            }
        };
        let print = volumes_fingerprint(&refreshed.volumes);
        if applied != Some(print) {
            match self
                .call(
                    "update_volumes",
                    self.provider.update_volumes(key, &refreshed.volumes),
                )
                .await
            {
                Ok(()) => debug!(pod = %key, "refreshed volume contents on the backend"),
                Err(ProviderError::NotSupported(what)) => {
                    debug!(pod = %key, %what, "backend cannot refresh volumes of a running pod");
                }
                Err(ProviderError::NotFound(_)) => return Ok(VolumesResult::PodGone),
                Err(e) => return Ok(VolumesResult::UpdateFailed(e)),
            }
        }
        Ok(VolumesResult::Applied {
            print,
            refresh_at: refreshed.refresh_at,
        })
    }

    /// The provider's limit on resolved volume data, lowered by the sizing profile's.
    fn max_volume_bytes(&self) -> Option<u64> {
        let provider = self.provider.limits().max_volume_bytes;
        match (provider, self.cfg.sizing.max_config_volume_bytes()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Send the decided merge patch to `pods/status` and keep the API server's answer.
    async fn patch_status(
        &self,
        key: &PodKey,
        patch: serde_json::Value,
        desired_print: u64,
    ) -> Result<(), Error> {
        debug!(pod = %key, %patch, "patching pod status");
        let ticket = self.api_ticket(&key.uid);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                self.metrics
                    .status_patches
                    .get_or_create(&self.node_label)
                    .inc();
                let echo = updated.status.as_ref().map(fingerprint).unwrap_or_default();
                self.update_entry(&key.uid, |e| {
                    e.status_writes += 1;
                    e.written = Some((desired_print, echo));
                });
                self.upsert_api_pod(updated, Source::Answer { ticket });
                Ok(())
            }
            // Gone, or a different pod now has this name: nothing of ours to patch.
            Err(e) if matches!(api_status_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// For [`Source::Answer`]: where the watch stands before a request that returns the pod.
    fn api_ticket(&self, uid: &str) -> u64 {
        self.pods
            .lock()
            .get(uid)
            .map(|e| e.api_order.ticket())
            .unwrap_or_default()
    }

    /// Call the provider, timing it for the latency histogram.
    async fn call<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let start = Instant::now();
        let res = fut.await;
        let result = match &res {
            Ok(_) => "ok",
            Err(e) => {
                self.metrics
                    .error(&self.cfg.node_name, operation, e.metric_label());
                e.metric_label()
            }
        };
        self.metrics
            .provider_call_seconds
            .get_or_create(&ProviderCallLabels {
                node: self.cfg.node_name.clone(),
                operation,
                result,
            })
            .observe(start.elapsed().as_secs_f64());
        res
    }
}

/// The pod work queue, timed for `vkubelet_workqueue_queue_duration_seconds`. [`WorkQueue`] keeps
/// no timestamps, so when each key became due is tracked here, around every queue call.
struct TimedQueue {
    queue: WorkQueue<String>,
    clock: Mutex<QueueClock>,
    latency: Histogram,
}

impl TimedQueue {
    fn new(backoff: Backoff, latency: Histogram) -> Self {
        Self {
            queue: WorkQueue::new(backoff),
            clock: Mutex::new(QueueClock::default()),
            latency,
        }
    }

    // Adds are timed before the queue sees them, so a worker that takes the key at once finds
    // its time.

    fn add(&self, key: String) {
        self.clock
            .lock()
            .added(&key, Instant::now(), Duration::ZERO);
        self.queue.add(key);
    }

    fn add_urgent(&self, key: String) {
        self.clock
            .lock()
            .added(&key, Instant::now(), Duration::ZERO);
        self.queue.add_urgent(key);
    }

    fn add_after(&self, key: String, delay: Duration) {
        self.clock.lock().added(&key, Instant::now(), delay);
        self.queue.add_after(key, delay);
    }

    fn retry(&self, key: String) -> Duration {
        self.retry_at_least(key, Duration::ZERO)
    }

    /// Only the worker holding `key` retries it, and nobody else can take it until that worker
    /// is done: timing it after the queue chose the delay is safe.
    fn retry_at_least(&self, key: String, min: Duration) -> Duration {
        let delay = self.queue.retry_at_least(key.clone(), min);
        self.clock.lock().added(&key, Instant::now(), delay);
        delay
    }

    fn failures(&self, key: &String) -> u32 {
        self.queue.failures(key)
    }

    fn forget(&self, key: &String) {
        self.queue.forget(key);
    }

    fn remove(&self, key: &String) {
        self.clock.lock().removed(key);
        self.queue.remove(key);
    }

    /// Timed before the queue re-queues a key added meanwhile, for the same reason as adds.
    fn done(&self, key: &String) {
        self.clock.lock().done(key, Instant::now());
        self.queue.done(key);
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn shutdown(&self) {
        self.queue.shutdown();
    }

    async fn next(&self) -> Option<String> {
        let key = self.queue.next().await?;
        let waited = self.clock.lock().taken(&key, Instant::now());
        if let Some(waited) = waited {
            self.latency.observe(waited.as_secs_f64());
        }
        Some(key)
    }
}

/// When each queued key became (or becomes) due, mirroring the queue's rules: a key is queued
/// once at its earliest time; a key a worker holds is not handed out again before that worker is
/// done, so what is asked for it meanwhile counts from then at the earliest. Time spent waiting
/// for its own previous reconcile, or for a delay or backoff asked for, is not queue latency.
#[derive(Debug, Default)]
struct QueueClock {
    due: HashMap<String, Instant>,
    held: HashMap<String, Held>,
}

/// What was asked for a key while a worker held it.
#[derive(Debug, Default)]
struct Held {
    now: bool,
    at: Option<Instant>,
}

impl QueueClock {
    fn added(&mut self, key: &str, now: Instant, delay: Duration) {
        let at = now + delay;
        if let Some(held) = self.held.get_mut(key) {
            if delay.is_zero() {
                held.now = true;
            } else {
                held.at = Some(held.at.map_or(at, |t| t.min(at)));
            }
            return;
        }
        match self.due.get_mut(key) {
            Some(t) => *t = (*t).min(at),
            None => {
                self.due.insert(key.to_string(), at);
            }
        }
    }

    /// A worker took `key`: how long it waited since it was due.
    fn taken(&mut self, key: &str, now: Instant) -> Option<Duration> {
        self.held.insert(key.to_string(), Held::default());
        self.due
            .remove(key)
            .map(|t| now.saturating_duration_since(t))
    }

    fn done(&mut self, key: &str, now: Instant) {
        let Some(held) = self.held.remove(key) else {
            return;
        };
        // Added meanwhile: due right now (the queue drops a delayed re-add then). Only delayed:
        // due when the delay ends, but not before this worker finished.
        let at = if held.now {
            Some(now)
        } else {
            held.at.map(|t| t.max(now))
        };
        if let Some(at) = at {
            self.added(key, at, Duration::ZERO);
        }
    }

    fn removed(&mut self, key: &str) {
        self.due.remove(key);
        if let Some(held) = self.held.get_mut(key) {
            *held = Held::default();
        }
    }
}

/// Adopted pods' tokens are refreshed within this long after a restart.
const ADOPTED_TOKEN_REFRESH_SPREAD: Duration = Duration::from_secs(300);

/// A cheap spread for timers; not for anything that needs real randomness.
fn rand_below(bound: u128) -> u64 {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    u64::try_from(u128::from(seed) % bound.max(1)).unwrap_or(0)
}

/// The node's allocatable resources, for `resourceFieldRef` limits a container leaves unset.
async fn node_allocatable(provider: &DynProvider) -> crate::resolve::fields::NodeAllocatable {
    match provider.node_resources().await {
        Ok(r) if r.allocatable.is_empty() => r.capacity,
        Ok(r) => r.allocatable,
        Err(_) => Default::default(),
    }
}

/// The API server no longer has the resource version a watch resumed from (410, after a long
/// disconnect or an etcd compaction): kube's watcher lists again; routine, not a failure.
fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

/// An API request that never got an answer from the API server (in transit, or a gateway's
/// 502/504). The API client warns once per outage for all of these (`crate::client`), so a
/// warning per pod would only repeat it, a thousand times in a burst.
fn is_api_unreachable(e: &Error) -> bool {
    match e {
        Error::Kube(kube::Error::Service(_) | kube::Error::HyperError(_)) => true,
        Error::Kube(kube::Error::Api(s)) => matches!(s.code, 502 | 504),
        _ => false,
    }
}

fn resolve_error_label(e: &ResolveError) -> &'static str {
    match e {
        ResolveError::Missing { .. } => "missing_reference",
        ResolveError::Invalid(_) => "invalid_reference",
        ResolveError::TooLarge { .. } => "too_large",
        ResolveError::Api(_) => "api_transport",
    }
}

fn unknown_key(uid: &str) -> PodKey {
    PodKey::new(uid, "", "")
}

/// What a backend list that lacks a pod says about it, for a list that began at `started`.
/// A pod the backend reported (or we created) since then is there: the list's snapshot may
/// simply predate it. That includes a pod whose create is still in flight while the watch
/// already shows it; marking that one gone re-created it (thousands of second creates in a
/// 10,000-pod burst into a slow backend, whose list took 25 s).
fn unlisted(backend: Backend, seen_at: Option<Instant>, started: Instant) -> Backend {
    match backend {
        Backend::Unknown => Backend::Absent,
        Backend::Present if seen_at.is_some_and(|t| t >= started) => Backend::Present,
        Backend::Present => Backend::Gone,
        b @ (Backend::Absent | Backend::Gone) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_pod_missing_from_a_backend_list_is_gone_only_if_not_seen_since_the_list_began() {
        let started = Instant::now();
        let before = started.checked_sub(secs(5));
        let after = Some(started + secs(1));
        // Reported (or created) while the list was running: its snapshot may predate the pod.
        assert_eq!(unlisted(Backend::Present, after, started), Backend::Present);
        assert_eq!(
            unlisted(Backend::Present, Some(started), started),
            Backend::Present
        );
        // Last seen before the list began, and not in it: gone.
        assert_eq!(unlisted(Backend::Present, before, started), Backend::Gone);
        assert_eq!(unlisted(Backend::Present, None, started), Backend::Gone);
        // The first list settles what was unknown; absence and loss stay as they are.
        assert_eq!(unlisted(Backend::Unknown, None, started), Backend::Absent);
        assert_eq!(unlisted(Backend::Absent, after, started), Backend::Absent);
        assert_eq!(unlisted(Backend::Gone, after, started), Backend::Gone);
    }

    #[test]
    fn queue_latency_counts_from_the_earliest_add() {
        let mut c = QueueClock::default();
        let t0 = Instant::now();
        c.added("a", t0, Duration::ZERO);
        c.added("a", t0 + secs(1), Duration::ZERO); // a no-op in the queue: still due at t0
        assert_eq!(c.taken("a", t0 + secs(3)), Some(secs(3)));
        c.done("a", t0 + secs(4));
        assert!(
            c.due.is_empty() && c.held.is_empty(),
            "nothing kept per key"
        );
    }

    #[test]
    fn queue_latency_of_a_delayed_key_counts_from_its_deadline() {
        let mut c = QueueClock::default();
        let t0 = Instant::now();
        c.added("a", t0, secs(10));
        c.added("a", t0, secs(60)); // never later
        assert_eq!(c.taken("a", t0 + secs(12)), Some(secs(2)));
        // An add moves a delayed key earlier, as in the queue.
        c.done("a", t0 + secs(12));
        c.added("b", t0, secs(30));
        c.added("b", t0 + secs(1), Duration::ZERO);
        assert_eq!(c.taken("b", t0 + secs(2)), Some(secs(1)));
    }

    #[test]
    fn queue_latency_of_a_key_added_while_held_counts_from_done() {
        let mut c = QueueClock::default();
        let t0 = Instant::now();
        c.added("a", t0, Duration::ZERO);
        assert_eq!(c.taken("a", t0), Some(Duration::ZERO));
        // An event arrives while the worker runs, then the worker plans a late re-check: the
        // event wins, and the wait for the running reconcile is not queue latency.
        c.added("a", t0 + secs(1), Duration::ZERO);
        c.added("a", t0 + secs(1), secs(30));
        c.done("a", t0 + secs(5));
        assert_eq!(c.taken("a", t0 + secs(6)), Some(secs(1)));
        // Only a retry: due when its backoff ends, or when the worker is done if later.
        c.added("a", t0 + secs(6), secs(2));
        c.done("a", t0 + secs(7));
        assert_eq!(c.taken("a", t0 + secs(8)), Some(Duration::ZERO));
        c.added("a", t0 + secs(8), secs(1));
        c.done("a", t0 + secs(20));
        assert_eq!(c.taken("a", t0 + secs(21)), Some(secs(1)));
        c.done("a", t0 + secs(21));
    }

    #[test]
    fn removed_key_leaves_no_time_behind() {
        let mut c = QueueClock::default();
        let t0 = Instant::now();
        c.added("a", t0, Duration::ZERO);
        c.removed("a");
        assert!(c.due.is_empty());
        c.added("b", t0, Duration::ZERO);
        c.taken("b", t0);
        c.added("b", t0, secs(5));
        c.removed("b"); // removed by its own worker (an orphan dropped)
        c.done("b", t0 + secs(1));
        assert!(c.due.is_empty() && c.held.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn timed_queue_observes_the_wait_of_each_taken_key() {
        let latency = Histogram::new([0.5, 1.5, 10.0]);
        let q = TimedQueue::new(Backoff::default(), latency.clone());
        q.add("a".into());
        tokio::time::advance(secs(1)).await;
        let key = q.next().await;
        assert_eq!(key.as_deref(), Some("a"));
        q.done(&"a".to_string());
        let m = crate::metrics::Metrics::new_with(|r| {
            r.register("t", "test", latency.clone());
        });
        let text = m.encode();
        assert!(text.contains("vkubelet_t_count 1"), "{text}");
        assert!(text.contains("vkubelet_t_sum 1.0"), "{text}");
    }

    #[test]
    fn an_expired_watch_is_routine() {
        let status = |code| {
            watcher::Error::WatchError(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert!(is_expired(&status(410)));
        assert!(!is_expired(&status(500)));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn unreachable_api_errors_are_the_clients_to_report() {
        let status = |code| {
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        assert!(is_api_unreachable(&Error::Kube(kube::Error::Service(
            "connection refused".into()
        ))));
        assert!(is_api_unreachable(&status(504)));
        assert!(!is_api_unreachable(&status(409)));
        assert!(!is_api_unreachable(&status(500)));
        assert!(!is_api_unreachable(&Error::Provider(ProviderError::Other(
            "x".into()
        ))));
    }
}
