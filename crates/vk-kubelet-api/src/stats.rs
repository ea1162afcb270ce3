//! Resource usage for `/stats/summary` (the kubelet's `stats/v1alpha1` Summary) and
//! `/metrics/resource` (what metrics-server scrapes), from the backend's per-container counters.
//!
//! Backends report cumulative CPU time only; the CPU *rate* (`usageNanoCores`) is computed here
//! from two samples of a container at least [`MIN_RATE_WINDOW`] apart, keeping the previous
//! sample per container between scrapes (as cAdvisor does between housekeeping runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;
use tracing::debug;
use vk_core::pod::PodSummary;
use vk_core::streams::ContainerStats;
use vk_core::{DynProvider, ProviderError};

use crate::metrics::ApiMetrics;
use crate::pods::NodePods;
use crate::status::ApiError;

type PodStatsResult = Result<BTreeMap<String, ContainerStats>, ProviderError>;

/// Samples closer together than this give a noisy rate; the last rate is reported instead.
pub const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);
/// Pods whose stats are fetched from the backend at once.
const CONCURRENT_POD_STATS: usize = 16;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub start_time: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: Time,
    pub containers: Vec<ContainerSummary>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSummary {
    pub name: String,
    pub start_time: Time,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Time,
    /// Absent until a second sample exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: Time,
    /// Backends report no page cache apart from the working set, so usage is the working set.
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    /// The sample the next rate is computed against.
    base_at: Instant,
    base_cpu: u64,
    rate: Option<u64>,
    /// The newest scrape that saw this container.
    generation: u64,
}

/// The previous CPU sample of each container, keyed by pod UID and container name.
#[derive(Default)]
pub struct CpuRates {
    samples: Mutex<HashMap<(String, String), CpuSample>>,
    generation: AtomicU64,
}

impl CpuRates {
    /// Start a scrape; pass the number to [`Self::observe`] and [`Self::finish`].
    pub fn begin(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record `cpu_ns` (cumulative) for a container and return its usage in nanocores.
    pub fn observe(&self, uid: &str, container: &str, cpu_ns: u64, generation: u64) -> Option<u64> {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        let key = (uid.to_string(), container.to_string());
        let Some(s) = samples.get_mut(&key) else {
            samples.insert(
                key,
                CpuSample {
                    base_at: now,
                    base_cpu: cpu_ns,
                    rate: None,
                    generation,
                },
            );
            return None;
        };
        s.generation = s.generation.max(generation);
        if cpu_ns < s.base_cpu {
            // The counter went back: a new container instance. Start over.
            s.base_at = now;
            s.base_cpu = cpu_ns;
            s.rate = None;
            return None;
        }
        let elapsed = now.saturating_duration_since(s.base_at);
        if elapsed >= MIN_RATE_WINDOW {
            let rate = u128::from(cpu_ns - s.base_cpu) * 1_000_000_000 / elapsed.as_nanos();
            s.rate = Some(u64::try_from(rate).unwrap_or(u64::MAX));
            s.base_at = now;
            s.base_cpu = cpu_ns;
        }
        s.rate
    }

    /// Forget containers that no scrape since `generation` has seen (their pods are gone).
    pub fn finish(&self, generation: u64) {
        self.samples
            .lock()
            .retain(|_, s| s.generation >= generation);
    }

    pub fn len(&self) -> usize {
        self.samples.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds summaries for one node.
pub struct StatsCollector {
    node: String,
    provider: DynProvider,
    pods: Arc<dyn NodePods>,
    started: Timestamp,
    rates: CpuRates,
    metrics: ApiMetrics,
}

fn container_start(pod: Option<&k8s_openapi::api::core::v1::Pod>, name: &str) -> Option<Time> {
    let status = pod?.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
}

fn sum<'a>(
    items: impl Iterator<Item = (&'a CpuStats, &'a MemoryStats)>,
    time: &Time,
) -> (CpuStats, MemoryStats) {
    let mut cpu = CpuStats {
        time: time.clone(),
        usage_nano_cores: Some(0),
        usage_core_nano_seconds: 0,
    };
    let mut mem = MemoryStats {
        time: time.clone(),
        usage_bytes: 0,
        working_set_bytes: 0,
        rss_bytes: 0,
    };
    for (c, m) in items {
        cpu.usage_core_nano_seconds = cpu
            .usage_core_nano_seconds
            .saturating_add(c.usage_core_nano_seconds);
        // A rate is known for the sum only when it is known for every part.
        cpu.usage_nano_cores = match (cpu.usage_nano_cores, c.usage_nano_cores) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
        mem.usage_bytes = mem.usage_bytes.saturating_add(m.usage_bytes);
        mem.working_set_bytes = mem.working_set_bytes.saturating_add(m.working_set_bytes);
        mem.rss_bytes = mem.rss_bytes.saturating_add(m.rss_bytes);
    }
    (cpu, mem)
}

impl StatsCollector {
    pub fn new(
        node: impl Into<String>,
        provider: DynProvider,
        pods: Arc<dyn NodePods>,
        metrics: ApiMetrics,
    ) -> Self {
        Self {
            node: node.into(),
            provider,
            pods,
            started: Timestamp::now(),
            rates: CpuRates::default(),
            metrics,
        }
    }

    /// The node's summary: every pod on the backend with its containers' usage, and the node as
    /// their sum (a virtual node's usage is its pods'). A backend without stats is a 501.
    pub async fn summary(&self) -> Result<Summary, ApiError> {
        let mut on_backend: Vec<PodSummary> = self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| p.on_backend)
            .collect();
        on_backend
            .sort_by(|a, b| (&a.key.namespace, &a.key.name).cmp(&(&b.key.namespace, &b.key.name)));
        let provider = self.provider.clone();
        let fetched: Vec<(PodSummary, PodStatsResult)> = futures::stream::iter(on_backend)
            .map(|p| {
                let provider = provider.clone();
                async move {
                    let r = provider.pod_stats(&p.key).await;
                    (p, r)
                }
            })
            .buffered(CONCURRENT_POD_STATS)
            .collect()
            .await;
        let generation = self.rates.begin();
        let now = Time(Timestamp::now());
        let mut pods = Vec::new();
        for (p, result) in fetched {
            let stats = match result {
                Ok(s) => s,
                // The pod left between the listing and the call.
                Err(ProviderError::NotFound(_)) => continue,
                Err(e @ ProviderError::NotSupported(_)) => {
                    return Err(ApiError::from_provider(&e));
                }
                Err(e) => {
                    debug!(node = %self.node, pod = %p.key, error = %e, "pod stats failed; left out");
                    self.metrics
                        .error(&self.node, "kubelet_api_stats", e.metric_label());
                    continue;
                }
            };
            let api_pod = p.pod.as_deref();
            let pod_start = api_pod
                .and_then(|a| a.status.as_ref()?.start_time.clone())
                .unwrap_or(Time(self.started));
            let containers: Vec<ContainerSummary> = stats
                .into_iter()
                .map(|(name, s)| ContainerSummary {
                    start_time: container_start(api_pod, &name)
                        .unwrap_or_else(|| pod_start.clone()),
                    cpu: CpuStats {
                        time: now.clone(),
                        usage_nano_cores: self.rates.observe(
                            &p.key.uid,
                            &name,
                            s.cpu_usage_core_nanoseconds,
                            generation,
                        ),
                        usage_core_nano_seconds: s.cpu_usage_core_nanoseconds,
                    },
                    memory: MemoryStats {
                        time: now.clone(),
                        usage_bytes: s.memory_working_set_bytes,
                        working_set_bytes: s.memory_working_set_bytes,
                        rss_bytes: s.memory_rss_bytes,
                    },
                    name,
                })
                .collect();
            let (cpu, memory) = sum(containers.iter().map(|c| (&c.cpu, &c.memory)), &now);
            pods.push(PodStats {
                pod_ref: PodReference {
                    name: p.key.name.clone(),
                    namespace: p.key.namespace.clone(),
                    uid: p.key.uid.clone(),
                },
                start_time: pod_start,
                containers,
                cpu,
                memory,
            });
        }
        self.rates.finish(generation);
        let (cpu, memory) = sum(pods.iter().map(|p| (&p.cpu, &p.memory)), &now);
        Ok(Summary {
            node: NodeStats {
                node_name: self.node.clone(),
                start_time: Time(self.started),
                cpu: Some(cpu),
                memory: Some(memory),
            },
            pods,
        })
    }
}

/// Escape a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn millis(t: &Time) -> i64 {
    t.0.as_millisecond()
}

/// `/metrics/resource` in the Prometheus text format, with the kubelet's metric names, help
/// texts and sample timestamps (`pkg/kubelet/metrics/collectors/resource_metrics.go`).
/// `summary` is `None` when the stats could not be collected: then only the scrape errors
/// (set to 1) are reported, as the kubelet does.
pub fn resource_metrics(summary: Option<&Summary>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family =
        |name: &str, help: &str, kind: &str, samples: Vec<(String, f64, Option<i64>)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value, ts) in samples {
                match ts {
                    Some(ts) => {
                        let _ = writeln!(out, "{name}{labels} {value} {ts}");
                    }
                    None => {
                        let _ = writeln!(out, "{name}{labels} {value}");
                    }
                }
            }
        };
    let error = if summary.is_some() { 0.0 } else { 1.0 };
    if let Some(s) = summary {
        let cpu_seconds = |c: &CpuStats| c.usage_core_nano_seconds as f64 / 1e9;
        let container_labels = |c: &ContainerSummary, p: &PodStats| {
            format!(
                "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
                label(&c.name),
                label(&p.pod_ref.namespace),
                label(&p.pod_ref.name)
            )
        };
        let pod_labels = |p: &PodStats| {
            format!(
                "{{namespace=\"{}\",pod=\"{}\"}}",
                label(&p.pod_ref.namespace),
                label(&p.pod_ref.name)
            )
        };
        let containers = || {
            s.pods
                .iter()
                .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
        };
        family(
            "container_cpu_usage_seconds_total",
            "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
            "counter",
            containers()
                .map(|(p, c)| {
                    (
                        container_labels(c, p),
                        cpu_seconds(&c.cpu),
                        Some(millis(&c.cpu.time)),
                    )
                })
                .collect(),
        );
        family(
            "container_memory_working_set_bytes",
            "[STABLE] Current working set of the container in bytes",
            "gauge",
            containers()
                .map(|(p, c)| {
                    (
                        container_labels(c, p),
                        c.memory.working_set_bytes as f64,
                        Some(millis(&c.memory.time)),
                    )
                })
                .collect(),
        );
        family(
            "container_start_time_seconds",
            "[STABLE] Start time of the container since unix epoch in seconds",
            "gauge",
            containers()
                .map(|(p, c)| {
                    (
                        container_labels(c, p),
                        c.start_time.0.as_second() as f64,
                        None,
                    )
                })
                .collect(),
        );
        if let Some(cpu) = &s.node.cpu {
            family(
                "node_cpu_usage_seconds_total",
                "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
                "counter",
                vec![(String::new(), cpu_seconds(cpu), Some(millis(&cpu.time)))],
            );
        }
        if let Some(mem) = &s.node.memory {
            family(
                "node_memory_working_set_bytes",
                "[STABLE] Current working set of the node in bytes",
                "gauge",
                vec![(
                    String::new(),
                    mem.working_set_bytes as f64,
                    Some(millis(&mem.time)),
                )],
            );
        }
        family(
            "pod_cpu_usage_seconds_total",
            "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
            "counter",
            s.pods
                .iter()
                .map(|p| {
                    (
                        pod_labels(p),
                        cpu_seconds(&p.cpu),
                        Some(millis(&p.cpu.time)),
                    )
                })
                .collect(),
        );
        family(
            "pod_memory_working_set_bytes",
            "[STABLE] Current working set of the pod in bytes",
            "gauge",
            s.pods
                .iter()
                .map(|p| {
                    (
                        pod_labels(p),
                        p.memory.working_set_bytes as f64,
                        Some(millis(&p.memory.time)),
                    )
                })
                .collect(),
        );
    }
    family(
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        vec![(String::new(), error, None)],
    );
    family(
        "scrape_error",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        vec![(String::new(), error, None)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use k8s_openapi::api::core::v1::{Pod, PodStatus};
    use vk_core::{PodKey, Provider};

    #[tokio::test(start_paused = true)]
    async fn rate_from_two_samples_a_window_apart() {
        let r = CpuRates::default();
        let g = r.begin();
        assert_eq!(
            r.observe("u", "c", 1_000_000_000, g),
            None,
            "one sample: no rate"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        // 1 s of CPU over 2 s: half a core.
        assert_eq!(
            r.observe("u", "c", 2_000_000_000, r.begin()),
            Some(500_000_000)
        );
        // Too soon for a new window: the last rate stands, the base is kept.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            r.observe("u", "c", 2_050_000_000, r.begin()),
            Some(500_000_000)
        );
        tokio::time::advance(Duration::from_millis(900)).await;
        // 0.25 s of CPU over the 1 s since the base: a quarter core.
        assert_eq!(
            r.observe("u", "c", 2_250_000_000, r.begin()),
            Some(250_000_000)
        );
        // A restart resets the counter: no rate until the next window.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(r.observe("u", "c", 10, r.begin()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            r.observe("u", "c", 1_000_000_010, r.begin()),
            Some(1_000_000_000)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn containers_gone_from_a_scrape_are_forgotten() {
        let r = CpuRates::default();
        let g = r.begin();
        r.observe("u1", "c", 1, g);
        r.observe("u2", "c", 1, g);
        r.finish(g);
        assert_eq!(r.len(), 2);
        let g = r.begin();
        r.observe("u1", "c", 2, g);
        r.finish(g);
        assert_eq!(r.len(), 1);
        // An overlapping scrape that started earlier never drops what a newer one saw.
        let older = r.begin();
        let newer = r.begin();
        r.observe("u1", "c", 3, newer);
        r.observe("u1", "c", 4, older);
        r.finish(newer);
        assert_eq!(r.len(), 1);
    }

    struct FixedPods(Vec<PodSummary>);

    #[async_trait]
    impl NodePods for FixedPods {
        fn find(&self, ns: &str, name: &str) -> Option<PodSummary> {
            self.0
                .iter()
                .find(|p| p.key.namespace == ns && p.key.name == name)
                .cloned()
        }
        fn snapshot(&self) -> Vec<PodSummary> {
            self.0.clone()
        }
        async fn bound_pods(&self) -> Result<Vec<Pod>, ApiError> {
            Ok(Vec::new())
        }
    }

    /// Each call reports one more CPU second per container.
    struct Counting(Mutex<u64>, bool);

    #[async_trait]
    impl Provider for Counting {
        fn kind(&self) -> &str {
            "test"
        }
        async fn start(&self, _: vk_core::ProviderSinks) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn node_resources(&self) -> Result<vk_core::NodeResources, ProviderError> {
            Ok(Default::default())
        }
        async fn create_pod(&self, _: &vk_core::ResolvedPod) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn update_pod(&self, _: &vk_core::ResolvedPod) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn delete_pod(&self, _: &PodKey, _: Duration) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list_pods(&self) -> Result<Vec<vk_core::BackendPod>, ProviderError> {
            Ok(Vec::new())
        }
        async fn cleanup_all(&self) -> Result<usize, ProviderError> {
            Ok(0)
        }
        async fn pod_stats(
            &self,
            key: &PodKey,
        ) -> Result<BTreeMap<String, ContainerStats>, ProviderError> {
            if !self.1 {
                return Err(ProviderError::NotSupported("stats".into()));
            }
            if key.name == "gone" {
                return Err(ProviderError::NotFound("gone".into()));
            }
            let mut n = self.0.lock();
            *n += 1;
            let s = ContainerStats {
                cpu_usage_core_nanoseconds: *n * 1_000_000_000,
                memory_working_set_bytes: 100,
                memory_rss_bytes: 50,
            };
            Ok([("a".to_string(), s), ("b".to_string(), s)].into())
        }
    }

    fn summary(name: &str, on_backend: bool) -> PodSummary {
        let started: Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        PodSummary {
            key: PodKey::new(format!("uid-{name}"), "ns", name),
            pod: Some(Arc::new(Pod {
                status: Some(PodStatus {
                    start_time: Some(Time(started)),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            on_backend,
        }
    }

    fn collector(supported: bool) -> StatsCollector {
        let pods = vec![
            summary("web", true),
            summary("gone", true),
            summary("pending", false),
        ];
        StatsCollector::new(
            "vk-1",
            Arc::new(Counting(Mutex::new(0), supported)),
            Arc::new(FixedPods(pods)),
            ApiMetrics::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn summary_sums_containers_into_pods_and_node() {
        let c = collector(true);
        let s = c.summary().await.unwrap();
        assert_eq!(s.pods.len(), 1, "pending and gone pods are left out");
        let p = &s.pods[0];
        assert_eq!(p.pod_ref.name, "web");
        assert_eq!(p.containers.len(), 2);
        assert_eq!(p.cpu.usage_core_nano_seconds, 2_000_000_000);
        assert_eq!(p.cpu.usage_nano_cores, None, "first scrape");
        assert_eq!(p.memory.working_set_bytes, 200);
        let node_cpu = s.node.cpu.clone().unwrap();
        assert_eq!(node_cpu.usage_core_nano_seconds, 2_000_000_000);
        tokio::time::advance(Duration::from_secs(4)).await;
        let s = c.summary().await.unwrap();
        // The counter went up by 1 s per container over 4 s: 0.25 cores each.
        let p = &s.pods[0];
        assert_eq!(p.containers[0].cpu.usage_nano_cores, Some(250_000_000));
        assert_eq!(p.cpu.usage_nano_cores, Some(500_000_000));
        assert_eq!(
            s.node.cpu.clone().unwrap().usage_nano_cores,
            Some(500_000_000)
        );

        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["node"]["nodeName"], "vk-1");
        assert_eq!(
            v["pods"][0]["podRef"],
            serde_json::json!({"name": "web", "namespace": "ns", "uid": "uid-web"})
        );
        assert_eq!(v["pods"][0]["startTime"], "2024-05-01T10:00:00Z");
        let c0 = &v["pods"][0]["containers"][0];
        assert_eq!(c0["name"], "a");
        assert_eq!(c0["cpu"]["usageNanoCores"], 250_000_000);
        assert_eq!(c0["cpu"]["usageCoreNanoSeconds"], 2_000_000_000u64);
        assert_eq!(c0["memory"]["workingSetBytes"], 100);
        assert_eq!(c0["memory"]["rssBytes"], 50);
        assert_eq!(c0["memory"]["usageBytes"], 100);
        assert!(c0["cpu"]["time"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn backend_without_stats_is_501() {
        let e = collector(false).summary().await.unwrap_err();
        assert_eq!(e.code.as_u16(), 501);
    }

    #[tokio::test(start_paused = true)]
    async fn resource_metrics_use_the_kubelet_names() {
        let c = collector(true);
        let s = c.summary().await.unwrap();
        let text = resource_metrics(Some(&s));
        let ts = millis(&s.node.cpu.clone().unwrap().time);
        for want in [
            "# TYPE container_cpu_usage_seconds_total counter".to_string(),
            format!(
                r#"container_cpu_usage_seconds_total{{container="a",namespace="ns",pod="web"}} 1 {ts}"#
            ),
            format!(
                r#"container_memory_working_set_bytes{{container="b",namespace="ns",pod="web"}} 100 {ts}"#
            ),
            format!("node_cpu_usage_seconds_total 2 {ts}"),
            format!("node_memory_working_set_bytes 200 {ts}"),
            format!(r#"pod_cpu_usage_seconds_total{{namespace="ns",pod="web"}} 2 {ts}"#),
            format!(r#"pod_memory_working_set_bytes{{namespace="ns",pod="web"}} 200 {ts}"#),
            r#"container_start_time_seconds{container="a",namespace="ns",pod="web"} 1714557600"#
                .to_string(),
            "scrape_error 0".to_string(),
            "resource_scrape_error 0".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        let failed = resource_metrics(None);
        assert!(failed.lines().any(|l| l == "scrape_error 1"), "{failed}");
        assert!(
            !failed.contains("container_cpu_usage_seconds_total{"),
            "{failed}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
