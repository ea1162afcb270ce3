//! The kubelet API's routes for one node. Authentication and authorization happen before a
//! request gets here (see [`crate::server`]).

pub mod logs;
pub mod streaming;

#[cfg(test)]
mod props;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::instrument;
use vk_core::DynProvider;
use vk_core::metrics::Metrics;

use crate::metrics::ApiMetrics;
use crate::pods::{NodePods, pod_list, running_pod};
use crate::stats::{StatsCollector, resource_metrics};
use crate::status::ApiError;

/// Everything the routes of one node need.
pub struct NodeApi {
    pub node: String,
    pub provider: DynProvider,
    pub pods: Arc<dyn NodePods>,
    pub stats: StatsCollector,
    pub metrics: ApiMetrics,
    /// The process's metrics for `/metrics` (`None`: the route answers 404).
    pub registry: Option<Arc<Metrics>>,
    /// Timeouts and limits of exec/attach/port-forward sessions.
    pub streaming: vk_streaming::StreamConfig,
}

impl NodeApi {
    pub fn new(
        node: impl Into<String>,
        provider: DynProvider,
        pods: Arc<dyn NodePods>,
        metrics: ApiMetrics,
        registry: Option<Arc<Metrics>>,
    ) -> Self {
        let node = node.into();
        Self {
            stats: StatsCollector::new(&node, provider.clone(), pods.clone(), metrics.clone()),
            node,
            provider,
            pods,
            metrics,
            registry,
            streaming: vk_streaming::StreamConfig::default(),
        }
    }
}

/// The path a request counts under in metrics: the kubelet's buckets (first segment, or
/// `metrics/<name>`), `other` for anything unknown, so the label set stays bounded.
pub fn route_bucket(path: &str) -> &'static str {
    let mut parts = path.trim_start_matches('/').split('/');
    let first = parts.next().unwrap_or("");
    match (first, parts.next()) {
        ("metrics", Some("resource")) => "metrics/resource",
        ("metrics", Some(_)) => "other",
        ("metrics", None) => "metrics",
        ("containerLogs", _) => "containerLogs",
        ("exec", _) => "exec",
        ("attach", _) => "attach",
        ("portForward", _) => "portForward",
        ("run", _) => "run",
        ("pods", _) => "pods",
        ("runningpods", _) => "runningpods",
        ("stats", _) => "stats",
        ("healthz", _) => "healthz",
        _ => "other",
    }
}

pub fn router(api: Arc<NodeApi>) -> Router {
    use streaming as s;
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(s::exec).post(s::exec),
        )
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            get(s::exec_uid).post(s::exec_uid),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(s::attach).post(s::attach),
        )
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            get(s::attach_uid).post(s::attach_uid),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(s::port_forward).post(s::port_forward),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            get(s::port_forward_uid).post(s::port_forward_uid),
        )
        // The kubelet serves /run for POST only.
        .route("/run/{namespace}/{pod}/{container}", post(s::run))
        .route("/run/{namespace}/{pod}/{uid}/{container}", post(s::run_uid))
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/runningpods/", get(running_pods))
        .route("/runningpods", get(running_pods))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/resource", get(metrics_resource))
        .route("/metrics", get(process_metrics))
        .route("/healthz", get(healthz))
        .route("/healthz/ping", get(healthz))
        .fallback(|| async {
            ApiError::not_found("the server could not find the requested resource")
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(api)
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = body.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => ApiError::internal(format!("encoding the response: {e}")).into_response(),
    }
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn text(content_type: &'static str, body: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `/pods`: the pods bound to this node, whole, as a `PodList`.
#[instrument(skip_all, fields(node = %api.node))]
async fn pods(State(api): State<Arc<NodeApi>>) -> Response {
    match api.pods.bound_pods().await {
        Ok(pods) => json(&pod_list(pods)),
        Err(e) => {
            api.metrics.error(&api.node, "kubelet_api_pods", "api");
            e.into_response()
        }
    }
}

/// `/runningpods/`: what runs on the backend, minimal (identity, running containers).
#[instrument(skip_all, fields(node = %api.node))]
async fn running_pods(State(api): State<Arc<NodeApi>>) -> Response {
    let mut pods: Vec<_> = api.pods.snapshot().iter().filter_map(running_pod).collect();
    pods.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    json(&pod_list(pods))
}

#[instrument(skip_all, fields(node = %api.node))]
async fn stats_summary(State(api): State<Arc<NodeApi>>) -> Response {
    match api.stats.summary().await {
        Ok(s) => json(&s),
        Err(e) => e.into_response(),
    }
}

#[instrument(skip_all, fields(node = %api.node))]
async fn metrics_resource(State(api): State<Arc<NodeApi>>) -> Response {
    let summary = api.stats.summary().await;
    if let Err(e) = &summary {
        tracing::debug!(error = %e, "resource metrics without stats");
    }
    text(PROMETHEUS_TEXT, resource_metrics(summary.ok().as_ref()))
}

async fn process_metrics(State(api): State<Arc<NodeApi>>) -> Response {
    match &api.registry {
        Some(m) => text(PROMETHEUS_TEXT, m.encode()),
        None => ApiError::not_found("no metrics registry").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_bounded() {
        assert_eq!(route_bucket("/containerLogs/ns/p/c"), "containerLogs");
        assert_eq!(route_bucket("/metrics/resource"), "metrics/resource");
        assert_eq!(route_bucket("/metrics"), "metrics");
        assert_eq!(route_bucket("/metrics/cadvisor"), "other");
        assert_eq!(route_bucket("/stats/summary"), "stats");
        assert_eq!(route_bucket("/runningpods/"), "runningpods");
        assert_eq!(route_bucket("/"), "other");
        assert_eq!(route_bucket("/whatever/you/like"), "other");
    }
}
