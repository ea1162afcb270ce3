//! vk-bench: the burst load generator behind `make bench` (bench/burst.py drives it), and the
//! null kubelet it is compared with. Benchmarks only: nothing here runs in `make test`.
//!
//!   vk-bench burst --kubeconfig K --node NODE --n 1000 [--pid kubelet=PID ...] --json OUT
//!   vk-bench null-kubelet --kubeconfig K --node NODE
//!   vk-bench sweep --kubeconfig K --pods 2000 --concurrency 8,32,128,512 --json OUT

#![deny(unsafe_code)]

mod apimetrics;
mod burst;
mod cluster;
mod null_kubelet;
mod procstat;
mod stats;
mod sweep;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "vk-bench",
    about = "Burst load generator and null kubelet for vkubelet's benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create N pods bound to NODE, wait until all are Running, delete them, wait until all are
    /// gone; print (and write) the measurements as JSON.
    Burst(BurstArgs),
    /// The baseline kubelet: one status write per pod, one final delete per deleted pod.
    NullKubelet(NullKubeletArgs),
    /// Creates at rising concurrency, no kubelet: shows where the API server saturates.
    Sweep(SweepArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// Kubeconfig of the cluster the pods are created on (its current context).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Write the JSON result here as well as to stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A process to measure (RSS, CPU), as ROLE=PID; repeatable. The role `kubelet` is the
    /// kubelet under test.
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
}

#[derive(Args, Debug)]
struct BurstArgs {
    #[command(flatten)]
    common: Common,
    /// The node the pods are bound to (spec.nodeName).
    #[arg(long)]
    node: String,
    /// Pods in the burst.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Namespace of the burst (created if missing; one per run keeps runs apart).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Create and delete requests in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Name of this run in the output (e.g. vkubelet, null-kubelet).
    #[arg(long, default_value = "run")]
    label: String,
    /// Seconds to wait for all Running, and again for all gone (default 120 + N/20).
    #[arg(long)]
    timeout: Option<u64>,
    /// Seconds to hold all pods Running before deleting (the steady-RSS window).
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Another API server whose writes are counted, as NAME=KUBECONFIG (e.g. the kube
    /// provider's backend); repeatable. The pods' own cluster is always counted, as `A`.
    #[arg(long = "metrics", value_parser = parse_named_path)]
    metrics: Vec<(String, PathBuf)>,
    /// A shell command run once `--fault-at-created` creates have been answered (e.g. kill the
    /// API server, advance etcd, restart it: every watch must relist). The burst goes on.
    #[arg(long, requires = "fault_at_created")]
    fault_command: Option<String>,
    /// Creates answered before `--fault-command` runs (at most N).
    #[arg(long, requires = "fault_command")]
    fault_at_created: Option<usize>,
}

#[derive(Args, Debug)]
struct NullKubeletArgs {
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The node whose pods this kubelet runs (registered as a bare Node if missing).
    #[arg(long)]
    node: String,
    /// Status writes and deletes in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
}

#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    common: Common,
    /// Pods created per concurrency level (deleted again before the next).
    #[arg(long, default_value_t = 2000)]
    pods: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128,512")]
    concurrency: Vec<usize>,
    #[arg(long, default_value = "bench-sweep")]
    namespace: String,
    /// A node nobody runs: the sweep's pods stay Pending.
    #[arg(long, default_value = "vk-bench-sweep")]
    node: String,
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (role, pid) = s.split_once('=').ok_or("expected ROLE=PID")?;
    let pid = pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))?;
    Ok((role.to_string(), pid))
}

fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    Ok((name.to_string(), PathBuf::from(path)))
}

fn emit(value: &impl serde::Serialize, path: Option<&PathBuf>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if let Some(path) = path {
        std::fs::write(path, &text).with_context(|| format!("write {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VK_BENCH_LOG")
                // kube's client logs an ERROR per refused request; vk-bench retries and counts
                // them itself (create_retries in the report).
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Burst(a) => {
            let client = cluster::client(&a.common.kubeconfig).await?;
            let mut metrics = vec![("A".to_string(), client.clone())];
            for (name, path) in &a.metrics {
                metrics.push((name.clone(), cluster::client(path).await?));
            }
            let timeout = a.timeout.unwrap_or(120 + a.n as u64 / 20);
            let fault = match (a.fault_command, a.fault_at_created) {
                (Some(command), Some(at_created)) if at_created <= a.n => Some(burst::Fault {
                    at_created,
                    command,
                }),
                (Some(_), Some(at_created)) => {
                    anyhow::bail!("--fault-at-created {at_created} is more than --n {}", a.n)
                }
                _ => None,
            };
            let report = burst::run(
                client,
                burst::BurstSpec {
                    label: a.label,
                    namespace: a.namespace,
                    node: a.node,
                    n: a.n,
                    concurrency: a.concurrency,
                    timeout: Duration::from_secs(timeout),
                    settle: Duration::from_secs(a.settle),
                    pids: a.common.pids,
                    metrics,
                    fault,
                },
            )
            .await?;
            emit(&report, a.common.json.as_ref())?;
            if !(report.all_running && report.all_gone) {
                anyhow::bail!(
                    "{}: {} of {} Running, {} gone",
                    report.label,
                    report.running,
                    report.n,
                    report.gone
                );
            }
        }
        Command::NullKubelet(a) => {
            let client = cluster::client(&a.kubeconfig).await?;
            tokio::select! {
                r = null_kubelet::run(client, &a.node, a.concurrency) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Sweep(a) => {
            let client = cluster::client(&a.common.kubeconfig).await?;
            let steps = sweep::run(
                client,
                &a.namespace,
                &a.node,
                a.pods,
                &a.concurrency,
                &a.common.pids,
            )
            .await?;
            emit(&steps, a.common.json.as_ref())?;
        }
    }
    Ok(())
}
