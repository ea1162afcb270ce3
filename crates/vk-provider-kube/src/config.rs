//! The kube provider's settings (YAML or JSON, the node's `providerConfig`) and how they become a
//! client configuration for the backend API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid kube provider config: {0}")]
    Invalid(String),
    #[error("kube provider: reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kube provider: backend kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
}

/// Where the backend's namespace comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceMapping {
    /// Every source namespace's pods in one managed namespace (`cce-burst-<cluster-id>`).
    #[default]
    Managed,
    /// A backend namespace of the source namespace's name (as tensile-kube and Liqo can).
    SameName,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeConfig {
    /// A kubeconfig file for the backend (its current context, or `context`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    /// Or: the backend API's URL with a bearer token file (re-read as it rotates) and a CA.
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client rate limit towards the backend (0 = unlimited).
    #[serde(default = "default_qps")]
    pub qps: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// The managed namespace's name; default `cce-burst-<cluster-id>`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The source cluster's id; default: the UID of its `kube-system` namespace.
    #[serde(default, rename = "clusterID", alias = "clusterId")]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub namespace_mapping: NamespaceMapping,
    /// Send PersistentVolumeClaim volumes as they are (a claim of the same name must exist in
    /// the backend namespace); otherwise such pods are refused.
    #[serde(default, rename = "passThroughPVCs")]
    pub pass_through_pvcs: bool,
    /// Scheduling on the backend: a nodeSelector and tolerations every backend pod gets (the
    /// source pod's own, aimed at the virtual node, are dropped).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// The node's capacity when the backend namespace has no ResourceQuota.
    #[serde(default = "default_capacity")]
    pub capacity: BTreeMap<String, String>,
}

fn default_qps() -> f64 {
    200.0
}

fn default_burst() -> u32 {
    400
}

fn default_capacity() -> BTreeMap<String, String> {
    [
        ("cpu".to_string(), "1000".to_string()),
        ("memory".to_string(), "4Ti".to_string()),
        ("pods".to_string(), "1000".to_string()),
    ]
    .into()
}

/// How long a backend call may take before it counts as failed (and is retried).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl KubeConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: KubeConfig = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.kubeconfig, &self.server) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set kubeconfig or server (+ tokenFile, caFile), not both".into(),
                ));
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "say how to reach the backend: kubeconfig, or server with tokenFile and caFile"
                        .into(),
                ));
            }
            (None, Some(server)) => {
                if !server.starts_with("https://") {
                    return Err(ConfigError::Invalid(format!(
                        "server {server:?}: the backend API must be https"
                    )));
                }
                if self.token_file.is_none() {
                    return Err(ConfigError::Invalid("server needs tokenFile".into()));
                }
            }
            (Some(_), None) => {
                if self.token_file.is_some() || self.ca_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "tokenFile and caFile go with server, not with kubeconfig".into(),
                    ));
                }
            }
        }
        if let Some(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            return Err(ConfigError::Invalid(format!(
                "namespace {ns:?} is not a DNS label (a-z, 0-9, '-', at most 63)"
            )));
        }
        if self.qps < 0.0 || !self.qps.is_finite() {
            return Err(ConfigError::Invalid("qps must be ≥ 0".into()));
        }
        Ok(())
    }

    /// The client configuration for the backend API.
    pub async fn client_config(&self) -> Result<kube::Config, ConfigError> {
        use kube::config::{
            AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
            NamedContext,
        };
        let (kc, path) = match (&self.kubeconfig, &self.server) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| ConfigError::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                (kc, path.clone())
            }
            (None, Some(server)) => {
                let kc = Kubeconfig {
                    clusters: vec![NamedCluster {
                        name: "backend".into(),
                        cluster: Some(Cluster {
                            server: Some(server.clone()),
                            certificate_authority: self
                                .ca_file
                                .as_ref()
                                .map(|p| p.to_string_lossy().into_owned()),
                            ..Default::default()
                        }),
                        other: Default::default(),
                    }],
                    auth_infos: vec![NamedAuthInfo {
                        name: "backend".into(),
                        // kube re-reads a token file at least once a minute: rotating IAM and
                        // ServiceAccount tokens keep working.
                        auth_info: Some(AuthInfo {
                            token_file: self
                                .token_file
                                .as_ref()
                                .map(|p| p.to_string_lossy().into_owned()),
                            ..Default::default()
                        }),
                        other: Default::default(),
                    }],
                    contexts: vec![NamedContext {
                        name: "backend".into(),
                        context: Some(Context {
                            cluster: "backend".into(),
                            user: Some("backend".into()),
                            ..Default::default()
                        }),
                        other: Default::default(),
                    }],
                    current_context: Some("backend".into()),
                    ..Default::default()
                };
                (kc, PathBuf::from(server))
            }
            (None, None) => return Err(ConfigError::Invalid("no backend".into())),
        };
        let opts = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| ConfigError::Kubeconfig {
                path,
                message: e.to_string(),
            })?;
        config.connect_timeout = Some(Duration::from_secs(10));
        Ok(config)
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_connection_forms() {
        let c = KubeConfig::parse("kubeconfig: /etc/backend.kubeconfig\nclusterID: abc\n").unwrap();
        assert_eq!(
            c.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/backend.kubeconfig"))
        );
        assert_eq!(c.cluster_id.as_deref(), Some("abc"));
        assert_eq!(c.namespace_mapping, NamespaceMapping::Managed);
        assert_eq!(c.capacity["pods"], "1000");
        let c = KubeConfig::parse(
            r#"{"server": "https://cci.example:443", "tokenFile": "/var/run/token", "caFile": "/ca.pem", "namespaceMapping": "sameName", "passThroughPVCs": true}"#,
        )
        .unwrap();
        assert_eq!(c.namespace_mapping, NamespaceMapping::SameName);
        assert!(c.pass_through_pvcs);
    }

    #[test]
    fn refuses_what_cannot_work() {
        for bad in [
            "{}",
            "kubeconfig: /k\nserver: https://x\ntokenFile: /t\n",
            "server: http://plain\ntokenFile: /t\n",
            "server: https://x\n",
            "kubeconfig: /k\ntokenFile: /t\n",
            "kubeconfig: /k\nnamespace: Not_A_Label\n",
            "kubeconfig: /k\nbogus: 1\n",
        ] {
            assert!(KubeConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn server_and_token_file_make_a_client_config() {
        let dir = std::env::temp_dir().join(format!("vk-kube-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "abc").unwrap();
        let c = KubeConfig::parse(&format!(
            "server: https://127.0.0.1:6443\ntokenFile: {}\n",
            token.display()
        ))
        .unwrap();
        let cfg = c.client_config().await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://127.0.0.1:6443/");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
