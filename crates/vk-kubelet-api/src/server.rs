//! The HTTPS server of one node: TLS over TCP, HTTP/1.1 with upgrades (for the streaming
//! protocols), and authentication and authorization of every request before routing — as the
//! kubelet filters its whole container, `/healthz` included.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{Auth, UserInfo, request_attributes};
use crate::error::{Error, Result};
use crate::metrics::ApiMetrics;
use crate::routes::{NodeApi, route_bucket, router};
use crate::status::ApiError;
use crate::tls::peer_user;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (the kubelet's `MaxHeaderBytes`); larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Bind the kubelet port, with a clear error when something else holds it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse { addr }
        } else {
            Error::Bind { addr, source }
        }
    })
}

struct Inner {
    node: String,
    auth: Arc<Auth>,
    router: Router,
    metrics: ApiMetrics,
}

/// One node's kubelet API server.
pub struct KubeletServer {
    inner: Arc<Inner>,
    tls: TlsAcceptor,
}

/// A path the router could be fooled by (`..`, `.`, empty segments) is refused outright:
/// authorization is decided on the path's prefix, so the path must mean what it says.
fn check_path(path: &str) -> Result<(), ApiError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::bad_request("the request path must be absolute"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        if *seg == "." || *seg == ".." || (seg.is_empty() && i != last) {
            return Err(ApiError::bad_request(format!(
                "malformed request path {path:?}"
            )));
        }
    }
    Ok(())
}

impl Inner {
    async fn handle(&self, peer: Option<&UserInfo>, req: Request<Incoming>) -> Response {
        let route = route_bucket(req.uri().path());
        let span = info_span!("kubelet_api_request", node = %self.node, method = %req.method(), route, user = tracing::field::Empty, code = tracing::field::Empty);
        let resp = self.dispatch(peer, req).instrument(span.clone()).await;
        let code = resp.status().as_u16();
        span.record("code", code);
        self.metrics.request(&self.node, route, code);
        resp
    }

    async fn dispatch(&self, peer: Option<&UserInfo>, req: Request<Incoming>) -> Response {
        let (mut parts, body) = req.into_parts();
        if let Err(e) = check_path(parts.uri.path()) {
            return e.into_response();
        }
        let user = match self.auth.authenticate(peer, &mut parts.headers).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
        tracing::Span::current().record("user", user.name.as_str());
        let attrs = request_attributes(&parts.method, parts.uri.path(), &self.node);
        if let Err(e) = self.auth.authorize(&user, &attrs).await {
            return e.into_response();
        }
        parts.extensions.insert(user);
        let req = Request::from_parts(parts, Body::new(body));
        match self.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

impl KubeletServer {
    pub fn new(
        tls: Arc<ServerConfig>,
        auth: Arc<Auth>,
        api: Arc<NodeApi>,
        metrics: ApiMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node: api.node.clone(),
                auth,
                router: router(api),
                metrics,
            }),
            tls: TlsAcceptor::from(tls),
        }
    }

    /// Serve on `listener` until `cancel` fires; then open connections are dropped (streams
    /// end, their backend readers with them).
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        let addr = listener.local_addr().ok();
        info!(node = %self.inner.node, addr = ?addr, "serving the kubelet API (HTTPS)");
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        connections.spawn(connection(self.inner.clone(), self.tls.clone(), tcp, remote));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(node = %self.inner.node, error = %e, "accepting a kubelet API connection failed");
                        self.inner.metrics.error(&self.inner.node, "kubelet_api_accept", "io");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        connections.shutdown().await;
        info!(node = %self.inner.node, "kubelet API stopped");
    }
}

async fn connection(inner: Arc<Inner>, tls: TlsAcceptor, tcp: TcpStream, remote: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(node = %inner.node, %remote, error = %e, "TLS handshake failed");
            inner
                .metrics
                .error(&inner.node, "kubelet_api_tls", "handshake");
            return;
        }
        Err(_) => {
            debug!(node = %inner.node, %remote, "TLS handshake timed out");
            inner
                .metrics
                .error(&inner.node, "kubelet_api_tls", "timeout");
            return;
        }
    };
    let peer = peer_user(stream.get_ref().1.peer_certificates()).map(Arc::new);
    let node = inner.node.clone();
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(inner.handle(peer.as_deref(), req).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        // The read buffer must hold a whole head of that size.
        .max_buf_size(MAX_HEADER_BYTES + 64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!(%node, %remote, error = %e, "kubelet API connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_mean_what_they_say() {
        for ok in [
            "/",
            "/pods",
            "/runningpods/",
            "/stats/summary",
            "/containerLogs/ns/p/c",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "pods",
            "//pods",
            "/stats/../exec/ns/p/c",
            "/stats/./summary",
            "/exec/ns//c",
            "/..",
        ] {
            let e = check_path(bad).unwrap_err();
            assert_eq!(e.code.as_u16(), 400, "{bad}");
        }
    }
}
