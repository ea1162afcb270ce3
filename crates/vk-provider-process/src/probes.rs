//! Container probes (startup, liveness, readiness) with the kubelet's semantics.
//!
//! This module owns three things: one probe attempt ([`check`]: exec through the runtime's
//! [`ExecRunner`], httpGet and tcpSocket against the pod's address), the per-container probe
//! loop ([`run`]: initial delay, period, success/failure thresholds, reporting only when the
//! debounced result changes), and admission-time screening of probes this provider cannot run
//! ([`validate`]). Restarting containers and tracking readiness is the caller's job.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;
/// The kubelet reads at most this much of an httpGet response; a larger or endless body must not
/// turn a healthy answer into a timeout.
const MAX_BODY_BYTES: usize = 10 * 1024;
/// What the kubelet sends; some applications special-case probe traffic by this prefix.
const PROBE_USER_AGENT: &str = "kube-probe/1.20";
const GRPC_UNSUPPORTED: &str = "gRPC probes are not supported by the process provider";
const NO_HANDLER: &str =
    "probe has no handler: exactly one of exec, httpGet, tcpSocket or grpc must be set";
// Go's net/http wording, so events read like the kubelet's.
const AWAITING_HEADERS_TIMEOUT: &str =
    "context deadline exceeded (Client.Timeout exceeded while awaiting headers)";
const READING_BODY_TIMEOUT: &str =
    "context deadline exceeded (Client.Timeout or context cancellation while reading body)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    /// What failed, worded like the kubelet's `Unhealthy` event text.
    Failure(String),
}

/// Runs a probe's command inside the container (the runtime implements this with nsenter).
///
/// The runner owns the timeout: it must kill the command when `timeout` elapses and report a
/// failure, because only it can reap what it started.
#[async_trait::async_trait]
pub trait ExecRunner: Send + Sync {
    async fn run(&self, command: &[String], timeout: Duration) -> ProbeOutcome;
}

/// Where network probes connect: the pod's IP (here the node's address, e.g. 127.0.0.1) and the
/// container's named ports.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub host: String,
    pub named_ports: BTreeMap<String, u16>,
}

impl ProbeTarget {
    pub fn for_container(host: &str, c: &Container) -> Self {
        let mut named_ports = BTreeMap::new();
        for (name, port) in declared_ports(c) {
            // Out-of-range declarations are rejected by `validate`; resolving them would only
            // produce a confusing dial error later.
            if let Ok(port) = u16::try_from(port)
                && port != 0
            {
                named_ports.insert(name, port);
            }
        }
        Self {
            host: host.to_owned(),
            named_ports,
        }
    }
}

/// The container's named ports; the first declaration of a name wins, as in the kubelet.
fn declared_ports(c: &Container) -> BTreeMap<String, i32> {
    let mut ports = BTreeMap::new();
    for p in c.ports.iter().flatten() {
        if let Some(name) = p.name.as_ref().filter(|n| !n.is_empty()) {
            ports.entry(name.clone()).or_insert(p.container_port);
        }
    }
    ports
}

/// One attempt, honouring timeoutSeconds (default 1 s).
pub async fn check(probe: &Probe, target: &ProbeTarget, exec: &dyn ExecRunner) -> ProbeOutcome {
    let timeout = seconds(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
    // Same precedence as the kubelet's prober when (invalidly) several handlers are set.
    if let Some(action) = &probe.exec {
        check_exec(action, timeout, exec).await
    } else if let Some(action) = &probe.http_get {
        check_http(action, target, timeout).await
    } else if let Some(action) = &probe.tcp_socket {
        check_tcp(action, target, timeout).await
    } else if probe.grpc.is_some() {
        ProbeOutcome::Failure(GRPC_UNSUPPORTED.to_owned())
    } else {
        ProbeOutcome::Failure(NO_HANDLER.to_owned())
    }
}

/// What a worker reports: the debounced result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub kind: ProbeKind,
    pub success: bool,
    /// Why the last attempt failed; empty on success.
    pub message: String,
}

/// The probe loop for one container instance: waits initialDelaySeconds, then checks every
/// periodSeconds (default 10), debouncing with successThreshold (default 1; liveness and startup
/// are always 1) and failureThreshold (default 3). Calls `report` only when the debounced result
/// changes; the initial state is readiness=false, liveness=true and, for startup, "unknown" (as
/// in the kubelet), so a startup probe reports its first settled result either way. A startup
/// probe returns after reporting success or failure. A liveness worker keeps running after
/// reporting failure (the caller restarts the container and drops the worker). Runs until the
/// future is dropped.
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    exec: Arc<dyn ExecRunner>,
    report: impl Fn(ProbeResult) + Send + Sync,
) {
    let timing = Timing::of(kind, &probe);
    tokio::time::sleep(timing.initial_delay).await;
    let mut debounce = Debounce::new(timing);
    let mut state = match kind {
        ProbeKind::Readiness => Some(false),
        ProbeKind::Liveness => Some(true),
        ProbeKind::Startup => None,
    };
    let mut ticker = tokio::time::interval(timing.period);
    // A slow attempt (timeout > period) must not be followed by a burst of catch-up attempts.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome = check(&probe, &target, exec.as_ref()).await;
        tracing::trace!(?kind, ?outcome, "probe attempt");
        let Some((success, message)) = debounce.observe(outcome) else {
            continue;
        };
        if state != Some(success) {
            state = Some(success);
            tracing::debug!(?kind, success, %message, "probe result changed");
            report(ProbeResult {
                kind,
                success,
                message,
            });
        }
        if kind == ProbeKind::Startup {
            return;
        }
    }
}

/// Rejects probes this provider cannot run, with a precise message (e.g. a grpc probe, a probe
/// with no handler, a named port the container does not declare, or an out-of-range port). Used
/// at admission so the pod fails clearly instead of never getting ready.
pub fn validate(probe: &Probe, c: &Container) -> Result<(), String> {
    let handlers: Vec<&str> = [
        ("exec", probe.exec.is_some()),
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
        ("grpc", probe.grpc.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match handlers.len() {
        0 => return Err(NO_HANDLER.to_owned()),
        1 => {}
        _ => {
            return Err(format!(
                "probe sets more than one handler ({}); exactly one is allowed",
                handlers.join(", ")
            ));
        }
    }
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value
            && v < 0
        {
            return Err(format!("{field} must not be negative, got {v}"));
        }
    }
    if probe.grpc.is_some() {
        return Err(GRPC_UNSUPPORTED.to_owned());
    }
    let declared = declared_ports(c);
    let lookup = |name: &str| declared.get(name).copied();
    if let Some(action) = &probe.exec
        && action.command.as_deref().unwrap_or_default().is_empty()
    {
        return Err("exec probe has no command".to_owned());
    }
    if let Some(action) = &probe.http_get {
        scheme_is_tls(action.scheme.as_deref()).map_err(|e| format!("httpGet: {e}"))?;
        resolve_port(&action.port, lookup).map_err(|e| format!("httpGet: {e}"))?;
        ProbeHeaders::from_action(action).map_err(|e| format!("httpGet: {e}"))?;
    }
    if let Some(action) = &probe.tcp_socket {
        resolve_port(&action.port, lookup).map_err(|e| format!("tcpSocket: {e}"))?;
    }
    Ok(())
}

/// The probe's timing with the API server's defaults applied (0 means "default" there too).
#[derive(Debug, Clone, Copy)]
struct Timing {
    initial_delay: Duration,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Timing {
    fn of(kind: ProbeKind, probe: &Probe) -> Self {
        let success_threshold = match kind {
            // The API requires 1 for these; a larger value would only delay the startup
            // transition, so follow the rule instead of the spec.
            ProbeKind::Liveness | ProbeKind::Startup => 1,
            ProbeKind::Readiness => count(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
        };
        Self {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, DEFAULT_PERIOD_SECONDS),
            success_threshold,
            failure_threshold: count(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    let v = value.filter(|v| *v > 0).unwrap_or(default);
    Duration::from_secs(u64::from(v.unsigned_abs()))
}

fn count(value: Option<i32>, default: i32) -> u32 {
    value
        .filter(|v| *v > 0)
        .unwrap_or(default)
        .unsigned_abs()
        .max(1)
}

/// The kubelet's debouncing: a result only counts once it has been seen threshold times in a row.
#[derive(Debug)]
struct Debounce {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    streak: u32,
}

impl Debounce {
    fn new(timing: Timing) -> Self {
        Self {
            success_threshold: timing.success_threshold,
            failure_threshold: timing.failure_threshold,
            last: None,
            streak: 0,
        }
    }

    /// The settled result and its message, or `None` while the current streak is too short.
    fn observe(&mut self, outcome: ProbeOutcome) -> Option<(bool, String)> {
        let (success, message) = match outcome {
            ProbeOutcome::Success => (true, String::new()),
            ProbeOutcome::Failure(m) => (false, m),
        };
        if self.last == Some(success) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.last = Some(success);
            self.streak = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        (self.streak >= threshold).then_some((success, message))
    }
}

/// Resolves an int or named port like the kubelet: a name is looked up among the container's
/// ports, falling back to a number written as a string.
fn resolve_port(port: &IntOrString, lookup: impl Fn(&str) -> Option<i32>) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => match lookup(name) {
            Some(n) => i64::from(n),
            None => name.parse::<i64>().map_err(|_| {
                format!("named port {name:?} is not declared in the container's ports")
            })?,
        },
    };
    match u16::try_from(number) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "invalid port number {number}: must be between 1 and 65535"
        )),
    }
}

async fn check_exec(action: &ExecAction, timeout: Duration, exec: &dyn ExecRunner) -> ProbeOutcome {
    let command = action.command.as_deref().unwrap_or_default();
    if command.is_empty() {
        return ProbeOutcome::Failure("exec probe has no command".to_owned());
    }
    exec.run(command, timeout).await
}

async fn check_tcp(
    action: &TCPSocketAction,
    target: &ProbeTarget,
    timeout: Duration,
) -> ProbeOutcome {
    let port = match resolve_port(&action.port, |n| {
        target.named_ports.get(n).copied().map(i32::from)
    }) {
        Ok(p) => p,
        Err(e) => return ProbeOutcome::Failure(e),
    };
    let host = non_empty(action.host.as_deref()).unwrap_or(&target.host);
    match timeout_at(Instant::now() + timeout, dial(host, port)).await {
        // The kubelet only checks that the connection opens; dropping it closes it.
        Ok(Ok(_stream)) => ProbeOutcome::Success,
        Ok(Err(e)) => ProbeOutcome::Failure(e),
        Err(_) => ProbeOutcome::Failure(format!(
            "dial tcp {}: i/o timeout",
            join_host_port(host, port)
        )),
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn join_host_port(host: &str, port: u16) -> String {
    let host = bare_host(host);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to the first reachable address of `host`, with errors worded like Go's dialer.
async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let host = bare_host(host);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("dial tcp: lookup {host}: {}", io_message(&e)))?
            .collect(),
    };
    let mut last = format!("dial tcp: lookup {host}: no such host");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("dial tcp {addr}: connect: {}", io_message(&e)),
        }
    }
    Err(last)
}

/// `Connection refused (os error 111)` → `connection refused`, as Go prints errno values.
fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// `Ok(true)` for HTTPS; the kubelet lower-cases the scheme and defaults to HTTP.
fn scheme_is_tls(scheme: Option<&str>) -> Result<bool, String> {
    match non_empty(scheme).map(str::to_ascii_lowercase).as_deref() {
        None | Some("http") => Ok(false),
        Some("https") => Ok(true),
        Some(_) => Err(format!(
            "unsupported scheme {:?}: must be HTTP or HTTPS",
            scheme.unwrap_or_default()
        )),
    }
}

/// The request headers the kubelet would send, apart from `Host` which is kept separately
/// because it replaces the default rather than being added.
#[derive(Debug)]
struct ProbeHeaders {
    host: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ProbeHeaders {
    fn from_action(action: &HTTPGetAction) -> Result<Self, String> {
        let mut host = None;
        let mut headers = Vec::new();
        let (mut user_agent, mut accept, mut connection) = (false, false, false);
        for h in action.http_headers.iter().flatten() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("invalid HTTP header name {:?}", h.name))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| format!("invalid value for HTTP header {:?}", h.name))?;
            if name == HOST {
                // Go takes the first Host value and ignores an empty one.
                if host.is_none() && !value.is_empty() {
                    host = Some(value);
                }
                continue;
            }
            if name == USER_AGENT {
                // Go sends only the first User-Agent, and none at all if it is set empty.
                let first = !user_agent;
                user_agent = true;
                if !first || value.is_empty() {
                    continue;
                }
            }
            if name == ACCEPT {
                accept = true;
                if value.is_empty() {
                    continue;
                }
            }
            connection |= name == CONNECTION;
            headers.push((name, value));
        }
        if !user_agent {
            headers.push((USER_AGENT, HeaderValue::from_static(PROBE_USER_AGENT)));
        }
        if !accept {
            headers.push((ACCEPT, HeaderValue::from_static("*/*")));
        }
        if !connection {
            // The kubelet's transport disables keep-alives.
            headers.push((CONNECTION, HeaderValue::from_static("close")));
        }
        Ok(Self { host, headers })
    }
}

/// Everything needed for one httpGet attempt, resolved up front so failures say what was asked.
#[derive(Debug)]
struct HttpProbe {
    tls: bool,
    host: String,
    port: u16,
    /// For messages, like Go's `Get "<url>": ...`.
    url: String,
    request_target: String,
    headers: ProbeHeaders,
}

impl HttpProbe {
    fn new(action: &HTTPGetAction, target: &ProbeTarget) -> Result<Self, String> {
        let tls = scheme_is_tls(action.scheme.as_deref())?;
        let port = resolve_port(&action.port, |n| {
            target.named_ports.get(n).copied().map(i32::from)
        })?;
        let host = non_empty(action.host.as_deref())
            .unwrap_or(&target.host)
            .to_owned();
        let request_target = request_target(action.path.as_deref().unwrap_or_default());
        let url = format!(
            "{}://{}{request_target}",
            if tls { "https" } else { "http" },
            join_host_port(&host, port)
        );
        let headers = ProbeHeaders::from_action(action)?;
        Ok(Self {
            tls,
            host,
            port,
            url,
            request_target,
            headers,
        })
    }

    fn request(&self) -> Result<Request<Empty<Bytes>>, String> {
        let host = match &self.headers.host {
            Some(h) => h.clone(),
            None => HeaderValue::from_str(&join_host_port(&self.host, self.port))
                .map_err(|_| format!("invalid host {:?}", self.host))?,
        };
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(self.request_target.as_str())
            .header(HOST, host);
        for (name, value) in &self.headers.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Empty::new())
            .map_err(|e| format!("invalid request: {e}"))
    }
}

/// The path (with any query) as a request target: always rooted, fragment dropped, and bytes
/// that may not appear in a URL percent-encoded, the way Go's url package would send them.
fn request_target(path: &str) -> String {
    let path = path.split('#').next().unwrap_or_default();
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

async fn check_http(
    action: &HTTPGetAction,
    target: &ProbeTarget,
    timeout: Duration,
) -> ProbeOutcome {
    let probe = match HttpProbe::new(action, target) {
        Ok(p) => p,
        Err(e) => return ProbeOutcome::Failure(e),
    };
    match http_attempt(&probe, Instant::now() + timeout).await {
        // 3xx is not followed: the kubelet treats a redirect it does not follow as success.
        Ok(status) if (200..400).contains(&status) => ProbeOutcome::Success,
        Ok(status) => ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
        Err(e) => ProbeOutcome::Failure(format!("Get {:?}: {e}", probe.url)),
    }
}

/// Connects, sends the request and reads the status and at most [`MAX_BODY_BYTES`] of body, all
/// before `deadline`.
async fn http_attempt(probe: &HttpProbe, deadline: Instant) -> Result<u16, String> {
    let request = probe.request()?;
    let tcp = timeout_at(deadline, dial(&probe.host, probe.port))
        .await
        .map_err(|_| AWAITING_HEADERS_TIMEOUT.to_owned())??;
    if probe.tls {
        let tls = timeout_at(deadline, tls_connect(tcp, &probe.host))
            .await
            .map_err(|_| AWAITING_HEADERS_TIMEOUT.to_owned())??;
        exchange(tls, request, deadline).await
    } else {
        exchange(tcp, request, deadline).await
    }
}

async fn exchange<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
    deadline: Instant,
) -> Result<u16, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Go writes canonical header names; some servers' probe handlers compare them verbatim.
        .title_case_headers(true)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| error_chain(&e))?;
    let work = async {
        let response = timeout_at(deadline, sender.send_request(request))
            .await
            .map_err(|_| AWAITING_HEADERS_TIMEOUT.to_owned())?
            .map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut read = 0usize;
        while read < MAX_BODY_BYTES {
            match timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(READING_BODY_TIMEOUT.to_owned()),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(error_chain(&e)),
                Ok(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, Bytes::len);
                }
            }
        }
        Ok(status)
    };
    // The connection is driven here rather than spawned so that dropping the attempt (timeout
    // or caller) closes the socket at once instead of leaving a task behind.
    let mut conn = pin!(conn);
    let mut work = pin!(work);
    tokio::select! {
        result = &mut work => result,
        // When the connection ends first, the request sees its error (or its complete response).
        _ = &mut conn => work.await,
    }
}

/// The kubelet skips certificate verification for HTTPS probes (Go's `InsecureSkipVerify`), so
/// self-signed serving certificates work; the handshake signature is still checked.
static TLS_CONFIG: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
});

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn tls_connect(
    tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = TLS_CONFIG.as_ref().map_err(Clone::clone)?;
    let name = rustls::pki_types::ServerName::try_from(bare_host(host).to_owned())
        .map_err(|e| format!("invalid TLS server name {host:?}: {e}"))?;
    TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls handshake: {}", io_message(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, GRPCAction, HTTPHeader};
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    // ---- helpers -------------------------------------------------------------------------

    /// How the test server answers each connection.
    #[derive(Clone)]
    enum Reply {
        /// Write this and close.
        Close(Vec<u8>),
        /// Write this and keep the connection open without another byte.
        Hold(Vec<u8>),
        /// Write this at once without reading, like a plain HTTP server rejecting a TLS hello.
        Eager(Vec<u8>),
    }

    fn response(status: &str, body: &str) -> Reply {
        Reply::Close(
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reply: Reply, seen: Seen) {
        if let Reply::Eager(bytes) = &reply {
            let _ = s.write_all(bytes).await;
            let _ = s.shutdown().await;
            return;
        }
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        match reply {
            Reply::Close(bytes) => {
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
            }
            Reply::Hold(bytes) => {
                let _ = s.write_all(&bytes).await;
                let _ = s.flush().await;
                std::future::pending::<()>().await;
            }
            Reply::Eager(_) => {}
        }
    }

    /// A tiny HTTP server on 127.0.0.1:0 that records each request head it receives.
    async fn http_server(reply: Reply) -> (u16, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(answer(s, reply.clone(), seen2.clone()));
            }
        });
        (port, seen)
    }

    // A throwaway self-signed P-256 certificate: the point is that it is *not* trusted.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKDkOoQrtNBLmN07K
1dnXp5gPqxCsaxnO9hI/bkoV9dmhRANCAAReKFoL9HLnMM7uE2v/e3E/dqdvrxn/
p6MVwldDsTNun3+ZosMp+/wGfS7pVbdDOPXzCJbXUolmlvsBmp8zn3ZE
-----END PRIVATE KEY-----
";
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASegAwIBAgIUbxI/f8A5DT+nZR9AHoAQGBwD8gEwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKcHJvYmUtdGVzdDAgFw0yNjExMjIxOTA0MzdaGA8yMTI2MTAy
OTE5MDQzN1owFTETMBEGA1UEAwwKcHJvYmUtdGVzdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABF4oWgv0cucwzu4Ta/97cT92p2+vGf+noxXCV0OxM26ff5miwyn7
/AZ9LulVt0M49fMIltdSiWaW+wGanzOfdkSjUzBRMB0GA1UdDgQWBBRYcP/ZcsAf
FlHzuIhyCYDNizOnxDAfBgNVHSMEGDAWgBRYcP/ZcsAfFlHzuIhyCYDNizOnxDAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIH/luaInxShbjBMFf8+5
fQvsrfY0QQHa9aZoUv1o3za/AiA43Y/0FRqCcd0gtKWjoNCMovnxpzbtZPiHBnFb
ToYgog==
-----END CERTIFICATE-----
";

    async fn https_server(reply: Reply) -> (u16, Seen) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (acceptor, reply, seen) = (acceptor.clone(), reply.clone(), seen2.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        answer(tls, reply, seen).await;
                    }
                });
            }
        });
        (port, seen)
    }

    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    fn local() -> ProbeTarget {
        ProbeTarget {
            host: "127.0.0.1".into(),
            named_ports: BTreeMap::new(),
        }
    }

    fn http_probe(port: IntOrString, path: &str, headers: &[(&str, &str)]) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: Some(path.into()),
                http_headers: Some(
                    headers
                        .iter()
                        .map(|(n, v)| HTTPHeader {
                            name: (*n).into(),
                            value: (*v).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tcp_probe(port: IntOrString) -> Probe {
        Probe {
            tcp_socket: Some(TCPSocketAction { port, host: None }),
            ..Default::default()
        }
    }

    fn exec_probe(command: &[&str]) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
            }),
            ..Default::default()
        }
    }

    fn container_with_ports(ports: &[(&str, i32)]) -> Container {
        Container {
            name: "app".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| ContainerPort {
                        name: Some((*name).into()),
                        container_port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn failure(outcome: ProbeOutcome) -> String {
        match outcome {
            ProbeOutcome::Failure(m) => m,
            ProbeOutcome::Success => panic!("expected a failure"),
        }
    }

    fn header_lines(head: &str) -> Vec<String> {
        head.lines().skip(1).map(str::to_ascii_lowercase).collect()
    }

    /// An exec runner that replays scripted outcomes and records when and how it was called.
    struct Scripted {
        script: Mutex<VecDeque<ProbeOutcome>>,
        then: ProbeOutcome,
        calls: Mutex<Vec<(Instant, Vec<String>, Duration)>>,
    }

    impl Scripted {
        fn new(script: Vec<ProbeOutcome>, then: ProbeOutcome) -> Arc<Self> {
            Arc::new(Self {
                script: Mutex::new(script.into()),
                then,
                calls: Mutex::default(),
            })
        }

        /// Seconds since `start` of each call.
        fn call_times(&self, start: Instant) -> Vec<u64> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|(at, _, _)| (*at - start).as_secs())
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl ExecRunner for Scripted {
        async fn run(&self, command: &[String], timeout: Duration) -> ProbeOutcome {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), command.to_vec(), timeout));
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.then.clone())
        }
    }

    fn ok() -> ProbeOutcome {
        ProbeOutcome::Success
    }

    fn bad(n: u32) -> ProbeOutcome {
        ProbeOutcome::Failure(format!("fail {n}"))
    }

    type Reports = Arc<Mutex<Vec<(u64, ProbeResult)>>>;

    /// Runs the loop for `for_secs` of paused time; returns the reports with their times and
    /// whether `run` returned by itself.
    async fn drive(
        kind: ProbeKind,
        probe: Probe,
        exec: Arc<Scripted>,
        for_secs: u64,
    ) -> (Instant, Vec<(u64, ProbeResult)>, bool) {
        let start = Instant::now();
        let reports: Reports = Arc::default();
        let sink = reports.clone();
        let finished = tokio::time::timeout(
            Duration::from_secs(for_secs),
            run(kind, probe, local(), exec, move |r| {
                sink.lock()
                    .unwrap()
                    .push(((Instant::now() - start).as_secs(), r));
            }),
        )
        .await
        .is_ok();
        let reports = reports.lock().unwrap().clone();
        (start, reports, finished)
    }

    fn result(kind: ProbeKind, success: bool, message: &str) -> ProbeResult {
        ProbeResult {
            kind,
            success,
            message: message.into(),
        }
    }

    // ---- httpGet -----------------------------------------------------------------------------

    #[tokio::test]
    async fn http_200_succeeds_and_sends_path_headers_and_user_agent() {
        let (port, seen) = http_server(response("200 OK", "fine")).await;
        let probe = http_probe(
            IntOrString::Int(port.into()),
            "/healthz?deep=1",
            &[("X-Custom", "yes")],
        );
        assert_eq!(
            check(&probe, &local(), &*Scripted::new(vec![], ok())).await,
            ProbeOutcome::Success
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        let lines = header_lines(&seen[0]);
        for want in [
            "x-custom: yes".to_owned(),
            "user-agent: kube-probe/1.20".to_owned(),
            format!("host: 127.0.0.1:{port}"),
            "accept: */*".to_owned(),
        ] {
            assert!(lines.contains(&want), "missing {want:?} in {lines:?}");
        }
    }

    #[tokio::test]
    async fn http_500_fails_with_status() {
        let (port, _) = http_server(response("500 Internal Server Error", "boom")).await;
        let probe = http_probe(IntOrString::Int(port.into()), "/", &[]);
        let msg = failure(check(&probe, &local(), &*Scripted::new(vec![], ok())).await);
        assert_eq!(msg, "HTTP probe failed with statuscode: 500");
    }

    #[tokio::test]
    async fn http_redirect_is_success_and_not_followed() {
        let reply = Reply::Close(
            b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n".to_vec(),
        );
        let (port, seen) = http_server(reply).await;
        let probe = http_probe(IntOrString::Int(port.into()), "/", &[]);
        assert_eq!(
            check(&probe, &local(), &*Scripted::new(vec![], ok())).await,
            ProbeOutcome::Success
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn http_host_and_user_agent_headers_override_defaults() {
        let (port, seen) = http_server(response("200 OK", "")).await;
        let probe = http_probe(
            IntOrString::Int(port.into()),
            "",
            &[("Host", "example.test"), ("User-Agent", "custom/1")],
        );
        assert_eq!(
            check(&probe, &local(), &*Scripted::new(vec![], ok())).await,
            ProbeOutcome::Success
        );
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("GET / HTTP/1.1\r\n"), "{}", seen[0]);
        let lines = header_lines(&seen[0]);
        let hosts: Vec<_> = lines.iter().filter(|l| l.starts_with("host:")).collect();
        assert_eq!(hosts, ["host: example.test"]);
        let agents: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with("user-agent:"))
            .collect();
        assert_eq!(agents, ["user-agent: custom/1"]);
    }

    /// Polls `attempt` up to `spins` times, yielding to every other task (the test server) in
    /// between, on a paused clock that cannot move meanwhile: the test keeps the runtime busy, so
    /// it never idles into auto-advancing time. Stops early when `until` holds; returns the
    /// attempt's outcome if it completed.
    async fn drive_frozen<F: Future<Output = ProbeOutcome>>(
        mut attempt: std::pin::Pin<&mut F>,
        spins: usize,
        until: impl Fn() -> bool,
    ) -> Option<ProbeOutcome> {
        let frozen = Instant::now();
        for _ in 0..spins {
            if until() {
                break;
            }
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(attempt.as_mut().poll(cx))).await;
            assert_eq!(Instant::now(), frozen, "the paused clock moved");
            if let std::task::Poll::Ready(outcome) = polled {
                return Some(outcome);
            }
            tokio::task::yield_now().await;
        }
        None
    }

    /// Enough spins for a loopback connection, a request and its answer many times over.
    const SPINS: usize = 200_000;
    /// Spins that let an attempt with nothing left to wait for finish.
    const SETTLE: usize = 2_000;

    /// Status line, headers promising a megabyte, `bytes` of body, then a stall (the connection
    /// stays open).
    fn stalled_body(bytes: usize) -> Reply {
        let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'a', bytes));
        Reply::Hold(reply)
    }

    #[tokio::test(start_paused = true)]
    async fn http_server_that_never_answers_fails_at_the_timeout_and_not_before() {
        let (port, seen) = http_server(Reply::Hold(Vec::new())).await;
        let probe = http_probe(IntOrString::Int(port.into()), "/", &[]);
        let exec = Scripted::new(vec![], ok());
        let start = Instant::now();
        let target = local();
        let mut attempt = pin!(check(&probe, &target, &*exec));
        let early =
            drive_frozen(attempt.as_mut(), SPINS, || !seen.lock().unwrap().is_empty()).await;
        assert_eq!(early, None, "ended before the deadline");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "the server holds the request"
        );
        // The server never answers: 1 ms before the (default 1 s) deadline the attempt still waits.
        tokio::time::advance(Duration::from_millis(999)).await;
        let early = drive_frozen(attempt.as_mut(), SETTLE, || false).await;
        assert_eq!(early, None, "ended 1 ms before the deadline");
        tokio::time::advance(Duration::from_millis(1)).await;
        let msg = failure(
            drive_frozen(attempt.as_mut(), SETTLE, || false)
                .await
                .expect("ends at the deadline"),
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(
            msg,
            format!("Get \"http://127.0.0.1:{port}/\": {AWAITING_HEADERS_TIMEOUT}")
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "the request was sent once");
    }

    #[tokio::test(start_paused = true)]
    async fn http_reads_at_most_10k_of_an_endless_body() {
        // Promises a megabyte, sends 20 KiB and stalls: reading it all would wait for the
        // deadline. The attempt succeeds with the clock never moving, so it never waited.
        let (port, seen) = http_server(stalled_body(20 * 1024)).await;
        let probe = http_probe(IntOrString::Int(port.into()), "/", &[]);
        let exec = Scripted::new(vec![], ok());
        let start = Instant::now();
        let target = local();
        let mut attempt = pin!(check(&probe, &target, &*exec));
        let outcome = drive_frozen(attempt.as_mut(), SPINS, || false).await;
        assert_eq!(outcome, Some(ProbeOutcome::Success));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn http_short_stalled_body_times_out_reading_it() {
        // The counterpart: under the 10 KiB cap a stalled body is waited for, until the deadline.
        let (port, seen) = http_server(stalled_body(5 * 1024)).await;
        let probe = http_probe(IntOrString::Int(port.into()), "/", &[]);
        let exec = Scripted::new(vec![], ok());
        let start = Instant::now();
        let target = local();
        let mut attempt = pin!(check(&probe, &target, &*exec));
        let early = drive_frozen(attempt.as_mut(), SPINS / 10, || false).await;
        assert_eq!(early, None, "ended before the deadline");
        assert_eq!(seen.lock().unwrap().len(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        let msg = failure(
            drive_frozen(attempt.as_mut(), SETTLE, || false)
                .await
                .expect("ends at the deadline"),
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(
            msg,
            format!("Get \"http://127.0.0.1:{port}/\": {READING_BODY_TIMEOUT}")
        );
    }

    #[tokio::test]
    async fn http_connection_refused_reads_like_the_kubelet() {
        let port = closed_port().await;
        let probe = http_probe(IntOrString::Int(port.into()), "/ready", &[]);
        let msg = failure(check(&probe, &local(), &*Scripted::new(vec![], ok())).await);
        assert_eq!(
            msg,
            format!(
                "Get \"http://127.0.0.1:{port}/ready\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn https_accepts_an_untrusted_certificate() {
        let (port, seen) = https_server(response("200 OK", "secure")).await;
        let mut probe = http_probe(IntOrString::Int(port.into()), "/tls", &[]);
        if let Some(h) = probe.http_get.as_mut() {
            h.scheme = Some("HTTPS".into());
        }
        assert_eq!(
            check(&probe, &local(), &*Scripted::new(vec![], ok())).await,
            ProbeOutcome::Success
        );
        assert!(seen.lock().unwrap()[0].starts_with("GET /tls HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn https_against_plain_http_fails() {
        let reply = Reply::Eager(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        );
        let (port, _) = http_server(reply).await;
        let mut probe = http_probe(IntOrString::Int(port.into()), "/", &[]);
        if let Some(h) = probe.http_get.as_mut() {
            h.scheme = Some("HTTPS".into());
        }
        let msg = failure(check(&probe, &local(), &*Scripted::new(vec![], ok())).await);
        assert!(msg.contains("tls handshake"), "{msg}");
    }

    #[test]
    fn request_target_is_rooted_and_escaped() {
        assert_eq!(request_target(""), "/");
        assert_eq!(request_target("healthz"), "/healthz");
        assert_eq!(request_target("/a b?x=1#frag"), "/a%20b?x=1");
    }

    // ---- tcpSocket, named ports, exec, grpc ---------------------------------------------------

    #[tokio::test]
    async fn tcp_to_listening_port_succeeds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = tcp_probe(IntOrString::Int(port.into()));
        assert_eq!(
            check(&probe, &local(), &*Scripted::new(vec![], ok())).await,
            ProbeOutcome::Success
        );
    }

    #[tokio::test]
    async fn tcp_to_closed_port_fails() {
        let port = closed_port().await;
        let probe = tcp_probe(IntOrString::Int(port.into()));
        let msg = failure(check(&probe, &local(), &*Scripted::new(vec![], ok())).await);
        assert_eq!(
            msg,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }

    #[tokio::test]
    async fn named_ports_resolve_through_the_container() {
        let (port, seen) = http_server(response("200 OK", "")).await;
        let closed = closed_port().await;
        let c = container_with_ports(&[("web", port.into()), ("admin", closed.into())]);
        let target = ProbeTarget::for_container("127.0.0.1", &c);
        assert_eq!(target.named_ports.get("web"), Some(&port));
        let exec = Scripted::new(vec![], ok());

        let probe = http_probe(IntOrString::String("web".into()), "/", &[]);
        assert_eq!(check(&probe, &target, &*exec).await, ProbeOutcome::Success);
        assert_eq!(seen.lock().unwrap().len(), 1);

        let probe = tcp_probe(IntOrString::String("admin".into()));
        let msg = failure(check(&probe, &target, &*exec).await);
        assert!(msg.contains(&format!(":{closed}: connect")), "{msg}");

        let probe = tcp_probe(IntOrString::String("missing".into()));
        let msg = failure(check(&probe, &target, &*exec).await);
        assert_eq!(
            msg,
            "named port \"missing\" is not declared in the container's ports"
        );
    }

    #[tokio::test]
    async fn exec_is_delegated_with_the_timeout() {
        let exec = Scripted::new(vec![bad(1)], ok());
        let mut probe = exec_probe(&["cat", "/tmp/healthy"]);
        assert_eq!(check(&probe, &local(), &*exec).await, bad(1));
        probe.timeout_seconds = Some(5);
        assert_eq!(check(&probe, &local(), &*exec).await, ProbeOutcome::Success);
        let calls = exec.calls.lock().unwrap();
        assert_eq!(calls[0].1, ["cat", "/tmp/healthy"]);
        assert_eq!(calls[0].2, Duration::from_secs(1));
        assert_eq!(calls[1].2, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn grpc_and_missing_handlers_fail() {
        let exec = Scripted::new(vec![], ok());
        let probe = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            failure(check(&probe, &local(), &*exec).await),
            "gRPC probes are not supported by the process provider"
        );
        let msg = failure(check(&Probe::default(), &local(), &*exec).await);
        assert!(msg.starts_with("probe has no handler"), "{msg}");
        assert!(exec.calls.lock().unwrap().is_empty());
    }

    // ---- the loop ----------------------------------------------------------------------------

    #[tokio::test(start_paused = true)]
    async fn initial_delay_and_period_are_respected() {
        let exec = Scripted::new(vec![], ok());
        let mut probe = exec_probe(&["true"]);
        probe.initial_delay_seconds = Some(30);
        let (start, reports, finished) = drive(ProbeKind::Readiness, probe, exec.clone(), 75).await;
        assert!(!finished, "readiness runs until dropped");
        assert_eq!(exec.call_times(start), [30, 40, 50, 60, 70]);
        assert_eq!(reports, [(30, result(ProbeKind::Readiness, true, ""))]);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_reports_once_after_failure_threshold() {
        let exec = Scripted::new(vec![], bad(0));
        let mut probe = exec_probe(&["check"]);
        probe.period_seconds = Some(5);
        let (start, reports, finished) = drive(ProbeKind::Liveness, probe, exec.clone(), 58).await;
        assert!(!finished, "liveness keeps running after reporting failure");
        assert_eq!(exec.call_times(start).len(), 12);
        assert_eq!(
            reports,
            [(10, result(ProbeKind::Liveness, false, "fail 0"))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn interrupted_failure_streak_does_not_report() {
        let exec = Scripted::new(
            vec![
                bad(1),
                bad(2),
                ok(),
                bad(3),
                bad(4),
                ok(),
                bad(5),
                bad(6),
                bad(7),
            ],
            ok(),
        );
        let (_, reports, _) = drive(
            ProbeKind::Liveness,
            exec_probe(&["check"]),
            exec.clone(),
            85,
        )
        .await;
        assert_eq!(
            reports,
            [(80, result(ProbeKind::Liveness, false, "fail 7"))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_needs_success_threshold_in_a_row() {
        let exec = Scripted::new(
            vec![ok(), bad(1), ok(), ok(), ok(), bad(2), bad(3), bad(4)],
            bad(9),
        );
        let mut probe = exec_probe(&["check"]);
        probe.success_threshold = Some(2);
        let (_, reports, _) = drive(ProbeKind::Readiness, probe, exec.clone(), 95).await;
        assert_eq!(
            reports,
            [
                (30, result(ProbeKind::Readiness, true, "")),
                (70, result(ProbeKind::Readiness, false, "fail 4")),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_ignores_success_threshold() {
        let exec = Scripted::new(vec![bad(1), ok()], ok());
        let mut probe = exec_probe(&["check"]);
        probe.success_threshold = Some(5);
        probe.failure_threshold = Some(1);
        let (_, reports, _) = drive(ProbeKind::Liveness, probe, exec, 15).await;
        assert_eq!(
            reports,
            [
                (0, result(ProbeKind::Liveness, false, "fail 1")),
                (10, result(ProbeKind::Liveness, true, "")),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn startup_stops_after_success() {
        let exec = Scripted::new(vec![bad(1), bad(2), ok()], bad(9));
        let (start, reports, finished) = drive(
            ProbeKind::Startup,
            exec_probe(&["check"]),
            exec.clone(),
            300,
        )
        .await;
        assert!(finished, "startup returns after success");
        assert_eq!(exec.call_times(start), [0, 10, 20]);
        assert_eq!(reports, [(20, result(ProbeKind::Startup, true, ""))]);
    }

    #[tokio::test(start_paused = true)]
    async fn startup_reports_failure_at_threshold_and_stops() {
        let exec = Scripted::new(vec![], bad(0));
        let mut probe = exec_probe(&["check"]);
        probe.failure_threshold = Some(4);
        probe.period_seconds = Some(2);
        let (start, reports, finished) = drive(ProbeKind::Startup, probe, exec.clone(), 300).await;
        assert!(finished);
        assert_eq!(exec.call_times(start), [0, 2, 4, 6]);
        assert_eq!(reports, [(6, result(ProbeKind::Startup, false, "fail 0"))]);
    }

    #[test]
    fn run_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let exec: Arc<dyn ExecRunner> = Scripted::new(vec![], ok());
        let fut = run(
            ProbeKind::Readiness,
            exec_probe(&["true"]),
            local(),
            exec,
            |_| {},
        );
        assert_send(&fut);
    }

    // ---- validate ----------------------------------------------------------------------------

    #[test]
    fn validate_accepts_runnable_probes() {
        let c = container_with_ports(&[("http", 8080)]);
        for probe in [
            exec_probe(&["true"]),
            http_probe(IntOrString::String("http".into()), "/", &[("X-A", "b")]),
            tcp_probe(IntOrString::Int(5432)),
            // The kubelet also accepts a number written as a string.
            tcp_probe(IntOrString::String("5432".into())),
        ] {
            assert_eq!(validate(&probe, &c), Ok(()), "{probe:?}");
        }
    }

    #[test]
    fn validate_messages() {
        let c = container_with_ports(&[("http", 8080), ("bogus", 70000)]);
        let mut https_ftp = http_probe(IntOrString::Int(80), "/", &[]);
        if let Some(h) = https_ftp.http_get.as_mut() {
            h.scheme = Some("FTP".into());
        }
        let mut two = exec_probe(&["true"]);
        two.tcp_socket = tcp_probe(IntOrString::Int(1)).tcp_socket;
        let mut negative = exec_probe(&["true"]);
        negative.period_seconds = Some(-1);
        let grpc = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (
                grpc,
                "gRPC probes are not supported by the process provider",
            ),
            (
                Probe::default(),
                "probe has no handler: exactly one of exec, httpGet, tcpSocket or grpc must be set",
            ),
            (
                two,
                "probe sets more than one handler (exec, tcpSocket); exactly one is allowed",
            ),
            (negative, "periodSeconds must not be negative, got -1"),
            (exec_probe(&[]), "exec probe has no command"),
            (
                tcp_probe(IntOrString::String("metrics".into())),
                "tcpSocket: named port \"metrics\" is not declared in the container's ports",
            ),
            (
                http_probe(IntOrString::Int(70000), "/", &[]),
                "httpGet: invalid port number 70000: must be between 1 and 65535",
            ),
            (
                tcp_probe(IntOrString::Int(0)),
                "tcpSocket: invalid port number 0: must be between 1 and 65535",
            ),
            (
                tcp_probe(IntOrString::String("bogus".into())),
                "tcpSocket: invalid port number 70000: must be between 1 and 65535",
            ),
            (
                https_ftp,
                "httpGet: unsupported scheme \"FTP\": must be HTTP or HTTPS",
            ),
            (
                http_probe(IntOrString::Int(80), "/", &[("bad header", "x")]),
                "httpGet: invalid HTTP header name \"bad header\"",
            ),
        ];
        for (probe, want) in cases {
            assert_eq!(validate(&probe, &c), Err(want.to_owned()), "{probe:?}");
        }
    }
}
