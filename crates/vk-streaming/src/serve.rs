//! The public handlers: negotiate the upgrade, start the provider's side, answer `101`, and run
//! the session on the upgraded connection in a task that ends with it. Also the WebSocket
//! session set-up (channel numbering per kubelet endpoint).

use std::future::Future;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{Instrument as _, debug, info_span};
use vk_provider_api::PodKey;
use vk_provider_api::ProviderError;
use vk_provider_api::provider::DynProvider;
use vk_provider_api::streams::{AttachRequest, ExecRequest, ExecSession};

use crate::StreamConfig;
use crate::error::BadRequest;
use crate::idle::{Activity, IdleIo};
use crate::outcome::SessionKind;
use crate::remotecommand::{self, ClientStreams};
use crate::spdy;
use crate::status::{self, reason};
use crate::upgrade::{self, Transport};
use crate::ws::{self, Input, Outgoing, WsProtocol};

/// remotecommand protocol versions over SPDY, newest first.
pub(crate) const SPDY_EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Port-forward over SPDY.
pub(crate) const SPDY_PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// Channel numbers are one byte: two per port.
const MAX_WS_PORTS: usize = 128;

/// The streams a remotecommand request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) tty: bool,
}

/// The upgrade both sides agreed on.
enum Negotiated {
    WebSocket {
        accept: String,
        protocol: WsProtocol,
    },
    /// `None`: a client that names no version (remotecommand v1).
    Spdy { protocol: Option<&'static str> },
    /// SPDY carried in WebSocket binary messages (client-go's port-forward tunnel).
    Tunnel { accept: String },
}

impl Negotiated {
    fn name(&self) -> &'static str {
        match self {
            Self::WebSocket { protocol, .. } => protocol.name,
            Self::Spdy { protocol } => protocol.unwrap_or(""),
            Self::Tunnel { .. } => ws::SPDY_TUNNEL_PROTOCOL,
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            Self::WebSocket { .. } => "websocket",
            Self::Spdy { .. } => "spdy",
            Self::Tunnel { .. } => "websocket-tunnel",
        }
    }
}

/// Picks the protocol: the client's first offer the server supports. `tunnel`: whether the
/// SPDY-over-WebSocket tunnel counts among the WebSocket offers.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
fn negotiate(
    transport: Transport,
    ws_protocols: &[WsProtocol],
    spdy_protocols: &[&'static str],
    tunnel: bool,
) -> Result<Negotiated, Response> {
    match transport {
        Transport::WebSocket { accept, offered } => {
            if offered.is_empty()
                && let Some(protocol) = ws_protocols.iter().find(|p| p.name.is_empty())
            {
                return Ok(Negotiated::WebSocket {
                    accept,
                    protocol: *protocol,
                });
            }
            for o in &offered {
                if tunnel && o == ws::SPDY_TUNNEL_PROTOCOL {
                    return Ok(Negotiated::Tunnel { accept });
                }
                if let Some(protocol) = ws_protocols
                    .iter()
                    .find(|p| !p.name.is_empty() && p.name == o)
                {
                    return Ok(Negotiated::WebSocket {
                        accept,
                        protocol: *protocol,
                    });
                }
            }
            let mut names: Vec<&str> = ws_protocols
                .iter()
                .map(|p| p.name)
                .filter(|n| !n.is_empty())
                .collect();
            if tunnel {
                names.push(ws::SPDY_TUNNEL_PROTOCOL);
            }
            Err(upgrade::websocket_forbidden(&offered, &names))
        }
        Transport::Spdy { offered } => {
            if offered.is_empty() {
                return Ok(Negotiated::Spdy { protocol: None });
            }
            match upgrade::negotiate(&offered, spdy_protocols) {
                Some(p) => Ok(Negotiated::Spdy { protocol: Some(p) }),
                None => Err(upgrade::spdy_forbidden(&offered, spdy_protocols)),
            }
        }
    }
}

/// The transport the request upgrades to, checked before anything is started.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
fn transport(req: &Request) -> Result<Transport, Response> {
    let transport = upgrade::transport(req.version(), req.headers())?;
    // Missing when the HTTP server was not built with upgrade support (hyper's
    // `serve_connection_with_upgrades`): a bug of the embedding server, not of the client.
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(status::failure_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            reason::INTERNAL_ERROR,
            "this server cannot upgrade connections",
        ));
    }
    Ok(transport)
}

fn switching(negotiated: &Negotiated) -> Response {
    match negotiated {
        Negotiated::WebSocket { accept, protocol } => {
            upgrade::websocket_switching(accept, protocol.name).unwrap_or_else(|r| r)
        }
        Negotiated::Spdy { protocol } => upgrade::spdy_switching(*protocol),
        Negotiated::Tunnel { accept } => {
            upgrade::websocket_switching(accept, ws::SPDY_TUNNEL_PROTOCOL).unwrap_or_else(|r| r)
        }
    }
}

/// Answers `101` and runs `session` on the upgraded connection in its own task.
fn spawn_upgraded<F, Fut>(
    mut req: Request,
    response: Response,
    span: tracing::Span,
    session: F,
) -> Response
where
    F: FnOnce(IdleIo<TokioIo<hyper::upgrade::Upgraded>>, Activity) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !response.status().is_informational() {
        return response;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!(error = %e, "the connection was not upgraded");
                    return;
                }
            };
            let activity = Activity::new();
            let io = IdleIo::new(TokioIo::new(upgraded), activity.clone());
            debug!("session started");
            session(io, activity).await;
            debug!("session ended");
        }
        .instrument(span),
    );
    response
}

/// Serves `/exec`: runs `exec` in the pod's container through the provider, over whichever of
/// SPDY/3.1 or WebSocket the request upgrades to. The provider is asked before the upgrade, so
/// a missing pod or container is an HTTP error the client can show.
pub async fn serve_exec(
    req: Request,
    provider: DynProvider,
    key: PodKey,
    exec: ExecRequest,
    cfg: StreamConfig,
) -> Response {
    let wanted = Wanted {
        stdin: exec.stdin,
        stdout: exec.stdout,
        stderr: exec.stderr,
        tty: exec.tty,
    };
    let span = info_span!("exec", pod = %key, container = %exec.container);
    let kind = SessionKind::Exec {
        command: exec.command.clone(),
    };
    let start = async move { provider.exec(&key, &exec).await };
    remote_command(req, wanted, kind, cfg, span, start).await
}

/// Serves `/attach`: connects to the container's own streams through the provider.
pub async fn serve_attach(
    req: Request,
    provider: DynProvider,
    key: PodKey,
    attach: AttachRequest,
    cfg: StreamConfig,
) -> Response {
    let wanted = Wanted {
        stdin: attach.stdin,
        stdout: attach.stdout,
        stderr: attach.stderr,
        tty: attach.tty,
    };
    let span = info_span!("attach", pod = %key, container = %attach.container);
    let start = async move { provider.attach(&key, &attach).await };
    remote_command(req, wanted, SessionKind::Attach, cfg, span, start).await
}

async fn remote_command(
    req: Request,
    wanted: Wanted,
    kind: SessionKind,
    cfg: StreamConfig,
    span: tracing::Span,
    start: impl Future<Output = Result<ExecSession, ProviderError>>,
) -> Response {
    let transport = match transport(&req) {
        Ok(t) => t,
        Err(response) => return response,
    };
    let negotiated = match negotiate(transport, ws::EXEC_PROTOCOLS, SPDY_EXEC_PROTOCOLS, false) {
        Ok(n) => n,
        Err(response) => return response,
    };
    let session = match start.await {
        Ok(s) => s,
        Err(e) => {
            debug!(parent: &span, error = %e, "the provider refused the session");
            return status::provider_error_response(&e);
        }
    };
    let span = info_span!(
        parent: &span,
        "stream",
        transport = negotiated.transport(),
        protocol = negotiated.name()
    );
    let response = switching(&negotiated);
    spawn_upgraded(req, response, span, move |io, activity| async move {
        match negotiated {
            Negotiated::WebSocket { protocol, .. } => {
                ws_remote_command(io, protocol, session, wanted, kind, activity, &cfg).await;
            }
            Negotiated::Spdy { protocol } => {
                spdy::remote_command(io, protocol, session, wanted, kind, activity, &cfg).await;
            }
            // Not offered for remotecommand.
            Negotiated::Tunnel { .. } => {}
        }
    })
}

async fn websocket<S>(io: S, cfg: &StreamConfig) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_message_bytes));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// Channels of an exec or attach over WebSocket: 0 stdin, 1 stdout, 2 stderr, 3 error,
/// 4 resize.
async fn ws_remote_command<S>(
    io: S,
    protocol: WsProtocol,
    session: ExecSession,
    wanted: Wanted,
    kind: SessionKind,
    activity: Activity,
    cfg: &StreamConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = websocket(io, cfg).await;
    let outgoing = Outgoing::new(protocol.codec);
    let (stdin_input, stdin) = if wanted.stdin {
        let (input, reader) = ws::input_pipe();
        (input, Some(Box::pin(reader) as remotecommand::BoxRead))
    } else {
        (Input::Ignore, None)
    };
    // The kubelet always reads the resize channel; the session ignores it without a terminal.
    let (resize_input, resize) = ws::input_pipe();
    let inputs = vec![
        stdin_input,
        Input::Ignore,
        Input::Ignore,
        Input::Ignore,
        resize_input,
    ];
    // The kubelet's "connection established" notice: an empty message on the lowest channel
    // the client reads.
    let first = if wanted.stdout {
        1
    } else if wanted.stderr {
        2
    } else {
        3
    };
    let mut notice = outgoing.writer(first);
    let client = ClientStreams {
        stdin,
        stdout: wanted
            .stdout
            .then(|| Box::pin(outgoing.writer(1)) as remotecommand::BoxWrite),
        stderr: wanted
            .stderr
            .then(|| Box::pin(outgoing.writer(2)) as remotecommand::BoxWrite),
        resize: Some(Box::pin(resize)),
        error: Box::pin(outgoing.writer(3)),
        format: protocol.status,
    };
    let work = async move {
        notice.send_message(&[]).await;
        drop(notice);
        remotecommand::run(session, client, kind).await;
    };
    ws::run(
        ws,
        protocol,
        inputs,
        outgoing,
        work,
        activity,
        ws::Limits {
            idle_timeout: cfg.idle_timeout,
            first_output_hold: cfg.ws_first_output_hold,
        },
    )
    .await;
}

/// Serves `/portForward`: over SPDY, each client connection arrives as a pair of streams naming
/// its port; over WebSocket, `ports` (from the query, required) are forwarded once each.
pub async fn serve_port_forward(
    req: Request,
    provider: DynProvider,
    key: PodKey,
    ports: Vec<u16>,
    cfg: StreamConfig,
) -> Response {
    let transport = match transport(&req) {
        Ok(t) => t,
        Err(response) => return response,
    };
    let negotiated = match negotiate(
        transport,
        ws::PORT_FORWARD_PROTOCOLS,
        SPDY_PORT_FORWARD_PROTOCOLS,
        true,
    ) {
        Ok(n) => n,
        Err(response) => return response,
    };
    // Only the channel protocol takes its ports from the query; SPDY names them per stream.
    if matches!(negotiated, Negotiated::WebSocket { .. }) {
        if ports.is_empty() {
            return BadRequest::new("query parameter \"port\" is required").into_response();
        }
        if ports.len() > MAX_WS_PORTS {
            return BadRequest::new(format!("at most {MAX_WS_PORTS} ports per connection"))
                .into_response();
        }
    }
    let span = info_span!(
        "port_forward",
        pod = %key,
        transport = negotiated.transport(),
        protocol = negotiated.name()
    );
    let response = switching(&negotiated);
    spawn_upgraded(req, response, span, move |io, activity| async move {
        match negotiated {
            Negotiated::WebSocket { protocol, .. } => {
                ws_port_forward(io, protocol, provider, key, ports, activity, &cfg).await;
            }
            Negotiated::Spdy { .. } => {
                spdy::port_forward(io, provider, key, activity, &cfg).await;
            }
            Negotiated::Tunnel { .. } => {
                let tunnel = ws::Tunnel::new(websocket(io, &cfg).await);
                spdy::port_forward(tunnel, provider, key, activity, &cfg).await;
            }
        }
    })
}

/// Channels of a WebSocket port-forward: `2i` data and `2i+1` error for the i-th port, each
/// starting with the port number (u16, little-endian).
async fn ws_port_forward<S>(
    io: S,
    protocol: WsProtocol,
    provider: DynProvider,
    key: PodKey,
    ports: Vec<u16>,
    activity: Activity,
    cfg: &StreamConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = websocket(io, cfg).await;
    let outgoing = Outgoing::new(protocol.codec);
    let mut inputs = Vec::with_capacity(ports.len() * 2);
    let mut forwards = Vec::with_capacity(ports.len());
    for (i, port) in ports.into_iter().enumerate() {
        let (input, from_client) = ws::input_pipe();
        inputs.push(input);
        inputs.push(Input::Ignore);
        // At most MAX_WS_PORTS ports, so both channel numbers fit a byte.
        let data_channel = u8::try_from(2 * i).unwrap_or(u8::MAX);
        let to_client = outgoing.writer(data_channel);
        let error = outgoing.writer(data_channel.saturating_add(1));
        forwards.push((port, from_client, to_client, error));
    }
    let work = async move {
        let forwards = forwards
            .into_iter()
            .map(|(port, from_client, mut to_client, mut error)| {
                let (provider, key) = (&provider, &key);
                async move {
                    to_client.send_message(&port.to_le_bytes()).await;
                    error.send_message(&port.to_le_bytes()).await;
                    crate::portforward::forward(provider, key, port, from_client, to_client, error)
                        .await;
                }
            });
        futures::future::join_all(forwards).await;
    };
    ws::run(
        ws,
        protocol,
        inputs,
        outgoing,
        work,
        activity,
        ws::Limits {
            idle_timeout: cfg.idle_timeout,
            // Port-forward clients write first or wait for the port prefix; nothing races.
            first_output_hold: Duration::ZERO,
        },
    )
    .await;
}
