//! The `vkubelet run` configuration: command-line flags for a single node, or a YAML/JSON file
//! describing several virtual nodes, each with its own provider instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// One virtual node as the config file describes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default = "default_provider")]
    pub provider: String,
    /// Provider settings inline.
    #[serde(default)]
    pub provider_config: Option<serde_json::Value>,
    /// Provider settings from a file (YAML or JSON); exclusive with `providerConfig`.
    #[serde(default)]
    pub provider_config_file: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Kubernetes' own spelling; `nodeIp` is accepted too.
    #[serde(default, rename = "nodeIP", alias = "nodeIp")]
    pub node_ip: Option<String>,
    #[serde(default)]
    pub kubelet_port: Option<u16>,
    #[serde(default)]
    pub disable_taint: bool,
    /// Sizing profile: a built-in name (`none`, `cci`, `cci2`, `cube`, `eci`) or a file.
    #[serde(default = "default_sizing_profile")]
    pub sizing_profile: String,
    /// Value of the `virtual-kubelet.io/provider` taint (default: the provider's name).
    #[serde(default)]
    pub taint_value: Option<String>,
    /// The `virtual-kubelet.io/prefer-local` PreferNoSchedule taint (burst policy `auto`).
    #[serde(default = "yes")]
    pub prefer_local_taint: bool,
    /// At most this many pods (also capped by the sizing profile's limit).
    #[serde(default)]
    pub max_pods: Option<u32>,
}

pub fn default_sizing_profile() -> String {
    "none".into()
}

fn yes() -> bool {
    true
}

fn default_provider() -> String {
    "sim".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodesFile {
    pub nodes: Vec<NodeSpec>,
}

impl NodesFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: NodesFile =
            parse_yaml_or_json(&text).with_context(|| format!("parsing {}", path.display()))?;
        file.validate()?;
        Ok(file)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.nodes.is_empty() {
            bail!("the config file lists no nodes");
        }
        let mut names = std::collections::HashSet::new();
        for n in &self.nodes {
            validate_node_name(&n.name)?;
            if !names.insert(n.name.as_str()) {
                bail!("node {:?} is listed twice", n.name);
            }
            if n.provider_config.is_some() && n.provider_config_file.is_some() {
                bail!(
                    "node {:?}: set providerConfig or providerConfigFile, not both",
                    n.name
                );
            }
        }
        Ok(())
    }
}

/// Node names are DNS subdomains (RFC 1123): lowercase alphanumerics, '-' and '.', at most 253.
pub fn validate_node_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if !ok {
        bail!(
            "invalid node name {name:?}: must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.')"
        );
    }
    Ok(())
}

/// Parse YAML (a superset of JSON) into `T`.
pub fn parse_yaml_or_json<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).context("invalid JSON");
    }
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("invalid YAML: {e}"))
}

/// A provider's settings as a JSON value, from inline config or a file.
pub fn provider_settings(
    inline: Option<&serde_json::Value>,
    file: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    match (inline, file) {
        (Some(v), _) => Ok(v.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse_yaml_or_json(&text)
                .with_context(|| format!("parsing provider config {}", path.display()))
        }
        (None, None) => Ok(serde_json::json!({})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_node_yaml() {
        let f: NodesFile = parse_yaml_or_json(
            "nodes:\n  - name: vk-a\n    provider: sim\n    providerConfig:\n      startLatency: {fixed: 10ms}\n    labels: {zone: a}\n  - name: vk-b\n",
        )
        .unwrap();
        f.validate().unwrap();
        assert_eq!(f.nodes.len(), 2);
        assert_eq!(f.nodes[0].labels["zone"], "a");
        assert_eq!(f.nodes[1].provider, "sim");
        assert_eq!(
            f.nodes[0].provider_config.as_ref().unwrap()["startLatency"]["fixed"],
            "10ms"
        );
    }

    #[test]
    fn rejects_bad_files_clearly() {
        let dup: NodesFile = parse_yaml_or_json("nodes: [{name: a}, {name: a}]").unwrap();
        assert!(
            dup.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let empty: NodesFile = parse_yaml_or_json("nodes: []").unwrap();
        assert!(empty.validate().is_err());
        assert!(parse_yaml_or_json::<NodesFile>("nodes: [{name: a, bogus: 1}]").is_err());
        let bad: NodesFile = parse_yaml_or_json("nodes: [{name: Bad_Name}]").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("invalid node name")
        );
    }

    #[test]
    fn documented_keys_parse() {
        let f: NodesFile = parse_yaml_or_json(
            "nodes:\n  - name: vk-a\n    nodeIP: 127.0.0.2\n    sizingProfile: cci\n    taintValue: ucloud\n    preferLocalTaint: false\n    maxPods: 200\n  - name: vk-b\n    nodeIp: 127.0.0.3\n",
        )
        .unwrap();
        let (a, b) = (&f.nodes[0], &f.nodes[1]);
        assert_eq!(a.node_ip.as_deref(), Some("127.0.0.2"));
        assert_eq!(
            b.node_ip.as_deref(),
            Some("127.0.0.3"),
            "the older spelling still works"
        );
        assert_eq!(a.sizing_profile, "cci");
        assert_eq!(b.sizing_profile, "none");
        assert_eq!(a.taint_value.as_deref(), Some("ucloud"));
        assert!(!a.prefer_local_taint && b.prefer_local_taint);
        assert_eq!((a.max_pods, b.max_pods), (Some(200), None));
    }

    #[test]
    fn node_names() {
        assert!(validate_node_name("vk-1.example").is_ok());
        assert!(validate_node_name("-x").is_err());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name(&"a".repeat(64)).is_err());
    }
}
