//! The kubelet API server in-process on loopback, over real TLS: client certificates, tokens,
//! denials with Status bodies, routing and validation, and a followed log whose backend reader
//! is dropped when the client goes away. The control-plane parts (TokenReview,
//! SubjectAccessReview, `/pods`) are covered end to end in crates/vkubelet/tests/kubelet_api.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodSpec, PodStatus,
};
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;
use vk_core::pod::PodSummary;
use vk_core::streams::{ByteReader, ContainerStats, LogRequest};
use vk_core::{PodKey, Provider, ProviderError};
use vk_kubelet_api::auth::{Attributes, AuthError, Authorizer, Decision, TokenAuthenticator};
use vk_kubelet_api::{
    ApiError, ApiMetrics, Auth, AuthConfig, KubeletServer, NodeApi, NodePods, UserInfo,
};

const NODE: &str = "vk-test";

/// A log that says one line and then waits forever; records when it is dropped.
struct FollowedLog {
    said: bool,
    dropped: Arc<AtomicBool>,
}

impl AsyncRead for FollowedLog {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.said {
            return Poll::Pending;
        }
        self.said = true;
        buf.put_slice(b"hello from the log\n");
        Poll::Ready(Ok(()))
    }
}

impl Drop for FollowedLog {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Backend {
    log_dropped: Arc<AtomicBool>,
    log_requests: Mutex<Vec<(PodKey, LogRequest)>>,
}

#[async_trait]
impl Provider for Backend {
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
    async fn container_logs(
        &self,
        key: &PodKey,
        request: &LogRequest,
    ) -> Result<ByteReader, ProviderError> {
        self.log_requests
            .lock()
            .push((key.clone(), request.clone()));
        if request.previous {
            return Err(ProviderError::NotFound(
                "previous terminated container \"app\" not found".into(),
            ));
        }
        Ok(Box::pin(FollowedLog {
            said: false,
            dropped: self.log_dropped.clone(),
        }))
    }
    async fn pod_stats(
        &self,
        _: &PodKey,
    ) -> Result<BTreeMap<String, ContainerStats>, ProviderError> {
        Ok([(
            "app".to_string(),
            ContainerStats {
                cpu_usage_core_nanoseconds: 1_500_000_000,
                memory_working_set_bytes: 4096,
                memory_rss_bytes: 2048,
            },
        )]
        .into())
    }
}

struct Pods(Vec<PodSummary>);

#[async_trait]
impl NodePods for Pods {
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
        Ok(self
            .0
            .iter()
            .filter_map(|p| p.pod.as_deref().cloned())
            .collect())
    }
}

struct Tokens;

#[async_trait]
impl TokenAuthenticator for Tokens {
    async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        Ok((token == "good-token").then(|| UserInfo::authenticated("token-user", vec![])))
    }
}

/// Allows `proxy` to everyone, `stats` only to certificate users in group `admins`; records
/// what it was asked.
#[derive(Default)]
struct Rules {
    asked: Mutex<Vec<(UserInfo, Attributes)>>,
}

#[async_trait]
impl Authorizer for Rules {
    async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<Decision, AuthError> {
        self.asked.lock().push((user.clone(), attrs.clone()));
        let allowed = attrs.subresource == "proxy" || user.groups.iter().any(|g| g == "admins");
        Ok(Decision {
            allowed,
            reason: String::new(),
        })
    }
}

fn pod() -> PodSummary {
    let pod = Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                image: "busybox".into(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    PodSummary {
        key: PodKey::new("uid-1", "ns", "web"),
        pod: Some(Arc::new(pod)),
        on_backend: true,
    }
}

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    Ca {
        cert,
        issuer: Issuer::new(params, key),
    }
}

fn client_cert(
    ca: &Ca,
    cn: &str,
    org: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

struct Running {
    addr: std::net::SocketAddr,
    server_cert: CertificateDer<'static>,
    ca: Ca,
    backend: Arc<Backend>,
    rules: Arc<Rules>,
    cancel: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start() -> Running {
    let ca = ca("test-client-ca");
    let serving =
        vk_kubelet_api::tls::self_signed(NODE, &["127.0.0.1".into(), NODE.into()]).unwrap();
    let server_cert = serving.chain[0].clone();
    let tls =
        vk_kubelet_api::tls::server_config(serving, Some(std::slice::from_ref(&ca.cert))).unwrap();
    let backend = Arc::new(Backend::default());
    let rules = Arc::new(Rules::default());
    let metrics = ApiMetrics::default();
    let auth = Auth::new(
        NODE,
        AuthConfig::default(),
        Some(Arc::new(Tokens)),
        rules.clone(),
        metrics.clone(),
    );
    let api = NodeApi::new(
        NODE,
        backend.clone(),
        Arc::new(Pods(vec![pod()])),
        metrics.clone(),
        None,
    );
    let listener = vk_kubelet_api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = KubeletServer::new(tls, Arc::new(auth), Arc::new(api), metrics);
    tokio::spawn(server.serve(listener, cancel.clone()));
    Running {
        addr,
        server_cert,
        ca,
        backend,
        rules,
        cancel,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

impl Running {
    async fn connect(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> std::io::Result<(Sender, tokio::task::JoinHandle<()>)> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_cert.clone()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, task))
    }

    /// One request; returns status, content type and body.
    async fn call(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> (u16, String, String) {
        let (mut sender, _task) = self.connect(identity).await.expect("connect");
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .expect("response");
        let code = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (code, ct, String::from_utf8_lossy(&body).into_owned())
    }

    fn admin(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        Some(client_cert(
            &self.ca,
            "kube-apiserver-kubelet-client",
            "admins",
        ))
    }
}

fn status_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["kind"], "Status", "{body}");
    assert_eq!(v["apiVersion"], "v1", "{body}");
    assert_eq!(v["status"], "Failure", "{body}");
    v
}

#[tokio::test]
async fn unauthenticated_requests_get_401_even_for_healthz() {
    let s = start().await;
    for path in ["/healthz", "/pods", "/containerLogs/ns/web/app", "/nope"] {
        let (code, ct, body) = s.call(None, "GET", path, &[]).await;
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(ct, "application/json");
        let v = status_of(&body);
        assert_eq!(v["reason"], "Unauthorized");
        assert_eq!(v["code"], 401);
    }
    let bad = [("authorization", "Bearer wrong".to_string())];
    assert_eq!(s.call(None, "GET", "/healthz", &bad).await.0, 401);
    assert!(
        s.rules.asked.lock().is_empty(),
        "nothing is authorized before authentication"
    );
}

#[tokio::test]
async fn client_certificate_users_and_groups_reach_the_authorizer() {
    let s = start().await;
    let (code, _, body) = s.call(s.admin(), "GET", "/healthz", &[]).await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (user, attrs) = s.rules.asked.lock()[0].clone();
    assert_eq!(user.name, "kube-apiserver-kubelet-client");
    assert_eq!(user.groups, ["admins", "system:authenticated"]);
    assert_eq!(
        (attrs.verb, attrs.subresource, attrs.node.as_str()),
        ("get", "proxy", NODE)
    );
    // A certificate from another CA does not even complete the handshake.
    let other = ca("someone-else");
    let stranger = client_cert(&other, "mallory", "admins");
    let failed = match s.connect(Some(stranger)).await {
        Err(_) => true,
        // TLS 1.3 reports the client certificate's rejection on the first read.
        Ok((mut sender, _t)) => {
            let req = hyper::Request::get("/healthz")
                .header("host", "x")
                .body(Empty::new())
                .unwrap();
            sender.send_request(req).await.is_err()
        }
    };
    assert!(failed, "a certificate from an unknown CA must be refused");
}

#[tokio::test]
async fn tokens_authenticate_and_denials_are_403_status() {
    let s = start().await;
    let token = [("authorization", "Bearer good-token".to_string())];
    let (code, _, body) = s.call(None, "GET", "/runningpods/", &token).await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["uid"], "uid-1");
    assert_eq!(
        list["items"][0]["spec"]["containers"][0]["image"],
        "busybox"
    );
    // The token user is not in `admins`: no nodes/stats, no nodes/metrics.
    for path in ["/stats/summary", "/metrics/resource", "/metrics"] {
        let (code, ct, body) = s.call(None, "GET", path, &token).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert_eq!(ct, "application/json");
        let v = status_of(&body);
        assert_eq!(v["reason"], "Forbidden");
        assert!(
            v["message"].as_str().unwrap().contains("user=token-user"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn stats_and_resource_metrics() {
    let s = start().await;
    let (code, ct, body) = s.call(s.admin(), "GET", "/stats/summary", &[]).await;
    assert_eq!((code, ct.as_str()), (200, "application/json"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"]["nodeName"], NODE);
    assert_eq!(v["pods"][0]["podRef"]["name"], "web");
    assert_eq!(
        v["pods"][0]["containers"][0]["cpu"]["usageCoreNanoSeconds"],
        1_500_000_000u64
    );
    assert_eq!(
        v["pods"][0]["containers"][0]["memory"]["workingSetBytes"],
        4096
    );
    let (code, ct, text) = s.call(s.admin(), "GET", "/metrics/resource", &[]).await;
    assert_eq!(code, 200);
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"container_cpu_usage_seconds_total{container="app",namespace="ns",pod="web"} 1.5 "#
        )),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "scrape_error 0"), "{text}");
}

#[tokio::test]
async fn log_requests_are_validated_and_missing_things_are_404() {
    let s = start().await;
    let admin = || s.admin();
    let cases: &[(&str, u16, &str)] = &[
        ("/containerLogs/ns/nope/app", 404, "NotFound"),
        ("/containerLogs/ns/web/nope", 404, "NotFound"),
        ("/containerLogs/ns/web/app?tailLines=x", 400, "BadRequest"),
        (
            "/containerLogs/ns/web/app?sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z",
            422,
            "Invalid",
        ),
        ("/containerLogs/ns/web/app?previous=true", 400, "BadRequest"),
        ("/containerLogs/ns/web", 404, "NotFound"),
        ("//pods", 400, "BadRequest"),
        ("/stats/../exec/ns/web/app", 400, "BadRequest"),
    ];
    for (path, want, reason) in cases {
        let (code, _, body) = s.call(admin(), "GET", path, &[]).await;
        assert_eq!(code, *want, "{path}: {body}");
        assert_eq!(status_of(&body)["reason"], *reason, "{path}");
    }
    let (code, _, body) = s
        .call(admin(), "POST", "/containerLogs/ns/web/app", &[])
        .await;
    assert_eq!(code, 405, "{body}");
    assert_eq!(status_of(&body)["reason"], "MethodNotAllowed");
    let (_, _, body) = s
        .call(
            admin(),
            "GET",
            "/containerLogs/ns/web/app?previous=true",
            &[],
        )
        .await;
    assert!(body.contains("previous terminated container"), "{body}");
    // Options reach the backend as parsed.
    let (key, req) = s.backend.log_requests.lock().last().cloned().unwrap();
    assert_eq!(key, PodKey::new("uid-1", "ns", "web"));
    assert!(req.previous);
}

#[tokio::test]
async fn streaming_routes_check_the_pod_then_hand_over_to_the_protocols() {
    let s = start().await;
    // A request that passes the router's checks reaches vk-streaming, which wants an upgrade
    // (400 without one); `/run` asks the backend, which here has no exec (501).
    let cases: &[(&str, &str, u16)] = &[
        ("POST", "/exec/ns/web/app?command=ls&output=1", 400),
        ("GET", "/exec/ns/web/uid-1/app?command=ls&output=1", 400),
        (
            "POST",
            "/exec/ns/web/other-uid/app?command=ls&output=1",
            404,
        ),
        ("POST", "/exec/ns/gone/app?command=ls&output=1", 404),
        ("POST", "/exec/ns/web/nope?command=ls&output=1", 404),
        ("POST", "/exec/ns/web/app?command=ls", 400),
        ("GET", "/attach/ns/web/app?output=1", 400),
        ("POST", "/portForward/ns/web?port=8080", 400),
        ("GET", "/portForward/ns/web/other-uid", 404),
        ("POST", "/portForward/ns/web?port=http", 400),
        ("POST", "/run/ns/web/app?cmd=ls", 501),
        ("GET", "/run/ns/web/app?cmd=ls", 405),
    ];
    for (method, path, want) in cases {
        let (code, _, body) = s.call(s.admin(), method, path, &[]).await;
        assert_eq!(code, *want, "{method} {path}: {body}");
        status_of(&body);
    }
    let (_, _, body) = s
        .call(
            s.admin(),
            "POST",
            "/exec/ns/web/app?command=ls&output=1",
            &[],
        )
        .await;
    assert!(body.contains("missing upgrade headers"), "{body}");
    // POST maps to create, as the kubelet does.
    let asked = s.rules.asked.lock();
    assert!(
        asked
            .iter()
            .any(|(_, a)| a.verb == "create" && a.subresource == "proxy")
    );
}

#[tokio::test]
async fn oversize_headers_are_refused() {
    let s = start().await;
    let big = "x".repeat(vk_kubelet_api::server::MAX_HEADER_BYTES + 1024);
    let (mut sender, _t) = s.connect(s.admin()).await.unwrap();
    let req = hyper::Request::get("/healthz")
        .header("host", "x")
        .header("x-big", big)
        .body(Empty::new())
        .unwrap();
    match sender.send_request(req).await {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 431),
        // The server may close before the client finished writing.
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // The server is still serving.
    assert_eq!(s.call(s.admin(), "GET", "/healthz", &[]).await.0, 200);
}

#[tokio::test]
async fn a_followed_log_streams_and_the_reader_is_dropped_when_the_client_leaves() {
    let s = start().await;
    let (mut sender, conn_task) = s.connect(s.admin()).await.unwrap();
    let req = hyper::Request::get("/containerLogs/ns/web/app?follow=true&timestamps=1&tailLines=3")
        .header("host", "x")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first line arrives while the log is still open")
        .unwrap()
        .unwrap();
    assert_eq!(
        frame.into_data().unwrap(),
        Bytes::from_static(b"hello from the log\n")
    );
    let (_, req) = s.backend.log_requests.lock().last().cloned().unwrap();
    assert!(req.follow && req.timestamps);
    assert_eq!(req.tail_lines, Some(3));
    assert!(
        !s.backend.log_dropped.load(Ordering::SeqCst),
        "still streaming"
    );
    // The client goes away: connection closed.
    drop(body);
    drop(sender);
    conn_task.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !s.backend.log_dropped.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend's log reader outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
