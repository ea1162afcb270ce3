//! The `kube` provider: runs a virtual node's pods in another Kubernetes API — a second cluster,
//! or a Kubernetes-shaped serverless service such as Huawei CCI, whose API is Kubernetes' own.
//!
//! It owns, on the backend: one managed namespace per install (`cce-burst-<cluster-id>`, or the
//! source namespace's name with `namespaceMapping: sameName`), and in it one pod per source pod
//! plus that pod's Secret (env, volume contents, pull credentials: one object, see `translate`),
//! owned by the backend pod so the backend's garbage collector removes it with it. It writes
//! nowhere else.
//!
//! Invariants:
//! - a backend pod's name comes from the source UID (`identity`), so a create after a restart or
//!   a retry finds the pod it made instead of making a second one;
//! - what the backend reports comes back through one watch per node (selected by the install's
//!   labels), pushed to the core as it changes; a backend pod that disappears is reported `Gone`
//!   and the core applies the pod's restartPolicy;
//! - nothing secret travels in a backend pod spec: resolved env and file data go in the per-pod
//!   Secret (`translate`).

pub mod config;
pub mod evict;
pub mod identity;
pub mod observed;
pub mod stats;
pub mod status;
pub mod streams;
pub mod sweep;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Pod, ResourceQuota, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vk_provider_api::quantity::Amount;
use vk_provider_api::resolution::ResolvedVolume;
use vk_provider_api::streams::{
    AttachRequest, ByteReader, ContainerStats, Duplex, ExecRequest, ExecSession, LogRequest,
};
use vk_provider_api::{
    BackendPod, NodeResources, PodKey, PodUpdate, Provider, ProviderError, ProviderSinks,
    ResolvedPod,
};

pub use config::{ConfigError, KubeConfig, NamespaceMapping};

use crate::config::CALL_TIMEOUT;
use crate::observed::ObservedPod;
use crate::translate::{TranslateContext, Translation};

/// Backend pods per page of a list.
const LIST_PAGE: u32 = 500;

/// How long one backend node summary serves stats requests.
const SUMMARY_REUSE: Duration = Duration::from_secs(2);

/// How long to wait before trying an eviction again after the source API refused it.
const EVICT_RETRY: Duration = Duration::from_secs(10);

/// A backend API error as the provider contract's kind, which decides the core's reaction.
pub fn api_error(op: &str, e: kube::Error) -> ProviderError {
    match e {
        kube::Error::Api(s) => {
            let message = format!("{op}: backend API: {} ({})", s.message, s.reason);
            match s.code {
                403 if s.message.contains("exceeded quota") => {
                    ProviderError::QuotaExceeded(message)
                }
                404 => ProviderError::NotFound(message),
                400 | 422 => ProviderError::InvalidInput(message),
                409 | 429 | 500..=599 => ProviderError::transient(message),
                _ => ProviderError::Other(message),
            }
        }
        other => ProviderError::transient(format!("{op}: backend API unreachable: {other}")),
    }
}

async fn timed<T>(
    op: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ProviderError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| api_error(op, e)),
        Err(_) => Err(ProviderError::transient(format!(
            "{op}: the backend API gave no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Every item of a list, page by page (pages from etcd, `LIST_PAGE` items each): a list of
/// thousands in one piece would be held whole, on both sides, at once.
async fn for_each_page<K, F>(
    what: &str,
    lp: ListParams,
    mut fetch: impl FnMut(ListParams) -> F,
    mut each: impl FnMut(K),
) -> Result<(), ProviderError>
where
    K: Clone,
    F: std::future::Future<Output = kube::Result<ObjectList<K>>>,
{
    let mut lp = lp.limit(LIST_PAGE);
    loop {
        let page = timed(what, fetch(lp.clone())).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        page.items.into_iter().for_each(&mut each);
        match next {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Delete one per-pod Secret by name. `Ok(false)`: nothing to delete, because it is gone already
/// or (with a resourceVersion precondition) was rewritten since it was read.
async fn delete_secret(
    secrets: &Api<Secret>,
    name: &str,
    dp: &DeleteParams,
) -> Result<bool, ProviderError> {
    match tokio::time::timeout(CALL_TIMEOUT, secrets.delete(name, dp)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
        Ok(Err(e)) => Err(api_error("deleting a per-pod Secret", e)),
        Err(_) => Err(ProviderError::transient(
            "deleting a per-pod Secret: no answer",
        )),
    }
}

/// Apply `owner_patch` (`sweep::owner_patch`) to one per-pod Secret.
async fn own_secret(
    secrets: &Api<Secret>,
    name: &str,
    owner_patch: &serde_json::Value,
) -> Result<(), ProviderError> {
    timed(
        "owning a per-pod Secret",
        secrets.patch(name, &PatchParams::default(), &Patch::Merge(owner_patch)),
    )
    .await
    .map(|_| ())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Whether a write failed because its namespace is gone or being deleted (someone deleted the
/// managed namespace under us), rather than for anything about the object.
fn namespace_unusable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            (s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces"))
                || (s.code == 403 && s.message.contains("because it is being terminated"))
        }
        _ => false,
    }
}

/// A backend pod the backend's scheduler finds no room for.
struct Stuck {
    key: PodKey,
    since: Instant,
    message: String,
    /// When `evictUnschedulableAfter` looks at it (again); `None` once it has been handled.
    evict_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    sinks: OnceLock<ProviderSinks>,
    /// Backend pods of this node by source UID → (backend namespace, backend name).
    pods: Mutex<HashMap<String, (String, String)>>,
    /// Source UID → its backend pod's spell of being unschedulable for lack of room.
    unschedulable: Mutex<HashMap<String, Stuck>>,
    /// Wakes the eviction task when a spell starts.
    stuck_changed: tokio::sync::Notify,
    /// Backend namespaces known to exist (sameName mapping creates them on demand).
    namespaces: Mutex<HashSet<String>>,
    /// Source UID → the backend node its pod runs on (for stats).
    nodes: Mutex<HashMap<String, String>>,
    /// Backend node → its `/stats/summary`, briefly kept: one summary serves every pod of the
    /// node in one stats request, instead of one fetch per pod.
    summaries: Mutex<HashMap<String, (Instant, Arc<serde_json::Value>)>>,
    /// Source UID → the newest backend pod version reported (its UID and resourceVersion), so
    /// that an older copy (the object a create returned, read after the watch already brought
    /// a newer one) never overwrites a newer status.
    reported: Mutex<HashMap<String, (String, u64)>>,
    /// Source UIDs whose backend pod this provider is deleting (on the core's request).
    deleting: Mutex<HashSet<String>>,
    /// Source UID → (backend namespace, names) of the per-pod Secrets a create wrote that no
    /// backend pod owns yet. The garbage collector cannot remove them, so this process deletes
    /// them by name when the create fails or the pod goes; `sweep_ownerless` handles what a crash
    /// left.
    unowned: Mutex<HashMap<String, (String, Vec<String>)>>,
    /// Event UIDs → count already forwarded.
    events: Mutex<HashMap<String, i32>>,
}

impl State {
    fn push(&self, uid: &str, update: PodUpdate) {
        if let Some(s) = self.sinks.get() {
            s.pod(uid, update);
        }
    }

    fn node_changed(&self) {
        if let Some(s) = self.sinks.get() {
            s.node_changed();
        }
    }
}

/// The provider: a cheap handle on the shared state its watch tasks also hold.
#[derive(Clone)]
pub struct KubeProvider {
    inner: Arc<Inner>,
}

pub struct Inner {
    client: kube::Client,
    cfg: KubeConfig,
    node: String,
    node_ip: String,
    cluster_id: String,
    /// The managed namespace (also the home of ResourceQuota-based capacity).
    namespace: String,
    /// The source cluster, for evicting stuck source pods (`evictUnschedulableAfter`).
    source: OnceLock<kube::Client>,
    state: Arc<State>,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl KubeProvider {
    /// `client` talks to the backend; `cluster_id` identifies the source cluster (the config's
    /// `clusterID`, else the UID of its `kube-system` namespace).
    pub fn new(
        client: kube::Client,
        cfg: KubeConfig,
        node: impl Into<String>,
        node_ip: impl Into<String>,
        cluster_id: impl Into<String>,
    ) -> Self {
        let cluster_id = cluster_id.into();
        let namespace = cfg
            .namespace
            .clone()
            .unwrap_or_else(|| managed_namespace_name(&cluster_id));
        Self {
            inner: Arc::new(Inner {
                client,
                cfg,
                node: node.into(),
                node_ip: node_ip.into(),
                cluster_id,
                namespace,
                source: OnceLock::new(),
                state: Arc::new(State::default()),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// The source cluster's client: needed to evict stuck source pods.
    pub fn with_source(self, source: kube::Client) -> Self {
        let _ = self.inner.source.set(source);
        self
    }

    pub fn managed_namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// After [`Provider::cleanup_all`]: wait up to `timeout` until nothing of the install is
    /// left on the backend; returns what still is (empty: clean).
    pub async fn wait_until_clean(&self, timeout: Duration) -> Vec<String> {
        let ns = (self.cfg.namespace_mapping == NamespaceMapping::Managed)
            .then_some(self.inner.namespace.as_str());
        leftovers(&self.inner.client, &self.inner.cluster_id, ns, timeout).await
    }
}

impl Inner {
    /// The create itself: the per-pod Secrets, then the pod, then the Secrets' owner.
    async fn create_backend_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        let ctx = self.context(&pod.key, pod.restart_count_base);
        let ns = ctx.namespace.clone();
        self.ensure_namespace(&ns).await?;
        let mut t = translate::translate(pod, &ctx)?;
        if let Some(spec) = t.pod.spec.as_mut() {
            if !self.cfg.node_selector.is_empty() {
                spec.node_selector = Some(self.cfg.node_selector.clone());
            }
            if !self.cfg.tolerations.is_empty() {
                spec.tolerations
                    .get_or_insert_with(Vec::new)
                    .extend(self.cfg.tolerations.iter().cloned());
            }
        }
        let names: Vec<String> = t
            .secrets
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        if !names.is_empty() {
            self.state
                .unowned
                .lock()
                .insert(pod.key.uid.clone(), (ns.clone(), names));
        }
        // Usually one Secret; a pod with volumes too large to share it has more, written at once.
        // On failure they stay listed as unowned: an earlier attempt's pod, whose create got no
        // answer, may exist and need them.
        futures::future::try_join_all(t.secrets.iter().map(|s| self.put_secret(&ns, s))).await?;
        let api = self.pods_api(&ns);
        let created =
            match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &t.pod))
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(e)) if is_status(&e, 409) => {
                    // A previous attempt (or a run before a restart) made it: ours if it says so.
                    let existing = timed("reading the backend pod", api.get(&ctx.name)).await?;
                    match identity::source_key(&existing) {
                        // Still terminating from an earlier instance: not a created pod.
                        Some(k)
                            if k.uid == pod.key.uid
                                && existing.metadata.deletion_timestamp.is_some() =>
                        {
                            return Err(ProviderError::transient(format!(
                                "backend pod {ns}/{} is still terminating",
                                ctx.name
                            )));
                        }
                        Some(k) if k.uid == pod.key.uid => existing,
                        _ => {
                            return Err(ProviderError::InvalidInput(format!(
                                "backend pod {ns}/{} exists and is not this pod's",
                                ctx.name
                            )));
                        }
                    }
                }
                Ok(Err(e)) => {
                    let err = self.write_error("creating the backend pod", &ns, e);
                    if matches!(err, ProviderError::QuotaExceeded(_)) {
                        self.state.node_changed();
                    }
                    return Err(err);
                }
                Err(_) => {
                    return Err(ProviderError::transient(
                        "creating the backend pod: no answer",
                    ));
                }
            };
        self.adopt_objects(&ns, &t, &created).await?;
        self.state.unowned.lock().remove(&pod.key.uid);
        self.observe(&created);
        Ok(())
    }

    fn backend_namespace(&self, key: &PodKey) -> String {
        match self.cfg.namespace_mapping {
            NamespaceMapping::Managed => self.namespace.clone(),
            NamespaceMapping::SameName => key.namespace.clone(),
        }
    }

    fn pods_api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The watch scope: the managed namespace, or every namespace with sameName mapping.
    fn watched_pods(&self) -> Api<ObservedPod> {
        match self.cfg.namespace_mapping {
            NamespaceMapping::Managed => Api::namespaced(self.client.clone(), &self.namespace),
            NamespaceMapping::SameName => Api::all(self.client.clone()),
        }
    }

    /// Every backend pod `selector` matches, listed in pages from etcd and handed to `each` page
    /// by page: an answer with all of them would be held at once (the 1.20 watch cache ignores
    /// `limit`), and so would a list of them all.
    async fn list_observed(
        &self,
        selector: &str,
        mut each: impl FnMut(Pod),
    ) -> Result<(), ProviderError> {
        let api = self.watched_pods();
        for_each_page(
            "listing backend pods",
            ListParams::default().labels(selector),
            |lp| {
                let api = &api;
                async move { api.list(&lp).await }
            },
            |p| each(Pod::from(p)),
        )
        .await
    }

    /// Per-pod Secrets that no backend pod owns, left by a crash between writing them and owning
    /// them (see `sweep`): adopted by their pod, or deleted when it is gone. Returns (adopted,
    /// deleted).
    #[tracing::instrument(skip_all)]
    async fn sweep_ownerless(&self) -> Result<(usize, usize), ProviderError> {
        let selector = self.selector();
        let mut pods = HashMap::new();
        self.list_observed(&selector, |p| {
            if let (Some(key), Some(namespace), Some(name), Some(uid)) = (
                identity::source_key(&p),
                p.metadata.namespace.clone(),
                p.metadata.name.clone(),
                p.metadata.uid.clone(),
            ) {
                pods.insert(
                    key.uid,
                    sweep::BackendPodRef {
                        namespace,
                        name,
                        uid,
                    },
                );
            }
        })
        .await?;
        let api: Api<Secret> = match self.cfg.namespace_mapping {
            NamespaceMapping::Managed => Api::namespaced(self.client.clone(), &self.namespace),
            NamespaceMapping::SameName => Api::all(self.client.clone()),
        };
        let mut verdicts = Vec::new();
        for_each_page(
            "listing per-pod Secrets",
            ListParams::default().labels(&selector),
            |lp| {
                let api = &api;
                async move { api.list_metadata(&lp).await }
            },
            |s| match sweep::verdict(&s.metadata, &pods) {
                sweep::Verdict::Keep => {}
                v => verdicts.push((
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                    v,
                )),
            },
        )
        .await?;
        let (mut adopted, mut deleted) = (0, 0);
        for (ns, name, verdict) in verdicts {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let done = match verdict {
                sweep::Verdict::Keep => continue,
                sweep::Verdict::Adopt(owner) => {
                    own_secret(&secrets, &name, &sweep::owner_patch(&owner))
                        .await
                        .map(|()| adopted += 1)
                }
                sweep::Verdict::Delete { resource_version } => {
                    // Rewritten since the list (a 409): not an orphan to delete.
                    let dp = DeleteParams {
                        preconditions: Some(kube::api::Preconditions {
                            uid: None,
                            resource_version: Some(resource_version),
                        }),
                        ..Default::default()
                    };
                    delete_secret(&secrets, &name, &dp)
                        .await
                        .map(|gone| deleted += usize::from(gone))
                }
            };
            if let Err(e) = done {
                warn!(error = %e, namespace = %ns, secret = %name, "a per-pod Secret without an owner stays");
            }
        }
        Ok((adopted, deleted))
    }

    fn selector(&self) -> String {
        identity::node_selector(&self.cluster_id, &self.node)
    }

    /// Create the backend namespace unless it is known to exist.
    async fn ensure_namespace(&self, name: &str) -> Result<(), ProviderError> {
        if self.state.namespaces.lock().contains(name) {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    [
                        (
                            identity::MANAGED_BY_LABEL.to_string(),
                            identity::MANAGED_BY.to_string(),
                        ),
                        (
                            identity::CLUSTER_ID_LABEL.to_string(),
                            self.cluster_id.clone(),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &ns)).await {
            Ok(Ok(_)) => info!(namespace = name, "created the backend namespace"),
            Ok(Err(e)) if is_status(&e, 409) => {
                let existing = timed("reading the backend namespace", api.get(name)).await?;
                if existing.metadata.deletion_timestamp.is_some() {
                    return Err(ProviderError::transient(format!(
                        "the backend namespace {name} is being deleted; it is created again \
                         once it is gone"
                    )));
                }
            }
            // Allowed to use a namespace made by an administrator, not to create one.
            Ok(Err(e)) if is_status(&e, 403) => {
                timed("reading the backend namespace", api.get(name)).await?;
            }
            Ok(Err(e)) => return Err(api_error("creating the backend namespace", e)),
            Err(_) => {
                return Err(ProviderError::transient(
                    "creating the backend namespace: no answer",
                ));
            }
        }
        self.state.namespaces.lock().insert(name.to_string());
        Ok(())
    }

    /// A failed write in `ns` as the contract's error. A namespace that vanished is forgotten
    /// (the next attempt creates it again) and the failure is transient.
    fn write_error(&self, op: &str, ns: &str, e: kube::Error) -> ProviderError {
        if namespace_unusable(&e) {
            self.namespace_lost(ns);
            return ProviderError::transient(format!(
                "{op}: the backend namespace {ns} is gone or being deleted; it is created again \
                 before the next try"
            ));
        }
        api_error(op, e)
    }

    fn namespace_lost(&self, ns: &str) {
        if self.state.namespaces.lock().remove(ns) {
            warn!(
                namespace = ns,
                "the backend namespace is gone or being deleted"
            );
        }
    }

    /// Someone may delete the managed namespace (and with it every backend pod and per-pod
    /// object) while vkubelet runs: make it again as soon as it is gone, so that the pods the
    /// core brings back (their restartPolicy decides, as for any lost pod) have somewhere to go.
    /// With sameName mapping, namespaces are made again on the next create.
    async fn watch_namespaces(self: Arc<Self>) {
        let managed = self.cfg.namespace_mapping == NamespaceMapping::Managed;
        let cfg = if managed {
            watcher::Config::default().fields(&format!("metadata.name={}", self.namespace))
        } else {
            watcher::Config::default().labels(&identity::install_selector(&self.cluster_id))
        };
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        // Whether the managed namespace showed up in the current (re)list.
        let mut listed = false;
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return,
                e = stream.next() => e,
            };
            let Some(event) = next else { return };
            let gone = match event {
                Ok(Event::Init) => {
                    listed = false;
                    None
                }
                Ok(Event::InitApply(ns) | Event::Apply(ns)) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    if name == self.namespace {
                        listed = true;
                    }
                    if ns.metadata.deletion_timestamp.is_some() {
                        self.namespace_lost(&name);
                    }
                    None
                }
                Ok(Event::InitDone) => (managed && !listed).then(|| self.namespace.clone()),
                Ok(Event::Delete(ns)) => ns.metadata.name,
                // An identity that may not watch namespaces still gets them made again on the
                // next create (`write_error`).
                Err(e) => {
                    debug!(error = %e, "backend namespace watch failed; retrying");
                    None
                }
            };
            let Some(name) = gone else { continue };
            self.namespace_lost(&name);
            if !(managed && name == self.namespace) {
                continue;
            }
            let mut backoff = Duration::from_millis(500);
            loop {
                match self.ensure_namespace(&name).await {
                    Ok(()) => {
                        info!(namespace = %name, "made the deleted backend namespace again");
                        self.state.node_changed();
                        break;
                    }
                    Err(e) => debug!(error = %e, "making the backend namespace again"),
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    fn context(&self, key: &PodKey, restart_base: i32) -> TranslateContext {
        TranslateContext {
            namespace: self.backend_namespace(key),
            name: identity::backend_name(key),
            labels: identity::pod_labels(&self.cluster_id, &self.node, key),
            annotations: identity::pod_annotations(key, restart_base),
            node_ip: self.node_ip.clone(),
            pass_through_pvcs: self.cfg.pass_through_pvcs,
        }
    }

    /// Create a per-pod object, or bring the one a previous attempt made up to date.
    async fn put_secret(&self, ns: &str, s: &Secret) -> Result<(), ProviderError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let name = s.metadata.name.clone().unwrap_or_default();
        match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), s)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_status(&e, 409) => {
                let patch = serde_json::json!({"data": s.data, "type": s.type_});
                timed(
                    "updating a per-pod Secret",
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
                .map(|_| ())
            }
            Ok(Err(e)) => Err(self.write_error("creating a per-pod Secret", ns, e)),
            Err(_) => Err(ProviderError::transient(
                "creating a per-pod Secret: no answer",
            )),
        }
    }

    /// Make the per-pod Secrets dependents of the backend pod: the backend's garbage collector
    /// then deletes them with it, whoever deletes the pod.
    async fn adopt_objects(
        &self,
        ns: &str,
        t: &Translation,
        pod: &Pod,
    ) -> Result<(), ProviderError> {
        let (Some(uid), Some(name)) = (pod.metadata.uid.clone(), pod.metadata.name.clone()) else {
            return Ok(());
        };
        let patch = sweep::owner_patch(&sweep::owner(&name, &uid));
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        // Independent writes, at once (see create_pod).
        futures::future::try_join_all(t.secrets.iter().map(|s| {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            own_secret(&secrets, name, &patch)
        }))
        .await?;
        Ok(())
    }

    /// One watch per node: backend pod changes become status pushes, deletions `Gone`.
    async fn watch_pods(self: Arc<Self>) {
        // Relists come in pages from etcd, as `list_observed`.
        let cfg = watcher::Config::default()
            .labels(&self.selector())
            .list_semantic(watcher::ListSemantic::MostRecent)
            .page_size(LIST_PAGE);
        let mut stream = watcher::watcher(self.watched_pods(), cfg)
            .default_backoff()
            .boxed();
        let mut relist: Option<(HashSet<String>, HashSet<String>)> = None;
        let mut failing = false;
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return,
                e = stream.next() => e,
            };
            let Some(event) = next else { return };
            match event {
                // Only pods known when the relist began can be missing from it: one created
                // meanwhile (by `create_pod`) is simply not in the list yet.
                Ok(Event::Init) => {
                    let known: HashSet<String> = self.state.pods.lock().keys().cloned().collect();
                    relist = Some((known, HashSet::new()));
                }
                Ok(Event::InitApply(pod)) => {
                    if let Some(uid) = self.observe(&Pod::from(pod))
                        && let Some((_, seen)) = relist.as_mut()
                    {
                        seen.insert(uid);
                    }
                }
                Ok(Event::InitDone) => {
                    if failing {
                        info!(node = %self.node, "backend pod watch recovered");
                        failing = false;
                    }
                    // Pods that vanished while the watch was down.
                    if let Some((known, seen)) = relist.take() {
                        let gone: Vec<String> = known.difference(&seen).cloned().collect();
                        for uid in gone {
                            self.forget(&uid);
                        }
                    }
                }
                Ok(Event::Apply(pod)) => {
                    self.observe(&Pod::from(pod));
                }
                Ok(Event::Delete(pod)) => {
                    if let Some(key) = identity::source_key(&Pod::from(pod)) {
                        self.forget(&key.uid);
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(node = %self.node, error = %e, "backend pod watch failed; retrying");
                        failing = true;
                    }
                }
            }
        }
    }

    /// Record a backend pod and push its status; returns its source UID.
    fn observe(&self, pod: &Pod) -> Option<String> {
        let key = identity::source_key(pod)?;
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.state.pods.lock().insert(key.uid.clone(), (ns, name));
        // resourceVersions are etcd revisions: comparable for one object. One that does not
        // parse is reported as it comes.
        if let (Some(instance), Some(version)) = (
            pod.metadata.uid.clone(),
            pod.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok()),
        ) {
            let mut reported = self.state.reported.lock();
            if let Some((seen_instance, seen_version)) = reported.get(&key.uid)
                && *seen_instance == instance
                && *seen_version > version
            {
                return Some(key.uid);
            }
            reported.insert(key.uid.clone(), (instance, version));
        }
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            self.state.nodes.lock().insert(key.uid.clone(), node);
        }
        {
            let mut stuck = self.state.unschedulable.lock();
            let before = stuck.len();
            match status::unschedulable(pod) {
                Some(message) => {
                    if !stuck.contains_key(&key.uid) {
                        let since = Instant::now();
                        stuck.insert(
                            key.uid.clone(),
                            Stuck {
                                key: key.clone(),
                                since,
                                message,
                                evict_at: self.cfg.evict_unschedulable_after.map(|d| since + d),
                            },
                        );
                        self.state.stuck_changed.notify_one();
                        // Look again once the pod has been stuck long enough to count.
                        let state = self.state.clone();
                        let after = self.cfg.sold_out_after;
                        tokio::spawn(async move {
                            tokio::time::sleep(after + Duration::from_millis(500)).await;
                            state.node_changed();
                        });
                    }
                }
                None => {
                    stuck.remove(&key.uid);
                }
            }
            if stuck.len() != before {
                self.state.node_changed();
            }
        }
        // A backend pod someone else is deleting (by hand, an eviction, a drain) is about to be
        // lost: its terminating containers are not the source pod's end, whose restartPolicy
        // decides once the backend pod is gone.
        let foreign_delete = pod.metadata.deletion_timestamp.is_some()
            && !self.state.deleting.lock().contains(&key.uid);
        if !foreign_delete
            && let Some(s) = status::source_status(pod, &self.node_ip, identity::restart_base(pod))
        {
            self.state.push(&key.uid, PodUpdate::Status(Arc::new(s)));
        }
        Some(key.uid)
    }

    fn forget(&self, uid: &str) {
        self.state.deleting.lock().remove(uid);
        self.state.nodes.lock().remove(uid);
        self.state.reported.lock().remove(uid);
        let known = self.state.pods.lock().remove(uid).is_some();
        self.state.unschedulable.lock().remove(uid);
        if known {
            self.state.push(uid, PodUpdate::Gone);
        }
    }

    /// `evictUnschedulableAfter`: source pods whose backend pod has had no room that long are
    /// deleted when a controller owns them (which then re-creates them, and the scheduler can
    /// place the new pod elsewhere); bare pods are left, with an event.
    async fn evict_stuck(self: Arc<Self>, after: Duration) {
        loop {
            let now = Instant::now();
            let (due, next): (Vec<(PodKey, String)>, Option<Instant>) = {
                let mut stuck = self.state.unschedulable.lock();
                let mut due = Vec::new();
                let mut next: Option<Instant> = None;
                for s in stuck.values_mut() {
                    match s.evict_at {
                        Some(at) if at <= now => {
                            s.evict_at = None;
                            due.push((s.key.clone(), s.message.clone()));
                        }
                        Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                        None => {}
                    }
                }
                (due, next)
            };
            for (key, message) in due {
                if let Err(retry) = self.evict(&key, &message, after).await {
                    warn!(pod = %key, error = %retry, "evicting a pod the backend has no room for");
                    if let Some(s) = self.state.unschedulable.lock().get_mut(&key.uid) {
                        s.evict_at = Some(Instant::now() + EVICT_RETRY);
                    }
                    self.state.stuck_changed.notify_one();
                }
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.state.stuck_changed.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// One eviction; an error means "try again later".
    #[tracing::instrument(skip_all, fields(pod = %key))]
    async fn evict(&self, key: &PodKey, message: &str, after: Duration) -> Result<(), String> {
        let Some(source) = self.source.get() else {
            return Err("no source cluster client".into());
        };
        let api: Api<Pod> = Api::namespaced(source.clone(), &key.namespace);
        let current = timed("reading the source pod", api.get_opt(&key.name))
            .await
            .map_err(|e| e.to_string())?;
        match evict::verdict(key, current.as_ref()) {
            evict::Verdict::Stale => Ok(()),
            evict::Verdict::KeepBare => {
                self.state.push(
                    &key.uid,
                    PodUpdate::Event {
                        warning: true,
                        reason: evict::NOT_EVICTED_REASON.into(),
                        message: format!(
                            "the backend has had no room for this pod for {after:?} ({message}); \
                             no controller owns it, so it is not deleted and keeps waiting"
                        ),
                    },
                );
                Ok(())
            }
            evict::Verdict::Evict { owner } => {
                // Said before the delete, while the core still knows the pod.
                self.state.push(
                    &key.uid,
                    PodUpdate::Event {
                        warning: true,
                        reason: evict::EVICTED_REASON.into(),
                        message: format!(
                            "the backend has had no room for this pod for {after:?} ({message}); \
                             deleting it so that {owner} re-creates it where there is room"
                        ),
                    },
                );
                let dp = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(key.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match tokio::time::timeout(CALL_TIMEOUT, api.delete(&key.name, &dp)).await {
                    Ok(Ok(_)) => {
                        info!(pod = %key, %owner, "evicted: no room on the backend");
                        Ok(())
                    }
                    // Gone, or another pod of that name (the precondition failed): nothing to do.
                    Ok(Err(e)) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the source API gave no answer".into()),
                }
            }
        }
    }

    /// The backend's events about our pods, re-emitted on the source pods.
    async fn watch_events(self: Arc<Self>) {
        let api: Api<CoreEvent> = match self.cfg.namespace_mapping {
            NamespaceMapping::Managed => Api::namespaced(self.client.clone(), &self.namespace),
            NamespaceMapping::SameName => Api::all(self.client.clone()),
        };
        let cfg = watcher::Config::default().fields("involvedObject.kind=Pod");
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut started = false;
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return,
                e = stream.next() => e,
            };
            let Some(event) = next else { return };
            match event {
                // Events from before this start were forwarded by an earlier one (or are old).
                Ok(Event::InitApply(e)) => self.remember_event(&e),
                Ok(Event::InitDone) => started = true,
                Ok(Event::Apply(e)) if started => self.forward_event(&e),
                Ok(_) => {}
                Err(e) => debug!(error = %e, "backend event watch failed; retrying"),
            }
        }
    }

    fn remember_event(&self, e: &CoreEvent) {
        if let Some(uid) = e.metadata.uid.clone() {
            self.state.events.lock().insert(uid, e.count.unwrap_or(1));
        }
    }

    fn forward_event(&self, e: &CoreEvent) {
        let Some(event_uid) = e.metadata.uid.clone() else {
            return;
        };
        let count = e.count.unwrap_or(1);
        {
            let mut seen = self.state.events.lock();
            if seen.get(&event_uid).is_some_and(|c| *c >= count) {
                return;
            }
            // Bounded: start over when it grows large (a repeat may then be forwarded again).
            if seen.len() > 10_000 {
                seen.clear();
            }
            seen.insert(event_uid, count);
        }
        let reason = e.reason.clone().unwrap_or_default();
        // The backend's scheduler placing our pod is not news for the source pod.
        if reason == "Scheduled" {
            return;
        }
        // Backend names end with the source UID (`identity::backend_name`): no scan of every pod.
        let backend_name = e.involved_object.name.clone().unwrap_or_default();
        let uid = backend_name
            .char_indices()
            .rev()
            .nth(35)
            .map(|(i, _)| backend_name[i..].to_string())
            .filter(|uid| {
                self.state
                    .pods
                    .lock()
                    .get(uid)
                    .is_some_and(|(_, n)| *n == backend_name)
            });
        if let Some(uid) = uid {
            self.state.push(
                &uid,
                PodUpdate::Event {
                    warning: e.type_.as_deref() == Some("Warning"),
                    reason,
                    message: e.message.clone().unwrap_or_default(),
                },
            );
        }
    }

    /// Quota changes move the node's allocatable (and end a sold-out spell).
    async fn watch_quotas(self: Arc<Self>) {
        let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => return,
                e = stream.next() => e,
            };
            match next {
                None => return,
                Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => {
                    self.state.node_changed();
                }
                Some(_) => {}
            }
        }
    }

    async fn quota_resources(&self) -> Result<Option<NodeResources>, ProviderError> {
        let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &self.namespace);
        let quotas = timed(
            "reading the backend quota",
            api.list(&ListParams::default()),
        )
        .await?;
        if quotas.items.is_empty() {
            return Ok(None);
        }
        let mut capacity: BTreeMap<String, Quantity> = BTreeMap::new();
        let mut allocatable: BTreeMap<String, Quantity> = BTreeMap::new();
        let mut exhausted = Vec::new();
        for (resource, keys) in [
            ("cpu", &["requests.cpu", "cpu", "limits.cpu"][..]),
            (
                "memory",
                &["requests.memory", "memory", "limits.memory"][..],
            ),
            ("pods", &["pods", "count/pods"][..]),
        ] {
            let mut best: Option<(Amount, Amount)> = None;
            for q in &quotas.items {
                let Some(st) = q.status.as_ref() else {
                    continue;
                };
                for k in keys {
                    let hard = st
                        .hard
                        .as_ref()
                        .and_then(|h| h.get(*k))
                        .and_then(|v| Amount::of(v).ok());
                    let used = st
                        .used
                        .as_ref()
                        .and_then(|u| u.get(*k))
                        .and_then(|v| Amount::of(v).ok())
                        .unwrap_or(Amount::ZERO);
                    if let Some(hard) = hard {
                        let free = hard.saturating_sub(used);
                        if best.is_none_or(|(_, f)| free < f) {
                            best = Some((hard, free));
                        }
                    }
                }
            }
            if let Some((hard, free)) = best {
                capacity.insert(resource.into(), Quantity(hard.to_string()));
                allocatable.insert(resource.into(), Quantity(free.to_string()));
                if free.is_zero() {
                    exhausted.push(resource);
                }
            }
        }
        let fallback = self.configured_capacity();
        for (k, v) in fallback {
            capacity.entry(k.clone()).or_insert_with(|| v.clone());
            allocatable.entry(k).or_insert(v);
        }
        let message = (!exhausted.is_empty()).then(|| {
            format!(
                "the backend namespace {}'s ResourceQuota is used up ({})",
                self.namespace,
                exhausted.join(", ")
            )
        });
        Ok(Some(NodeResources {
            capacity,
            allocatable,
            accepting_pods: message.is_none(),
            message,
            ..Default::default()
        }))
    }

    fn configured_capacity(&self) -> BTreeMap<String, Quantity> {
        self.cfg
            .capacity
            .iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    }

    /// Delete, by name, the per-pod Secrets of a source pod that no backend pod owns (best
    /// effort: `sweep_ownerless` at the next start and `vkubelet cleanup` catch what this misses).
    /// By name, not by label: a delete-collection lists every Secret of the namespace from etcd,
    /// which made each pod's delete cost O(pods) on the backend.
    async fn delete_unowned(&self, uid: &str) {
        let Some((ns, names)) = self.state.unowned.lock().remove(uid) else {
            return;
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let dp = DeleteParams::default();
        futures::future::join_all(names.iter().map(|name| {
            let (secrets, dp) = (&secrets, &dp);
            async move {
                if let Err(e) = delete_secret(secrets, name, dp).await {
                    debug!(error = %e, uid, secret = %name, "a per-pod Secret stays");
                }
            }
        }))
        .await;
    }

    /// The backend node's kubelet summary, through the backend API's `nodes/proxy`.
    async fn node_summary(&self, node: &str) -> Result<Arc<serde_json::Value>, ProviderError> {
        if let Some((at, s)) = self.state.summaries.lock().get(node)
            && at.elapsed() < SUMMARY_REUSE
        {
            return Ok(s.clone());
        }
        let path = format!("/api/v1/nodes/{node}/proxy/stats/summary");
        let req = http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| ProviderError::Other(format!("stats request: {e}")))?;
        let text = match tokio::time::timeout(CALL_TIMEOUT, self.client.request_text(req)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) if is_status(&e, 403) => {
                return Err(ProviderError::NotSupported(format!(
                    "stats: the backend identity may not get nodes/proxy ({e})"
                )));
            }
            Ok(Err(e)) => return Err(api_error("reading backend node stats", e)),
            Err(_) => {
                return Err(ProviderError::transient(
                    "reading backend node stats: no answer",
                ));
            }
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ProviderError::Other(format!("backend node {node} stats: {e}")))?;
        let value = Arc::new(value);
        let mut all = self.state.summaries.lock();
        all.retain(|_, (at, _)| at.elapsed() < SUMMARY_REUSE);
        all.insert(node.to_string(), (Instant::now(), value.clone()));
        Ok(value)
    }

    fn stream_target(&self, key: &PodKey) -> (Api<Pod>, String) {
        (
            self.pods_api(&self.backend_namespace(key)),
            identity::backend_name(key),
        )
    }
}

/// `cce-burst-<cluster-id>`, cut to a valid namespace name.
pub fn managed_namespace_name(cluster_id: &str) -> String {
    let id: String = cluster_id
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect();
    let mut name = format!("cce-burst-{id}");
    name.truncate(63);
    while name.ends_with('-') {
        name.pop();
    }
    name
}

impl std::ops::Deref for KubeProvider {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

#[async_trait]
impl Provider for KubeProvider {
    fn kind(&self) -> &str {
        "kube"
    }

    async fn start(&self, sinks: ProviderSinks) -> Result<(), ProviderError> {
        let _ = self.state.sinks.set(sinks);
        if self.cfg.namespace_mapping == NamespaceMapping::Managed {
            self.ensure_namespace(&self.namespace).await?;
        }
        // Before the core creates anything: no create of this process can race the sweep.
        match self.sweep_ownerless().await {
            Ok((0, 0)) => {}
            Ok((adopted, deleted)) => {
                info!(
                    adopted,
                    deleted, "per-pod Secrets a crash left without an owner"
                )
            }
            // Not a reason to keep the node down: `vkubelet cleanup` removes them all.
            Err(e) => warn!(error = %e, "could not look for per-pod Secrets without an owner"),
        }
        tokio::spawn(self.inner.clone().watch_pods());
        tokio::spawn(self.inner.clone().watch_events());
        tokio::spawn(self.inner.clone().watch_namespaces());
        if let Some(after) = self.cfg.evict_unschedulable_after {
            if self.source.get().is_none() {
                warn!("evictUnschedulableAfter is set, but there is no source cluster client");
            }
            tokio::spawn(self.inner.clone().evict_stuck(after));
        }
        if self.cfg.namespace_mapping == NamespaceMapping::Managed {
            tokio::spawn(self.inner.clone().watch_quotas());
        }
        Ok(())
    }

    async fn node_resources(&self) -> Result<NodeResources, ProviderError> {
        let mut res = match self.quota_resources().await {
            Ok(Some(r)) => r,
            Ok(None) => NodeResources {
                capacity: self.configured_capacity(),
                accepting_pods: true,
                ..Default::default()
            },
            Err(e) => {
                // The node must keep heartbeating while the backend is unreachable.
                debug!(error = %e, "no quota reading; reporting the configured capacity");
                NodeResources {
                    capacity: self.configured_capacity(),
                    accepting_pods: true,
                    ..Default::default()
                }
            }
        };
        let after = self.cfg.sold_out_after;
        let stuck = self
            .state
            .unschedulable
            .lock()
            .values()
            .filter(|s| s.since.elapsed() >= after)
            .map(|s| s.message.clone())
            .next();
        if res.accepting_pods
            && let Some(message) = stuck
        {
            res.accepting_pods = false;
            res.message = Some(format!(
                "backend pods cannot be scheduled for {after:?}: {message}"
            ));
        }
        Ok(res)
    }

    async fn create_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        let result = self.create_backend_pod(pod).await;
        if let Err(e) = &result
            && !e.may_have_created()
        {
            // A refusal leaves nothing behind (the contract): the Secrets written for it have no
            // pod to own them. After any other failure they stay, for a retry that finds the pod
            // made after all, or for the `delete_pod` the core calls when the pod goes.
            self.delete_unowned(&pod.key.uid).await;
        }
        result
    }

    /// What a running pod can take: images, `activeDeadlineSeconds`, and the source's labels
    /// and annotations (changed, added and removed; identity labels and keys the backend added
    /// itself stay).
    #[tracing::instrument(skip_all, fields(pod = %pod.key))]
    async fn update_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        let (api, name) = self.stream_target(&pod.key);
        let current = timed("reading the backend pod", api.get(&name)).await?;
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let images = |list: &[k8s_openapi::api::core::v1::Container]| {
            list.iter()
                .map(|c| serde_json::json!({"name": c.name, "image": c.image}))
                .collect::<Vec<_>>()
        };
        let ctx = self.context(&pod.key, pod.restart_count_base);
        let (labels, annotations) = translate::backend_metadata(&pod.pod.metadata, &ctx);
        let mut patch = serde_json::json!({
            "spec": {
                "containers": images(&spec.containers),
                "initContainers": images(spec.init_containers.as_deref().unwrap_or_default()),
                "activeDeadlineSeconds": spec.active_deadline_seconds,
            }
        });
        if let Some(metadata) = translate::metadata_patch(&current.metadata, &labels, &annotations)
        {
            patch["metadata"] = metadata;
        }
        timed(
            "updating the backend pod",
            api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)),
        )
        .await
        .map(|_| ())
    }

    async fn update_volumes(
        &self,
        key: &PodKey,
        volumes: &[ResolvedVolume],
    ) -> Result<(), ProviderError> {
        let (api, name) = self.stream_target(key);
        let backend = timed("reading the backend pod", api.get(&name)).await?;
        let ns = self.backend_namespace(key);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let pp = PatchParams::default();
        for (secret, data) in translate::volume_refresh(&backend, volumes) {
            // A merge patch of the volume keys alone: env values and credentials stay as made.
            let patch = serde_json::json!({ "data": data });
            timed(
                "updating a per-pod Secret",
                secrets.patch(&secret, &pp, &Patch::Merge(&patch)),
            )
            .await?;
        }
        Ok(())
    }

    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), ProviderError> {
        let (api, name) = self.stream_target(key);
        self.state.deleting.lock().insert(key.uid.clone());
        let dp = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        let result = tokio::time::timeout(CALL_TIMEOUT, api.delete(&name, &dp)).await;
        if matches!(&result, Ok(Ok(_))) || matches!(&result, Ok(Err(e)) if is_status(e, 404)) {
            // Secrets of a create that timed out (its pod may exist) have no owner to take them.
            self.delete_unowned(&key.uid).await;
        }
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_status(&e, 404) => {
                self.forget(&key.uid);
                Ok(())
            }
            Ok(Err(e)) => Err(api_error("deleting the backend pod", e)),
            Err(_) => Err(ProviderError::transient(
                "deleting the backend pod: no answer",
            )),
        }
    }

    async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError> {
        let mut out = Vec::new();
        self.list_observed(&self.selector(), |p| {
            let Some(key) = identity::source_key(&p) else {
                return;
            };
            let status = status::source_status(&p, &self.node_ip, identity::restart_base(&p));
            self.state.pods.lock().insert(
                key.uid.clone(),
                (
                    p.metadata.namespace.unwrap_or_default(),
                    p.metadata.name.unwrap_or_default(),
                ),
            );
            out.push(BackendPod {
                key,
                status: status.map(Arc::new),
            });
        })
        .await?;
        Ok(out)
    }

    async fn cleanup_all(&self) -> Result<usize, ProviderError> {
        let selector = identity::install_selector(&self.cluster_id);
        let lp = ListParams::default().labels(&selector);
        let mut pods = Vec::new();
        self.list_observed(&selector, |p| {
            pods.push((
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default(),
            ))
        })
        .await?;
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        for (ns, name) in &pods {
            match self.pods_api(ns).delete(name, &dp).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(api_error("deleting a backend pod", e)),
            }
        }
        // Per-pod objects are the pods' dependents; delete them too rather than wait for the
        // garbage collector, and any that a crash left without an owner. Everywhere the
        // install may have written, including objects whose pod is long gone. The API has no
        // cross-namespace delete-collection: with sameName mapping, namespace by namespace.
        let namespaces: BTreeSet<String> = match self.cfg.namespace_mapping {
            NamespaceMapping::Managed => [self.namespace.clone()].into(),
            NamespaceMapping::SameName => {
                let secrets: Api<Secret> = Api::all(self.client.clone());
                let mut all: BTreeSet<String> = pods.iter().map(|(ns, _)| ns.clone()).collect();
                let secrets = timed("listing per-pod Secrets", secrets.list_metadata(&lp)).await?;
                all.extend(
                    secrets
                        .items
                        .iter()
                        .filter_map(|o| o.metadata.namespace.clone()),
                );
                all
            }
        };
        for ns in &namespaces {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            match secrets
                .delete_collection(&DeleteParams::default(), &lp)
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(api_error("deleting per-pod Secrets", e)),
            }
        }
        // Only a namespace this install made: one an administrator provided stays.
        let api: Api<Namespace> = Api::all(self.client.clone());
        let managed = match self.cfg.namespace_mapping {
            NamespaceMapping::Managed => api.get_opt(&self.namespace).await.ok().flatten(),
            NamespaceMapping::SameName => None,
        };
        let ours = managed.as_ref().is_some_and(|ns| {
            let l = ns.metadata.labels.clone().unwrap_or_default();
            l.get(identity::MANAGED_BY_LABEL).map(String::as_str) == Some(identity::MANAGED_BY)
                && l.get(identity::CLUSTER_ID_LABEL) == Some(&self.cluster_id)
        });
        if ours {
            match api.delete(&self.namespace, &DeleteParams::default()).await {
                Ok(_) => info!(namespace = %self.namespace, "deleting the managed namespace"),
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(api_error("deleting the managed namespace", e)),
            }
        }
        Ok(pods.len())
    }

    async fn container_logs(
        &self,
        key: &PodKey,
        request: &LogRequest,
    ) -> Result<ByteReader, ProviderError> {
        let (api, name) = self.stream_target(key);
        streams::logs(&api, &name, request).await
    }

    async fn exec(
        &self,
        key: &PodKey,
        request: &ExecRequest,
    ) -> Result<ExecSession, ProviderError> {
        let (api, name) = self.stream_target(key);
        streams::exec(&api, &name, request).await
    }

    async fn attach(
        &self,
        key: &PodKey,
        request: &AttachRequest,
    ) -> Result<ExecSession, ProviderError> {
        let (api, name) = self.stream_target(key);
        streams::attach(&api, &name, request).await
    }

    async fn port_forward(
        &self,
        key: &PodKey,
        port: u16,
    ) -> Result<Pin<Box<dyn Duplex>>, ProviderError> {
        let (api, name) = self.stream_target(key);
        streams::port_forward(&api, &name, port).await
    }

    async fn pod_stats(
        &self,
        key: &PodKey,
    ) -> Result<BTreeMap<String, ContainerStats>, ProviderError> {
        let node = self
            .state
            .nodes
            .lock()
            .get(&key.uid)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(format!("pod {key} runs on no backend node")))?;
        let summary = self.node_summary(&node).await?;
        let ns = self.backend_namespace(key);
        let name = identity::backend_name(key);
        stats::pod_stats(&summary, &ns, &name)
            .ok_or_else(|| ProviderError::NotFound(format!("no stats for pod {key} on {node} yet")))
    }
}

/// Wait until nothing of the install is left on the backend (pods, per-pod objects, the managed
/// namespace), up to `timeout`. Returns what is left (empty: clean).
/// `<what> <namespace>/<name>` of every object of kind `K` that `lp` selects, cluster-wide.
async fn labelled<K>(client: &kube::Client, lp: &ListParams, what: &str) -> Vec<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list(lp).await {
        Ok(l) => l
            .items
            .iter()
            .map(|o| {
                let m = o.meta();
                format!(
                    "{what} {}/{}",
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default()
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub async fn leftovers(
    client: &kube::Client,
    cluster_id: &str,
    namespace: Option<&str>,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let lp = ListParams::default().labels(&identity::install_selector(cluster_id));
    loop {
        let mut left = Vec::new();
        left.extend(labelled::<Pod>(client, &lp, "pod").await);
        left.extend(labelled::<Secret>(client, &lp, "secret").await);
        if let Some(ns) = namespace {
            let api: Api<Namespace> = Api::all(client.clone());
            if let Ok(Some(_)) = api.get_opt(ns).await {
                left.push(format!("namespace {ns}"));
            }
        }
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn backend_pod(instance: &str, version: &str, phase: &str) -> Pod {
        let key = PodKey::new("src-uid", "team", "web");
        Pod {
            metadata: ObjectMeta {
                name: Some(identity::backend_name(&key)),
                namespace: Some("cce-burst-c".into()),
                uid: Some(instance.into()),
                resource_version: Some(version.into()),
                labels: Some(identity::pod_labels("c", "vk", &key)),
                annotations: Some(identity::pod_annotations(&key, 0)),
                ..Default::default()
            },
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_older_copy_of_a_backend_pod_never_overwrites_a_newer_status() {
        // Never dialled: observe() only reads its argument.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let cfg = KubeConfig::parse("kubeconfig: /unused\nclusterID: c\n").unwrap();
        let provider = KubeProvider::new(client, cfg, "vk", "127.0.0.5", "c");
        let phases = Arc::new(Mutex::new(Vec::new()));
        let seen = phases.clone();
        let _ = provider.state.sinks.set(ProviderSinks::new(
            move |_, update| {
                if let PodUpdate::Status(s) = update {
                    seen.lock().push(s.phase.clone().unwrap_or_default());
                }
            },
            || {},
        ));
        // The watch brings Running (version 12) before create_pod looks at the Pending object
        // the create returned (version 10).
        provider.observe(&backend_pod("i1", "12", "Running"));
        provider.observe(&backend_pod("i1", "10", "Pending"));
        assert_eq!(*phases.lock(), vec!["Running"]);
        // Another instance (re-created after a loss) starts its own history.
        provider.forget("src-uid");
        provider.observe(&backend_pod("i2", "3", "Pending"));
        provider.observe(&backend_pod("i2", "15", "Running"));
        assert_eq!(*phases.lock(), vec!["Running", "Pending", "Running"]);
    }

    #[test]
    fn managed_namespace_is_the_seeds_name() {
        assert_eq!(
            managed_namespace_name("0B6F1C2E-3d4a-4b5c-8d9e-0f1a2b3c4d5e"),
            "cce-burst-0b6f1c2e-3d4a-4b5c-8d9e-0f1a2b3c4d5e"
        );
        assert!(managed_namespace_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn only_a_refusal_means_a_create_did_not_happen() {
        let status = |code: u16, message: &str| {
            api_error(
                "creating",
                kube::Error::Api(
                    kube::core::Status::failure(message, "Reason")
                        .with_code(code)
                        .boxed(),
                ),
            )
        };
        for (code, message) in [(400, "bad"), (422, "invalid"), (403, "exceeded quota: q")] {
            assert!(!status(code, message).may_have_created(), "{code}");
        }
        // A conflict, throttling, a server error, or anything unclassified: the write may have
        // happened, so its Secrets stay until the pod goes.
        for code in [403, 404, 409, 429, 500, 503, 504] {
            assert!(status(code, "m").may_have_created(), "{code}");
        }
    }

    #[test]
    fn api_errors_map_to_the_contract() {
        let status = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "Reason")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(matches!(
            api_error(
                "create",
                status(
                    403,
                    "pods \"x\" is forbidden: exceeded quota: q, requested: pods=1"
                )
            ),
            ProviderError::QuotaExceeded(_)
        ));
        assert!(matches!(
            api_error("get", status(404, "not found")),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            api_error("create", status(422, "invalid")),
            ProviderError::InvalidInput(_)
        ));
        assert!(matches!(
            api_error("create", status(503, "busy")),
            ProviderError::Transient { .. }
        ));
        assert!(matches!(
            api_error("create", status(403, "forbidden")),
            ProviderError::Other(_)
        ));
    }
}
