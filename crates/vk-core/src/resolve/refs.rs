//! What a pod references in its own namespace (ConfigMaps, Secrets, tokens to mint), and the
//! fetched objects the pure resolution steps read from.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

impl RefKind {
    /// As the kubelet names it in messages (`configmap "x" not found`).
    pub fn noun(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }

    /// As a Kubernetes kind (`couldn't find key k in ConfigMap ns/x`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

/// A ConfigMap or Secret in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: RefKind,
    pub name: String,
}

impl ObjectRef {
    pub fn config_map(name: impl Into<String>) -> Self {
        Self {
            kind: RefKind::ConfigMap,
            name: name.into(),
        }
    }

    pub fn secret(name: impl Into<String>) -> Self {
        Self {
            kind: RefKind::Secret,
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind.noun(), self.name)
    }
}

/// Every ConfigMap and Secret the pod's env, volumes and image pull secrets name.
pub fn references(pod: &Pod) -> BTreeSet<ObjectRef> {
    let mut refs = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return refs;
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                refs.insert(ObjectRef::config_map(&r.name));
            }
            if let Some(r) = &from.secret_ref {
                refs.insert(ObjectRef::secret(&r.name));
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                refs.insert(ObjectRef::config_map(&r.name));
            }
            if let Some(r) = &from.secret_key_ref {
                refs.insert(ObjectRef::secret(&r.name));
            }
        }
    }
    refs.extend(volume_references(pod));
    for s in spec.image_pull_secrets.iter().flatten() {
        refs.insert(ObjectRef::secret(&s.name));
    }
    refs
}

/// The ConfigMaps and Secrets behind the pod's volumes: what a change must be propagated from.
pub fn volume_references(pod: &Pod) -> BTreeSet<ObjectRef> {
    let mut refs = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return refs;
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            refs.insert(ObjectRef::config_map(&cm.name));
        }
        if let Some(s) = &v.secret
            && let Some(name) = &s.secret_name
        {
            refs.insert(ObjectRef::secret(name));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                refs.insert(ObjectRef::config_map(&cm.name));
            }
            if let Some(s) = &src.secret {
                refs.insert(ObjectRef::secret(&s.name));
            }
        }
    }
    refs
}

/// Objects fetched for one resolution; `None` means "does not exist".
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub config_maps: HashMap<String, Option<Arc<ConfigMap>>>,
    pub secrets: HashMap<String, Option<Arc<Secret>>>,
}

impl Fetched {
    pub fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps.get(name).and_then(|o| o.as_deref())
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name).and_then(|o| o.as_deref())
    }

    pub fn with_config_map(mut self, cm: ConfigMap) -> Self {
        let name = cm.metadata.name.clone().unwrap_or_default();
        self.config_maps.insert(name, Some(Arc::new(cm)));
        self
    }

    pub fn with_secret(mut self, s: Secret) -> Self {
        let name = s.metadata.name.clone().unwrap_or_default();
        self.secrets.insert(name, Some(Arc::new(s)));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, ConfigMapVolumeSource,
        Container, EnvFromSource, EnvVar, EnvVarSource, LocalObjectReference, PodSpec,
        ProjectedVolumeSource, SecretKeySelector, SecretProjection, SecretVolumeSource, Volume,
        VolumeProjection,
    };

    #[test]
    fn collects_every_reference_once() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    env_from: Some(vec![EnvFromSource {
                        config_map_ref: Some(ConfigMapEnvSource {
                            name: "cm-a".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }]),
                    env: Some(vec![
                        EnvVar {
                            name: "X".into(),
                            value_from: Some(EnvVarSource {
                                config_map_key_ref: Some(ConfigMapKeySelector {
                                    name: "cm-a".into(),
                                    key: "k".into(),
                                    optional: None,
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        EnvVar {
                            name: "Y".into(),
                            value_from: Some(EnvVarSource {
                                secret_key_ref: Some(SecretKeySelector {
                                    name: "s-a".into(),
                                    key: "k".into(),
                                    optional: None,
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "v1".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "cm-b".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "v2".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some("s-b".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "v3".into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![
                                VolumeProjection {
                                    config_map: Some(ConfigMapProjection {
                                        name: "cm-c".into(),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                },
                                VolumeProjection {
                                    secret: Some(SecretProjection {
                                        name: "s-c".into(),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                },
                            ]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                image_pull_secrets: Some(vec![LocalObjectReference {
                    name: "pull".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let all: Vec<String> = references(&pod).iter().map(|r| r.to_string()).collect();
        assert_eq!(
            all,
            [
                "configmap \"cm-a\"",
                "configmap \"cm-b\"",
                "configmap \"cm-c\"",
                "secret \"pull\"",
                "secret \"s-a\"",
                "secret \"s-b\"",
                "secret \"s-c\"",
            ]
        );
        let vols: Vec<String> = volume_references(&pod)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(vols, ["cm-b", "cm-c", "s-b", "s-c"]);
    }
}
