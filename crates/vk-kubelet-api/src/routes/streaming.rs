//! `/exec`, `/attach`, `/portForward` and `/run`: routing, request parsing and pod lookup here;
//! the protocols (SPDY/3.1 and WebSocket upgrades) live in `vk-streaming`, called from
//! [`serve_stream`] — the one place that hands a request over to them.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use tracing::instrument;
use vk_core::streams::{AttachRequest, ExecRequest};
use vk_core::{DynProvider, PodKey};
use vk_streaming::StreamConfig;

use super::NodeApi;
use crate::pods::container_names;
use crate::status::ApiError;

/// What a streaming request asks for, parsed from its path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec(ExecRequest),
    Attach(AttachRequest),
    /// Ports from the `port` query parameter (WebSocket clients list them there; SPDY clients
    /// name each stream's port in its headers instead, so this may be empty).
    PortForward {
        ports: Vec<u16>,
    },
    /// `/run`: run a command and return its output (no upgrade).
    Run(ExecRequest),
}

impl StreamRequest {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Attach(_) => "attach",
            Self::PortForward { .. } => "portForward",
            Self::Run(_) => "run",
        }
    }
}

/// Hand a streaming request to its protocol handler in `vk-streaming`. The request is
/// authenticated, authorized, and its pod exists on this node (with the UID the path named, if
/// any).
pub async fn serve_stream(
    req: Request,
    provider: DynProvider,
    key: PodKey,
    call: StreamRequest,
    config: StreamConfig,
) -> Response {
    match call {
        StreamRequest::Exec(exec) => {
            vk_streaming::serve_exec(req, provider, key, exec, config).await
        }
        StreamRequest::Attach(attach) => {
            vk_streaming::serve_attach(req, provider, key, attach, config).await
        }
        StreamRequest::PortForward { ports } => {
            vk_streaming::serve_port_forward(req, provider, key, ports, config).await
        }
        StreamRequest::Run(exec) => run_command(provider, key, exec).await,
    }
}

/// The transport and sub-protocol a streaming answer upgraded to, read from the `101` itself (so
/// what is counted is what was served, whatever `vk-streaming` negotiated); `None` for any
/// other answer.
pub fn served_upgrade(response: &Response) -> Option<(&'static str, String)> {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    let headers = response.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let upgrade = header("upgrade");
    if upgrade.eq_ignore_ascii_case("websocket") {
        Some(("websocket", header("sec-websocket-protocol")))
    } else if upgrade.eq_ignore_ascii_case("spdy/3.1") {
        Some(("spdy", header("x-stream-protocol-version")))
    } else {
        Some(("other", String::new()))
    }
}

/// [`serve_stream`], counting the upgrade it served in
/// `vkubelet_kubelet_api_stream_upgrades_total`.
async fn serve_counted(api: &NodeApi, req: Request, key: PodKey, call: StreamRequest) -> Response {
    let route = call.name();
    let response = serve_stream(req, api.provider.clone(), key, call, api.streaming.clone()).await;
    if let Some((transport, protocol)) = served_upgrade(&response) {
        api.metrics.upgrade(&api.node, route, transport, &protocol);
    }
    response
}

/// Most output `/run` collects; the rest is dropped (it answers in one body, not a stream).
const RUN_OUTPUT_LIMIT: u64 = 4 << 20;

/// `/run`: the command's stdout and stderr, once it has exited, as the body of one response.
async fn run_command(provider: DynProvider, key: PodKey, exec: ExecRequest) -> Response {
    use tokio::io::AsyncReadExt;
    let mut session = match provider.exec(&key, &exec).await {
        Ok(s) => s,
        Err(e) => return ApiError::from_provider(&e).into_response(),
    };
    drop(session.stdin.take());
    let collect = |r: Option<vk_core::streams::ByteReader>| async move {
        let mut out = Vec::new();
        if let Some(r) = r {
            // A read error ends the output early; what was read is still answered.
            let _ = r.take(RUN_OUTPUT_LIMIT).read_to_end(&mut out).await;
        }
        out
    };
    let (mut out, err) = tokio::join!(
        collect(session.stdout.take()),
        collect(session.stderr.take())
    );
    out.extend_from_slice(&err);
    match session.exit.await {
        Ok(Ok(_)) => out.into_response(),
        Ok(Err(why)) => ApiError::internal(why).into_response(),
        Err(_) => {
            ApiError::internal("the command's session ended without an exit status").into_response()
        }
    }
}

fn values<'a>(pairs: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
    pairs
        .iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bad_request(e: vk_streaming::BadRequest) -> ApiError {
    ApiError::bad_request(e.0)
}

/// Exec's query as the kubelet's `remotecommand.NewOptions` reads it (parsed by `vk-streaming`,
/// which owns the protocol).
pub fn parse_exec(query: Option<&str>, container: &str) -> Result<ExecRequest, ApiError> {
    vk_streaming::parse_exec_query(query, container).map_err(bad_request)
}

pub fn parse_attach(query: Option<&str>, container: &str) -> Result<AttachRequest, ApiError> {
    vk_streaming::parse_attach_query(query, container).map_err(bad_request)
}

/// `/run`'s legacy `cmd` parameter, split on spaces like the kubelet does.
pub fn parse_run(query: Option<&str>, container: &str) -> Result<ExecRequest, ApiError> {
    let pairs = pairs(query);
    let command: Vec<String> = values(&pairs, "cmd")
        .next()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if command.is_empty() {
        return Err(ApiError::bad_request(
            "run needs a command (`cmd` parameter)",
        ));
    }
    Ok(ExecRequest {
        container: container.to_string(),
        command,
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    })
}

/// `port` values (what the API server sends), each a port or a comma-separated list; `ports`
/// (what clients send the API server) is taken too.
pub fn parse_ports(query: Option<&str>) -> Result<Vec<u16>, ApiError> {
    vk_streaming::parse_port_forward_query(query).map_err(bad_request)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Exec,
    Attach,
    Run,
}

/// Path parameters of a streaming route, in path order.
type P3 = Result<Path<(String, String, String)>, PathRejection>;
type P4 = Result<Path<(String, String, String, String)>, PathRejection>;
type P2 = Result<Path<(String, String)>, PathRejection>;

fn bad_path() -> Response {
    ApiError::bad_request("malformed path").into_response()
}

pub async fn exec(State(api): State<Arc<NodeApi>>, path: P3, req: Request) -> Response {
    let Ok(Path((ns, pod, c))) = path else {
        return bad_path();
    };
    command_route(api, Kind::Exec, ns, pod, None, c, req).await
}

pub async fn exec_uid(State(api): State<Arc<NodeApi>>, path: P4, req: Request) -> Response {
    let Ok(Path((ns, pod, uid, c))) = path else {
        return bad_path();
    };
    command_route(api, Kind::Exec, ns, pod, Some(uid), c, req).await
}

pub async fn attach(State(api): State<Arc<NodeApi>>, path: P3, req: Request) -> Response {
    let Ok(Path((ns, pod, c))) = path else {
        return bad_path();
    };
    command_route(api, Kind::Attach, ns, pod, None, c, req).await
}

pub async fn attach_uid(State(api): State<Arc<NodeApi>>, path: P4, req: Request) -> Response {
    let Ok(Path((ns, pod, uid, c))) = path else {
        return bad_path();
    };
    command_route(api, Kind::Attach, ns, pod, Some(uid), c, req).await
}

pub async fn run(State(api): State<Arc<NodeApi>>, path: P3, req: Request) -> Response {
    let Ok(Path((ns, pod, c))) = path else {
        return bad_path();
    };
    command_route(api, Kind::Run, ns, pod, None, c, req).await
}

pub async fn run_uid(State(api): State<Arc<NodeApi>>, path: P4, req: Request) -> Response {
    let Ok(Path((ns, pod, uid, c))) = path else {
        return bad_path();
    };
    command_route(api, Kind::Run, ns, pod, Some(uid), c, req).await
}

pub async fn port_forward(State(api): State<Arc<NodeApi>>, path: P2, req: Request) -> Response {
    let Ok(Path((ns, pod))) = path else {
        return bad_path();
    };
    port_forward_route(api, ns, pod, None, req).await
}

pub async fn port_forward_uid(State(api): State<Arc<NodeApi>>, path: P3, req: Request) -> Response {
    let Ok(Path((ns, pod, uid))) = path else {
        return bad_path();
    };
    port_forward_route(api, ns, pod, Some(uid), req).await
}

/// The pod, checked against the UID the path names (a pod re-created under the same name is
/// another pod: 404, as the kubelet answers).
fn lookup(
    api: &NodeApi,
    ns: &str,
    pod: &str,
    uid: Option<&str>,
) -> Result<vk_core::pod::PodSummary, ApiError> {
    let summary = api
        .pods
        .find(ns, pod)
        .ok_or_else(|| ApiError::pod_not_found(pod))?;
    if uid.is_some_and(|u| u != summary.key.uid) {
        return Err(ApiError::not_found(format!(
            "pod {pod:?} with that UID not found"
        )));
    }
    Ok(summary)
}

#[instrument(name = "stream_request", skip(api, req), fields(node = %api.node))]
async fn command_route(
    api: Arc<NodeApi>,
    kind: Kind,
    ns: String,
    pod: String,
    uid: Option<String>,
    container: String,
    req: Request,
) -> Response {
    let query = req.uri().query();
    let call = match kind {
        Kind::Exec => parse_exec(query, &container).map(StreamRequest::Exec),
        Kind::Attach => parse_attach(query, &container).map(StreamRequest::Attach),
        Kind::Run => parse_run(query, &container).map(StreamRequest::Run),
    };
    let call = match call {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let summary = match lookup(&api, &ns, &pod, uid.as_deref()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Some(names) = summary.pod.as_deref().and_then(container_names)
        && !names.contains(&container)
    {
        return ApiError::not_found(format!("container {container:?} not found in pod {pod:?}"))
            .into_response();
    }
    serve_counted(&api, req, summary.key, call).await
}

#[instrument(name = "port_forward_request", skip(api, req), fields(node = %api.node))]
async fn port_forward_route(
    api: Arc<NodeApi>,
    ns: String,
    pod: String,
    uid: Option<String>,
    req: Request,
) -> Response {
    let ports = match parse_ports(req.uri().query()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match lookup(&api, &ns, &pod, uid.as_deref()) {
        Ok(s) => serve_counted(&api, req, s.key, StreamRequest::PortForward { ports }).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_query_like_the_api_server_sends_it() {
        let r = parse_exec(
            Some("command=sh&command=-c&command=echo+%22a+b%22&input=1&output=1&error=1"),
            "app",
        )
        .unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo \"a b\""]);
        assert!(r.stdin && r.stdout && r.stderr && !r.tty);
        // A TTY merges stderr into stdout.
        let r = parse_exec(Some("command=sh&input=1&output=1&error=1&tty=1"), "app").unwrap();
        assert!(r.tty && !r.stderr);
        let e = parse_exec(Some("command=sh"), "app").unwrap_err();
        assert_eq!(e.code.as_u16(), 400);
        assert!(e.message.contains("at least 1 of stdin, stdout, stderr"));
        let e = parse_exec(Some("output=1"), "app").unwrap_err();
        assert_eq!(e.code.as_u16(), 400);
        assert!(parse_exec(Some("command=ls&output=0&error=false"), "app").is_err());
    }

    #[test]
    fn attach_and_run() {
        let r = parse_attach(Some("output=1&tty=1&error=1"), "app").unwrap();
        assert!(r.stdout && r.tty && !r.stderr && !r.stdin);
        let r = parse_run(Some("cmd=ls+-l++/tmp"), "app").unwrap();
        assert_eq!(r.command, ["ls", "-l", "/tmp"]);
        assert!(parse_run(None, "app").is_err());
    }

    fn answer(status: u16, headers: &[(&'static str, &'static str)]) -> Response {
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut()
                .insert(*k, http::HeaderValue::from_static(v));
        }
        r
    }

    #[test]
    fn upgrades_are_read_from_the_answer() {
        let ws = answer(
            101,
            &[
                ("upgrade", "websocket"),
                ("sec-websocket-protocol", "v5.channel.k8s.io"),
            ],
        );
        assert_eq!(
            served_upgrade(&ws),
            Some(("websocket", "v5.channel.k8s.io".to_string()))
        );
        let spdy = answer(
            101,
            &[
                ("upgrade", "SPDY/3.1"),
                ("x-stream-protocol-version", "portforward.k8s.io"),
            ],
        );
        assert_eq!(
            served_upgrade(&spdy),
            Some(("spdy", "portforward.k8s.io".to_string()))
        );
        // A SPDY client that named no version (remotecommand v1): no protocol header.
        let bare = answer(101, &[("upgrade", "SPDY/3.1")]);
        assert_eq!(served_upgrade(&bare), Some(("spdy", String::new())));
        // Refusals are not upgrades, whatever their headers say.
        for code in [400, 403, 404, 500] {
            let refused = answer(
                code,
                &[("upgrade", "websocket"), ("x-stream-protocol-version", "x")],
            );
            assert_eq!(served_upgrade(&refused), None, "{code}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports(None).unwrap(), Vec::<u16>::new());
        assert_eq!(
            parse_ports(Some("port=80&port=8080,9090")).unwrap(),
            [80, 8080, 9090]
        );
        assert_eq!(parse_ports(Some("ports=80,81")).unwrap(), [80, 81]);
        for bad in ["port=0", "port=70000", "port=http", "port=1,x"] {
            assert_eq!(
                parse_ports(Some(bad)).unwrap_err().code.as_u16(),
                400,
                "{bad}"
            );
        }
    }
}
