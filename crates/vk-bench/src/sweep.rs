//! Saturation sweep: the same number of creates at rising concurrency, no kubelet. When the
//! create rate stops growing while request latency keeps growing, and the generator's CPU stays
//! a small share of the API server's and etcd's, the API server is the limit, not the generator.

use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde::Serialize;

use crate::burst::{create_pods, delete_pods};
use crate::cluster::{ensure_namespace, ensure_node};
use crate::procstat::{self, Sampler, round2};
use crate::stats::Percentiles;

#[derive(Debug, Serialize)]
pub struct SweepStep {
    pub concurrency: usize,
    pub pods: usize,
    pub create_rate_per_s: f64,
    pub create_request: Percentiles,
    pub retries: u64,
    pub failures: usize,
    pub generator_cpu_s: f64,
    pub generator_cores: f64,
    /// CPU seconds and cores of each measured process (kube-apiserver, etcd) over the creates.
    pub processes: Vec<(String, f64, f64)>,
    pub loadavg: Option<[f64; 3]>,
}

pub async fn run(
    client: kube::Client,
    namespace: &str,
    node: &str,
    pods: usize,
    levels: &[usize],
    pids: &[(String, u32)],
) -> anyhow::Result<Vec<SweepStep>> {
    ensure_namespace(&client, namespace).await?;
    ensure_node(&client, node).await?;
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let samplers: Vec<(String, Sampler)> = pids
        .iter()
        .map(|(role, pid)| (role.clone(), Sampler::start(*pid)))
        .collect();
    let mut steps = Vec::new();
    for &concurrency in levels {
        let before: Vec<f64> = samplers
            .iter()
            .map(|(_, s)| s.read().map(|r| r.cpu_seconds).unwrap_or_default())
            .collect();
        let gen0 = procstat::read(None).unwrap_or_default();
        let t0 = Instant::now();
        let creates = create_pods(&api, node, 0..pods, concurrency, &Default::default()).await?;
        let secs = t0.elapsed().as_secs_f64().max(1e-3);
        let gen1 = procstat::read(None).unwrap_or_default();
        let processes = samplers
            .iter()
            .zip(&before)
            .map(|((role, s), b)| {
                let cpu = s.read().map(|r| r.cpu_seconds).unwrap_or_default() - b;
                (role.clone(), round2(cpu), round2(cpu / secs))
            })
            .collect();
        let ok = creates.iter().filter(|c| c.ok).count();
        let gen_cpu = gen1.cpu_seconds - gen0.cpu_seconds;
        let step = SweepStep {
            concurrency,
            pods,
            create_rate_per_s: round2(ok as f64 / secs),
            create_request: Percentiles::of_seconds(creates.iter().map(|c| c.seconds).collect()),
            retries: creates.iter().map(|c| u64::from(c.retries)).sum(),
            failures: pods - ok,
            generator_cpu_s: round2(gen_cpu),
            generator_cores: round2(gen_cpu / secs),
            processes,
            loadavg: procstat::loadavg(),
        };
        tracing::info!(?step, "sweep step");
        steps.push(step);
        // No kubelet runs these pods: remove them at once, unmeasured.
        let force = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        delete_pods(&api, 0..pods, &force, 64).await;
    }
    Ok(steps)
}
