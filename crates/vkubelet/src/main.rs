//! The `vkubelet` binary: command line, configuration, and wiring of N virtual nodes, each with its
//! own provider instance, sharing one API client and one metrics registry.

mod check;
mod config;
mod ha;
mod providers;
mod serve;
mod uninstall;
mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vk_core::client::{ClientOptions, build_client};
use vk_core::events::EventOptions;
use vk_core::metrics::Metrics;
use vk_core::node::NodeConfig;
use vk_core::pod::PodControllerConfig;
use vk_core::virtual_node::{NodeHealth, health_verdict};
use vk_kubelet_api::{ApiMetrics, AuthConfig, tls};

use crate::config::{NodeSpec, NodesFile, provider_settings, validate_node_name};

#[derive(Parser, Debug)]
#[command(
    name = "vkubelet",
    version,
    about = "A virtual kubelet: registers virtual nodes and runs their pods on a backend"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "VKUBELET_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register the virtual node(s) and run their pods until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Stop and remove every pod the provider started (use before uninstalling).
    Cleanup(CleanupArgs),
    /// Take the install apart: stop serving, keep pods off the nodes, empty every backend, then
    /// remove the Node objects, their Leases and the webhook registration.
    Uninstall(UninstallArgs),
    /// Serve only the burst-policy admission webhook (no virtual node).
    Webhook(Box<webhook::WebhookCommand>),
    /// Show what the burst policy and a sizing profile make of workload manifests (offline).
    Check(CheckArgs),
    /// Print the version.
    Version,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Kubeconfig file; defaults to $KUBECONFIG, ~/.kube/config, then in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Sustained API requests per second (0 = unlimited).
    #[arg(long, default_value_t = 500.0)]
    kube_api_qps: f64,
    /// API requests allowed in a burst above the sustained rate.
    #[arg(long, default_value_t = 1000)]
    kube_api_burst: u32,
}

#[derive(Args, Debug)]
struct UninstallArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    nodes: NodeArgs,
    /// The MutatingWebhookConfiguration to remove (`--webhook-name` of `vkubelet run`).
    #[arg(long, default_value = "vkubelet")]
    webhook_name: String,
    /// Scale this Deployment (NAMESPACE/NAME) running vkubelet to 0 first and wait until its
    /// pods are gone, e.g. vkubelet-system/vkubelet.
    #[arg(long)]
    stop_deployment: Option<String>,
    /// Seconds to wait for running vkubelets to stop (and for their heartbeats to lapse).
    #[arg(long, default_value_t = 120)]
    wait_stopped: u64,
    /// Uninstall even though a node still looks served by a running vkubelet (it may re-create
    /// what is removed).
    #[arg(long)]
    force: bool,
}

/// Which virtual node(s), with which provider: one from flags, or several from a file.
#[derive(Args, Debug)]
struct NodeArgs {
    /// Name of the virtual node (ignored with --config); `virtual-kubelet` is the name the Go
    /// virtual-kubelet and ACK use.
    #[arg(long, env = "VKUBELET_NODE_NAME", default_value = "virtual-kubelet")]
    node_name: String,
    /// Backend provider (ignored with --config). Available: process (local sandboxed
    /// processes), sim (simulated), kube (another Kubernetes API: a second cluster or CCI).
    #[arg(long, default_value = "process")]
    provider: String,
    /// Provider settings file, YAML or JSON (ignored with --config).
    #[arg(long)]
    provider_config: Option<PathBuf>,
    /// A file describing several virtual nodes (see docs/configuration.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sizing profile applied to every pod before the backend sees it: none, cci, cci2, cube,
    /// eci, or a profile file (ignored with --config; see docs/burst-policy.md).
    #[arg(long, default_value = "none")]
    sizing_profile: String,
    /// Value of the virtual-kubelet.io/provider NoSchedule taint (default: the provider's name;
    /// seed 003's manifests tolerate their vendor's value). Ignored with --config.
    #[arg(long)]
    taint_value: Option<String>,
    /// Leave out the virtual-kubelet.io/prefer-local PreferNoSchedule taint that makes the
    /// scheduler prefer real nodes for `auto` pods. Ignored with --config.
    #[arg(long)]
    no_prefer_local_taint: bool,
    /// At most this many pods on the node (a sizing profile may cap it lower). Ignored with
    /// --config.
    #[arg(long)]
    max_pods: Option<u32>,
}

impl NodeArgs {
    /// The nodes to run: from --config, or the single node the flags describe.
    fn specs(&self) -> anyhow::Result<Vec<NodeSpec>> {
        if let Some(path) = &self.config {
            return Ok(NodesFile::load(path)?.nodes);
        }
        validate_node_name(&self.node_name)?;
        Ok(vec![NodeSpec {
            name: self.node_name.clone(),
            provider: self.provider.clone(),
            provider_config: None,
            provider_config_file: self.provider_config.clone(),
            labels: Default::default(),
            node_ip: None,
            kubelet_port: None,
            disable_taint: false,
            sizing_profile: self.sizing_profile.clone(),
            taint_value: self.taint_value.clone(),
            prefer_local_taint: !self.no_prefer_local_taint,
            max_pods: self.max_pods,
        }])
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    nodes: NodeArgs,
    /// Address the API server uses to reach this kubelet (node InternalIP).
    #[arg(long, env = "VKUBELET_NODE_IP", default_value = "127.0.0.1")]
    node_ip: String,
    /// The node's Hostname address (API servers with default --kubelet-preferred-address-types
    /// dial it first, so it must resolve); default: the node IP.
    #[arg(long)]
    node_hostname: Option<String>,
    /// Port of the kubelet API; with several nodes, node N uses this + N unless it sets its own.
    /// 0 gives every node a free port (advertised in its status).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Address the kubelet API listens on (the kubelet's --address).
    #[arg(long, default_value = "0.0.0.0")]
    kubelet_bind_address: std::net::IpAddr,
    /// Serving certificate (PEM, leaf first) of the kubelet API; without it each node makes a
    /// self-signed one for its node IP and name at start.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates are verified against (the API server's
    /// kubelet-client certificate); default: the cluster CA from the kubeconfig.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Let requests without credentials in as system:anonymous (still subject to
    /// SubjectAccessReview). Off by default.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// Extra node label, `key=value`; repeatable.
    #[arg(long = "node-label", value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// Do not taint the node with virtual-kubelet.io/provider=<provider>:NoSchedule.
    #[arg(long)]
    disable_taint: bool,
    /// Pods reconciled concurrently per node (bounds concurrent provider calls and pod status
    /// writes in flight).
    #[arg(long, default_value_t = vk_core::pod::DEFAULT_POD_WORKERS)]
    pod_workers: usize,
    /// Seconds between full API/backend reconciliations.
    #[arg(long, default_value_t = 60)]
    resync_interval: u64,
    /// Mark a pod Failed at its first provider failure instead of retrying while it exists.
    #[arg(long)]
    fail_fast: bool,
    /// Seconds between node status heartbeats.
    #[arg(long, default_value_t = 60)]
    node_status_interval: u64,
    /// Events written per second (events beyond the queue are dropped, never pods).
    #[arg(long, default_value_t = 50.0)]
    event_qps: f64,
    #[arg(long, default_value_t = 100)]
    event_burst: u32,
    /// Where to serve /metrics and /healthz over plain HTTP; empty disables.
    #[arg(long, default_value = "127.0.0.1:10255")]
    metrics_addr: String,
    /// Serve the burst-policy admission webhook on HOST:PORT (HTTPS); empty disables.
    #[arg(long, default_value = "")]
    webhook_addr: String,
    #[command(flatten)]
    webhook: webhook::WebhookArgs,
    #[command(flatten)]
    leader_elect: LeaderElectArgs,
}

#[derive(Args, Debug)]
struct LeaderElectArgs {
    /// Run as one of several replicas: each virtual node is served only by the holder of its
    /// Lease `vkubelet-<node>`, and the replicas share the nodes between them.
    #[arg(long = "leader-elect", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    enabled: bool,
    /// Namespace of the election Leases; default: vkubelet's own namespace in a cluster
    /// (POD_NAMESPACE or the service-account mount), else kube-node-lease.
    #[arg(long = "leader-elect-namespace")]
    namespace: Option<String>,
    /// This replica's name in the Leases; default: pod or host name, process id, start time.
    #[arg(long = "leader-elect-identity")]
    identity: Option<String>,
    /// Seconds a Lease must go unrenewed before another replica takes the node.
    #[arg(long = "leader-elect-lease-duration", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds a leader keeps the node without a successful renewal (< the lease duration).
    #[arg(long = "leader-elect-renew-deadline", default_value_t = 10)]
    renew_deadline: u64,
    /// Seconds between election attempts and renewals (< the renew deadline).
    #[arg(long = "leader-elect-retry-period", default_value_t = 2)]
    retry_period: u64,
}

impl LeaderElectArgs {
    fn options(&self, metrics: vk_leader::LeaderMetrics) -> anyhow::Result<ha::HaOptions> {
        let timing = vk_leader::Timing {
            lease_duration: Duration::from_secs(self.lease_duration),
            renew_deadline: Duration::from_secs(self.renew_deadline),
            retry_period: Duration::from_secs(self.retry_period),
        };
        if let Some(problem) = timing.problem() {
            bail!("--leader-elect-*: {problem}");
        }
        Ok(ha::HaOptions {
            namespace: self.namespace.clone().unwrap_or_else(ha::default_namespace),
            identity: self.identity.clone().unwrap_or_else(ha::default_identity),
            timing,
            metrics,
        })
    }
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Manifests (multi-document YAML or JSON; `-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Sizing profile: none, cci, cci2, cube, eci, or a profile file.
    #[arg(long, default_value = "none")]
    profile: String,
    /// Policy for workloads that state none (as `--burst-default` of the webhook).
    #[arg(long, default_value = "off", value_parser = webhook::parse_policy)]
    burst_default: vk_core::burst::BurstPolicy,
    /// A label of the workloads' namespace, `key=value` (a manifest does not carry it);
    /// repeatable, e.g. virtual-node-affinity-injection=enabled.
    #[arg(long = "namespace-label", value_parser = parse_label)]
    namespace_labels: Vec<(String, String)>,
    /// Output format.
    #[arg(short = 'o', long, default_value = "text")]
    output: CheckOutput,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CheckOutput {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    nodes: NodeArgs,
    /// Also delete the Node object(s) from the cluster.
    #[arg(long)]
    delete_node: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty label key in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VKUBELET_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_runtime=warn,kube_client=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Whatever VKUBELET_LOG says: vk_core::client reports the same failures (one warning per
    // outage, each request at debug).
    let quiet = tracing_subscriber::filter::filter_fn(|meta| !is_kube_request_failure(meta));
    match format {
        LogFormat::Text => builder.finish().with(quiet).init(),
        LogFormat::Json => builder.json().finish().with(quiet).init(),
    }
}

/// kube's HTTP trace layer logs every failed request at ERROR: hundreds of lines while the API
/// server restarts for a second.
fn is_kube_request_failure(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() == tracing::Level::ERROR && meta.target() == "kube_client::client::builder"
}

/// The hidden subcommand the process provider runs its per-container shims with.
const SHIM_SUBCOMMAND: &str = "process-shim";

fn main() -> anyhow::Result<()> {
    // A shim is started by vkubelet itself with machine-made arguments; it runs before (and
    // without) the multi-threaded runtime and the CLI parser.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == SHIM_SUBCOMMAND) {
        let Some(shim) = vk_provider_process::shim::ShimArgs::parse(&args[2..]) else {
            bail!("{SHIM_SUBCOMMAND}: invalid arguments");
        };
        std::process::exit(vk_provider_process::shim::run(shim));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("vkubelet {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(args) => run(*args).await,
        Command::Cleanup(args) => cleanup(args).await,
        Command::Uninstall(args) => run_uninstall(args).await,
        Command::Webhook(args) => webhook::serve_alone(*args).await,
        Command::Check(args) => run_check(args),
    }
}

fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    let opts = check::CheckOptions {
        profile: vk_core::sizing::SizingProfile::resolve(&args.profile)?,
        default: args.burst_default,
        namespace_labels: args.namespace_labels.into_iter().collect(),
    };
    let text = check::read_manifests(&args.file)?;
    let reports = check::check(&text, &opts)?;
    match args.output {
        CheckOutput::Text => print!("{}", check::print_text(&reports)),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    let blocked: Vec<String> = reports
        .iter()
        .filter(|r| !r.can_burst)
        .map(|r| format!("{} {}/{}", r.kind, r.namespace, r.name))
        .collect();
    if !blocked.is_empty() {
        bail!("cannot burst: {}", blocked.join(", "));
    }
    Ok(())
}

async fn kube_config(path: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", p.display()))
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig or set KUBECONFIG"),
    }
}

/// The CA the API server's certificate is checked against, which in a kubeadm-style cluster
/// also signs its kubelet-client certificate.
fn cluster_ca(config: &kube::Config) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(path) = &config.root_cert_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the cluster CA {}", path.display()))?;
        return Ok(vec![pem]);
    }
    Ok(config.root_cert.clone().unwrap_or_default())
}

/// Which port node `i` serves its kubelet API on.
fn kubelet_port(base: u16, own: Option<u16>, i: usize) -> anyhow::Result<u16> {
    if let Some(p) = own {
        return Ok(p);
    }
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(i)
        .ok()
        .and_then(|i| base.checked_add(i))
        .with_context(|| format!("--kubelet-port {base} + {i} is not a port"))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let api_metrics = ApiMetrics::default();
    let webhook_metrics = vk_webhook::WebhookMetrics::default();
    let leader_metrics = vk_leader::LeaderMetrics::default();
    let metrics = Metrics::new_with(|registry| {
        api_metrics.register(registry);
        webhook_metrics.register(registry);
        leader_metrics.register(registry);
    });
    let api_metrics = api_metrics.with_core(metrics.clone());
    let config = kube_config(args.cluster.kubeconfig.as_ref()).await?;
    let client_ca = match &args.client_ca_file {
        Some(path) => Some(tls::client_ca_from_file(path)?),
        None => {
            let ca = tls::client_ca_from_bytes(&cluster_ca(&config)?);
            if ca.is_empty() {
                warn!(
                    "no --client-ca-file and no CA in the kubeconfig: the kubelet API accepts no client \
                     certificates (the API server's included), only bearer tokens"
                );
            }
            (!ca.is_empty()).then_some(ca)
        }
    };
    let files_cert = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let client_opts = ClientOptions {
        qps: args.cluster.kube_api_qps,
        burst: args.cluster.kube_api_burst,
        ..Default::default()
    };
    // Leases get a client of their own, as the kubelet's heartbeat client is: its own connection,
    // request queue and token bucket, so a renewal never waits behind a burst's pod traffic
    // (a renewal queued past its deadline loses the node's lease, or the replica its term).
    // One renewal every few seconds per node needs one connection, not the burst's four.
    let heartbeat_opts = ClientOptions {
        connections: 1,
        ..Default::default()
    };
    let heartbeat_client = build_client(config.clone(), heartbeat_opts, metrics.clone())
        .context("building the lease API client")?;
    let client =
        build_client(config, client_opts, metrics.clone()).context("building the API client")?;
    let common = serve::Common {
        client: client.clone(),
        heartbeat_client,
        metrics: metrics.clone(),
        api_metrics,
        client_ca,
        files_cert,
        auth: AuthConfig {
            anonymous: args.anonymous_auth,
            ..Default::default()
        },
        kubelet_bind_address: args.kubelet_bind_address,
        health: serve::HealthBoard::default(),
    };
    let specs = args.nodes.specs()?;
    let mut plans = Vec::new();
    let mut taint_values = Vec::new();
    let mut profiles = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (plan, sizing) = node_plan(&args, spec, i)?;
        if !plan.node.disable_taint {
            taint_values.push(
                spec.taint_value
                    .clone()
                    .unwrap_or_else(|| spec.provider.clone()),
            );
        }
        profiles.push(sizing);
        plans.push(plan);
    }

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if args.leader_elect.enabled {
        let ha = args.leader_elect.options(leader_metrics)?;
        info!(namespace = %ha.namespace, identity = %ha.identity, "leader election on: one Lease per node");
        for plan in plans {
            tasks.spawn(ha::lead_node(
                plan,
                common.clone(),
                ha.clone(),
                cancel.clone(),
            ));
        }
    } else {
        // Without an election every node starts here and now; a failure stops start-up.
        let mut ready = Vec::new();
        for plan in &plans {
            let provider = plan.build_provider(&common).await?;
            ready.push(serve::prepare(plan, &common, provider, None).await?);
        }
        for node in ready {
            let cancel = cancel.clone();
            tasks.spawn(async move { node.run(cancel).await.map_err(anyhow::Error::from) });
        }
    }
    if !args.webhook_addr.is_empty() {
        let policy = args.webhook.policy(taint_values, profiles);
        webhook::start(
            &args.webhook,
            &args.webhook_addr,
            Some(&args.node_ip),
            client.clone(),
            policy,
            webhook_metrics,
            cancel.clone(),
        )
        .await?;
    }
    if !args.metrics_addr.is_empty() {
        start_node_metrics(
            &args.metrics_addr,
            metrics.clone(),
            common.health.clone(),
            cancel.clone(),
        )
        .await?;
    }
    tokio::spawn(stop_on_signal(cancel.clone()));

    let mut failed = None;
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(
                    error = format!("{e:#}"),
                    "virtual node stopped with an error"
                );
                failed.get_or_insert(e);
                cancel.cancel();
            }
            Err(e) => {
                failed.get_or_insert(anyhow::anyhow!("virtual node task failed: {e}"));
                cancel.cancel();
            }
        }
    }
    info!("vkubelet stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One node's configuration from the flags and its spec (node `i` of the file).
fn node_plan(
    args: &RunArgs,
    spec: &NodeSpec,
    i: usize,
) -> anyhow::Result<(serve::NodePlan, Arc<vk_core::sizing::SizingProfile>)> {
    let sizing = Arc::new(
        vk_core::sizing::SizingProfile::resolve(&spec.sizing_profile)
            .with_context(|| format!("node {}: sizing profile", spec.name))?,
    );
    let settings = provider_settings(
        spec.provider_config.as_ref(),
        spec.provider_config_file.as_deref(),
    )?;
    let mut node_cfg = NodeConfig::new(&spec.name);
    node_cfg.node_ip = spec.node_ip.clone().unwrap_or_else(|| args.node_ip.clone());
    node_cfg.hostname = args.node_hostname.clone();
    node_cfg.labels = spec.labels.clone();
    node_cfg.labels.extend(args.node_labels.iter().cloned());
    node_cfg.disable_taint = spec.disable_taint || args.disable_taint;
    node_cfg.taint_value = spec.taint_value.clone();
    node_cfg.prefer_local_taint = spec.prefer_local_taint;
    node_cfg.max_pods = match (spec.max_pods, sizing.max_pods()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    node_cfg.status_interval = Duration::from_secs(args.node_status_interval.max(1));
    let mut pod_cfg = PodControllerConfig::new(&spec.name);
    pod_cfg.workers = args.pod_workers.max(1);
    pod_cfg.resync_interval = Duration::from_secs(args.resync_interval.max(1));
    pod_cfg.fail_fast = args.fail_fast;
    pod_cfg.sizing = sizing.clone();
    let events = EventOptions {
        qps: args.event_qps,
        burst: args.event_burst,
        ..Default::default()
    };
    let plan = serve::NodePlan {
        node: node_cfg,
        pods: pod_cfg,
        events,
        provider: spec.provider.clone(),
        settings,
        port: kubelet_port(args.kubelet_port, spec.kubelet_port, i)?,
    };
    Ok((plan, sizing))
}

/// Serve /metrics and /healthz on `addr` until `cancel`, without virtual nodes (the webhook alone):
/// `/healthz` is always `ok`.
async fn start_metrics(
    addr: &str,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    start_node_metrics(addr, metrics, serve::HealthBoard::default(), cancel).await
}

/// Serve /metrics and /healthz (over the nodes' pod controllers) on `addr` until `cancel`.
async fn start_node_metrics(
    addr: &str,
    metrics: Arc<Metrics>,
    controllers: serve::HealthBoard,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("--metrics-addr {addr:?}"))?;
    let listener = tokio::net::TcpListener::bind(parsed)
        .await
        .with_context(|| format!("binding metrics address {parsed}"))?;
    info!(addr = %listener.local_addr().unwrap_or(parsed), "serving /metrics and /healthz");
    tokio::spawn(serve_metrics(listener, metrics, controllers, cancel));
    Ok(())
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    cancel.cancel();
}

/// `/healthz`: 200 `ok`, or 503 with why not (a node not synced yet, a pod watch failing for over
/// a minute).
fn healthz(nodes: &[NodeHealth], now: tokio::time::Instant) -> (axum::http::StatusCode, String) {
    match health_verdict(nodes, now) {
        Ok(()) => (axum::http::StatusCode::OK, "ok".to_string()),
        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    board: serve::HealthBoard,
    cancel: CancellationToken,
) {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let board = board.clone();
                async move {
                    let nodes: Vec<NodeHealth> = board.health();
                    healthz(&nodes, tokio::time::Instant::now())
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        error!(error = %e, "metrics server failed");
    }
}

async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let specs = args.nodes.specs()?;
    let metrics = Metrics::new();
    // The source cluster: for --delete-node, and for the kube provider's cluster id.
    let source = match kube_config(args.cluster.kubeconfig.as_ref()).await {
        Ok(config) => Some(build_client(
            config,
            ClientOptions::default(),
            metrics.clone(),
        )?),
        Err(e) if args.delete_node => return Err(e),
        Err(_) => None,
    };
    let (total, left) = uninstall::clean_backends(&specs, source.as_ref(), &metrics).await?;
    if !left.is_empty() {
        bail!(
            "removed {total} backend pod(s), but these are still there: {}",
            left.join(", ")
        );
    }
    if args.delete_node {
        let Some(client) = source else {
            bail!("--delete-node needs the source cluster");
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        for spec in &specs {
            match api.delete(&spec.name, &Default::default()).await {
                Ok(_) => info!(node = %spec.name, "deleted node object"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => bail!("deleting node {}: {e}", spec.name),
            }
        }
    }
    println!("removed {total} backend pod(s)");
    Ok(())
}

async fn run_uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let specs = args.nodes.specs()?;
    let metrics = Metrics::new();
    let config = kube_config(args.cluster.kubeconfig.as_ref()).await?;
    let client = build_client(config, ClientOptions::default(), metrics.clone())?;
    let opts = uninstall::UninstallOptions {
        webhook_name: args.webhook_name,
        stop_deployment: args.stop_deployment,
        wait_stopped: Duration::from_secs(args.wait_stopped),
        force: args.force,
    };
    uninstall::uninstall(&specs, client, &metrics, &opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_ports_per_node() {
        assert_eq!(kubelet_port(10250, None, 0).unwrap(), 10250);
        assert_eq!(kubelet_port(10250, None, 2).unwrap(), 10252);
        assert_eq!(kubelet_port(10250, Some(20000), 2).unwrap(), 20000);
        // 0: every node gets a free port of its own.
        assert_eq!(kubelet_port(0, None, 3).unwrap(), 0);
        assert!(kubelet_port(65535, None, 1).is_err());
    }

    #[test]
    fn healthz_answers_503_with_the_reason_until_healthy() {
        let now = tokio::time::Instant::now();
        let node = |synced, failing: Option<u64>| NodeHealth {
            node: "vk-1".into(),
            synced,
            watch_failing_since: failing.map(|s| now - Duration::from_secs(s)),
        };
        let (code, body) = healthz(&[node(false, None)], now);
        assert_eq!(code, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "node vk-1: pod controller has not finished its first sync"
        );
        assert_eq!(
            healthz(&[node(true, Some(10))], now),
            (axum::http::StatusCode::OK, "ok".to_string()),
            "a watch failing for seconds (an API server restart) is tolerated"
        );
        let (code, body) = healthz(&[node(true, Some(90))], now);
        assert_eq!(code, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "node vk-1: pod watch failing for 90s");
        assert_eq!(
            healthz(&[node(true, None)], now),
            (axum::http::StatusCode::OK, "ok".to_string())
        );
    }

    #[test]
    fn kube_per_request_errors_are_dropped_but_nothing_else() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tracing_subscriber::layer::SubscriberExt as _;
        struct Count(Arc<AtomicUsize>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
            fn on_event(
                &self,
                _event: &tracing::Event<'_>,
                _ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::filter_fn(|m| {
                !is_kube_request_failure(m)
            }))
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "kube_client::client::builder", "failed with error x");
            tracing::debug!(target: "kube_client::client::builder", "requesting");
            tracing::error!(target: "kube_client::client", "other kube error");
            tracing::warn!(target: "vk_core::client", "API server unreachable: x");
        });
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn anonymous_auth_flag_forms() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["vkubelet", "run"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(a) => a.anonymous_auth,
                _ => unreachable!(),
            }
        };
        assert!(!parse(&[]));
        assert!(parse(&["--anonymous-auth"]));
        assert!(parse(&["--anonymous-auth=true"]));
        assert!(!parse(&["--anonymous-auth=false"]));
        // A certificate needs its key.
        assert!(Cli::try_parse_from(["vkubelet", "run", "--tls-cert-file", "c.pem"]).is_err());
    }
}
