//! The Kubernetes API client every controller shares: a token-bucket rate limit (QPS/burst), retries
//! of throttled and failed requests with backoff, per-verb/code request metrics, and one warning
//! per API server outage — each a small tower layer over kube's default HTTP stack.

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
    /// HTTP/2 connections ordinary requests are spread over (watches, followed logs and
    /// upgrades always get their own): [`crate::transport::MULTIPLEXED_CONNECTIONS`] for the
    /// pod traffic of a burst, one for a client as light as the Lease heartbeat.
    pub connections: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        // Sized for bursts: a 1.20-era kubelet's 5 QPS makes 300 pods take a minute; the API
        // server's own inflight limits and 429s (which we honour) protect it from us.
        Self {
            qps: 500.0,
            burst: 1000,
            max_retries: 8,
            connections: crate::transport::MULTIPLEXED_CONNECTIONS,
        }
    }
}

/// Build the shared client from a resolved kube config.
pub fn build_client(
    config: kube::Config,
    options: ClientOptions,
    metrics: Arc<Metrics>,
) -> Result<kube::Client, kube::Error> {
    let builder = match crate::transport::api_service(&config, options.connections)? {
        Some(service) => ClientBuilder::new(service, config.default_namespace.clone()),
        None => ClientBuilder::try_from(config)?,
    };
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(4096))
        .with_layer(&MetricsLayer { metrics })
        // Inside the retries: every attempt counts, so an outage is seen at its first failure.
        .with_layer(&ReachabilityLayer::default())
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

/// How long after one outage warning another outage is logged at debug only (and its end too):
/// an API server that flaps (one of several behind a load balancer failing, say) would otherwise
/// log a warning and an info line per flap. An outage still going on when this has passed since
/// the last warning gets its own warning.
pub const OUTAGE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the API server answers, judged from every request's outcome: the state machine
/// behind "one warning per outage". Pure (the caller passes the clock), so it is tested without
/// a server or sleeps.
#[derive(Debug, Default)]
pub struct Reachability {
    outage: Option<Outage>,
    /// When reachability last changed. A request sent before says nothing about the new state:
    /// a request that was stuck while the server was away can fail after others already
    /// succeed again, and must not open a second outage.
    changed_at: Option<Instant>,
    last_warning: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    failures: u64,
    warned: bool,
}

/// What to log after an outcome, besides the per-request debug line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Nothing,
    /// Requests started failing: warn, once.
    Unreachable,
    /// Requests succeed again; `warned`: the outage was warned about (so its end is worth info).
    Reachable {
        after: Duration,
        failures: u64,
        warned: bool,
    },
}

impl Reachability {
    /// A request sent at `started` got no answer (or a gateway's 502/504) at `now`.
    pub fn failed(&mut self, started: Instant, now: Instant) -> Report {
        let outage = match &mut self.outage {
            Some(outage) => {
                outage.failures += 1;
                outage
            }
            None if self.changed_at.is_some_and(|t| started < t) => return Report::Nothing,
            None => {
                self.changed_at = Some(now);
                self.outage.insert(Outage {
                    since: now,
                    failures: 1,
                    warned: false,
                })
            }
        };
        let due = self
            .last_warning
            .is_none_or(|t| now.saturating_duration_since(t) >= OUTAGE_WARNING_INTERVAL);
        if outage.warned || !due {
            return Report::Nothing;
        }
        outage.warned = true;
        self.last_warning = Some(now);
        Report::Unreachable
    }

    /// The API server answered a request sent at `started`, at `now`.
    pub fn answered(&mut self, started: Instant, now: Instant) -> Report {
        match self.outage {
            Some(_) if self.changed_at.is_some_and(|t| started < t) => Report::Nothing,
            Some(outage) => {
                self.outage = None;
                self.changed_at = Some(now);
                Report::Reachable {
                    after: now.saturating_duration_since(outage.since),
                    failures: outage.failures,
                    warned: outage.warned,
                }
            }
            None => Report::Nothing,
        }
    }

    pub fn is_reachable(&self) -> bool {
        self.outage.is_none()
    }
}

/// Logs one warning when API requests start failing and one info line when they succeed again;
/// each failed request at debug. kube's own HTTP trace layer logs every failed request at ERROR
/// (hundreds while the API server restarts); the binary drops those lines, since these say the
/// same.
#[derive(Clone, Default)]
pub struct ReachabilityLayer {
    state: Arc<Mutex<Reachability>>,
}

impl ReachabilityLayer {
    pub fn is_reachable(&self) -> bool {
        self.state.lock().is_reachable()
    }
}

impl<S> Layer<S> for ReachabilityLayer {
    type Service = ReachabilityService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReachabilityService {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ReachabilityService<S> {
    inner: S,
    state: Arc<Mutex<Reachability>>,
}

impl<S, B> Service<Request<Body>> for ReachabilityService<S>
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
        let method = req.method().clone();
        let uri = req.uri().clone();
        let inner = self.inner.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let started = Instant::now();
            let res = inner.oneshot(req).await.map_err(Into::into);
            let failure = match &res {
                Err(e) => Some(error_chain(e.as_ref())),
                Ok(r) if is_gateway_error(r.status()) => Some(format!("HTTP {}", r.status())),
                Ok(r) => {
                    if r.status().is_server_error() {
                        tracing::debug!(%method, %uri, status = %r.status(), "API request failed");
                    }
                    None
                }
            };
            let now = Instant::now();
            match failure {
                Some(error) => {
                    tracing::debug!(%method, %uri, %error, "API request failed");
                    let report = state.lock().failed(started, now);
                    if report == Report::Unreachable {
                        tracing::warn!(
                            %error,
                            "API server unreachable: {error} (failed requests are logged at debug until it answers again)"
                        );
                    }
                }
                None => {
                    let report = state.lock().answered(started, now);
                    if let Report::Reachable {
                        after,
                        failures,
                        warned,
                    } = report
                    {
                        if warned {
                            tracing::info!(?after, failures, "API server reachable again");
                        } else {
                            tracing::debug!(?after, failures, "API server reachable again");
                        }
                    }
                }
            }
            res
        })
    }
}

/// A gateway in front of the API server could not reach it.
fn is_gateway_error(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    )
}

/// An error with its causes: hyper's top-level message ("client error (Connect)") alone does not
/// say what went wrong.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn one_warning_per_outage_and_one_report_when_it_ends() {
        let mut r = Reachability::default();
        let t0 = Instant::now();
        assert_eq!(r.answered(t0, at(t0, 0.1)), Report::Nothing);
        // The API server goes away for a second: hundreds of failures, one warning.
        assert_eq!(r.failed(at(t0, 1.0), at(t0, 1.0)), Report::Unreachable);
        for i in 0..300 {
            let t = at(t0, 1.0 + f64::from(i) / 300.0);
            assert_eq!(r.failed(t, t), Report::Nothing);
        }
        assert!(!r.is_reachable());
        assert_eq!(
            r.answered(at(t0, 2.0), at(t0, 2.0)),
            Report::Reachable {
                after: Duration::from_secs(1),
                failures: 301,
                warned: true
            }
        );
        assert!(r.is_reachable());
        assert_eq!(r.answered(at(t0, 2.1), at(t0, 2.1)), Report::Nothing);
    }

    #[test]
    fn stale_outcomes_do_not_open_or_close_an_outage() {
        let mut r = Reachability::default();
        let t0 = Instant::now();
        assert_eq!(r.failed(at(t0, 1.0), at(t0, 1.0)), Report::Unreachable);
        // Sent before the outage was noticed, answered during it: says nothing about now.
        assert_eq!(r.answered(at(t0, 0.5), at(t0, 1.5)), Report::Nothing);
        assert!(!r.is_reachable());
        assert!(matches!(
            r.answered(at(t0, 2.0), at(t0, 2.0)),
            Report::Reachable { .. }
        ));
        // A request stuck during the outage fails after the recovery: no second outage.
        assert_eq!(r.failed(at(t0, 1.8), at(t0, 2.5)), Report::Nothing);
        assert!(r.is_reachable());
    }

    #[test]
    fn a_flapping_server_warns_at_most_once_per_interval() {
        let mut r = Reachability::default();
        let t0 = Instant::now();
        assert_eq!(r.failed(t0, t0), Report::Unreachable);
        assert!(matches!(
            r.answered(at(t0, 1.0), at(t0, 1.0)),
            Report::Reachable { warned: true, .. }
        ));
        // A second, short outage right after: debug only, start and end.
        assert_eq!(r.failed(at(t0, 5.0), at(t0, 5.0)), Report::Nothing);
        assert_eq!(
            r.answered(at(t0, 6.0), at(t0, 6.0)),
            Report::Reachable {
                after: Duration::from_secs(1),
                failures: 1,
                warned: false
            }
        );
        // A third that lasts: warned once the interval since the last warning is over.
        assert_eq!(r.failed(at(t0, 10.0), at(t0, 10.0)), Report::Nothing);
        assert_eq!(r.failed(at(t0, 30.0), at(t0, 30.0)), Report::Nothing);
        assert_eq!(r.failed(at(t0, 60.0), at(t0, 60.0)), Report::Unreachable);
        assert_eq!(r.failed(at(t0, 61.0), at(t0, 61.0)), Report::Nothing);
        assert!(matches!(
            r.answered(at(t0, 70.0), at(t0, 70.0)),
            Report::Reachable {
                failures: 4,
                warned: true,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn layer_tracks_every_attempt() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        // Fails twice in transit, then a gateway error, then answers.
        let inner = tower::service_fn(move |_req: Request<Body>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Err::<Response<()>, BoxError>("connection refused".into()),
                    2 => Ok(Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .body(())
                        .unwrap_or_default()),
                    _ => Ok(Response::new(())),
                }
            }
        });
        let layer = ReachabilityLayer::default();
        let svc = layer.layer(inner);
        let get = || Request::get("/api/v1/pods").body(Body::empty()).unwrap();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(10)).await;
            let _ = svc.clone().oneshot(get()).await;
            assert!(!layer.is_reachable());
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        let res = svc.clone().oneshot(get()).await;
        assert!(res.is_ok());
        assert!(layer.is_reachable());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn error_chain_names_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = kube::Error::Service(Box::new(io));
        assert_eq!(
            error_chain(&e),
            "ServiceError: connection refused",
            "a cause already in the message is not repeated"
        );
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Top(#[source] std::io::Error);
        let e = Top(std::io::Error::other("tcp connect error"));
        assert_eq!(error_chain(&e), "client error (Connect): tcp connect error");
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
