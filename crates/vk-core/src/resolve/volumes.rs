//! Volume contents, as the kubelet's volume plugins would write them: configMap, secret,
//! downwardAPI and projected volumes become files; emptyDir stays a description; volume types
//! the core cannot resolve pass through for the backend to accept or reject.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::ResolveError;
use super::env::missing_object;
use super::fields::{FieldUse, NodeAllocatable, field_value, resource_value};
use super::refs::{Fetched, ObjectRef};
use super::types::{FilesKind, ResolvedVolume, ResolvedVolumeSource, VolumeFile};

/// The API server's default for `defaultMode` on every file-backed volume type.
pub const DEFAULT_MODE: u32 = 0o644;
/// The API server's default for a projected token's `expirationSeconds`.
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
const SERVICE_ACCOUNT_TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";

/// A projected service-account token a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenSpec {
    /// Empty means the API server's own audiences.
    pub audience: String,
    pub expiration_seconds: i64,
}

/// Every token the pod's projected volumes ask for.
pub fn token_specs(pod: &Pod) -> Vec<TokenSpec> {
    let mut out: Vec<TokenSpec> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| v.projected.iter())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|src| src.service_account_token.as_ref())
        .map(|t| TokenSpec {
            audience: t.audience.clone().unwrap_or_default(),
            expiration_seconds: t
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Inputs shared by every volume of a pod.
pub struct VolumeInputs<'a> {
    pub pod: &'a Pod,
    pub fetched: &'a Fetched,
    pub tokens: &'a HashMap<TokenSpec, Arc<str>>,
    pub allocatable: &'a NodeAllocatable,
}

pub fn resolve_volumes(inputs: &VolumeInputs<'_>) -> Result<Vec<ResolvedVolume>, ResolveError> {
    let volumes = inputs
        .pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten());
    volumes.map(|v| resolve_volume(inputs, v)).collect()
}

fn resolve_volume(inputs: &VolumeInputs<'_>, v: &Volume) -> Result<ResolvedVolume, ResolveError> {
    let name = v.name.as_str();
    let source = if let Some(cm) = &v.config_map {
        let mut files = Files::new(name, mode_bits(cm.default_mode, name)?);
        files.config_map(
            inputs.fetched.config_map(&cm.name),
            &cm.name,
            cm.items.as_deref(),
            cm.optional == Some(true),
        )?;
        files.finish(FilesKind::ConfigMap)
    } else if let Some(s) = &v.secret {
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let secret = inputs.fetched.secret(&secret_name);
        let kind = match secret.and_then(|s| s.type_.as_deref()) {
            Some(SERVICE_ACCOUNT_TOKEN_SECRET_TYPE) => FilesKind::ServiceAccountToken,
            _ => FilesKind::Secret,
        };
        let mut files = Files::new(name, mode_bits(s.default_mode, name)?);
        files.secret(
            secret,
            &secret_name,
            s.items.as_deref(),
            s.optional == Some(true),
        )?;
        files.finish(kind)
    } else if let Some(d) = &v.downward_api {
        let mut files = Files::new(name, mode_bits(d.default_mode, name)?);
        files.downward_api(inputs, d.items.as_deref())?;
        files.finish(FilesKind::DownwardApi)
    } else if let Some(p) = &v.projected {
        let mut files = Files::new(name, mode_bits(p.default_mode, name)?);
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                files.config_map(
                    inputs.fetched.config_map(&cm.name),
                    &cm.name,
                    cm.items.as_deref(),
                    cm.optional == Some(true),
                )?;
            }
            if let Some(s) = &src.secret {
                files.secret(
                    inputs.fetched.secret(&s.name),
                    &s.name,
                    s.items.as_deref(),
                    s.optional == Some(true),
                )?;
            }
            if let Some(d) = &src.downward_api {
                files.downward_api(inputs, d.items.as_deref())?;
            }
            if let Some(t) = &src.service_account_token {
                let spec = TokenSpec {
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t
                        .expiration_seconds
                        .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
                };
                let token = inputs.tokens.get(&spec).ok_or_else(|| {
                    ResolveError::Invalid(format!(
                        "volume {name:?}: no service-account token was minted for {spec:?}"
                    ))
                })?;
                let mode = files.default_mode;
                files.put(&t.path, token.as_bytes().to_vec(), mode, true)?;
            }
        }
        files.finish(FilesKind::Projected)
    } else if let Some(e) = &v.empty_dir {
        ResolvedVolumeSource::EmptyDir {
            medium: e.medium.clone().filter(|m| !m.is_empty()),
            size_limit: e.size_limit.clone(),
        }
    } else {
        ResolvedVolumeSource::Passthrough(Box::new(v.clone()))
    };
    Ok(ResolvedVolume {
        name: name.to_string(),
        source,
    })
}

fn mode_bits(mode: Option<i32>, volume: &str) -> Result<u32, ResolveError> {
    match mode {
        None => Ok(DEFAULT_MODE),
        Some(m) if (0..=0o777).contains(&m) => Ok(m.unsigned_abs()),
        Some(m) => Err(ResolveError::Invalid(format!(
            "volume {volume:?}: mode {m:#o} is outside 0..=0777"
        ))),
    }
}

/// Files of one volume, in order; a later file at the same path replaces the earlier one.
struct Files<'v> {
    volume: &'v str,
    default_mode: u32,
    files: Vec<VolumeFile>,
}

impl<'v> Files<'v> {
    fn new(volume: &'v str, default_mode: u32) -> Self {
        Self {
            volume,
            default_mode,
            files: Vec::new(),
        }
    }

    fn put(
        &mut self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        sensitive: bool,
    ) -> Result<(), ResolveError> {
        let path = clean_path(path).ok_or_else(|| {
            ResolveError::Invalid(format!(
                "volume {:?}: path {path:?} must be relative and must not contain '..'",
                self.volume
            ))
        })?;
        self.files.retain(|f| f.path != path);
        self.files.push(VolumeFile {
            path,
            mode,
            data: Arc::from(data),
            sensitive,
        });
        Ok(())
    }

    fn item_mode(&self, item: &KeyToPath) -> Result<u32, ResolveError> {
        match item.mode {
            None => Ok(self.default_mode),
            m => mode_bits(m, self.volume),
        }
    }

    fn config_map(
        &mut self,
        cm: Option<&ConfigMap>,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: bool,
    ) -> Result<(), ResolveError> {
        let Some(cm) = cm else {
            if optional {
                return Ok(());
            }
            return Err(missing_object(
                ObjectRef::config_map(name),
                Some(self.volume),
            ));
        };
        let get = |key: &str| -> Option<Vec<u8>> {
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.as_bytes().to_vec())
                .or_else(|| {
                    cm.binary_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|v| v.0.clone())
                })
        };
        match items {
            Some(items) if !items.is_empty() => {
                for item in items {
                    match get(&item.key) {
                        Some(data) => {
                            let mode = self.item_mode(item)?;
                            self.put(&item.path, data, mode, false)?;
                        }
                        None if optional => {}
                        None => {
                            return Err(ResolveError::Missing {
                                object: ObjectRef::config_map(name),
                                message: format!(
                                    "MountVolume.SetUp failed for volume {:?} : configmap references non-existent config key: {}",
                                    self.volume, item.key
                                ),
                                volume: Some(self.volume.to_string()),
                            });
                        }
                    }
                }
            }
            _ => {
                let mode = self.default_mode;
                for (k, v) in cm.data.iter().flatten() {
                    self.put(k, v.as_bytes().to_vec(), mode, false)?;
                }
                for (k, v) in cm.binary_data.iter().flatten() {
                    self.put(k, v.0.clone(), mode, false)?;
                }
            }
        }
        Ok(())
    }

    fn secret(
        &mut self,
        secret: Option<&Secret>,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: bool,
    ) -> Result<(), ResolveError> {
        let Some(secret) = secret else {
            if optional {
                return Ok(());
            }
            return Err(missing_object(ObjectRef::secret(name), Some(self.volume)));
        };
        let empty = Default::default();
        let data: &std::collections::BTreeMap<String, ByteString> =
            secret.data.as_ref().unwrap_or(&empty);
        match items {
            Some(items) if !items.is_empty() => {
                for item in items {
                    match data.get(&item.key) {
                        Some(v) => {
                            let mode = self.item_mode(item)?;
                            self.put(&item.path, v.0.clone(), mode, true)?;
                        }
                        None if optional => {}
                        None => {
                            return Err(ResolveError::Missing {
                                object: ObjectRef::secret(name),
                                message: format!(
                                    "MountVolume.SetUp failed for volume {:?} : references non-existent secret key: {}",
                                    self.volume, item.key
                                ),
                                volume: Some(self.volume.to_string()),
                            });
                        }
                    }
                }
            }
            _ => {
                let mode = self.default_mode;
                for (k, v) in data {
                    self.put(k, v.0.clone(), mode, true)?;
                }
            }
        }
        Ok(())
    }

    fn downward_api(
        &mut self,
        inputs: &VolumeInputs<'_>,
        items: Option<&[DownwardAPIVolumeFile]>,
    ) -> Result<(), ResolveError> {
        for item in items.unwrap_or_default() {
            let invalid = |e: super::fields::FieldError| {
                ResolveError::Invalid(format!(
                    "volume {:?}, file {:?}: {e}",
                    self.volume, item.path
                ))
            };
            let value = if let Some(sel) = &item.field_ref {
                field_value(inputs.pod, sel, FieldUse::Volume)
                    .map_err(invalid)?
                    .as_text()
                    .unwrap_or_default()
            } else if let Some(sel) = &item.resource_field_ref {
                resource_value(inputs.pod, None, sel, inputs.allocatable).map_err(invalid)?
            } else {
                continue;
            };
            let mode = match item.mode {
                None => self.default_mode,
                m => mode_bits(m, self.volume)?,
            };
            self.put(&item.path, value.into_bytes(), mode, false)?;
        }
        Ok(())
    }

    fn finish(self, kind: FilesKind) -> ResolvedVolumeSource {
        ResolvedVolumeSource::Files {
            kind,
            files: self.files,
        }
    }
}

/// `a/./b//c` → `a/b/c`; `None` for absolute paths, `..` components and empty paths.
fn clean_path(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIProjection, DownwardAPIVolumeSource,
        EmptyDirVolumeSource, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec,
        ProjectedVolumeSource, ResourceFieldSelector, SecretVolumeSource,
        ServiceAccountTokenProjection, VolumeProjection,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str, data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn secret(name: &str, type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            type_: type_.map(Into::into),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
            ..Default::default()
        }
    }

    fn pod_with(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "main".into(),
                    ..Default::default()
                }],
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn vol(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Default::default()
        }
    }

    fn resolve(pod: &Pod, fetched: &Fetched) -> Result<Vec<ResolvedVolume>, ResolveError> {
        let tokens = HashMap::from([(
            TokenSpec {
                audience: "vault".into(),
                expiration_seconds: 600,
            },
            Arc::<str>::from("jwt-token"),
        )]);
        let alloc = NodeAllocatable::from([("memory".into(), Quantity("8Gi".into()))]);
        resolve_volumes(&VolumeInputs {
            pod,
            fetched,
            tokens: &tokens,
            allocatable: &alloc,
        })
    }

    /// (path, mode, content) of each file of the only volume.
    fn files(r: Result<Vec<ResolvedVolume>, ResolveError>) -> Vec<(String, u32, String)> {
        match r {
            Ok(v) => match &v[0].source {
                ResolvedVolumeSource::Files { files, .. } => files
                    .iter()
                    .map(|f| {
                        (
                            f.path.clone(),
                            f.mode,
                            String::from_utf8_lossy(&f.data).into_owned(),
                        )
                    })
                    .collect(),
                other => vec![("NOT FILES".into(), 0, format!("{other:?}"))],
            },
            Err(e) => vec![("ERROR".into(), 0, e.to_string())],
        }
    }

    fn f(path: &str, mode: u32, content: &str) -> (String, u32, String) {
        (path.into(), mode, content.into())
    }

    fn cm_volume(
        items: Option<Vec<KeyToPath>>,
        default_mode: Option<i32>,
        optional: bool,
    ) -> Volume {
        Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "cfg".into(),
                items,
                default_mode,
                optional: Some(optional),
                ..Default::default()
            }),
            ..vol("v")
        }
    }

    #[test]
    fn config_map_volume_all_keys_with_default_mode() {
        let fetched = Fetched::default().with_config_map(cm(
            "cfg",
            &[("a.conf", "A"), ("b.conf", "B")],
            &[("blob", b"\x00\x01")],
        ));
        let got = files(resolve(
            &pod_with(vec![cm_volume(None, None, false)]),
            &fetched,
        ));
        assert_eq!(
            got,
            [
                f("a.conf", 0o644, "A"),
                f("b.conf", 0o644, "B"),
                f("blob", 0o644, "\u{0}\u{1}")
            ]
        );
        let got = files(resolve(
            &pod_with(vec![cm_volume(None, Some(0o400), false)]),
            &fetched,
        ));
        assert!(got.iter().all(|(_, m, _)| *m == 0o400));
    }

    #[test]
    fn config_map_items_map_keys_to_paths_and_modes() {
        let fetched = Fetched::default().with_config_map(cm("cfg", &[("a", "A"), ("b", "B")], &[]));
        let v = cm_volume(
            Some(vec![
                item("a", "conf/./first", Some(0o600)),
                item("b", "second", None),
            ]),
            Some(0o440),
            false,
        );
        assert_eq!(
            files(resolve(&pod_with(vec![v]), &fetched)),
            [f("conf/first", 0o600, "A"), f("second", 0o440, "B")]
        );
    }

    #[test]
    fn missing_config_map_or_key() {
        let none = Fetched::default();
        assert_eq!(
            files(resolve(
                &pod_with(vec![cm_volume(None, None, false)]),
                &none
            )),
            [f(
                "ERROR",
                0,
                "MountVolume.SetUp failed for volume \"v\" : configmap \"cfg\" not found"
            )]
        );
        // Optional and missing: an empty volume.
        assert_eq!(
            files(resolve(&pod_with(vec![cm_volume(None, None, true)]), &none)),
            []
        );
        let fetched = Fetched::default().with_config_map(cm("cfg", &[("a", "A")], &[]));
        let v = cm_volume(Some(vec![item("zz", "zz", None)]), None, false);
        assert_eq!(
            files(resolve(&pod_with(vec![v]), &fetched)),
            [f(
                "ERROR",
                0,
                "MountVolume.SetUp failed for volume \"v\" : configmap references non-existent config key: zz"
            )]
        );
        let v = cm_volume(
            Some(vec![item("zz", "zz", None), item("a", "a", None)]),
            None,
            true,
        );
        assert_eq!(
            files(resolve(&pod_with(vec![v]), &fetched)),
            [f("a", 0o644, "A")]
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let fetched = Fetched::default().with_config_map(cm("cfg", &[("a", "A")], &[]));
        for bad in ["../etc/passwd", "/abs", "a/../../b", ""] {
            let v = cm_volume(Some(vec![item("a", bad, None)]), None, false);
            let r = resolve(&pod_with(vec![v]), &fetched);
            assert!(matches!(r, Err(ResolveError::Invalid(_))), "{bad:?}: {r:?}");
        }
        let v = cm_volume(None, Some(0o1777), false);
        assert!(matches!(
            resolve(&pod_with(vec![v]), &fetched),
            Err(ResolveError::Invalid(_))
        ));
    }

    #[test]
    fn secret_volume_is_sensitive_and_recognises_legacy_tokens() {
        let fetched = Fetched::default()
            .with_secret(secret("creds", None, &[("user", "admin"), ("pw", "x")]))
            .with_secret(secret(
                "default-token-abcde",
                Some(SERVICE_ACCOUNT_TOKEN_SECRET_TYPE),
                &[
                    ("token", "legacy-jwt"),
                    ("ca.crt", "PEM"),
                    ("namespace", "ns"),
                ],
            ));
        let sv = |name: &str, items: Option<Vec<KeyToPath>>| Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.into()),
                items,
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..vol(name)
        };
        let pod = pod_with(vec![
            sv("creds", Some(vec![item("pw", "password", None)])),
            sv("default-token-abcde", None),
        ]);
        let r = resolve(&pod, &fetched);
        let Ok(vols) = r else {
            panic!("{r:?}");
        };
        match &vols[0].source {
            ResolvedVolumeSource::Files { kind, files } => {
                assert_eq!(*kind, FilesKind::Secret);
                assert_eq!(files.len(), 1);
                assert!(files[0].sensitive);
                assert_eq!(files[0].path, "password");
                assert_eq!(files[0].mode, 0o400);
            }
            other => panic!("{other:?}"),
        }
        match &vols[1].source {
            ResolvedVolumeSource::Files { kind, files } => {
                assert_eq!(*kind, FilesKind::ServiceAccountToken);
                let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
                assert_eq!(paths, ["ca.crt", "namespace", "token"]);
            }
            other => panic!("{other:?}"),
        }
        let missing = pod_with(vec![sv("nope", Some(vec![item("k", "k", None)]))]);
        assert_eq!(
            files(resolve(&missing, &fetched)),
            [f(
                "ERROR",
                0,
                "MountVolume.SetUp failed for volume \"nope\" : secret \"nope\" not found"
            )]
        );
        let missing_key = pod_with(vec![sv("creds", Some(vec![item("k", "k", None)]))]);
        assert_eq!(
            files(resolve(&missing_key, &fetched)),
            [f(
                "ERROR",
                0,
                "MountVolume.SetUp failed for volume \"creds\" : references non-existent secret key: k"
            )]
        );
    }

    fn field_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn downward_api_volume_files() {
        let v = Volume {
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    field_file("name", "metadata.name"),
                    field_file("labels", "metadata.labels"),
                    DownwardAPIVolumeFile {
                        path: "mem".into(),
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: Some("main".into()),
                            resource: "limits.memory".into(),
                            divisor: Some(Quantity("1Mi".into())),
                        }),
                        mode: Some(0o600),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..vol("info")
        };
        assert_eq!(
            files(resolve(&pod_with(vec![v]), &Fetched::default())),
            [
                f("name", 0o644, "p"),
                f("labels", 0o644, "app=\"web\""),
                f("mem", 0o600, "8192"),
            ]
        );
    }

    #[test]
    fn projected_volume_combines_sources_like_kube_api_access() {
        let fetched =
            Fetched::default().with_config_map(cm("kube-root-ca.crt", &[("ca.crt", "PEM")], &[]));
        let v = Volume {
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o444),
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some("vault".into()),
                            expiration_seconds: Some(600),
                            path: "token".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![item("ca.crt", "ca.crt", None)]),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardAPIProjection {
                            items: Some(vec![field_file("namespace", "metadata.namespace")]),
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..vol("kube-api-access-x")
        };
        let pod = pod_with(vec![v]);
        assert_eq!(
            token_specs(&pod),
            [TokenSpec {
                audience: "vault".into(),
                expiration_seconds: 600
            }]
        );
        assert_eq!(
            files(resolve(&pod, &fetched)),
            [
                f("token", 0o444, "jwt-token"),
                f("ca.crt", 0o444, "PEM"),
                f("namespace", 0o444, "ns"),
            ]
        );
        let token_sensitive = resolve(&pod, &fetched)
            .ok()
            .and_then(|v| match &v[0].source {
                ResolvedVolumeSource::Files { files, .. } => Some(files[0].sensitive),
                _ => None,
            });
        assert_eq!(token_sensitive, Some(true));
    }

    #[test]
    fn empty_dir_and_passthrough() {
        let pod = pod_with(vec![
            Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("64Mi".into())),
                    ..Default::default()
                }),
                ..vol("scratch")
            },
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "data".into(),
                    read_only: None,
                }),
                ..vol("data")
            },
        ]);
        let r = resolve(&pod, &Fetched::default());
        let Ok(v) = r else { panic!("{r:?}") };
        assert_eq!(
            v[0].source,
            ResolvedVolumeSource::EmptyDir {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("64Mi".into()))
            }
        );
        assert!(
            matches!(&v[1].source, ResolvedVolumeSource::Passthrough(p) if p.persistent_volume_claim.is_some())
        );
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path("a/b").as_deref(), Some("a/b"));
        assert_eq!(clean_path("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(clean_path("..data"), Some("..data".into()));
        assert_eq!(clean_path("a/.."), None);
        assert_eq!(clean_path("/a"), None);
        assert_eq!(clean_path("."), None);
    }
}
