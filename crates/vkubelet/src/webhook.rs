//! Wiring of the burst-policy webhook: its flags (shared by `vkubelet run --webhook-addr` and
//! `vkubelet webhook`), certificate, server and registration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;
use vk_core::burst::BurstPolicy;
use vk_core::client::{ClientOptions, build_client};
use vk_core::metrics::Metrics;
use vk_core::sizing::SizingProfile;
use vk_webhook::rotation::{self, CertSource, RotatingCert};
use vk_webhook::{
    Endpoint, PolicyConfig, Registration, WebhookMetrics, WebhookServer, WorkloadCache, certs,
};

use crate::{ClusterArgs, kube_config, parse_label};

/// The namespace a pod's ServiceAccount lives in: vkubelet's own when it runs in a cluster.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub fn parse_policy(s: &str) -> Result<BurstPolicy, String> {
    s.parse()
        .map_err(|e: vk_core::burst::InvalidPolicy| e.to_string())
}

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// Burst policy for pods whose pod, workload and namespace state none. `off` changes
    /// nothing for them.
    #[arg(long, default_value = "off", value_parser = parse_policy)]
    pub burst_default: BurstPolicy,
    /// Name of the MutatingWebhookConfiguration vkubelet registers (one per install).
    #[arg(long, default_value = "vkubelet")]
    pub webhook_name: String,
    /// URL the API server calls the webhook at (out-of-cluster form), e.g.
    /// https://10.1.2.3:9443. Default: https://<node IP or webhook host>:<port>.
    #[arg(long, conflicts_with = "webhook_service")]
    pub webhook_url: Option<String>,
    /// The Service in front of vkubelet (in-cluster form): NAMESPACE/NAME[:PORT], port 443 by
    /// default.
    #[arg(long)]
    pub webhook_service: Option<String>,
    /// Directory that keeps the webhook's CA (made on first start) across restarts.
    #[arg(long)]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Serving certificate (PEM chain) instead of one issued from --webhook-cert-dir's CA.
    #[arg(long, requires_all = ["webhook_tls_private_key_file", "webhook_ca_file"])]
    pub webhook_tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "webhook_tls_cert_file")]
    pub webhook_tls_private_key_file: Option<PathBuf>,
    /// CA bundle that verifies --webhook-tls-cert-file (registered as caBundle).
    #[arg(long, requires = "webhook_tls_cert_file")]
    pub webhook_ca_file: Option<PathBuf>,
    /// A namespace the webhook never touches (kube-system and vkubelet's own always);
    /// repeatable.
    #[arg(long = "webhook-exclude-namespace")]
    pub exclude_namespaces: Vec<String>,
    /// Only namespaces carrying this label, `key=value`; repeatable.
    #[arg(long = "webhook-namespace-label", value_parser = parse_label)]
    pub namespace_labels: Vec<(String, String)>,
    /// Seconds the API server waits for the webhook before it admits the pod unchanged.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=30))]
    pub webhook_timeout_seconds: i32,
    /// Do not create or update the MutatingWebhookConfiguration (the operator manages it).
    #[arg(long)]
    pub no_webhook_register: bool,
}

impl WebhookArgs {
    pub fn policy(
        &self,
        taint_values: Vec<String>,
        profiles: Vec<Arc<SizingProfile>>,
    ) -> PolicyConfig {
        let mut excluded = vec!["kube-system".to_string()];
        if let Some(own) = own_namespace()
            && !excluded.contains(&own)
        {
            excluded.push(own);
        }
        for ns in &self.exclude_namespaces {
            if !excluded.contains(ns) {
                excluded.push(ns.clone());
            }
        }
        PolicyConfig {
            default: self.burst_default,
            taint_values,
            profiles,
            excluded_namespaces: excluded,
        }
    }

    fn endpoint(&self, served: SocketAddr, node_ip: Option<&str>) -> anyhow::Result<Endpoint> {
        if let Some(svc) = &self.webhook_service {
            let (ns, rest) = svc.split_once('/').with_context(|| {
                format!("--webhook-service {svc:?}: expected NAMESPACE/NAME[:PORT]")
            })?;
            let (name, port) = match rest.split_once(':') {
                Some((n, p)) => (
                    n,
                    p.parse()
                        .with_context(|| format!("--webhook-service {svc:?}: bad port"))?,
                ),
                None => (rest, 443),
            };
            if ns.is_empty() || name.is_empty() {
                bail!("--webhook-service {svc:?}: expected NAMESPACE/NAME[:PORT]");
            }
            return Ok(Endpoint::Service {
                namespace: ns.into(),
                name: name.into(),
                port,
            });
        }
        if let Some(url) = &self.webhook_url {
            if !url.starts_with("https://") {
                bail!("--webhook-url {url:?}: the API server calls webhooks over https only");
            }
            return Ok(Endpoint::Url(url.clone()));
        }
        let host = if served.ip().is_unspecified() {
            match node_ip {
                Some(ip) => ip.to_string(),
                None => bail!(
                    "the webhook listens on {served}; say where the API server reaches it with \
                     --webhook-url or --webhook-service"
                ),
            }
        } else {
            served.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Endpoint::Url(format!("https://{host}:{}", served.port())))
    }
}

fn own_namespace() -> Option<String> {
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return Some(ns);
    }
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The names and addresses the API server may dial, for the serving certificate.
fn cert_hosts(endpoint: &Endpoint) -> Vec<String> {
    match endpoint {
        Endpoint::Url(url) => {
            let rest = url.trim_start_matches("https://");
            let authority = rest.split('/').next().unwrap_or(rest);
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(v6),
                None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            };
            vec![host.to_string()]
        }
        Endpoint::Service {
            namespace, name, ..
        } => vec![
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
            format!("{name}.{namespace}"),
        ],
    }
}

/// Bind, issue the certificate, start the caches and the server, then register.
pub async fn start(
    args: &WebhookArgs,
    addr: &str,
    node_ip: Option<&str>,
    client: kube::Client,
    policy: PolicyConfig,
    metrics: WebhookMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--webhook-addr {addr:?}: expected HOST:PORT"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the webhook address {addr}"))?;
    let served = listener.local_addr().unwrap_or(addr);
    let endpoint = args.endpoint(served, node_ip)?;
    // The certificate and where its successors come from: the same files once they change,
    // or the same CA before it expires (vk_webhook::rotation).
    let (cert, source) = match (
        &args.webhook_tls_cert_file,
        &args.webhook_tls_private_key_file,
        &args.webhook_ca_file,
    ) {
        (Some(c), Some(k), Some(ca)) => (
            certs::from_files(c, k, ca)?,
            Some(CertSource::Files {
                cert: c.clone(),
                key: k.clone(),
                ca: ca.clone(),
            }),
        ),
        _ => {
            let dir = args
                .webhook_cert_dir
                .clone()
                .unwrap_or_else(certs::default_dir);
            let hosts = cert_hosts(&endpoint);
            let cert = certs::issue(&dir, &hosts)
                .with_context(|| format!("webhook certificate from {}", dir.display()))?;
            let source = CertSource::for_issued(&dir, &hosts, &cert);
            (cert, source)
        }
    };
    let served = RotatingCert::new(cert.serving)?;
    let tls = served.server_config()?;
    if let Some(source) = source {
        tokio::spawn(rotation::keep_fresh(served, source, cancel.clone()));
    }
    let cache = WorkloadCache::new(client.clone());
    cache.start(cancel.clone()).await;
    let excluded = policy.excluded_namespaces.clone();
    let server = WebhookServer::new(tls, policy, cache, metrics);
    tokio::spawn(server.serve(listener, cancel));
    if !args.no_webhook_register {
        let reg = Registration {
            name: args.webhook_name.clone(),
            endpoint: endpoint.clone(),
            ca_bundle: cert.ca_bundle,
            excluded_namespaces: excluded,
            namespace_labels: args.namespace_labels.iter().cloned().collect(),
            timeout_seconds: args.webhook_timeout_seconds,
        };
        reg.apply(client).await.with_context(|| {
            format!(
                "registering MutatingWebhookConfiguration {}",
                args.webhook_name
            )
        })?;
    }
    info!(endpoint = ?endpoint, "burst-policy webhook ready");
    Ok(())
}

#[derive(Args, Debug)]
pub struct WebhookCommand {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Where to serve the webhook (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: String,
    /// The virtual nodes' provider taint values to tolerate (repeatable); none: any value.
    #[arg(long = "taint-value")]
    taint_values: Vec<String>,
    /// The virtual nodes' sizing profiles (repeatable): pods none can carry do not burst.
    #[arg(long = "sizing-profile")]
    sizing_profiles: Vec<String>,
    /// Where to serve /metrics and /healthz over plain HTTP; empty disables.
    #[arg(long, default_value = "127.0.0.1:10255")]
    metrics_addr: String,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// `vkubelet webhook`: the webhook alone, until SIGTERM/SIGINT.
pub async fn serve_alone(cmd: WebhookCommand) -> anyhow::Result<()> {
    let webhook_metrics = WebhookMetrics::default();
    let metrics = Metrics::new_with(|registry| webhook_metrics.register(registry));
    let config = kube_config(cmd.cluster.kubeconfig.as_ref()).await?;
    let client = build_client(
        config,
        ClientOptions {
            qps: cmd.cluster.kube_api_qps,
            burst: cmd.cluster.kube_api_burst,
            ..Default::default()
        },
        metrics.clone(),
    )?;
    let mut profiles = Vec::new();
    for p in &cmd.sizing_profiles {
        profiles.push(Arc::new(SizingProfile::resolve(p)?));
    }
    let policy = cmd.webhook.policy(cmd.taint_values.clone(), profiles);
    let cancel = CancellationToken::new();
    if !cmd.metrics_addr.is_empty() {
        crate::start_metrics(&cmd.metrics_addr, metrics, cancel.clone()).await?;
    }
    start(
        &cmd.webhook,
        &cmd.webhook_addr,
        None,
        client,
        policy,
        webhook_metrics,
        cancel.clone(),
    )
    .await?;
    crate::stop_on_signal(cancel).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_follow_the_endpoint() {
        assert_eq!(
            cert_hosts(&Endpoint::Url("https://127.0.0.1:9443".into())),
            vec!["127.0.0.1"]
        );
        assert_eq!(
            cert_hosts(&Endpoint::Url("https://[::1]:9443/x".into())),
            vec!["::1"]
        );
        assert_eq!(
            cert_hosts(&Endpoint::Url("https://vk.example".into())),
            vec!["vk.example"]
        );
        let svc = Endpoint::Service {
            namespace: "vkubelet-system".into(),
            name: "vkubelet".into(),
            port: 443,
        };
        assert_eq!(cert_hosts(&svc)[0], "vkubelet.vkubelet-system.svc");
    }
}
