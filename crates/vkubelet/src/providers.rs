//! The providers this binary can run, by name.

use std::sync::Arc;

use anyhow::{Context, bail};
use vk_core::DynProvider;

pub const AVAILABLE: &[&str] = &["process", "sim"];

/// Build the provider `kind` from its settings (a JSON value from inline config or a file).
pub fn build(
    kind: &str,
    settings: serde_json::Value,
    node_ip: &str,
) -> anyhow::Result<DynProvider> {
    match kind {
        "process" => {
            let text = serde_json::to_string(&settings)?;
            let cfg = vk_provider_process::ProcessConfig::parse(&text)
                .context("invalid process provider config")?;
            Ok(Arc::new(vk_provider_process::ProcessProvider::new(
                cfg,
                node_ip.to_string(),
            )))
        }
        "sim" => {
            let text = serde_json::to_string(&settings)?;
            let cfg = vk_provider_sim::SimConfig::from_json_str(&text)
                .context("invalid sim provider config")?;
            Ok(Arc::new(vk_provider_sim::SimProvider::new(
                cfg,
                node_ip.to_string(),
            )?))
        }
        other => bail!(
            "unknown provider {other:?}; available: {}",
            AVAILABLE.join(", ")
        ),
    }
}
