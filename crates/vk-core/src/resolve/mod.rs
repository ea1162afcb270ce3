//! The resolver: everything a kubelet would read from the cluster for a pod, read once by
//! vkubelet and handed to the backend, which cannot read the user's cluster itself.
//!
//! Env (declared order, `$(VAR)` expansion, downward API, service links), volume contents
//! (configMap, secret, downwardAPI, projected with bound service-account tokens), and registry
//! credentials from image pull secrets. The pure rules live in the submodules; this module
//! fetches what they need, tracks which pods depend on which objects, and reports changes.

pub mod env;
pub mod fields;
pub mod pull;
pub mod quantity;
pub mod refs;
mod store;
mod tokens;
pub mod types;
pub mod volumes;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use kube::api::Api;
use parking_lot::Mutex;
use tracing::{debug, instrument};

use self::env::{
    EnvInputs, MASTER_SERVICE_NAME, MASTER_SERVICE_NAMESPACE, ServiceInfo, resolve_container,
    service_variables,
};
use self::fields::NodeAllocatable;
use self::refs::{Fetched, ObjectRef, RefKind, references, volume_references};
use self::store::{Keep, ObjectStore};
use self::tokens::{BoundPod, TokenManager};
pub use self::types::*;
use self::volumes::{TokenSpec, VolumeInputs, resolve_volumes, token_specs};
use crate::cache::TtlCache;

/// How long objects read only at pod creation are reused: a pod burst reads each once.
const MASTER_SERVICE_TTL: Duration = Duration::from_secs(60);
const SERVICE_ACCOUNT_TTL: Duration = Duration::from_secs(30);
/// At most this many ServiceAccounts are kept (a node's pods use few; the bound holds anyway).
const SERVICE_ACCOUNTS_CACHED: usize = 1024;

/// Why a pod could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A mandatory ConfigMap or Secret (or one of its keys) does not exist. The pod waits and is
    /// retried as soon as the object changes. The message uses the kubelet's wording.
    #[error("{message}")]
    Missing {
        object: ObjectRef,
        message: String,
        /// The volume that needs it, when it is a volume (else an env reference).
        volume: Option<String>,
    },
    /// The spec asks for something that can never be resolved (a bad path or field).
    #[error("{0}")]
    Invalid(String),
    /// The resolved volume data exceeds what the backend accepts.
    #[error(
        "the pod's ConfigMap, Secret and downward API volumes hold {size} bytes, more than the {limit} bytes this backend accepts"
    )]
    TooLarge { size: u64, limit: u64 },
    /// Reading from the API server failed; retried.
    #[error("reading referenced objects from the API server: {0}")]
    Api(#[from] kube::Error),
}

/// Something worth a Warning event that does not stop the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

/// A resolved pod plus what the core needs to keep it current.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resolution: Resolution,
    pub warnings: Vec<Warning>,
    /// When the earliest service-account token should be re-minted.
    pub refresh_at: Option<SystemTime>,
}

/// Volumes re-resolved for a running pod.
#[derive(Debug, Clone)]
pub struct ResolvedVolumes {
    pub volumes: Vec<ResolvedVolume>,
    pub refresh_at: Option<SystemTime>,
}

/// A hash of volume contents, to tell whether a refresh changed anything.
pub fn volumes_fingerprint(volumes: &[ResolvedVolume]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in volumes {
        v.name.hash(&mut h);
        if let ResolvedVolumeSource::Files { files, .. } = &v.source {
            files.hash(&mut h);
        }
    }
    h.finish()
}

/// Called with a pod UID and whether a volume of it depends on the object that changed.
pub type WakeFn = Arc<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Default)]
struct Dependencies {
    /// pod uid → (namespace, references, volume references, uses service links)
    by_pod: HashMap<String, Tracked>,
    /// (namespace, object) → pod uids
    by_object: HashMap<(String, ObjectRef), HashSet<String>>,
}

struct Tracked {
    namespace: String,
    /// Sorted and exact-size: a pod references one or two objects, and a B-tree set allocates
    /// a whole node even for one (about 0.4 KB per set, per pod, at 10,000 pods).
    refs: Box<[ObjectRef]>,
    volume_refs: Box<[ObjectRef]>,
    service_links: bool,
}

/// How long a pod waits for its namespace's Services to be listed before it is retried.
const SERVICE_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module documentation. One per virtual node.
pub struct Resolver {
    config_maps: ObjectStore<ConfigMap, Arc<ConfigMap>>,
    secrets: ObjectStore<Secret, Arc<Secret>>,
    services: ObjectStore<Service, ServiceInfo>,
    master_service: TtlCache<(), Option<ServiceInfo>>,
    service_accounts: TtlCache<(String, String), Option<Arc<ServiceAccount>>>,
    tokens: TokenManager,
    deps: Arc<Mutex<Dependencies>>,
    client: kube::Client,
}

impl Resolver {
    pub fn new(client: kube::Client, wake: WakeFn) -> Self {
        let deps: Arc<Mutex<Dependencies>> = Arc::default();
        let hook = |kind: RefKind| -> store::ChangeHook {
            let deps = deps.clone();
            let wake = wake.clone();
            Arc::new(move |namespace: &str, name: &str| {
                let object = ObjectRef {
                    kind,
                    name: name.to_string(),
                };
                let woken: Vec<(String, bool)> = {
                    let d = deps.lock();
                    d.by_object
                        .get(&(namespace.to_string(), object.clone()))
                        .into_iter()
                        .flatten()
                        .map(|uid| {
                            let volume = d
                                .by_pod
                                .get(uid)
                                .is_some_and(|t| t.volume_refs.binary_search(&object).is_ok());
                            (uid.clone(), volume)
                        })
                        .collect()
                };
                for (uid, volume) in woken {
                    wake(&uid, volume);
                }
            })
        };
        Self {
            config_maps: ObjectStore::new(
                client.clone(),
                Keep::Referenced,
                |cm: &ConfigMap| Some(Arc::new(cm.clone())),
                hook(RefKind::ConfigMap),
            ),
            secrets: ObjectStore::new(
                client.clone(),
                Keep::Referenced,
                |s: &Secret| Some(Arc::new(s.clone())),
                hook(RefKind::Secret),
            ),
            // Service changes never reach running pods (env is fixed at start): no hook.
            services: ObjectStore::new(
                client.clone(),
                Keep::All,
                ServiceInfo::of,
                Arc::new(|_: &str, _: &str| {}),
            ),
            master_service: TtlCache::new(1),
            service_accounts: TtlCache::new(SERVICE_ACCOUNTS_CACHED),
            tokens: TokenManager::new(client.clone()),
            deps,
            client,
        }
    }

    /// Record what the pod references, so the objects are watched and changes wake the pod.
    /// Idempotent; call before [`Self::resolve`].
    pub fn track(&self, uid: &str, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let refs: Box<[ObjectRef]> = references(pod).into_iter().collect();
        let volume_refs: Box<[ObjectRef]> = volume_references(pod).into_iter().collect();
        let service_links = service_links_enabled(pod);
        let mut deps = self.deps.lock();
        if let Some(old) = deps.by_pod.get(uid)
            && old.refs == refs
            && old.service_links == service_links
        {
            return;
        }
        if let Some(old) = deps.by_pod.remove(uid) {
            self.release(&mut deps, uid, &old);
        }
        for r in refs.iter() {
            match r.kind {
                RefKind::ConfigMap => self.config_maps.add_ref(&namespace, &r.name),
                RefKind::Secret => self.secrets.add_ref(&namespace, &r.name),
            }
            deps.by_object
                .entry((namespace.clone(), r.clone()))
                .or_default()
                .insert(uid.to_string());
        }
        if service_links {
            self.services.add_ref(&namespace, uid);
        }
        deps.by_pod.insert(
            uid.to_string(),
            Tracked {
                namespace,
                refs,
                volume_refs,
                service_links,
            },
        );
    }

    /// Forget a pod: its references, watches nobody else needs, its tokens.
    pub fn forget(&self, uid: &str) {
        let mut deps = self.deps.lock();
        if let Some(old) = deps.by_pod.remove(uid) {
            self.release(&mut deps, uid, &old);
        }
        drop(deps);
        self.tokens.forget_pod(uid);
    }

    fn release(&self, deps: &mut Dependencies, uid: &str, old: &Tracked) {
        for r in &old.refs {
            match r.kind {
                RefKind::ConfigMap => self.config_maps.release(&old.namespace, &r.name),
                RefKind::Secret => self.secrets.release(&old.namespace, &r.name),
            }
            let key = (old.namespace.clone(), r.clone());
            if let Some(set) = deps.by_object.get_mut(&key) {
                set.remove(uid);
                if set.is_empty() {
                    deps.by_object.remove(&key);
                }
            }
        }
        if old.service_links {
            self.services.release(&old.namespace, uid);
        }
    }

    /// Pods tracked, namespaces watched, objects kept, tokens cached (for metrics and tests).
    pub fn footprint(&self) -> Footprint {
        Footprint {
            pods: self.deps.lock().by_pod.len(),
            watched_namespaces: self.config_maps.watched_namespaces()
                + self.secrets.watched_namespaces()
                + self.services.watched_namespaces(),
            kept_objects: self.config_maps.kept_objects()
                + self.secrets.kept_objects()
                + self.services.kept_objects(),
            tokens: self.tokens.len(),
        }
    }

    /// Everything the backend needs for a new pod. `allocatable` is asked for only when a
    /// `resourceFieldRef` names a limit the container leaves unset.
    #[instrument(skip_all, fields(pod = %pod.metadata.name.as_deref().unwrap_or_default()))]
    pub async fn resolve<F, Fut>(
        &self,
        pod: &Pod,
        allocatable: F,
        max_volume_bytes: Option<u64>,
    ) -> Result<Resolved, ResolveError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = NodeAllocatable>,
    {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.track(&uid, pod);
        let fetched = self.fetch(pod).await?;
        let allocatable = if uses_resource_fields(pod) {
            allocatable().await
        } else {
            NodeAllocatable::new()
        };
        let (tokens, refresh_at) = self.mint_tokens(pod).await?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let services = self
            .service_env(namespace, service_links_enabled(pod))
            .await?;

        let mut warnings = Vec::new();
        let volumes = resolve_volumes(&VolumeInputs {
            pod,
            fetched: &fetched,
            tokens: &tokens,
            allocatable: &allocatable,
        })?;
        check_size(&volumes, max_volume_bytes)?;
        let env_inputs = EnvInputs {
            pod,
            fetched: &fetched,
            services: &services,
            allocatable: &allocatable,
        };
        let mut containers = Vec::new();
        if let Some(spec) = pod.spec.as_ref() {
            for c in spec.init_containers.iter().flatten() {
                containers.push(resolve_container(&env_inputs, c, true, &mut warnings)?);
            }
            for c in &spec.containers {
                containers.push(resolve_container(&env_inputs, c, false, &mut warnings)?);
            }
        }
        let registry_credentials = self.pull_credentials(pod, &fetched, &mut warnings).await;
        Ok(Resolved {
            resolution: Resolution {
                containers,
                volumes,
                registry_credentials,
            },
            warnings,
            refresh_at,
        })
    }

    /// The pod's volumes again, for a running pod whose ConfigMaps, Secrets or tokens changed.
    pub async fn resolve_volumes<F, Fut>(
        &self,
        pod: &Pod,
        allocatable: F,
        max_volume_bytes: Option<u64>,
    ) -> Result<ResolvedVolumes, ResolveError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = NodeAllocatable>,
    {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.track(&uid, pod);
        let fetched = self.fetch_volume_refs(pod).await?;
        let allocatable = if uses_resource_fields(pod) {
            allocatable().await
        } else {
            NodeAllocatable::new()
        };
        let (tokens, refresh_at) = self.mint_tokens(pod).await?;
        let volumes = resolve_volumes(&VolumeInputs {
            pod,
            fetched: &fetched,
            tokens: &tokens,
            allocatable: &allocatable,
        })?;
        check_size(&volumes, max_volume_bytes)?;
        Ok(ResolvedVolumes {
            volumes,
            refresh_at,
        })
    }

    async fn fetch(&self, pod: &Pod) -> Result<Fetched, ResolveError> {
        self.fetch_refs(pod, references(pod)).await
    }

    async fn fetch_volume_refs(&self, pod: &Pod) -> Result<Fetched, ResolveError> {
        self.fetch_refs(pod, volume_references(pod)).await
    }

    async fn fetch_refs(
        &self,
        pod: &Pod,
        refs: BTreeSet<ObjectRef>,
    ) -> Result<Fetched, ResolveError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut fetched = Fetched::default();
        for r in refs {
            match r.kind {
                RefKind::ConfigMap => {
                    let v = self.config_maps.get(namespace, &r.name).await?;
                    fetched.config_maps.insert(r.name, v);
                }
                RefKind::Secret => {
                    let v = self.secrets.get(namespace, &r.name).await?;
                    fetched.secrets.insert(r.name, v);
                }
            }
        }
        Ok(fetched)
    }

    async fn mint_tokens(
        &self,
        pod: &Pod,
    ) -> Result<(HashMap<TokenSpec, Arc<str>>, Option<SystemTime>), ResolveError> {
        let specs = token_specs(pod);
        let mut tokens = HashMap::new();
        let mut refresh_at: Option<SystemTime> = None;
        if specs.is_empty() {
            return Ok((tokens, None));
        }
        let meta = &pod.metadata;
        let bound = BoundPod {
            namespace: meta.namespace.as_deref().unwrap_or_default(),
            name: meta.name.as_deref().unwrap_or_default(),
            uid: meta.uid.as_deref().unwrap_or_default(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
                .unwrap_or("default"),
        };
        for spec in specs {
            let minted = self.tokens.token(&bound, &spec).await?;
            refresh_at = Some(match refresh_at {
                Some(t) => t.min(minted.refresh_at),
                None => minted.refresh_at,
            });
            tokens.insert(spec, minted.token);
        }
        Ok((tokens, refresh_at))
    }

    /// Service-link variables: the master Service always, the namespace's when enabled.
    async fn service_env(
        &self,
        namespace: &str,
        links: bool,
    ) -> Result<Vec<(String, String)>, ResolveError> {
        let client = self.client.clone();
        let master = self
            .master_service
            .get_or_try_fetch(
                &(),
                |_| MASTER_SERVICE_TTL,
                || async move {
                    let api: Api<Service> = Api::namespaced(client, MASTER_SERVICE_NAMESPACE);
                    let svc = api.get_opt(MASTER_SERVICE_NAME).await?;
                    Ok::<_, kube::Error>(svc.as_ref().and_then(ServiceInfo::of))
                },
            )
            .await?
            .value;
        let namespace_services = if links {
            match self.services.list(namespace, SERVICE_LIST_TIMEOUT).await {
                Some(list) => list,
                None => {
                    return Err(ResolveError::Api(kube::Error::Service(
                        format!("the Services of namespace {namespace} were not listed within {SERVICE_LIST_TIMEOUT:?}")
                            .into(),
                    )));
                }
            }
        } else {
            Vec::new()
        };
        Ok(service_variables(
            master.as_ref(),
            &namespace_services,
            links,
        ))
    }

    /// Registry credentials from the pod's image pull secrets and its service account's.
    /// Missing or malformed secrets are warnings, as for the kubelet: the pull may still work.
    async fn pull_credentials(
        &self,
        pod: &Pod,
        fetched: &Fetched,
        warnings: &mut Vec<Warning>,
    ) -> Vec<RegistryCredential> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut names: Vec<String> = spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let sa_name = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        match self.service_account(namespace, &sa_name).await {
            Ok(Some(sa)) => {
                for r in sa.image_pull_secrets.iter().flatten() {
                    if !names.contains(&r.name) {
                        names.push(r.name.clone());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                debug!(namespace, service_account = %sa_name, error = %e, "cannot read the pod's service account for image pull secrets")
            }
        }
        let mut creds = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            let secret = match fetched.secrets.get(&name) {
                Some(s) => s.clone(),
                None => {
                    // Named only by the service account: fetch (and keep it referenced while
                    // the pod lives would need tracking; a one-off read is enough here).
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(&name).await.ok().flatten().map(Arc::new)
                }
            };
            match secret {
                Some(s) => match pull::credentials(&s) {
                    Ok(c) => creds.extend(c),
                    Err(e) => warnings.push(Warning {
                        reason: "FailedToRetrieveImagePullSecret",
                        message: format!("Unable to use image pull secret: {e}; attempting to pull the image may not succeed."),
                    }),
                },
                None => missing.push(format!("{namespace}/{name}")),
            }
        }
        if !missing.is_empty() {
            warnings.push(Warning {
                reason: "FailedToRetrieveImagePullSecret",
                message: format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                ),
            });
        }
        creds
    }

    async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<ServiceAccount>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_string();
        self.service_accounts
            .get_or_try_fetch(
                &key,
                |_| SERVICE_ACCOUNT_TTL,
                || async move { Ok(api.get_opt(&name).await?.map(Arc::new)) },
            )
            .await
            .map(|found| found.value)
    }
}

/// How much the resolver holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub pods: usize,
    pub watched_namespaces: usize,
    pub kept_objects: usize,
    pub tokens: usize,
}

fn service_links_enabled(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true)
}

fn uses_resource_fields(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let in_env = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| {
            e.value_from
                .as_ref()
                .is_some_and(|f| f.resource_field_ref.is_some())
        });
    let in_volumes = spec.volumes.iter().flatten().any(|v| {
        let downward = v
            .downward_api
            .iter()
            .flat_map(|d| d.items.iter().flatten())
            .any(|i| i.resource_field_ref.is_some());
        let projected = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .flat_map(|s| s.downward_api.iter())
            .flat_map(|d| d.items.iter().flatten())
            .any(|i| i.resource_field_ref.is_some());
        downward || projected
    });
    in_env || in_volumes
}

fn check_size(volumes: &[ResolvedVolume], limit: Option<u64>) -> Result<(), ResolveError> {
    let Some(limit) = limit else { return Ok(()) };
    let size: u64 = volumes.iter().map(|v| v.data_len() as u64).sum();
    if size > limit {
        return Err(ResolveError::TooLarge { size, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    #[test]
    fn size_limit_counts_file_bytes() {
        let file = |n: usize| VolumeFile {
            path: "f".into(),
            mode: 0o644,
            data: StdArc::from(vec![0u8; n]),
            sensitive: false,
        };
        let vols = vec![
            ResolvedVolume {
                name: "a".into(),
                source: ResolvedVolumeSource::Files {
                    kind: FilesKind::ConfigMap,
                    files: vec![file(10), file(5)],
                },
            },
            ResolvedVolume {
                name: "b".into(),
                source: ResolvedVolumeSource::EmptyDir {
                    medium: None,
                    size_limit: None,
                },
            },
        ];
        assert!(check_size(&vols, None).is_ok());
        assert!(check_size(&vols, Some(15)).is_ok());
        let err = check_size(&vols, Some(14));
        assert!(matches!(
            err,
            Err(ResolveError::TooLarge {
                size: 15,
                limit: 14
            })
        ));
    }

    #[test]
    fn fingerprint_follows_file_content() {
        let vol = |content: &[u8]| ResolvedVolume {
            name: "v".into(),
            source: ResolvedVolumeSource::Files {
                kind: FilesKind::ConfigMap,
                files: vec![VolumeFile {
                    path: "k".into(),
                    mode: 0o644,
                    data: StdArc::from(content.to_vec()),
                    sensitive: false,
                }],
            },
        };
        assert_eq!(
            volumes_fingerprint(&[vol(b"a")]),
            volumes_fingerprint(&[vol(b"a")])
        );
        assert_ne!(
            volumes_fingerprint(&[vol(b"a")]),
            volumes_fingerprint(&[vol(b"b")])
        );
    }
}
