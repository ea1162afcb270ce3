//! Kubelet streaming over SPDY/3.1 (the `vk-spdy` multiplexer): the streams a remotecommand
//! client opens (one per `streamType`), and the data/error stream pairs of port-forward matched
//! by `requestID`. Streams are answered as they arrive, as the kubelet does; the connection ends
//! with the session, the client, or the idle timeout, and every task it started ends with it.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, debug_span, warn};
use vk_provider_api::PodKey;
use vk_provider_api::provider::DynProvider;
use vk_provider_api::streams::ExecSession;
use vk_spdy::{Config, Connection, Headers, Incoming, IncomingStream, Role, RstStatus, Stream};

use crate::StreamConfig;
use crate::idle::Activity;
use crate::outcome::{SessionKind, StatusFormat};
use crate::portforward;
use crate::query::parse_port;
use crate::remotecommand::{self, BoxRead, BoxWrite, ClientStreams};
use crate::serve::Wanted;

const STREAM_TYPE: &str = "streamtype";
const PORT: &str = "port";
const REQUEST_ID: &str = "requestid";

/// remotecommand protocol version from the negotiated name (none named: v1).
fn version(protocol: Option<&str>) -> u8 {
    match protocol {
        Some("v5.channel.k8s.io") => 5,
        Some("v4.channel.k8s.io") => 4,
        Some("v3.channel.k8s.io") => 3,
        Some("v2.channel.k8s.io") => 2,
        _ => 1,
    }
}

/// The remotecommand streams a client opened.
#[derive(Default)]
struct Opened {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Opened {
    fn slot(&mut self, stream_type: &str) -> Option<&mut Option<Stream>> {
        match stream_type {
            "error" => Some(&mut self.error),
            "stdin" => Some(&mut self.stdin),
            "stdout" => Some(&mut self.stdout),
            "stderr" => Some(&mut self.stderr),
            "resize" => Some(&mut self.resize),
            _ => None,
        }
    }

    fn complete(&self, wanted: &Wanted, resize: bool) -> bool {
        self.error.is_some()
            && (!wanted.stdin || self.stdin.is_some())
            && (!wanted.stdout || self.stdout.is_some())
            && (!wanted.stderr || self.stderr.is_some())
            && (!resize || self.resize.is_some())
    }
}

/// Answers streams until the client has opened every one the request needs; `None` if the
/// connection ended first.
async fn open_streams(incoming: &mut Incoming, wanted: &Wanted, resize: bool) -> Option<Opened> {
    let mut opened = Opened::default();
    while !opened.complete(wanted, resize) {
        let stream = incoming.accept().await?;
        let stream_type = stream
            .headers()
            .get(STREAM_TYPE)
            .unwrap_or_default()
            .to_owned();
        match opened.slot(&stream_type) {
            Some(slot) if slot.is_none() => *slot = Some(stream.accept(Headers::new())),
            Some(_) => {
                debug!(%stream_type, "duplicate stream refused");
                stream.reject(RstStatus::ProtocolError);
            }
            None => {
                debug!(%stream_type, "unexpected stream type refused");
                stream.reject(RstStatus::ProtocolError);
            }
        }
    }
    Some(opened)
}

/// Refuses streams opened after the session is set up; returns when the connection ends.
async fn refuse_more(incoming: &mut Incoming) {
    while let Some(stream) = incoming.accept().await {
        stream.reject(RstStatus::RefusedStream);
    }
}

/// Runs an exec or attach session over SPDY.
pub(crate) async fn remote_command<S>(
    io: S,
    protocol: Option<&'static str>,
    session: ExecSession,
    wanted: Wanted,
    kind: SessionKind,
    activity: Activity,
    cfg: &StreamConfig,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let version = version(protocol);
    let (conn, mut incoming) = Connection::new(io, Role::Server, Config::default());
    // Terminal resizing came with v3.
    let resize = wanted.tty && version >= 3;
    let opened = tokio::time::timeout(
        cfg.creation_timeout,
        open_streams(&mut incoming, &wanted, resize),
    )
    .await;
    let opened = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => {
            debug!("the connection ended before the client opened its streams");
            return;
        }
        Err(_) => {
            warn!("timed out waiting for client to create streams");
            conn.close().await;
            return;
        }
    };
    // Each stream is split: the session gets the half it uses, the other half stays here so
    // the stream outlives the session (dropping a stream open in both directions resets it)
    // until the connection is closed.
    let mut kept_read: Vec<ReadHalf<Stream>> = Vec::new();
    let mut kept_write: Vec<WriteHalf<Stream>> = Vec::new();
    let mut reader = |stream: Option<Stream>| {
        stream.map(|s| {
            let (r, w) = tokio::io::split(s);
            kept_write.push(w);
            Box::pin(r) as BoxRead
        })
    };
    let stdin = reader(opened.stdin);
    let resize_stream = reader(opened.resize);
    let mut writer = |stream: Option<Stream>| {
        stream.map(|s| {
            let (r, w) = tokio::io::split(s);
            kept_read.push(r);
            Box::pin(w) as BoxWrite
        })
    };
    let stdout = writer(opened.stdout);
    let stderr = writer(opened.stderr);
    let Some(error) = writer(opened.error) else {
        // `open_streams` does not finish without an error stream.
        return;
    };
    let client = ClientStreams {
        stdin,
        stdout,
        stderr,
        resize: resize_stream,
        error,
        format: if version >= 4 {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        },
    };
    let mut work = Box::pin(remotecommand::run(session, client, kind));
    let done = tokio::select! {
        () = &mut work => true,
        () = refuse_more(&mut incoming) => {
            debug!("the client went away");
            false
        }
        () = activity.idle_for(cfg.idle_timeout) => {
            debug!("idle timeout");
            false
        }
    };
    // Ends the session's backend side unless it already ended.
    drop(work);
    if done {
        // The client closes the connection once it has read everything, which on a slow link
        // takes a while: like the kubelet, wait for it, as long as bytes keep moving.
        tokio::select! {
            () = refuse_more(&mut incoming) => {}
            () = activity.idle_for(cfg.idle_timeout) => debug!("the client did not close the connection"),
        }
    }
    conn.close().await;
    drop((kept_read, kept_write));
}

/// A port-forward request whose second stream has not arrived yet.
struct Pending {
    error: Option<Stream>,
    data: Option<(u16, Stream)>,
    deadline: Instant,
}

/// Checks a port-forward stream's headers as the kubelet does.
fn port_forward_stream(stream: &IncomingStream) -> Result<(String, u16), String> {
    let headers = stream.headers();
    let port = headers
        .get(PORT)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("{PORT:?} header is required"))?;
    let port = parse_port(port)?;
    let stream_type = headers
        .get(STREAM_TYPE)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "\"streamType\" header is required".to_owned())?;
    if stream_type != "error" && stream_type != "data" {
        return Err(format!("invalid stream type {stream_type:?}"));
    }
    Ok((stream_type.to_owned(), port))
}

/// The pairing key: the `requestID` header, or for old clients that send none, one derived
/// from the stream ids (error stream `n`, data stream `n+2`), as the kubelet does.
fn request_id(stream: &IncomingStream, stream_type: &str) -> String {
    match stream.headers().get(REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ if stream_type == "error" => stream.id().to_string(),
        _ => stream.id().saturating_sub(2).to_string(),
    }
}

async fn print_error(stream: &mut Stream, message: &str) {
    let _ = stream.write_all(message.as_bytes()).await;
}

/// Runs a port-forward connection: every data/error stream pair the client opens is one
/// forwarded connection to the pod, in a task that ends with the connection.
pub(crate) async fn port_forward<S>(
    io: S,
    provider: DynProvider,
    key: PodKey,
    activity: Activity,
    cfg: &StreamConfig,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = Connection::new(io, Role::Server, Config::default());
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            stream = incoming.accept() => {
                let Some(stream) = stream else { break };
                let (stream_type, port) = match port_forward_stream(&stream) {
                    Ok(v) => v,
                    Err(e) => {
                        debug!(error = %e, "port-forward stream refused");
                        stream.reject(RstStatus::ProtocolError);
                        continue;
                    }
                };
                let id = request_id(&stream, &stream_type);
                let deadline = Instant::now() + cfg.creation_timeout;
                let pair = pending.entry(id.clone()).or_insert_with(|| Pending {
                    error: None,
                    data: None,
                    deadline,
                });
                let duplicate = match stream_type.as_str() {
                    "error" => pair.error.is_some(),
                    _ => pair.data.is_some(),
                };
                if duplicate {
                    let message = format!(
                        "error processing stream for request {id}: {stream_type} stream already assigned"
                    );
                    debug!(%message);
                    if let Some(error) = pair.error.as_mut() {
                        print_error(error, &message).await;
                    }
                    stream.reject(RstStatus::ProtocolError);
                    continue;
                }
                let stream = stream.accept(Headers::new());
                if stream_type == "error" {
                    pair.error = Some(stream);
                } else {
                    pair.data = Some((port, stream));
                }
                if pair.error.is_some()
                    && pair.data.is_some()
                    && let Some(Pending {
                        error: Some(error),
                        data: Some((port, data)),
                        ..
                    }) = pending.remove(&id)
                {
                    let span = debug_span!("forward", request = %id, port);
                    forwards.spawn(
                        forward_pair(provider.clone(), key.clone(), port, data, error)
                            .instrument(span),
                    );
                }
            }
            () = sleep_until(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(mut pair) = pending.remove(&id) {
                        debug!(request = %id, "timed out waiting for the second stream");
                        if let Some(error) = pair.error.as_mut() {
                            let message = format!("timed out waiting for streams for request {id}");
                            print_error(error, &message).await;
                            let _ = error.shutdown().await;
                        }
                    }
                }
            }
            Some(result) = forwards.join_next(), if !forwards.is_empty() => {
                if let Err(e) = result {
                    debug!(error = %e, "forward task failed");
                }
            }
            () = activity.idle_for(cfg.idle_timeout) => {
                debug!("idle timeout");
                break;
            }
        }
    }
    forwards.shutdown().await;
    drop(pending);
    conn.close().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One forwarded connection; afterwards waits for the client to finish its side of the data
/// stream, so the stream ends with FINs rather than a reset.
async fn forward_pair(provider: DynProvider, key: PodKey, port: u16, data: Stream, error: Stream) {
    let (mut from_client, to_client) = tokio::io::split(data);
    portforward::forward(&provider, &key, port, &mut from_client, to_client, error).await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = from_client.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
