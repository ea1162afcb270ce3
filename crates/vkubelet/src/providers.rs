//! The providers this binary can run, by name.

use std::sync::Arc;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use vk_core::DynProvider;
use vk_core::client::{ClientOptions, build_client};
use vk_core::metrics::Metrics;

pub const AVAILABLE: &[&str] = &["process", "sim", "kube"];

/// What a provider may need besides its settings.
pub struct BuildContext<'a> {
    pub node_name: &'a str,
    pub node_ip: &'a str,
    /// The source cluster (the kube provider reads its id, a kubeconfig Secret and source pods
    /// to evict from it).
    pub source: Option<&'a kube::Client>,
    pub metrics: Arc<Metrics>,
}

/// The source cluster's id: the UID of its `kube-system` namespace (the seeds' cluster ID).
async fn source_cluster_id(source: Option<&kube::Client>) -> anyhow::Result<String> {
    let Some(client) = source else {
        bail!(
            "the kube provider needs clusterID in its config when no source cluster is reachable"
        );
    };
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns = api.get("kube-system").await.context(
        "reading the source cluster's kube-system namespace for its id (or set clusterID)",
    )?;
    ns.metadata
        .uid
        .context("the source cluster's kube-system namespace has no uid")
}

/// The kube provider, concretely (cleanup needs more than the trait).
pub async fn build_kube(
    settings: &serde_json::Value,
    ctx: &BuildContext<'_>,
) -> anyhow::Result<vk_provider_kube::KubeProvider> {
    let text = serde_json::to_string(settings)?;
    let cfg = vk_provider_kube::KubeConfig::parse(&text)?;
    let cluster_id = match &cfg.cluster_id {
        Some(id) => id.clone(),
        None => source_cluster_id(ctx.source).await?,
    };
    let config = cfg.client_config(ctx.source).await?;
    let client = build_client(
        config,
        ClientOptions {
            qps: cfg.qps,
            burst: cfg.burst,
            ..Default::default()
        },
        ctx.metrics.clone(),
    )
    .context("building the backend API client")?;
    let provider =
        vk_provider_kube::KubeProvider::new(client, cfg, ctx.node_name, ctx.node_ip, cluster_id);
    // Evicting a stuck source pod is a write on the source cluster.
    Ok(match ctx.source {
        Some(source) => provider.with_source(source.clone()),
        None => provider,
    })
}

/// Build the provider `kind` from its settings (a JSON value from inline config or a file).
pub async fn build(
    kind: &str,
    settings: serde_json::Value,
    ctx: &BuildContext<'_>,
) -> anyhow::Result<DynProvider> {
    let node_ip = ctx.node_ip;
    match kind {
        "kube" => Ok(Arc::new(build_kube(&settings, ctx).await?)),
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

/// Whether a provider's pods live on the machine of the vkubelet process that started them, so
/// that another replica taking over a node cannot adopt them.
pub fn pods_are_local(kind: &str) -> bool {
    kind == "process"
}
