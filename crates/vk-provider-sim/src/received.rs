//! What the simulated backend received for each pod, written to `<stateDir>/received/<uid>.json`
//! when `recordResolved` is on, so tests can check env, volume contents and credentials exactly
//! as a real backend would get them. Env is rendered with the addresses the sim assigns.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use vk_provider_api::resolution::{
    FilesKind, PodAddresses, Resolution, ResolvedVolume, ResolvedVolumeSource,
};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    /// container → ordered `[name, value]` pairs
    pub env: BTreeMap<String, Vec<(String, String)>>,
    pub command: BTreeMap<String, Vec<String>>,
    pub args: BTreeMap<String, Vec<String>>,
    pub volumes: BTreeMap<String, VolumeRecord>,
    pub registry_credentials: Vec<CredentialRecord>,
    /// How many times the volumes were refreshed on the running pod.
    pub volume_updates: u32,
    /// container → its `resources` as the backend got them (after the node's sizing profile).
    pub resources: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum VolumeRecord {
    Files {
        kind: String,
        /// path → (mode, content as UTF-8, lossy)
        files: BTreeMap<String, (u32, String)>,
    },
    EmptyDir {
        medium: Option<String>,
        size_limit: Option<String>,
    },
    Passthrough,
}

#[derive(Debug, Serialize)]
pub struct CredentialRecord {
    pub registry: String,
    pub username: String,
    pub password: String,
    pub secret: String,
}

pub fn volume_records(volumes: &[ResolvedVolume]) -> BTreeMap<String, VolumeRecord> {
    volumes
        .iter()
        .map(|v| {
            let rec = match &v.source {
                ResolvedVolumeSource::Files { kind, files } => VolumeRecord::Files {
                    kind: match kind {
                        FilesKind::ConfigMap => "configMap",
                        FilesKind::Secret => "secret",
                        FilesKind::DownwardApi => "downwardAPI",
                        FilesKind::Projected => "projected",
                        FilesKind::ServiceAccountToken => "serviceAccountTokenSecret",
                    }
                    .to_string(),
                    files: files
                        .iter()
                        .map(|f| {
                            (
                                f.path.clone(),
                                (f.mode, String::from_utf8_lossy(&f.data).into_owned()),
                            )
                        })
                        .collect(),
                },
                ResolvedVolumeSource::EmptyDir { medium, size_limit } => VolumeRecord::EmptyDir {
                    medium: medium.clone(),
                    size_limit: size_limit.as_ref().map(|q| q.0.clone()),
                },
                ResolvedVolumeSource::Passthrough(_) => VolumeRecord::Passthrough,
            };
            (v.name.clone(), rec)
        })
        .collect()
}

impl Received {
    pub fn new(resolution: &Resolution, addresses: &PodAddresses) -> Self {
        let mut env = BTreeMap::new();
        let mut command = BTreeMap::new();
        let mut args = BTreeMap::new();
        for c in &resolution.containers {
            env.insert(c.name.clone(), c.render_env(addresses));
            let render = |list: &Option<Vec<vk_provider_api::resolution::Template>>| {
                list.as_ref()
                    .map(|l| l.iter().map(|t| t.render(addresses)).collect::<Vec<_>>())
            };
            if let Some(cmd) = render(&c.command) {
                command.insert(c.name.clone(), cmd);
            }
            if let Some(a) = render(&c.args) {
                args.insert(c.name.clone(), a);
            }
        }
        Self {
            env,
            command,
            args,
            volumes: volume_records(&resolution.volumes),
            registry_credentials: resolution
                .registry_credentials
                .iter()
                .map(|c| CredentialRecord {
                    registry: c.registry.clone(),
                    username: c.username.clone(),
                    password: c.password.clone(),
                    secret: c.secret.clone(),
                })
                .collect(),
            volume_updates: 0,
            resources: BTreeMap::new(),
        }
    }

    /// Record the containers' resources (init containers too) of the pod the backend got.
    pub fn with_resources(mut self, pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        let spec = pod.spec.iter();
        let containers = spec
            .clone()
            .flat_map(|s| s.init_containers.iter().flatten())
            .chain(spec.flat_map(|s| s.containers.iter()));
        for c in containers {
            let r =
                serde_json::to_value(c.resources.clone().unwrap_or_default()).unwrap_or_default();
            self.resources.insert(c.name.clone(), r);
        }
        self
    }

    /// Write atomically (tests read while the sim writes).
    pub fn write(&self, dir: &Path, uid: &str) -> std::io::Result<()> {
        let dir = dir.join("received");
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{uid}.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, dir.join(format!("{uid}.json")))
    }
}
