//! Namespace-scoped caches of the objects our pods reference.
//!
//! No cluster-wide informers: a namespace is watched only while a pod on this node references
//! something in it, and of the objects the watch delivers only the referenced ones are kept
//! (or, for Services, a compact summary of each). Memory follows our pods, not the cluster.
//!
//! A lookup that misses (the object was not referenced when the watch last saw it) falls back
//! to a GET whose answer never overwrites what the watch stored meanwhile: the watch is ordered,
//! the GET is not.
//!
//! `resourceVersion` is opaque (Kubernetes API conventions): it is compared for equality only,
//! to tell a changed object from a repeat. Which copy is newer is the watch's order: its latest
//! event for a name wins, whatever the versions' strings say.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Called with (namespace, name) when a referenced object changed, appeared or disappeared.
pub(crate) type ChangeHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Aborts a task when dropped, so a namespace nobody references stops being watched.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Stored<V> {
    value: Option<V>,
    /// Only ever compared for equality.
    resource_version: Option<String>,
}

struct NamespaceState<V> {
    refs: HashMap<String, usize>,
    objects: HashMap<String, Stored<V>>,
    /// Names seen since the watch (re)started listing; absent ones are gone at `InitDone`.
    listing: Option<HashSet<String>>,
    listed: watch::Sender<bool>,
    _watch: AbortOnDrop,
}

/// Which objects of a watched namespace are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Only names some pod references (ConfigMaps, Secrets).
    Referenced,
    /// Every object, summarized (Services, for service-link variables).
    All,
}

struct Shared<K, V> {
    client: kube::Client,
    keep: Keep,
    summarize: fn(&K) -> Option<V>,
    namespaces: Mutex<HashMap<String, NamespaceState<V>>>,
    on_change: ChangeHook,
}

/// See the module documentation. `V` is what is kept of each `K`.
pub(crate) struct ObjectStore<K, V> {
    shared: Arc<Shared<K, V>>,
}

fn resource_version<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().resource_version.clone()
}

impl<K, V> ObjectStore<K, V>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        client: kube::Client,
        keep: Keep,
        summarize: fn(&K) -> Option<V>,
        on_change: ChangeHook,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                keep,
                summarize,
                namespaces: Mutex::new(HashMap::new()),
                on_change,
            }),
        }
    }

    /// Start keeping `name` in `namespace` (watching the namespace if this is its first
    /// reference). Pair with [`Self::release`].
    pub(crate) fn add_ref(&self, namespace: &str, name: &str) {
        let mut namespaces = self.shared.namespaces.lock();
        let state = namespaces
            .entry(namespace.to_string())
            .or_insert_with(|| self.start_watch(namespace));
        *state.refs.entry(name.to_string()).or_default() += 1;
    }

    pub(crate) fn release(&self, namespace: &str, name: &str) {
        let mut namespaces = self.shared.namespaces.lock();
        let Some(state) = namespaces.get_mut(namespace) else {
            return;
        };
        if let Some(n) = state.refs.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                state.refs.remove(name);
                if self.shared.keep == Keep::Referenced {
                    state.objects.remove(name);
                }
            }
        }
        if state.refs.is_empty() {
            namespaces.remove(namespace); // stops the watch
        }
    }

    /// Namespaces watched right now (for metrics and tests).
    pub(crate) fn watched_namespaces(&self) -> usize {
        self.shared.namespaces.lock().len()
    }

    /// Objects kept right now.
    pub(crate) fn kept_objects(&self) -> usize {
        self.shared
            .namespaces
            .lock()
            .values()
            .map(|s| s.objects.len())
            .sum()
    }

    /// The object as last seen; `Ok(None)` when it does not exist. The name must be referenced.
    pub(crate) async fn get(&self, namespace: &str, name: &str) -> Result<Option<V>, kube::Error> {
        if let Some(v) = self.cached(namespace, name) {
            return Ok(v);
        }
        let api: Api<K> = Api::namespaced(self.shared.client.clone(), namespace);
        let fetched = api.get_opt(name).await?;
        let value = fetched.as_ref().and_then(self.shared.summarize);
        let rv = fetched.as_ref().and_then(resource_version);
        let mut namespaces = self.shared.namespaces.lock();
        if let Some(state) = namespaces.get_mut(namespace)
            && state.refs.contains_key(name)
        {
            let stored = state.objects.entry(name.to_string()).or_insert(Stored {
                value,
                resource_version: rv,
            });
            return Ok(stored.value.clone());
        }
        Ok(value)
    }

    fn cached(&self, namespace: &str, name: &str) -> Option<Option<V>> {
        let namespaces = self.shared.namespaces.lock();
        let stored = namespaces.get(namespace)?.objects.get(name)?;
        Some(stored.value.clone())
    }

    /// Every kept object of a namespace once its first list is complete (for [`Keep::All`]).
    /// The namespace must be referenced.
    pub(crate) async fn list(&self, namespace: &str, timeout: Duration) -> Option<Vec<V>> {
        let mut listed = {
            let namespaces = self.shared.namespaces.lock();
            namespaces.get(namespace)?.listed.subscribe()
        };
        let ready = tokio::time::timeout(timeout, listed.wait_for(|done| *done)).await;
        if !matches!(ready, Ok(Ok(_))) {
            return None;
        }
        let namespaces = self.shared.namespaces.lock();
        let state = namespaces.get(namespace)?;
        Some(
            state
                .objects
                .values()
                .filter_map(|s| s.value.clone())
                .collect(),
        )
    }

    fn start_watch(&self, namespace: &str) -> NamespaceState<V> {
        let (listed, _) = watch::channel(false);
        let weak = Arc::downgrade(&self.shared);
        let api: Api<K> = Api::namespaced(self.shared.client.clone(), namespace);
        let ns = namespace.to_string();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Some(shared) = weak.upgrade() else { return };
                match event {
                    Ok(event) => shared.apply(&ns, event),
                    Err(e) => warn!(
                        namespace = %ns,
                        kind = %K::kind(&()),
                        error = %e,
                        "watch of referenced objects failed; retrying"
                    ),
                }
            }
        });
        NamespaceState {
            refs: HashMap::new(),
            objects: HashMap::new(),
            listing: None,
            listed,
            _watch: AbortOnDrop(task),
        }
    }
}

impl<K, V> Shared<K, V>
where
    K: Resource<DynamicType = ()> + Clone,
    V: Clone,
{
    fn apply(&self, namespace: &str, event: Event<K>) {
        let mut changed = Vec::new();
        {
            let mut namespaces = self.namespaces.lock();
            let Some(state) = namespaces.get_mut(namespace) else {
                return;
            };
            match event {
                Event::Init => state.listing = Some(HashSet::new()),
                Event::InitApply(obj) => {
                    let name = obj.name_any();
                    if let Some(seen) = state.listing.as_mut() {
                        seen.insert(name.clone());
                    }
                    self.store(state, name, Some(&obj), &mut changed);
                }
                Event::Apply(obj) => self.store(state, obj.name_any(), Some(&obj), &mut changed),
                Event::Delete(obj) => self.store(state, obj.name_any(), None, &mut changed),
                Event::InitDone => {
                    let seen = state.listing.take().unwrap_or_default();
                    let vanished: Vec<String> = state
                        .objects
                        .iter()
                        .filter(|(name, s)| s.value.is_some() && !seen.contains(*name))
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in vanished {
                        self.store(state, name, None, &mut changed);
                    }
                    state.listed.send_replace(true);
                }
            }
        }
        for name in changed {
            debug!(namespace, name = %name, kind = %K::kind(&()), "referenced object changed");
            (self.on_change)(namespace, &name);
        }
    }

    fn store(
        &self,
        state: &mut NamespaceState<V>,
        name: String,
        obj: Option<&K>,
        changed: &mut Vec<String>,
    ) {
        if self.keep == Keep::Referenced && !state.refs.contains_key(&name) {
            return;
        }
        let rv = obj.and_then(resource_version);
        let value = obj.and_then(self.summarize);
        match state.objects.get_mut(&name) {
            Some(stored) => {
                // The watch delivers in order, so its copy replaces what is stored (a GET's answer
                // included); the version only tells a change from a repeat.
                let same = match obj {
                    Some(_) => {
                        stored.value.is_some() && rv.is_some() && stored.resource_version == rv
                    }
                    None => stored.value.is_none(),
                };
                stored.value = value;
                stored.resource_version = rv;
                if !same {
                    changed.push(name);
                }
            }
            None => {
                if obj.is_none() && self.keep == Keep::All {
                    return;
                }
                state.objects.insert(
                    name.clone(),
                    Stored {
                        value,
                        resource_version: rv,
                    },
                );
                changed.push(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    /// A client for stores whose watch is never started: every request fails.
    fn offline_client() -> kube::Client {
        let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, tower::BoxError>(
                "no API server in this test".into(),
            )
        });
        kube::Client::new(svc, "default")
    }

    fn config_map(name: &str, version: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            data: Some([("k".to_string(), value.to_string())].into()),
            ..Default::default()
        }
    }

    /// A store of ConfigMaps' `k` that references `cfg` in `ns`, fed by hand instead of a watch;
    /// and the names its change hook was called with.
    async fn store_fed_by_hand() -> (ObjectStore<ConfigMap, String>, Arc<Mutex<Vec<String>>>) {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        let hook: ChangeHook = Arc::new(move |_, name| seen.lock().push(name.to_string()));
        let store = ObjectStore::new(
            offline_client(),
            Keep::Referenced,
            |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get("k").cloned()),
            hook,
        );
        let state = NamespaceState {
            refs: [("cfg".to_string(), 1)].into(),
            objects: HashMap::new(),
            listing: None,
            listed: watch::channel(false).0,
            _watch: AbortOnDrop(tokio::spawn(async {})),
        };
        store
            .shared
            .namespaces
            .lock()
            .insert("ns".to_string(), state);
        (store, changes)
    }

    #[tokio::test]
    async fn non_numeric_versions_are_compared_for_equality_only() {
        let (store, changes) = store_fed_by_hand().await;
        let apply = |version: &str, value: &str| {
            store
                .shared
                .apply("ns", Event::Apply(config_map("cfg", version, value)));
        };
        apply("etcd-zeta", "a");
        apply("etcd-alpha", "b");
        apply("etcd-alpha", "b"); // a repeat (a relist of an unchanged object)
        assert_eq!(*changes.lock(), vec!["cfg", "cfg"], "each change once");
        assert_eq!(store.cached("ns", "cfg"), Some(Some("b".to_string())));
    }

    #[tokio::test]
    async fn the_watchs_order_wins_over_the_versions_strings() {
        let (store, changes) = store_fed_by_hand().await;
        for (version, value) in [("10", "a"), ("9", "b")] {
            store
                .shared
                .apply("ns", Event::Apply(config_map("cfg", version, value)));
        }
        assert_eq!(store.cached("ns", "cfg"), Some(Some("b".to_string())));
        assert_eq!(changes.lock().len(), 2);
        store
            .shared
            .apply("ns", Event::Delete(config_map("cfg", "11", "b")));
        assert_eq!(store.cached("ns", "cfg"), Some(None), "known not to exist");
        assert_eq!(changes.lock().len(), 3);
    }
}
