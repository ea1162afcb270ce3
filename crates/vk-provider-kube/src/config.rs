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
    #[error(
        "kube provider: backend kubeconfig in Secret {namespace}/{name} (key {key:?}): {message}"
    )]
    KubeconfigSecret {
        namespace: String,
        name: String,
        key: String,
        message: String,
    },
}

/// A Secret of the source cluster holding the backend's kubeconfig.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub namespace: String,
    pub name: String,
    /// The data key holding the kubeconfig.
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
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
    /// Or: the backend's kubeconfig in a Secret of the source cluster, read at start (so it
    /// must carry its certificates and token inline, not as file paths).
    #[serde(default)]
    pub kubeconfig_secret: Option<SecretKeyRef>,
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
    /// How long a backend pod may stay Unschedulable for lack of room before the virtual node
    /// declares itself sold out (`30s`, `2m`, ...).
    #[serde(default = "default_sold_out_after", deserialize_with = "de_duration")]
    pub sold_out_after: Duration,
    /// When set: a source pod whose backend pod stays Unschedulable for lack of room this long
    /// is deleted if a controller owns it, so the controller re-creates it where there is room.
    /// Bare pods are never deleted. Off by default.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub evict_unschedulable_after: Option<Duration>,
}

fn default_sold_out_after() -> Duration {
    Duration::from_secs(30)
}

/// A duration written as a number and a unit: `500ms`, `30s`, `1.5m`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let unit_at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let bad = || format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h");
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| bad())
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
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
        let ways = [
            self.kubeconfig.is_some(),
            self.kubeconfig_secret.is_some(),
            self.server.is_some(),
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => {
                return Err(ConfigError::Invalid(
                    "say how to reach the backend: kubeconfig, kubeconfigSecret, or server with \
                     tokenFile and caFile"
                        .into(),
                ));
            }
            1 => {}
            _ => {
                return Err(ConfigError::Invalid(
                    "set one of kubeconfig, kubeconfigSecret or server (+ tokenFile, caFile)"
                        .into(),
                ));
            }
        }
        if let Some(r) = &self.kubeconfig_secret
            && (!is_dns_label(&r.namespace) || r.name.is_empty() || r.key.is_empty())
        {
            return Err(ConfigError::Invalid(format!(
                "kubeconfigSecret needs a namespace, a name and a key: {r:?}"
            )));
        }
        if self.evict_unschedulable_after.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::Invalid(
                "evictUnschedulableAfter must be longer than 0 (leave it out to never evict)"
                    .into(),
            ));
        }
        match (&self.kubeconfig, &self.server) {
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
            _ => {
                if self.token_file.is_some() || self.ca_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "tokenFile and caFile go with server, not with a kubeconfig".into(),
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

    /// The client configuration for the backend API. `source` (the source cluster) is read
    /// only for `kubeconfigSecret`.
    pub async fn client_config(
        &self,
        source: Option<&kube::Client>,
    ) -> Result<kube::Config, ConfigError> {
        use kube::config::{
            AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
            NamedContext,
        };
        let (kc, path) = match (&self.kubeconfig, &self.server) {
            (None, None) if self.kubeconfig_secret.is_some() => {
                let r = self
                    .kubeconfig_secret
                    .as_ref()
                    .ok_or_else(|| ConfigError::Invalid("no backend".into()))?;
                let text = read_kubeconfig_secret(r, source).await?;
                let kc = Kubeconfig::from_yaml(&text).map_err(|e| secret_error(r, e))?;
                (
                    kc,
                    PathBuf::from(format!("secret:{}/{}", r.namespace, r.name)),
                )
            }
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

fn secret_error(r: &SecretKeyRef, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::KubeconfigSecret {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        key: r.key.clone(),
        message: message.to_string(),
    }
}

/// The kubeconfig text under `r.key` of a Secret in the source cluster.
async fn read_kubeconfig_secret(
    r: &SecretKeyRef,
    source: Option<&kube::Client>,
) -> Result<String, ConfigError> {
    let Some(client) = source else {
        return Err(secret_error(r, "no source cluster to read it from"));
    };
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &r.namespace);
    let secret = tokio::time::timeout(CALL_TIMEOUT, api.get(&r.name))
        .await
        .map_err(|_| secret_error(r, "the source API gave no answer"))?
        .map_err(|e| secret_error(r, e))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| secret_error(r, "the Secret has no such key"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| secret_error(r, "the value is not UTF-8 text"))
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
            "kubeconfig: /k\nkubeconfigSecret: {namespace: a, name: b}\n",
            "kubeconfigSecret: {namespace: a, name: b}\ntokenFile: /t\n",
            "kubeconfigSecret: {name: b}\n",
            "kubeconfigSecret: {namespace: a, name: \"\"}\n",
            "kubeconfig: /k\nevictUnschedulableAfter: 0s\n",
            "kubeconfig: /k\nevictUnschedulableAfter: soon\n",
            "kubeconfig: /k\nsoldOutAfter: 30\n",
        ] {
            assert!(KubeConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubeconfig_secret_and_durations() {
        let c = KubeConfig::parse(
            "kubeconfigSecret: {namespace: vkubelet, name: backend}\nevictUnschedulableAfter: 2m\nsoldOutAfter: 1.5s\n",
        )
        .unwrap();
        assert_eq!(
            c.kubeconfig_secret,
            Some(SecretKeyRef {
                namespace: "vkubelet".into(),
                name: "backend".into(),
                key: "kubeconfig".into(),
            })
        );
        assert_eq!(c.evict_unschedulable_after, Some(Duration::from_secs(120)));
        assert_eq!(c.sold_out_after, Duration::from_millis(1500));
        let c = KubeConfig::parse("kubeconfig: /k\n").unwrap();
        assert_eq!(c.evict_unschedulable_after, None, "off unless asked for");
        assert_eq!(c.sold_out_after, Duration::from_secs(30));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "-1s", "1d", "1e999s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_kubeconfig_secret_needs_the_source_cluster() {
        let c = KubeConfig::parse("kubeconfigSecret: {namespace: a, name: b, key: k}\n").unwrap();
        let e = c.client_config(None).await.unwrap_err().to_string();
        assert!(e.contains("Secret a/b"), "{e}");
        assert!(e.contains("no source cluster"), "{e}");
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
        let cfg = c.client_config(None).await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://127.0.0.1:6443/");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
