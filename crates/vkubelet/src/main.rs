//! The `vkubelet` binary: command line, configuration, and wiring of N virtual nodes, each with its
//! own provider instance, sharing one API client and one metrics registry.

mod config;
mod providers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use vk_core::VirtualNode;
use vk_core::client::{ClientOptions, build_client};
use vk_core::events::EventOptions;
use vk_core::metrics::Metrics;
use vk_core::node::NodeConfig;
use vk_core::pod::PodControllerConfig;

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

/// Which virtual node(s), with which provider: one from flags, or several from a file.
#[derive(Args, Debug)]
struct NodeArgs {
    /// Name of the virtual node (ignored with --config).
    #[arg(long, env = "VKUBELET_NODE_NAME", default_value = "vkubelet")]
    node_name: String,
    /// Backend provider (ignored with --config). Available: process (local sandboxed
    /// processes), sim (simulated).
    #[arg(long, default_value = "process")]
    provider: String,
    /// Provider settings file, YAML or JSON (ignored with --config).
    #[arg(long)]
    provider_config: Option<PathBuf>,
    /// A file describing several virtual nodes (see docs/configuration.md).
    #[arg(long)]
    config: Option<PathBuf>,
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
    /// Port of the kubelet API; with several nodes, node N uses this + N unless it sets its own.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Extra node label, `key=value`; repeatable.
    #[arg(long = "node-label", value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// Do not taint the node with virtual-kubelet.io/provider=<provider>:NoSchedule.
    #[arg(long)]
    disable_taint: bool,
    /// Pods reconciled concurrently per node (bounds concurrent provider calls).
    #[arg(long, default_value_t = 64)]
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("VKUBELET_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_runtime=warn,kube_client=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
    }
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let config = kube_config(args.cluster.kubeconfig.as_ref()).await?;
    let client_opts = ClientOptions {
        qps: args.cluster.kube_api_qps,
        burst: args.cluster.kube_api_burst,
        ..Default::default()
    };
    let client =
        build_client(config, client_opts, metrics.clone()).context("building the API client")?;
    let specs = args.nodes.specs()?;

    let cancel = CancellationToken::new();
    let mut nodes = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let node_ip = spec.node_ip.clone().unwrap_or_else(|| args.node_ip.clone());
        let settings = provider_settings(
            spec.provider_config.as_ref(),
            spec.provider_config_file.as_deref(),
        )?;
        let provider = providers::build(&spec.provider, settings, &node_ip)
            .with_context(|| format!("node {}: provider {}", spec.name, spec.provider))?;
        let mut node_cfg = NodeConfig::new(&spec.name);
        node_cfg.node_ip = node_ip;
        node_cfg.kubelet_port = spec
            .kubelet_port
            .unwrap_or_else(|| args.kubelet_port.saturating_add(i as u16));
        node_cfg.labels = spec.labels.clone();
        node_cfg.labels.extend(args.node_labels.iter().cloned());
        node_cfg.disable_taint = spec.disable_taint || args.disable_taint;
        node_cfg.status_interval = Duration::from_secs(args.node_status_interval.max(1));
        let mut pod_cfg = PodControllerConfig::new(&spec.name);
        pod_cfg.workers = args.pod_workers.max(1);
        pod_cfg.resync_interval = Duration::from_secs(args.resync_interval.max(1));
        pod_cfg.fail_fast = args.fail_fast;
        let events = EventOptions {
            qps: args.event_qps,
            burst: args.event_burst,
            ..Default::default()
        };
        nodes.push(VirtualNode::new(
            node_cfg,
            pod_cfg,
            events,
            client.clone(),
            provider,
            metrics.clone(),
        ));
    }

    if !args.metrics_addr.is_empty() {
        let addr: SocketAddr = args
            .metrics_addr
            .parse()
            .with_context(|| format!("--metrics-addr {:?}", args.metrics_addr))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics address {addr}"))?;
        info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics and /healthz");
        tokio::spawn(serve_metrics(listener, metrics.clone(), cancel.clone()));
    }
    tokio::spawn(stop_on_signal(cancel.clone()));

    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes {
        tasks.spawn(node.run(cancel.clone()));
    }
    let mut failed = None;
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(error = %e, "virtual node stopped with an error");
                failed.get_or_insert(anyhow::Error::from(e));
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

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
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
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        error!(error = %e, "metrics server failed");
    }
}

async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let specs = args.nodes.specs()?;
    let mut total = 0;
    for spec in &specs {
        let settings = provider_settings(
            spec.provider_config.as_ref(),
            spec.provider_config_file.as_deref(),
        )?;
        let provider = providers::build(&spec.provider, settings, "127.0.0.1")?;
        provider
            .start(vk_core::ProviderSinks::discard())
            .await
            .with_context(|| format!("starting provider of {}", spec.name))?;
        let n = provider
            .cleanup_all()
            .await
            .with_context(|| format!("cleaning up node {}", spec.name))?;
        info!(node = %spec.name, pods = n, "removed backend pods");
        total += n;
    }
    if args.delete_node {
        let config = kube_config(args.cluster.kubeconfig.as_ref()).await?;
        let client = build_client(config, ClientOptions::default(), Metrics::new())?;
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
