//! What the webhook knows about the objects a pod's policy may come from: namespaces and the
//! workloads that own pods (ReplicaSet → Deployment, StatefulSet, Job → CronJob). Fed by
//! metadata-only watches, so a pod admission reads memory, not the API server; and slim: only
//! the burst-policy labels and annotation and the controlling owner of each object are kept.
//!
//! An object the cache has not seen (a ReplicaSet created a moment before its first pod, a cache
//! still starting) is fetched once with a GET and remembered until its watch takes over.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vk_core::burst::{BURST_LABEL, BURST_LABEL_CCE, NAMESPACE_INJECTION_LABEL};

/// A GET for an object the cache misses must not eat the API server's whole webhook timeout.
const MISS_TIMEOUT: Duration = Duration::from_secs(2);

/// The kinds a policy is inherited from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    ReplicaSet,
    Deployment,
    StatefulSet,
    Job,
    CronJob,
}

impl Kind {
    pub const WORKLOADS: [Kind; 5] = [
        Kind::ReplicaSet,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::Job,
        Kind::CronJob,
    ];

    pub fn from_owner_kind(kind: &str) -> Option<Kind> {
        Some(match kind {
            "ReplicaSet" => Kind::ReplicaSet,
            "Deployment" => Kind::Deployment,
            "StatefulSet" => Kind::StatefulSet,
            "Job" => Kind::Job,
            "CronJob" => Kind::CronJob,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
        }
    }

    fn resource(self, cronjob_version: &str) -> ApiResource {
        let (group, version, plural) = match self {
            Kind::Namespace => ("", "v1", "namespaces"),
            Kind::ReplicaSet => ("apps", "v1", "replicasets"),
            Kind::Deployment => ("apps", "v1", "deployments"),
            Kind::StatefulSet => ("apps", "v1", "statefulsets"),
            Kind::Job => ("batch", "v1", "jobs"),
            Kind::CronJob => ("batch", cronjob_version, "cronjobs"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.name()),
            plural,
        )
    }
}

/// The part of an object the policy reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slim {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The controlling owner: (kind, name).
    pub owner: Option<(String, String)>,
}

impl Slim {
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        let keep = |m: &Option<BTreeMap<String, String>>, keys: &[&str]| {
            m.iter()
                .flatten()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        Self {
            labels: keep(
                &meta.labels,
                &[BURST_LABEL, BURST_LABEL_CCE, NAMESPACE_INJECTION_LABEL],
            ),
            annotations: keep(&meta.annotations, &[BURST_LABEL]),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone())),
        }
    }
}

type Key = (String, String); // (namespace, name); namespace "" for namespaces

#[derive(Default)]
struct Store {
    objects: RwLock<HashMap<Key, Arc<Slim>>>,
}

/// The caches of every kind, with GET on a miss.
#[derive(Clone)]
pub struct WorkloadCache {
    client: kube::Client,
    stores: Arc<HashMap<Kind, Store>>,
    cronjob_version: Arc<RwLock<String>>,
}

impl WorkloadCache {
    pub fn new(client: kube::Client) -> Self {
        let mut stores = HashMap::new();
        stores.insert(Kind::Namespace, Store::default());
        for k in Kind::WORKLOADS {
            stores.insert(k, Store::default());
        }
        Self {
            client,
            stores: Arc::new(stores),
            cronjob_version: Arc::new(RwLock::new("v1".into())),
        }
    }

    /// Start the watches; they run until `cancel`.
    pub async fn start(&self, cancel: CancellationToken) {
        // CronJob is batch/v1 from Kubernetes 1.21 on, batch/v1beta1 before.
        let v1: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &Kind::CronJob.resource("v1"));
        if let Err(kube::Error::Api(s)) = v1.list_metadata(&ListParams::default().limit(1)).await
            && s.code == 404
        {
            *self.cronjob_version.write() = "v1beta1".into();
        }
        for kind in std::iter::once(Kind::Namespace).chain(Kind::WORKLOADS) {
            tokio::spawn(self.clone().watch(kind, cancel.clone()));
        }
    }

    fn resource(&self, kind: Kind) -> ApiResource {
        kind.resource(&self.cronjob_version.read())
    }

    async fn watch(self, kind: Kind, cancel: CancellationToken) {
        let Some(store) = self.stores.get(&kind) else {
            return;
        };
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &self.resource(kind));
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut init: Option<HashMap<Key, Arc<Slim>>> = None;
        let mut warned = false;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                e = stream.next() => e,
            };
            let Some(event) = event else { return };
            match event {
                Ok(Event::Init) => init = Some(HashMap::new()),
                Ok(Event::InitApply(obj)) => {
                    if let Some(map) = init.as_mut() {
                        map.insert(key(&obj.metadata), Arc::new(Slim::of(&obj.metadata)));
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(map) = init.take() {
                        let n = map.len();
                        *store.objects.write() = map;
                        debug!(kind = kind.name(), objects = n, "webhook cache synced");
                    }
                    if warned {
                        info!(kind = kind.name(), "webhook cache watch recovered");
                        warned = false;
                    }
                }
                Ok(Event::Apply(obj)) => {
                    store
                        .objects
                        .write()
                        .insert(key(&obj.metadata), Arc::new(Slim::of(&obj.metadata)));
                }
                Ok(Event::Delete(obj)) => {
                    store.objects.write().remove(&key(&obj.metadata));
                }
                Err(e) => {
                    // One line per outage, not one per retry.
                    if !warned {
                        warn!(kind = kind.name(), error = %e, "webhook cache watch failed; retrying (misses are fetched directly meanwhile)");
                        warned = true;
                    }
                }
            }
        }
    }

    /// The slim object, from the cache or else the API server. `None`: it does not exist (or
    /// cannot be read now: the pod is then decided without it).
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Slim>> {
        let store = self.stores.get(&kind)?;
        let k = (namespace.to_string(), name.to_string());
        if let Some(hit) = store.objects.read().get(&k) {
            return Some(hit.clone());
        }
        let ar = self.resource(kind);
        let api: Api<PartialObjectMeta<DynamicObject>> = if kind == Kind::Namespace {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        };
        match tokio::time::timeout(MISS_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(obj))) => {
                let slim = Arc::new(Slim::of(&obj.metadata));
                // The watch may have delivered it meanwhile: keep the newer of the two.
                store
                    .objects
                    .write()
                    .entry(k)
                    .or_insert_with(|| slim.clone());
                Some(slim)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                warn!(kind = kind.name(), namespace, name, error = %e, "webhook cannot read a pod's owner");
                None
            }
            Err(_) => {
                warn!(
                    kind = kind.name(),
                    namespace, name, "webhook timed out reading a pod's owner"
                );
                None
            }
        }
    }
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    #[test]
    fn slim_keeps_only_what_the_policy_reads() {
        let meta = ObjectMeta {
            labels: Some(
                [
                    (BURST_LABEL.to_string(), "auto".to_string()),
                    ("app".to_string(), "web".to_string()),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (BURST_LABEL.to_string(), "true".to_string()),
                    ("big".to_string(), "x".repeat(1000)),
                ]
                .into(),
            ),
            owner_references: Some(vec![
                OwnerReference {
                    kind: "Other".into(),
                    name: "not-the-controller".into(),
                    ..Default::default()
                },
                OwnerReference {
                    kind: "Deployment".into(),
                    name: "web".into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let s = Slim::of(&meta);
        assert_eq!(s.labels.len(), 1);
        assert_eq!(s.annotations.len(), 1);
        assert_eq!(s.owner, Some(("Deployment".into(), "web".into())));
    }

    #[test]
    fn cronjob_version_follows_the_server() {
        assert_eq!(
            Kind::CronJob.resource("v1beta1").api_version,
            "batch/v1beta1"
        );
        assert_eq!(Kind::ReplicaSet.resource("v1").plural, "replicasets");
        assert_eq!(Kind::from_owner_kind("DaemonSet"), None);
    }
}
