//! The HTTP transport under every API client vkubelet builds ([`crate::client::build_client`]):
//! HTTP/2 for ordinary requests, so a few TLS connections per API server carry every request in
//! flight, and HTTP/1.1 connections of their own for watches, followed log streams and upgrades.
//!
//! Why not kube's default stack: it offers HTTP/1.1 only, so N requests in flight hold N TLS
//! connections. With 256 pod workers a burst opened hundreds, each a handshake and tens of
//! kilobytes of buffers (docs/architecture.md, "Memory"). Long-lived streams stay on HTTP/1.1
//! because each would hold one of the few concurrent streams an API server allows per
//! connection (Go's default is 250) for as long as it lives; upgrades (exec, attach,
//! port-forward over WebSocket or SPDY) cannot run over HTTP/2 on the API server at all.

use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::{Body, ConfigExt, DynBody};
use tower::util::BoxService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// What kube's own builder produces, so the same layers go on top of either.
pub type ApiService = BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// HTTP/2 connections the ordinary requests are spread over, in turn. One (client-go's choice)
/// lost the API server's attention to clients with many connections: in a 10,000-pod burst
/// beside a load generator on 128 HTTP/1.1 connections, vkubelet got 336 status writes/s while
/// the generator's creates ran at 396/s, so pods queued (p99 create→Running 3.6× the null
/// kubelet's); with four, 391 against 419/s and p99 1.49× (2.26× in a second run;
/// docs/testing.md). The API server serves each connection's frames from one goroutine, which is
/// the likely reason.
pub const MULTIPLEXED_CONNECTIONS: usize = 4;

/// With no answer to a ping in this long, an HTTP/2 connection is given up and its requests
/// fail (and are retried on a new one): client-go's read-idle and ping timeouts.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// The transport for `config`, ordinary requests spread over `connections` HTTP/2 connections
/// (at least one), or `None` where kube's own stack must do: a proxy, or a TLS server name
/// override (both are handled only there).
pub fn api_service(
    config: &kube::Config,
    connections: usize,
) -> Result<Option<ApiService>, kube::Error> {
    if config.proxy_url.is_some() || config.tls_server_name.is_some() {
        return Ok(None);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let tls = config.rustls_client_config()?;
    let negotiated = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http.clone());
    let http1_only = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let split = Split {
        multiplexed: (0..connections.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .http2_keep_alive_interval(PING_INTERVAL)
                    .http2_keep_alive_timeout(PING_TIMEOUT)
                    .http2_keep_alive_while_idle(true)
                    .build(negotiated.clone())
            })
            .collect(),
        next: Default::default(),
        dedicated: Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(http1_only),
    };
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(split)
        .map_response(|res: Response<hyper::body::Incoming>| {
            res.map(|body| Box::new(body.map_err(BoxError::from)) as Box<DynBody>)
        });
    Ok(Some(BoxService::new(service)))
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Sends each request over the next multiplexed client in turn, or over a connection of its own
/// when it lives long or upgrades ([`needs_own_connection`]).
#[derive(Clone)]
struct Split {
    multiplexed: std::sync::Arc<[HttpsClient]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dedicated: HttpsClient,
}

impl Service<Request<Body>> for Split {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both clients are always ready: their pools queue requests for a connection.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if needs_own_connection(&req) {
            self.dedicated.request(req)
        } else {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.multiplexed[i % self.multiplexed.len()].request(req)
        }
    }
}

/// Watches, followed logs and upgrades: requests that hold their connection (or take it over).
fn needs_own_connection<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(http::header::UPGRADE)
        || req.uri().query().is_some_and(|query| {
            form_urlencoded::parse(query.as_bytes()).any(|(key, value)| {
                matches!(key.as_ref(), "watch" | "follow") && matches!(value.as_ref(), "true" | "1")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn watches_follows_and_upgrades_get_their_own_connection() {
        assert!(needs_own_connection(&req(
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dvk&watch=true&resourceVersion=5"
        )));
        assert!(needs_own_connection(&req("/api/v1/pods?watch=1")));
        assert!(needs_own_connection(&req(
            "/api/v1/namespaces/a/pods/p/log?follow=true&container=c"
        )));
        let upgrade = Request::get("/api/v1/namespaces/a/pods/p/exec?command=sh")
            .header(http::header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(needs_own_connection(&upgrade));
    }

    #[test]
    fn everything_else_is_multiplexed() {
        assert!(!needs_own_connection(&req("/api/v1/namespaces/a/pods/p")));
        assert!(!needs_own_connection(&req(
            "/api/v1/pods?limit=500&watch=false"
        )));
        assert!(!needs_own_connection(&req(
            "/api/v1/namespaces/a/pods/p/log?follow=false&tailLines=10"
        )));
        // A label value that happens to read "watch=true" is not a watch.
        assert!(!needs_own_connection(&req(
            "/api/v1/pods?labelSelector=watch%3Dtrue"
        )));
    }
}
