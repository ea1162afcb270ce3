//! The Kubernetes API client every controller shares: a token-bucket rate limit (QPS/burst), retries
//! of throttled and failed requests with backoff, and per-verb/code request metrics — each a small
//! tower layer over kube's default HTTP stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::{Body, ClientBuilder};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::metrics::{ApiRequestLabels, Metrics};

/// How hard vkubelet may push the API server.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Sustained requests per second; `0` disables the limit.
    pub qps: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
    /// Retries of a request answered 429/5xx or lost in transit.
    pub max_retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        // Sized for bursts: a 1.20-era kubelet's 5 QPS makes 300 pods take a minute; the API
        // server's own inflight limits and 429s (which we honour) protect it from us.
        Self {
            qps: 500.0,
            burst: 1000,
            max_retries: 8,
        }
    }
}

/// Build the shared client from a resolved kube config.
pub fn build_client(
    config: kube::Config,
    options: ClientOptions,
    metrics: Arc<Metrics>,
) -> Result<kube::Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(4096))
        .with_layer(&MetricsLayer { metrics })
        .with_layer(&RateLimitLayer::new(options.qps, options.burst))
        .with_layer(&tower::retry::RetryLayer::new(RetryPolicy::new(
            options.max_retries,
        )))
        .build())
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A client-go style token bucket: a request takes a token, tokens refill at `qps` up to `burst`.
/// Requests over the budget wait their turn (reservations may drive the balance negative, so
/// waiters are served in arrival order).
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long the caller must wait before its request may go; takes the token.
    pub fn reserve(&self) -> Duration {
        if self.qps <= 0.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut s = self.state.lock();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.qps).min(self.burst);
        s.1 = now;
        s.0 -= 1.0;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.qps)
        }
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<TokenBucket>,
}

impl RateLimitLayer {
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            bucket: Arc::new(TokenBucket::new(qps, burst)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
}

impl<S, B> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let wait = self.bucket.reserve();
        let inner = self.inner.clone();
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            inner.oneshot(req).await.map_err(Into::into)
        })
    }
}

#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<Body>> for RequestMetrics<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let verb = verb_of(&req);
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = inner.oneshot(req).await.map_err(Into::into);
            let code = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "transport_error".to_string(),
            };
            metrics
                .api_requests
                .get_or_create(&ApiRequestLabels { verb, code })
                .inc();
            res
        })
    }
}

fn verb_of<B>(req: &Request<B>) -> &'static str {
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match *req.method() {
        Method::GET if watch => "WATCH",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Retries 429 and 5xx answers (and transport errors) with exponential backoff, honouring
/// `Retry-After`. A POST is retried only when the server certainly did not act on it (429, 503).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    attempt: u32,
    max_retries: u32,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> Self {
        Self {
            attempt: 0,
            max_retries,
        }
    }

    fn backoff(&self) -> Duration {
        let base = Duration::from_millis(100).saturating_mul(1 << self.attempt.min(6));
        base.min(Duration::from_secs(5))
    }

    fn should_retry(method: &Method, status: StatusCode) -> bool {
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => true,
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT => method != Method::POST,
            _ => false,
        }
    }
}

impl<B> tower::retry::Policy<Request<Body>, Response<B>, BoxError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        if self.attempt >= self.max_retries {
            return None;
        }
        let delay = match result {
            Ok(resp) if Self::should_retry(req.method(), resp.status()) => {
                let hinted = resp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(30)));
                hinted.unwrap_or_else(|| self.backoff())
            }
            Err(_) if req.method() != Method::POST => self.backoff(),
            _ => return None,
        };
        self.attempt += 1;
        tracing::debug!(method = %req.method(), uri = %req.uri(), attempt = self.attempt, ?delay, "retrying API request");
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        let body = req.body().try_clone()?;
        let mut clone = Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone())
            .version(req.version());
        if let Some(headers) = clone.headers_mut() {
            headers.extend(req.headers().clone());
        }
        let mut clone = clone.body(body).ok()?;
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_burst_then_paces() {
        let b = TokenBucket::new(10.0, 3);
        assert_eq!(b.reserve(), Duration::ZERO);
        assert_eq!(b.reserve(), Duration::ZERO);
        assert_eq!(b.reserve(), Duration::ZERO);
        let wait = b.reserve();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let wait2 = b.reserve();
        assert!(
            (wait2.as_secs_f64() - 0.2).abs() < 1e-6,
            "queued requests wait in order: {wait2:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.reserve(), Duration::ZERO, "refilled");
    }

    #[test]
    fn zero_qps_means_unlimited() {
        let b = TokenBucket::new(0.0, 1);
        for _ in 0..100 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
    }

    #[test]
    fn retry_rules_by_method_and_status() {
        assert!(RetryPolicy::should_retry(
            &Method::POST,
            StatusCode::TOO_MANY_REQUESTS
        ));
        assert!(!RetryPolicy::should_retry(
            &Method::POST,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
        assert!(RetryPolicy::should_retry(
            &Method::PATCH,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
        assert!(!RetryPolicy::should_retry(
            &Method::PATCH,
            StatusCode::CONFLICT
        ));
        assert!(!RetryPolicy::should_retry(
            &Method::GET,
            StatusCode::NOT_FOUND
        ));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut p = RetryPolicy::new(10);
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(p.backoff().as_millis());
            p.attempt += 1;
        }
        assert_eq!(seen, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn verb_detects_watch() {
        let r = Request::get("/api/v1/pods?fieldSelector=x&watch=true")
            .body(())
            .unwrap_or_default();
        assert_eq!(verb_of(&r), "WATCH");
        let r = Request::get("/api/v1/pods").body(()).unwrap_or_default();
        assert_eq!(verb_of(&r), "GET");
    }
}
