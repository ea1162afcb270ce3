//! Translation of a resolved source pod into the objects the backend Kubernetes API receives: the
//! backend pod and its per-pod Secret. Pure functions, no I/O: the caller creates the Secret before
//! the pod and adds its ownerReference afterwards.
//!
//! The backend cannot read the source cluster, so everything the pod references there comes from
//! the [`Resolution`](vk_provider_api::resolution::Resolution). All of it goes into **one** per-pod
//! Secret (`<name>-data`): every object is a create, an owner patch and a garbage-collector delete
//! on the backend's API server, which is what bounds a burst (issue 12's benchmark: three writes
//! per pod fewer than one object per purpose).
//! - **Env.** Every resolved value is a key of the Secret, referenced with `secretKeyRef`: the
//!   resolution does not say which values came from Secrets, so no value is ever written in clear
//!   into the pod spec. Late-bound addresses become `fieldRef`s (`status.podIP[s]`) composed with
//!   `$(helper)` references; `status.hostIP[s]` is the virtual node's IP, which is what the source
//!   pod sees.
//! - **Volumes.** Every resolved file volume (ConfigMap, Secret, downward API, projected) is mounted
//!   from the Secret with the same paths and modes; a volume that would take the Secret past the
//!   API server's 1 MiB gets a Secret of its own (`<name>-vol-<i>`). emptyDir passes; persistent
//!   volume claims pass only when the node is configured to expect same-named claims in the
//!   backend namespace; anything else is refused with a reason naming every such volume.
//! - **Pull credentials.** The Secret's `.dockerconfigjson` key, the Secret then being of type
//!   `kubernetes.io/dockerconfigjson` (which allows other keys beside it).
//! - **Spec.** Fields that target the virtual node or the source cluster (node name and selector,
//!   affinity, scheduler, priority, service account, ...) are dropped; what the workload itself
//!   declares (containers, restart policy, DNS, hostname, security context, ...) is kept.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, LocalObjectReference,
    ObjectFieldSelector, Pod, PodSpec, Secret, SecretKeySelector, SecretVolumeSource, Toleration,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vk_provider_api::ProviderError;
use vk_provider_api::ResolvedPod;
use vk_provider_api::resolution::{
    AddressField, RegistryCredential, ResolvedContainer, ResolvedVolume, ResolvedVolumeSource,
    Segment, Template, VolumeFile,
};

/// Where and under which identity the backend objects of one pod live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranslateContext {
    /// The backend namespace.
    pub namespace: String,
    /// The backend pod's name; per-pod object names are derived from it, so it must leave room
    /// for their suffixes (`-data`, `-vol-<i>`) within the 253 characters of an object name.
    pub name: String,
    /// Identity labels, put on the pod (winning over the source pod's) and on every per-pod object.
    pub labels: BTreeMap<String, String>,
    /// Identity annotations for the pod (winning over the source pod's).
    pub annotations: BTreeMap<String, String>,
    /// The virtual node's IP: what `status.hostIP` means to the source pod.
    pub node_ip: String,
    /// Whether `persistentVolumeClaim` volumes pass unchanged (a claim of the same name must
    /// exist in the backend namespace).
    pub pass_through_pvcs: bool,
}

/// What the backend receives for one pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// The backend pod to create.
    pub pod: Pod,
    /// The per-pod Secret (`<name>-data`) first, if the pod needs one, then any volume too large
    /// to share it; all to create before the pod.
    pub secrets: Vec<Secret>,
}

/// The annotation `kubectl apply` keeps; it describes the source object and can be large.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Prefix of the taint keys a virtual node carries; tolerations for them mean nothing elsewhere.
const VIRTUAL_KUBELET_TAINT_PREFIX: &str = "virtual-kubelet.io/";
/// Prefix of the helper variables that compose late-bound env values.
const HELPER_PREFIX: &str = "VKUBELET_E";
const OPAQUE: &str = "Opaque";
const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The most a Secret's values may add up to: the API server refuses more (`MaxSecretSize`).
pub const SECRET_DATA_LIMIT: usize = 1024 * 1024;

/// The per-pod Secret: env values, registry credentials and the files of every volume that fits.
pub fn data_secret_name(pod_name: &str) -> String {
    format!("{pod_name}-data")
}

/// The Secret of the pod's `index`-th volume when it does not fit in the per-pod one.
pub fn volume_secret_name(pod_name: &str, index: usize) -> String {
    format!("{pod_name}-vol-{index}")
}

/// Translates a resolved pod into the backend pod and the per-pod Secret(s) it references.
///
/// Fails with [`ProviderError::NotSupported`] naming every volume (and host namespace) the
/// backend cannot receive, and with [`ProviderError::InvalidInput`] when the pod has no spec or a
/// spec volume has no resolution.
pub fn translate(pod: &ResolvedPod, ctx: &TranslateContext) -> Result<Translation, ProviderError> {
    let source = pod.pod.as_ref();
    let spec = source
        .spec
        .as_ref()
        .ok_or_else(|| ProviderError::InvalidInput(format!("pod {} has no spec", pod.key)))?;

    let mut unsupported = Vec::new();
    // The core refuses these at admission already; a pod that slipped through must not get the
    // backend node's namespaces, so refuse rather than drop them silently.
    for (field, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            unsupported.push(format!("{field}: true"));
        }
    }
    let mut volumes = translate_volumes(spec, &pod.resolution.volumes, ctx, &mut unsupported)?;
    if !unsupported.is_empty() {
        return Err(unsupported_error(&unsupported));
    }

    let mut data = PodSecret::new(data_secret_name(&ctx.name));
    let init_containers = spec.init_containers.as_ref().map(|cs| {
        cs.iter()
            .map(|c| backend_container(c, &pod.resolution.containers, &mut data, ctx))
            .collect()
    });
    let containers = spec
        .containers
        .iter()
        .map(|c| backend_container(c, &pod.resolution.containers, &mut data, ctx))
        .collect();

    // The source's imagePullSecrets name Secrets of the source cluster; the resolved credentials
    // replace them all.
    let image_pull_secrets = pull_config(&pod.resolution.registry_credentials).map(|config| {
        data.put_pull_config(config);
        vec![LocalObjectReference {
            name: data.name.clone(),
        }]
    });

    // Env and credentials are in; the volumes fill what room is left, in spec order.
    let mut secrets = Vec::new();
    for volume in volumes.files.drain(..) {
        let secret_name = if data.fits(volume.size) {
            data.put_files(volume.data);
            data.name.clone()
        } else {
            let name = volume_secret_name(&ctx.name, volume.index);
            secrets.push(Secret {
                metadata: object_meta(name.clone(), ctx),
                data: non_empty_map(volume.data),
                type_: Some(OPAQUE.to_string()),
                ..Default::default()
            });
            name
        };
        if let Some(source) = volumes.pod_volumes[volume.position].secret.as_mut() {
            source.secret_name = Some(secret_name);
        }
    }
    if let Some(secret) = data.into_secret(ctx) {
        secrets.insert(0, secret);
    }

    let tolerations: Vec<Toleration> = spec
        .tolerations
        .iter()
        .flatten()
        .filter(|t| keep_toleration(t))
        .cloned()
        .collect();

    // Built field by field rather than cloned and pruned, so a field nobody has judged (new API
    // versions add scheduling and source-cluster references regularly) is dropped, not sent.
    // Dropped on purpose: nodeName, nodeSelector, affinity, schedulerName, priority*,
    // preemptionPolicy, runtimeClassName, overhead, topologySpreadConstraints, schedulingGates
    // (all about placement in the source cluster), serviceAccount[Name] (no such account on the
    // backend; the resolved token volume stands in), imagePullSecrets (replaced above),
    // ephemeralContainers (the API refuses them on create), resourceClaims (claims of the source
    // cluster).
    let backend_spec = PodSpec {
        active_deadline_seconds: spec.active_deadline_seconds,
        // The source pod's token is among the resolved volumes; the backend's own must not
        // appear beside it.
        automount_service_account_token: Some(false),
        containers,
        dns_config: spec.dns_config.clone(),
        dns_policy: spec.dns_policy.clone(),
        // The resolved env already carries the source cluster's service-link variables.
        enable_service_links: Some(false),
        host_aliases: spec.host_aliases.clone(),
        host_users: spec.host_users,
        hostname: spec.hostname.clone(),
        hostname_override: spec.hostname_override.clone(),
        image_pull_secrets,
        init_containers,
        os: spec.os.clone(),
        readiness_gates: spec.readiness_gates.clone(),
        resources: spec.resources.clone(),
        restart_policy: spec.restart_policy.clone(),
        security_context: spec.security_context.clone(),
        set_hostname_as_fqdn: spec.set_hostname_as_fqdn,
        share_process_namespace: spec.share_process_namespace,
        subdomain: spec.subdomain.clone(),
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        tolerations: non_empty_vec(tolerations),
        volumes: spec.volumes.as_ref().map(|_| volumes.pod_volumes),
        ..Default::default()
    };

    let (labels, annotations) = backend_metadata(&source.metadata, ctx);

    Ok(Translation {
        pod: Pod {
            // Only identity: uid, resourceVersion, ownerReferences, finalizers and the rest
            // belong to the source object (the caller sets ownerReferences once it exists).
            metadata: ObjectMeta {
                name: Some(ctx.name.clone()),
                namespace: Some(ctx.namespace.clone()),
                labels: non_empty_map(labels),
                annotations: non_empty_map(annotations),
                ..Default::default()
            },
            spec: Some(backend_spec),
            status: None,
        },
        secrets,
    })
}

/// Which of the backend pod's label keys came from the source pod (comma-separated: neither
/// label nor annotation keys may contain commas), so that an update removes a key the source
/// dropped without touching what the backend itself added.
pub const SOURCE_LABEL_KEYS_ANNOTATION: &str = "vkubelet.io/source-label-keys";
/// The same for annotation keys.
pub const SOURCE_ANNOTATION_KEYS_ANNOTATION: &str = "vkubelet.io/source-annotation-keys";

/// The backend pod's labels and annotations: the source pod's (without `kubectl apply`'s copy
/// of the object), the identity ones winning, and the record of which keys came from the source.
pub fn backend_metadata(
    source: &ObjectMeta,
    ctx: &TranslateContext,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = source.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !ctx.labels.contains_key(k));
    let label_keys = labels.keys().cloned().collect::<Vec<_>>().join(",");
    labels.extend(ctx.labels.iter().map(|(k, v)| (k.clone(), v.clone())));

    let mut annotations = source.annotations.clone().unwrap_or_default();
    annotations.retain(|k, _| {
        k != LAST_APPLIED
            && k != SOURCE_LABEL_KEYS_ANNOTATION
            && k != SOURCE_ANNOTATION_KEYS_ANNOTATION
            && !ctx.annotations.contains_key(k)
    });
    let annotation_keys = annotations.keys().cloned().collect::<Vec<_>>().join(",");
    annotations.extend(ctx.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    annotations.insert(SOURCE_LABEL_KEYS_ANNOTATION.to_string(), label_keys);
    annotations.insert(
        SOURCE_ANNOTATION_KEYS_ANNOTATION.to_string(),
        annotation_keys,
    );
    (labels, annotations)
}

/// The metadata part of a patch that brings the backend pod `current` to the wanted labels and
/// annotations (from [`backend_metadata`]): changed and new keys set, keys the source had (per
/// the record on `current`) and no longer has removed, keys someone else added left alone.
/// `None` when nothing differs.
pub fn metadata_patch(
    current: &ObjectMeta,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<serde_json::Value> {
    let recorded = |key: &str| -> Vec<String> {
        current
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(|keys| {
                keys.split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let diff = |have: Option<&BTreeMap<String, String>>,
                want: &BTreeMap<String, String>,
                dropped: Vec<String>| {
        let mut out = serde_json::Map::new();
        for k in dropped {
            let present = have.is_some_and(|h| h.contains_key(&k));
            if present && !want.contains_key(&k) {
                out.insert(k, serde_json::Value::Null);
            }
        }
        for (k, v) in want {
            if have.and_then(|h| h.get(k)) != Some(v) {
                out.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
        }
        out
    };
    let label_changes = diff(
        current.labels.as_ref(),
        labels,
        recorded(SOURCE_LABEL_KEYS_ANNOTATION),
    );
    let annotation_changes = diff(
        current.annotations.as_ref(),
        annotations,
        recorded(SOURCE_ANNOTATION_KEYS_ANNOTATION),
    );
    if label_changes.is_empty() && annotation_changes.is_empty() {
        return None;
    }
    let mut metadata = serde_json::Map::new();
    if !label_changes.is_empty() {
        metadata.insert("labels".into(), label_changes.into());
    }
    if !annotation_changes.is_empty() {
        metadata.insert("annotations".into(), annotation_changes.into());
    }
    Some(serde_json::Value::Object(metadata))
}

/// What a refresh of a running pod's volumes writes, from the backend pod as it was created: for
/// each Secret one of its volumes is mounted from, the current content of every key that volume's
/// items name. Reading the layout from the backend pod rather than recomputing it keeps a refresh
/// right whatever room the env and credentials took at creation. A file the source no longer has
/// keeps its last content (the items are fixed when the pod is created, as a kubelet's are).
pub fn volume_refresh(
    backend: &Pod,
    volumes: &[ResolvedVolume],
) -> BTreeMap<String, BTreeMap<String, ByteString>> {
    let mut out: BTreeMap<String, BTreeMap<String, ByteString>> = BTreeMap::new();
    let declared = backend.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    for volume in declared {
        let Some(source) = &volume.secret else {
            continue;
        };
        let (Some(name), Some(items)) = (&source.secret_name, &source.items) else {
            continue;
        };
        let files = volumes.iter().find_map(|r| match &r.source {
            ResolvedVolumeSource::Files { files, .. } if r.name == volume.name => Some(files),
            _ => None,
        });
        let Some(files) = files else {
            continue;
        };
        let data = out.entry(name.clone()).or_default();
        for item in items {
            if let Some(f) = files.iter().find(|f| f.path == item.path) {
                data.insert(item.key.clone(), ByteString(f.data.to_vec()));
            }
        }
    }
    out.retain(|_, data| !data.is_empty());
    out
}

// ---------------------------------------------------------------------------------------------
// The per-pod Secret

/// The per-pod Secret being filled: env values, the registry credentials, volume files.
struct PodSecret {
    name: String,
    data: BTreeMap<String, ByteString>,
    /// What the values add up to, against [`SECRET_DATA_LIMIT`].
    size: usize,
    env_values: usize,
    pull: bool,
}

impl PodSecret {
    fn new(name: String) -> Self {
        Self {
            name,
            data: BTreeMap::new(),
            size: 0,
            env_values: 0,
            pull: false,
        }
    }

    fn insert(&mut self, key: String, value: ByteString) {
        self.size += value.0.len();
        if let Some(old) = self.data.insert(key, value) {
            self.size -= old.0.len();
        }
    }

    /// Stores an env value under the next key and returns the reference to it.
    fn put_env(&mut self, value: String) -> EnvVarSource {
        // Keys are numbered because variable names may hold characters a Secret key may not.
        let key = format!("e{}", self.env_values);
        self.env_values += 1;
        self.insert(key.clone(), ByteString(value.into_bytes()));
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: self.name.clone(),
                key,
                optional: Some(false),
            }),
            ..Default::default()
        }
    }

    fn put_pull_config(&mut self, config: String) {
        self.pull = true;
        self.insert(
            DOCKER_CONFIG_JSON_KEY.to_string(),
            ByteString(config.into_bytes()),
        );
    }

    /// Whether `size` more bytes keep the Secret within what the API server takes.
    fn fits(&self, size: usize) -> bool {
        self.size + size <= SECRET_DATA_LIMIT
    }

    fn put_files(&mut self, files: BTreeMap<String, ByteString>) {
        for (key, value) in files {
            self.insert(key, value);
        }
    }

    fn into_secret(self, ctx: &TranslateContext) -> Option<Secret> {
        if self.data.is_empty() {
            return None;
        }
        // A dockerconfigjson Secret must hold `.dockerconfigjson` and may hold other keys.
        let type_ = if self.pull {
            DOCKER_CONFIG_JSON_TYPE
        } else {
            OPAQUE
        };
        Some(Secret {
            metadata: object_meta(self.name, ctx),
            data: Some(self.data),
            type_: Some(type_.to_string()),
            ..Default::default()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Env

/// A piece of an env value as the backend can express it.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A `fieldRef` path of the backend pod.
    Field(&'static str),
}

/// The value's pieces, host addresses replaced by the node IP and adjacent text merged (so a
/// value with only host addresses in it needs no helpers).
fn pieces(value: &Template, node_ip: &str) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let push_text = |out: &mut Vec<Piece>, text: &str| {
        if text.is_empty() {
            return;
        }
        if let Some(Piece::Text(last)) = out.last_mut() {
            last.push_str(text);
        } else {
            out.push(Piece::Text(text.to_string()));
        }
    };
    for segment in value.segments() {
        match segment {
            Segment::Text(t) => push_text(&mut out, t),
            Segment::Field(AddressField::PodIp) => out.push(Piece::Field("status.podIP")),
            Segment::Field(AddressField::PodIps) => out.push(Piece::Field("status.podIPs")),
            // The source pod's host is the virtual node, not the backend's node.
            Segment::Field(AddressField::HostIp | AddressField::HostIps) => {
                push_text(&mut out, node_ip)
            }
        }
    }
    out
}

fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            api_version: Some("v1".to_string()),
            field_path: path.to_string(),
        }),
        ..Default::default()
    }
}

fn from_source(name: String, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name,
        value: None,
        value_from: Some(source),
    }
}

/// A container's backend env: every variable by reference, none inline.
fn container_env(
    resolved: &ResolvedContainer,
    env: &mut PodSecret,
    ctx: &TranslateContext,
) -> Vec<EnvVar> {
    // A helper must not shadow a user variable: the backend would keep the later definition.
    let mut taken: HashSet<String> = resolved.env.iter().map(|e| e.name.clone()).collect();
    let mut out = Vec::with_capacity(resolved.env.len());
    for (i, var) in resolved.env.iter().enumerate() {
        let pieces = pieces(&var.value, &ctx.node_ip);
        match pieces.as_slice() {
            [] => out.push(from_source(var.name.clone(), env.put_env(String::new()))),
            [Piece::Text(t)] => out.push(from_source(var.name.clone(), env.put_env(t.clone()))),
            [Piece::Field(path)] => out.push(from_source(var.name.clone(), field_ref(path))),
            _ => {
                // The backend kubelet expands `$(VAR)` in `value` against earlier variables and
                // does not expand what it substitutes, so helpers defined just before compose
                // the value exactly, text pieces staying in the Secret.
                let mut composed = String::new();
                for (j, piece) in pieces.iter().enumerate() {
                    let mut helper = format!("{HELPER_PREFIX}{i}_{j}");
                    while taken.contains(&helper) {
                        helper.push('_');
                    }
                    taken.insert(helper.clone());
                    let source = match piece {
                        Piece::Text(t) => env.put_env(t.clone()),
                        Piece::Field(path) => field_ref(path),
                    };
                    composed.push_str("$(");
                    composed.push_str(&helper);
                    composed.push(')');
                    out.push(from_source(helper, source));
                }
                out.push(EnvVar {
                    name: var.name.clone(),
                    value: Some(composed),
                    value_from: None,
                });
            }
        }
    }
    out
}

/// The container as the backend runs it: env from the resolution, everything else as declared.
fn backend_container(
    container: &Container,
    resolved: &[ResolvedContainer],
    env: &mut PodSecret,
    ctx: &TranslateContext,
) -> Container {
    let mut out = container.clone();
    // envFrom and the spec's env reference source-cluster objects; their content is in the
    // resolved env. command/args stay as declared: the backend kubelet expands their `$(VAR)`
    // against the same env, while the resolution's expanded copies may hold secret values.
    out.env_from = None;
    // Container names are unique across init and regular containers of a pod.
    out.env = resolved
        .iter()
        .find(|r| r.name == container.name)
        .map(|r| container_env(r, env, ctx))
        .and_then(non_empty_vec);
    out
}

// ---------------------------------------------------------------------------------------------
// Volumes

struct Volumes {
    pod_volumes: Vec<Volume>,
    /// The file volumes' content, to place in the per-pod Secret or one of their own.
    files: Vec<FilesVolume>,
}

/// One file volume's content, keyed as its items name it.
struct FilesVolume {
    /// Its position among the backend pod's volumes (whose secret source gets the Secret's name).
    position: usize,
    /// Its index among the resolved volumes (for a Secret of its own).
    index: usize,
    data: BTreeMap<String, ByteString>,
    size: usize,
}

/// A file's key in the per-pod Secret: the volume's index (several volumes share the Secret and
/// may have the same paths) and a hash of the path (FNV-1a: paths may hold '/', keys may not).
fn file_key(index: usize, path: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("v{index}-{h:016x}")
}

/// Each file as an item of the backend volume: same path and mode, content under its key.
fn items(index: usize, files: &[VolumeFile]) -> Vec<KeyToPath> {
    files
        .iter()
        .map(|f| KeyToPath {
            key: file_key(index, &f.path),
            path: f.path.clone(),
            // The resolver keeps permission bits within 0o777, so the cast is lossless; the mask
            // keeps it so for any input.
            mode: Some((f.mode & 0o777) as i32),
            ..Default::default()
        })
        .collect()
}

/// The kind of a declared volume (`hostPath`, `csi`, ...), for messages: its one source field.
fn volume_kind(volume: &Volume) -> String {
    match serde_json::to_value(volume) {
        Ok(serde_json::Value::Object(fields)) => fields
            .keys()
            .find(|k| k.as_str() != "name")
            .cloned()
            .unwrap_or_else(|| "no source".to_string()),
        _ => "unknown source".to_string(),
    }
}

/// The backend's volumes and their content; problems with volumes the backend cannot receive go
/// to `unsupported`. File volumes are mounted from a Secret whose name the caller fills in.
fn translate_volumes(
    spec: &PodSpec,
    resolved: &[ResolvedVolume],
    ctx: &TranslateContext,
    unsupported: &mut Vec<String>,
) -> Result<Volumes, ProviderError> {
    let mut out = Volumes {
        pod_volumes: Vec::new(),
        files: Vec::new(),
    };
    let mut missing = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        let Some((index, r)) = resolved
            .iter()
            .enumerate()
            .find(|(_, r)| r.name == volume.name)
        else {
            missing.push(format!("{:?}", volume.name));
            continue;
        };
        let mut backend = Volume {
            name: volume.name.clone(),
            ..Default::default()
        };
        match &r.source {
            ResolvedVolumeSource::Files { files, .. } => {
                // Every kind goes to a Secret: ConfigMap content beside Secret keys, tokens and
                // downward-API files (which may carry labels nobody meant to publish) costs
                // nothing, and one object per pod is what the backend's API server can afford.
                // Every item carries its mode, so defaultMode is left unset.
                backend.secret = Some(SecretVolumeSource {
                    secret_name: None,
                    items: Some(items(index, files)),
                    ..Default::default()
                });
                let data: BTreeMap<String, ByteString> = files
                    .iter()
                    .map(|f| (file_key(index, &f.path), ByteString(f.data.to_vec())))
                    .collect();
                out.files.push(FilesVolume {
                    position: out.pod_volumes.len(),
                    index,
                    size: data.values().map(|v| v.0.len()).sum(),
                    data,
                });
            }
            ResolvedVolumeSource::EmptyDir { medium, size_limit } => {
                // The declared source, when there is one, carries fields the resolution does not
                // (e.g. `mode`).
                backend.empty_dir =
                    Some(
                        volume
                            .empty_dir
                            .clone()
                            .unwrap_or_else(|| EmptyDirVolumeSource {
                                medium: medium.clone(),
                                size_limit: size_limit.clone(),
                                ..Default::default()
                            }),
                    );
            }
            ResolvedVolumeSource::Passthrough(declared) => {
                if declared.persistent_volume_claim.is_some() && ctx.pass_through_pvcs {
                    backend = (**declared).clone();
                    backend.name = volume.name.clone();
                } else {
                    unsupported.push(format!(
                        "volume {:?} ({})",
                        volume.name,
                        volume_kind(declared)
                    ));
                    continue;
                }
            }
        }
        out.pod_volumes.push(backend);
    }
    if !missing.is_empty() {
        return Err(ProviderError::InvalidInput(format!(
            "no resolution for volume(s) {}",
            missing.join(", ")
        )));
    }
    Ok(out)
}

fn unsupported_error(problems: &[String]) -> ProviderError {
    let mut message = format!("{} cannot be sent to the backend", problems.join(", "));
    if problems
        .iter()
        .any(|p| p.ends_with("(persistentVolumeClaim)"))
    {
        message.push_str(
            "; set passThroughPVCs: true and create a claim of the same name in the backend namespace",
        );
    }
    ProviderError::NotSupported(message)
}

// ---------------------------------------------------------------------------------------------
// Registry credentials, spec and metadata helpers

/// The `.dockerconfigjson` document with every registry's credentials; `None` without any.
fn pull_config(credentials: &[RegistryCredential]) -> Option<String> {
    if credentials.is_empty() {
        return None;
    }
    let mut auths = serde_json::Map::new();
    for c in credentials {
        // One entry per registry key: the first wins, as the resolver lists the pod's own pull
        // secrets before its service account's.
        if auths.contains_key(&c.registry) {
            continue;
        }
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        let mut entry = serde_json::Map::new();
        entry.insert("username".into(), c.username.clone().into());
        entry.insert("password".into(), c.password.clone().into());
        entry.insert("auth".into(), auth.into());
        if let Some(token) = &c.identity_token {
            entry.insert("identitytoken".into(), token.clone().into());
        }
        auths.insert(c.registry.clone(), serde_json::Value::Object(entry));
    }
    Some(serde_json::json!({ "auths": auths }).to_string())
}

/// Tolerations aimed at the virtual node (its own taints, or "tolerate everything", which the
/// burst policy may inject) are dropped; the rest may matter to the backend's nodes.
fn keep_toleration(t: &Toleration) -> bool {
    let key = t.key.as_deref().unwrap_or("");
    if key.starts_with(VIRTUAL_KUBELET_TAINT_PREFIX) {
        return false;
    }
    !(key.is_empty() && t.operator.as_deref() == Some("Exists"))
}

/// Metadata of a per-pod object: the backend namespace and the identity labels.
fn object_meta(name: String, ctx: &TranslateContext) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(ctx.namespace.clone()),
        labels: non_empty_map(ctx.labels.clone()),
        ..Default::default()
    }
}

fn non_empty_map<V>(m: BTreeMap<String, V>) -> Option<BTreeMap<String, V>> {
    (!m.is_empty()).then_some(m)
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
