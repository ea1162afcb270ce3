//! The webhook's HTTPS server: `POST /mutate-pods` takes an `AdmissionReview` and answers one;
//! `GET /healthz`. A body that is not a review gets a 400 with a Kubernetes `Status`, as every
//! vkubelet endpoint answers bad input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vk_kubelet_api::ApiError;

use crate::cache::WorkloadCache;
use crate::register::WEBHOOK_PATH;
use crate::review::{PolicyConfig, review};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reviews carry one object (≤ 1.5 MiB in etcd) twice at most (object and oldObject).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `skipped`, `unchanged`, `mutated`, `denied`, `invalid`.
    pub outcome: &'static str,
}

/// Reviews by outcome and their latency (the API server waits on every one).
#[derive(Clone)]
pub struct WebhookMetrics {
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_seconds: Histogram,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            reviews: Family::default(),
            review_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        }
    }
}

impl WebhookMetrics {
    /// Register in `registry` (pass it to `vk_core::metrics::Metrics::new_with`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_reviews",
            "Burst-policy admission reviews by outcome",
            self.reviews.clone(),
        );
        registry.register(
            "webhook_review_duration_seconds",
            "Time to answer a burst-policy admission review",
            self.review_seconds.clone(),
        );
    }
}

#[derive(Clone)]
struct AppState {
    policy: Arc<PolicyConfig>,
    cache: WorkloadCache,
    metrics: WebhookMetrics,
}

pub struct WebhookServer {
    router: Router,
    tls: TlsAcceptor,
}

impl WebhookServer {
    pub fn new(
        tls: Arc<ServerConfig>,
        policy: PolicyConfig,
        cache: WorkloadCache,
        metrics: WebhookMetrics,
    ) -> Self {
        let state = AppState {
            policy: Arc::new(policy),
            cache,
            metrics,
        };
        let router = Router::new()
            .route(WEBHOOK_PATH, post(mutate))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(|| async { ApiError::not_found("no such path on the vkubelet webhook") })
            .with_state(state);
        Self {
            router,
            tls: TlsAcceptor::from(tls),
        }
    }

    /// Serve until `cancel`.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        let addr = listener.local_addr().ok();
        info!(addr = ?addr, "serving the burst-policy webhook (HTTPS)");
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        connections.spawn(connection(self.router.clone(), self.tls.clone(), tcp, remote));
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a webhook connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        connections.shutdown().await;
    }
}

async fn connection(
    router: Router,
    tls: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%remote, "webhook TLS handshake timed out");
            return;
        }
    };
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await;
    if let Err(e) = served {
        debug!(%remote, error = %e, "webhook connection ended with an error");
    }
}

async fn mutate(State(state): State<AppState>, body: Bytes) -> Response {
    let started = Instant::now();
    if body.len() > MAX_BODY_BYTES {
        return ApiError::bad_request(format!(
            "admission review of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
            body.len()
        ))
        .into_response();
    }
    let review_in: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            state
                .metrics
                .reviews
                .get_or_create(&ReviewLabels { outcome: "invalid" })
                .inc();
            return ApiError::bad_request(format!("the body is not an AdmissionReview: {e}"))
                .into_response();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review_in.try_into() {
        Ok(r) => r,
        Err(_) => {
            state
                .metrics
                .reviews
                .get_or_create(&ReviewLabels { outcome: "invalid" })
                .inc();
            return ApiError::bad_request("the AdmissionReview has no request").into_response();
        }
    };
    let (response, outcome) = review(&state.policy, &state.cache, &request).await;
    state
        .metrics
        .reviews
        .get_or_create(&ReviewLabels {
            outcome: outcome.as_str(),
        })
        .inc();
    state
        .metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    match serde_json::to_vec(&response.into_review()) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::bad_request(format!("cannot encode the review: {e}")).into_response(),
    }
}
