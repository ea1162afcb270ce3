//! vkubelet's self-metrics in Prometheus text format: pods by phase, provider call latency,
//! API requests by verb and code, work-queue depth and latency, reconcile duration, status writes
//! per pod, pod-watch lists, errors by label.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub node: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    pub node: String,
    pub operation: &'static str,
    /// `ok` or the error's metric label.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub verb: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub node: String,
    /// `done`, `requeue` (come back after a delay), `retry` (a handled failure, with backoff) or
    /// `error`.
    pub outcome: &'static str,
    /// The error's metric label when `outcome` is `error`, else empty: both come from fixed sets,
    /// so the series stay bounded whatever fails.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub node: String,
    pub operation: &'static str,
    pub error: &'static str,
}

type Refresher = Box<dyn Fn() + Send + Sync>;

/// All metrics of one vkubelet process; shared by every virtual node in it.
pub struct Metrics {
    registry: Registry,
    refreshers: Mutex<Vec<Refresher>>,
    pub pods: Family<PhaseLabels, Gauge>,
    pub provider_call_seconds: Family<ProviderCallLabels, Histogram>,
    pub api_requests: Family<ApiRequestLabels, Counter>,
    pub queue_depth: Family<NodeLabels, Gauge>,
    /// From a key becoming due (added, or its delay or backoff over) to a worker taking it.
    pub queue_latency_seconds: Family<NodeLabels, Histogram>,
    /// One pod's reconcile, by outcome.
    pub reconcile_seconds: Family<ReconcileLabels, Histogram>,
    pub status_patches: Family<NodeLabels, Counter>,
    pub status_writes_per_pod: Family<NodeLabels, Histogram>,
    pub pods_created: Family<NodeLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub events_sent: Counter,
    pub events_dropped: Counter,
    pub lease_renewals: Family<NodeLabels, Counter>,
    /// Complete lists of the node's pods by the pod watch: one at start, then one per relist
    /// (the watch expired, or the API server it resumed on had lost its place).
    pub pod_watch_lists: Family<NodeLabels, Counter>,
    /// From a pod-watch list's start to its last page, relists included.
    pub pod_watch_list_seconds: Family<NodeLabels, Histogram>,
    /// Objects the resolver keeps for this node's pods (ConfigMaps, Secrets, Service summaries).
    pub resolver_objects: Family<NodeLabels, Gauge>,
    /// Namespace-scoped watches the resolver runs.
    pub resolver_watches: Family<NodeLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Self::new_with(|_| {})
    }

    /// Like [`Self::new`], letting other crates (the kubelet API) register their own metrics in
    /// the same registry, so one scrape shows everything under the `vkubelet_` prefix.
    pub fn new_with(extend: impl FnOnce(&mut Registry)) -> Arc<Self> {
        let mut registry = Registry::with_prefix("vkubelet");
        extend(&mut registry);
        let pods = Family::<PhaseLabels, Gauge>::default();
        registry.register("pods", "Pods on virtual nodes by phase", pods.clone());
        let provider_call_seconds = Family::<ProviderCallLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "provider_call_duration_seconds",
            "Latency of calls into the backend provider",
            provider_call_seconds.clone(),
        );
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server by verb and HTTP code",
            api_requests.clone(),
        );
        let queue_depth = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "workqueue_depth",
            "Pods waiting in the pod work queue",
            queue_depth.clone(),
        );
        let queue_latency_seconds = Family::<NodeLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "Time a pod key waits in the work queue, from when it is due until a worker takes it",
            queue_latency_seconds.clone(),
        );
        let reconcile_seconds = Family::<ReconcileLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one pod's reconcile by outcome (done, requeue, retry, error) and error kind",
            reconcile_seconds.clone(),
        );
        let status_patches = Family::<NodeLabels, Counter>::default();
        registry.register(
            "pod_status_patches",
            "pods/status patches sent",
            status_patches.clone(),
        );
        let status_writes_per_pod = Family::<NodeLabels, Histogram>::new_with_constructor(
            writes_histogram as fn() -> Histogram,
        );
        registry.register(
            "pod_status_writes_per_pod",
            "Status writes a pod needed over its life, observed when it leaves the node",
            status_writes_per_pod.clone(),
        );
        let pods_created = Family::<NodeLabels, Counter>::default();
        registry.register(
            "pods_created",
            "Pods created on the backend",
            pods_created.clone(),
        );
        let resolver_objects = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "resolver_kept_objects",
            "ConfigMaps, Secrets and Service summaries kept for the node's pods",
            resolver_objects.clone(),
        );
        let resolver_watches = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "resolver_namespace_watches",
            "Namespace-scoped watches of referenced objects",
            resolver_watches.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Failed operations by operation and error kind",
            errors.clone(),
        );
        let events_sent = Counter::default();
        registry.register(
            "events_sent",
            "Kubernetes events written",
            events_sent.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Kubernetes events dropped because the event queue was full",
            events_dropped.clone(),
        );
        let lease_renewals = Family::<NodeLabels, Counter>::default();
        registry.register(
            "node_lease_renewals",
            "Successful node Lease renewals",
            lease_renewals.clone(),
        );
        let pod_watch_lists = Family::<NodeLabels, Counter>::default();
        registry.register(
            "pod_watch_lists",
            "Complete lists of the node's pods by the pod watch: the first, then one per relist",
            pod_watch_lists.clone(),
        );
        let pod_watch_list_seconds = Family::<NodeLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "pod_watch_list_duration_seconds",
            "Duration of one list of the node's pods by the pod watch, from its start to its last page",
            pod_watch_list_seconds.clone(),
        );
        Arc::new(Self {
            registry,
            refreshers: Mutex::new(Vec::new()),
            pods,
            provider_call_seconds,
            api_requests,
            queue_depth,
            queue_latency_seconds,
            reconcile_seconds,
            status_patches,
            status_writes_per_pod,
            pods_created,
            errors,
            events_sent,
            events_dropped,
            lease_renewals,
            pod_watch_lists,
            pod_watch_list_seconds,
            resolver_objects,
            resolver_watches,
        })
    }

    /// Register a callback that brings gauges up to date right before each scrape.
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        self.refreshers.lock().push(Box::new(f));
    }

    /// The metrics in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        for refresh in self.refreshers.lock().iter() {
            refresh();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn error(&self, node: &str, operation: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                node: node.to_string(),
                operation,
                error,
            })
            .inc();
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

fn writes_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics_with_labels() {
        let m = Metrics::new();
        m.api_requests
            .get_or_create(&ApiRequestLabels {
                verb: "PATCH",
                code: "200".into(),
            })
            .inc();
        m.error("vk-1", "create", "transient");
        let node = NodeLabels {
            node: "vk-1".into(),
        };
        let depth = m.queue_depth.clone();
        m.on_scrape(move || {
            depth.get_or_create(&node).set(7);
        });
        let text = m.encode();
        assert!(
            text.contains(r#"vkubelet_api_requests_total{verb="PATCH",code="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"vkubelet_errors_total{node="vk-1",operation="create",error="transient"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"vkubelet_workqueue_depth{node="vk-1"} 7"#),
            "{text}"
        );
    }

    #[test]
    fn encodes_reconcile_and_queue_latency_histograms() {
        let m = Metrics::new();
        m.reconcile_seconds
            .get_or_create(&ReconcileLabels {
                node: "vk-1".into(),
                outcome: "error",
                error: "api_transport",
            })
            .observe(0.2);
        m.queue_latency_seconds
            .get_or_create(&NodeLabels {
                node: "vk-1".into(),
            })
            .observe(0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"vkubelet_reconcile_duration_seconds_count{node="vk-1",outcome="error",error="api_transport"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"vkubelet_workqueue_queue_duration_seconds_count{node="vk-1"} 1"#),
            "{text}"
        );
    }
}
