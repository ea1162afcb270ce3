//! The Kubernetes channel protocol over WebSocket: each message's first byte names a channel
//! (ASCII `'0'+n` followed by base64 in the base64 variants), `[0xFF, n]` half-closes channel `n`
//! in v5. This module owns the framing and the connection: incoming data is demultiplexed into
//! per-channel pipes, outgoing data from per-channel writers is queued, in order, to one writer,
//! and the connection's end (session done, client gone, protocol violation, idle) is decided
//! here, always with a close frame when the connection still works.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use futures::future::FusedFuture as _;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::PollSender;
use tracing::debug;

use crate::idle::Activity;
use crate::outcome::StatusFormat;

/// Channel byte of the v5 half-close signal.
const STREAM_CLOSE: u8 = 0xFF;
/// Largest payload of one outgoing message.
const MAX_OUT_PAYLOAD: usize = 32 * 1024;
/// Messages queued towards the client before writers wait.
const OUT_QUEUE: usize = 64;
/// Bytes buffered per incoming channel before the connection's reader waits for the consumer.
const PIPE_BYTES: usize = 64 * 1024;
/// How long a closing connection may take to deliver what is queued and the close handshake.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// How channel messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Binary messages: channel byte, then the data.
    Binary,
    /// Text messages: ASCII `'0'+channel`, then the data in base64.
    Base64,
}

/// A WebSocket sub-protocol a kubelet endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WsProtocol {
    /// The `Sec-WebSocket-Protocol` value; empty for a client that names none.
    pub(crate) name: &'static str,
    pub(crate) codec: Codec,
    /// v5: the client may half-close a channel with `[0xFF, channel]`.
    pub(crate) stream_close: bool,
    /// How exec and attach report the outcome on channel 3.
    pub(crate) status: StatusFormat,
}

const fn proto(
    name: &'static str,
    codec: Codec,
    stream_close: bool,
    status: StatusFormat,
) -> WsProtocol {
    WsProtocol {
        name,
        codec,
        stream_close,
        status,
    }
}

/// remotecommand (exec, attach): the kubelet's list plus v5, which modern kubectl asks for first.
pub(crate) const EXEC_PROTOCOLS: &[WsProtocol] = &[
    proto("v5.channel.k8s.io", Codec::Binary, true, StatusFormat::Json),
    proto(
        "v4.channel.k8s.io",
        Codec::Binary,
        false,
        StatusFormat::Json,
    ),
    proto(
        "v4.base64.channel.k8s.io",
        Codec::Base64,
        false,
        StatusFormat::Json,
    ),
    proto("channel.k8s.io", Codec::Binary, false, StatusFormat::Text),
    proto(
        "base64.channel.k8s.io",
        Codec::Base64,
        false,
        StatusFormat::Text,
    ),
    proto("", Codec::Binary, false, StatusFormat::Text),
];

/// Port-forward, as the kubelet's WebSocket handler serves it.
pub(crate) const PORT_FORWARD_PROTOCOLS: &[WsProtocol] = &[
    proto(
        "v4.channel.k8s.io",
        Codec::Binary,
        false,
        StatusFormat::Json,
    ),
    proto(
        "v4.base64.channel.k8s.io",
        Codec::Base64,
        false,
        StatusFormat::Json,
    ),
    proto("", Codec::Binary, false, StatusFormat::Json),
];

/// client-go's port-forward over WebSocket: the SPDY byte stream in binary messages.
pub(crate) const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// One message for `channel`.
pub(crate) fn encode(codec: Codec, channel: u8, data: &[u8]) -> Message {
    match codec {
        Codec::Binary => {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::Binary(frame.into())
        }
        Codec::Base64 => {
            let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
            text.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::Text(text.into())
        }
    }
}

/// A decoded client message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Data {
        channel: u8,
        payload: Vec<u8>,
    },
    Close {
        channel: u8,
    },
    /// A message without even a channel byte; the kubelet skips those.
    Empty,
}

/// Why a client message is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("a stream close signal must name exactly one channel")]
    BadClose,
    #[error("channel {0:?} is not a base64 channel digit")]
    BadChannel(char),
    #[error("malformed base64 payload")]
    BadBase64,
}

pub(crate) fn decode(codec: Codec, stream_close: bool, data: &[u8]) -> Result<Frame, FrameError> {
    let Some((&first, rest)) = data.split_first() else {
        return Ok(Frame::Empty);
    };
    if stream_close && first == STREAM_CLOSE {
        return match rest {
            [channel] => Ok(Frame::Close { channel: *channel }),
            _ => Err(FrameError::BadClose),
        };
    }
    match codec {
        Codec::Binary => Ok(Frame::Data {
            channel: first,
            payload: rest.to_vec(),
        }),
        Codec::Base64 => {
            if !first.is_ascii_digit() {
                return Err(FrameError::BadChannel(char::from(first)));
            }
            let payload = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| FrameError::BadBase64)?;
            Ok(Frame::Data {
                channel: first - b'0',
                payload,
            })
        }
    }
}

/// What the server does with data a client sends on a channel.
#[derive(Debug)]
pub(crate) enum Input {
    /// Delivered to the session through a pipe; dropping the pipe is end-of-file.
    Pipe(DuplexStream),
    /// Dropped: an output-only channel, a stream the request did not ask for, or a channel the
    /// client closed.
    Ignore,
}

/// A pipe for one incoming channel: the connection keeps the first half, the session reads the
/// second.
pub(crate) fn input_pipe() -> (Input, DuplexStream) {
    let (to_session, session_end) = tokio::io::duplex(PIPE_BYTES);
    (Input::Pipe(to_session), session_end)
}

/// The queue of messages towards the client.
pub(crate) struct Outgoing {
    pub(crate) tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    codec: Codec,
}

impl Outgoing {
    pub(crate) fn new(codec: Codec) -> Self {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        Self { tx, rx, codec }
    }

    /// A byte-stream writer for `channel`.
    pub(crate) fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            tx: PollSender::new(self.tx.clone()),
            channel,
            codec: self.codec,
        }
    }
}

/// Writes bytes as messages on one channel. Shutting it down sends nothing: the kubelet's
/// channels end with the connection.
pub(crate) struct ChannelWriter {
    tx: PollSender<Message>,
    channel: u8,
    codec: Codec,
}

impl ChannelWriter {
    /// Sends `data` as exactly one message, even when empty (the kubelet's "connection
    /// established" notice and the port-forward port prefix are one message each).
    pub(crate) async fn send_message(&mut self, data: &[u8]) {
        if let Some(tx) = self.tx.get_ref() {
            // A closed connection is noticed by the session's next write.
            let _ = tx.send(encode(self.codec, self.channel, data)).await;
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the WebSocket connection is closed",
    )
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_OUT_PAYLOAD);
        let message = encode(self.codec, self.channel, &buf[..n]);
        self.tx.send_item(message).map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// How the client's side of the connection ended.
#[derive(Debug)]
enum ReadEnd {
    /// A close frame (the close handshake then completes by itself).
    Closed,
    /// Something the server must refuse; answered with a close frame.
    Violation(CloseCode, String),
    /// The connection broke; nothing more can be sent.
    Broken,
}

/// How a connection ends and what it may hold back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// No bytes moving for this long closes the connection.
    pub(crate) idle_timeout: Duration,
    /// Nothing is sent until the client has sent a message or this much time has passed.
    pub(crate) first_output_hold: Duration,
}

/// Runs a channel-protocol connection until `work` (the session) ends, the client goes away or
/// breaks the protocol, or the connection is idle for `limits.idle_timeout`. When `work` ends
/// first, everything it queued is delivered before a normal close; otherwise `work` is dropped
/// first (which ends the session's backend side).
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    inputs: Vec<Input>,
    outgoing: Outgoing,
    work: impl Future<Output = ()>,
    activity: Activity,
    limits: Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Limits {
        idle_timeout,
        first_output_hold,
    } = limits;
    let Outgoing { tx, rx, .. } = outgoing;
    let (sink, stream) = ws.split();
    let (client_spoke, first_client_message) = oneshot::channel();
    let reader = read_loop(stream, protocol, inputs, client_spoke).fuse();
    let hold = hold_first_output(first_output_hold, first_client_message);
    let writer = write_loop(sink, rx, hold).fuse();
    tokio::pin!(reader, writer);
    let mut work = Box::pin(work);
    let (close, finished) = tokio::select! {
        () = &mut work => (Some(close_frame(CloseCode::Normal, "")), true),
        end = &mut reader => (match end {
            // The close reply is already queued by the protocol library; sending ours flushes it.
            ReadEnd::Closed => Some(close_frame(CloseCode::Normal, "")),
            ReadEnd::Violation(code, reason) => {
                debug!(%reason, "closing the WebSocket connection: protocol violation");
                Some(close_frame(code, &reason))
            }
            ReadEnd::Broken => None,
        }, false),
        () = &mut writer => (None, false),
        () = activity.idle_for(idle_timeout) => {
            debug!("closing the WebSocket connection: idle timeout");
            (Some(close_frame(CloseCode::Away, "idle timeout")), false)
        }
    };
    // Ends the session's backend side unless it already ended.
    drop(work);
    let Some(close) = close else { return };
    if writer.is_terminated() {
        return;
    }
    // Deliver what is queued, then the close frame, still reading meanwhile (the client's pings
    // need answers). After a session that ended by itself this takes as long as the client needs
    // to read its output, as long as bytes keep moving; otherwise it is cut short.
    let delivered = {
        let deliver = async {
            let _ = tx.send(Message::Close(Some(close))).await;
            drop(tx);
            (&mut writer).await;
        };
        let client_done = async {
            if reader.is_terminated() {
                std::future::pending::<()>().await;
            }
            let _ = (&mut reader).await;
        };
        let limit = async {
            if finished {
                activity.idle_for(idle_timeout).await;
            } else {
                tokio::time::sleep(CLOSE_LINGER).await;
            }
        };
        tokio::select! {
            () = deliver => true,
            () = client_done => false,
            () = limit => false,
        }
    };
    // Wait for the client's close reply, dropping whatever it still sends.
    if delivered
        && !reader.is_terminated()
        && tokio::time::timeout(CLOSE_LINGER, &mut reader)
            .await
            .is_err()
    {
        debug!("the client did not complete the close handshake in time");
    }
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // A close reason must fit a control frame (125 bytes including the code).
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Resolves once the client has sent a message (or its side ended), or after `hold`.
async fn hold_first_output(hold: Duration, first_client_message: oneshot::Receiver<()>) {
    if hold.is_zero() {
        return;
    }
    // An error means the reader ended: nobody is left to wait for.
    let _ = tokio::time::timeout(hold, first_client_message).await;
}

async fn read_loop<S>(
    mut stream: futures::stream::SplitStream<WebSocketStream<S>>,
    protocol: WsProtocol,
    mut inputs: Vec<Input>,
    client_spoke: oneshot::Sender<()>,
) -> ReadEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client_spoke = Some(client_spoke);
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(m) => m,
            Err(WsError::Capacity(e)) => {
                return ReadEnd::Violation(CloseCode::Size, e.to_string());
            }
            Err(WsError::Protocol(e)) => {
                return ReadEnd::Violation(CloseCode::Protocol, e.to_string());
            }
            Err(WsError::Utf8(_)) => {
                return ReadEnd::Violation(CloseCode::Invalid, "invalid UTF-8 text".into());
            }
            Err(e) => {
                debug!(error = %e, "reading from the WebSocket connection");
                return ReadEnd::Broken;
            }
        };
        let data: &[u8] = match &message {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
            Message::Close(_) => return ReadEnd::Closed,
            // Pings are answered by the protocol library.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        // A data message proves the client's channels are set up; a ping does not (client-go
        // pings from its reading task).
        if let Some(spoke) = client_spoke.take() {
            let _ = spoke.send(());
        }
        let frame = match decode(protocol.codec, protocol.stream_close, data) {
            Ok(f) => f,
            Err(e) => return ReadEnd::Violation(CloseCode::Protocol, e.to_string()),
        };
        match frame {
            Frame::Empty => {}
            Frame::Close { channel } => match inputs.get_mut(usize::from(channel)) {
                // Dropping the pipe's end is the session's end-of-file.
                Some(slot) => *slot = Input::Ignore,
                None => {
                    return ReadEnd::Violation(
                        CloseCode::Protocol,
                        format!("close signal for unknown channel {channel}"),
                    );
                }
            },
            Frame::Data { channel, payload } => match inputs.get_mut(usize::from(channel)) {
                Some(Input::Pipe(pipe)) => {
                    if pipe.write_all(&payload).await.is_err() {
                        // The session stopped reading this channel; drop what follows.
                        inputs[usize::from(channel)] = Input::Ignore;
                    }
                }
                Some(Input::Ignore) => {}
                None => {
                    return ReadEnd::Violation(
                        CloseCode::Protocol,
                        format!("data for unknown channel {channel}"),
                    );
                }
            },
        }
    }
    ReadEnd::Broken
}

async fn write_loop<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
    hold: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    hold.await;
    while let Some(message) = rx.recv().await {
        let closing = matches!(message, Message::Close(_));
        let sent = async {
            sink.feed(message).await?;
            // Batch what is already queued into one flush.
            if closing || rx.is_empty() {
                sink.flush().await?;
            }
            Ok::<_, WsError>(())
        };
        if let Err(e) = sent.await {
            if !closing {
                debug!(error = %e, "writing to the WebSocket connection");
            }
            return;
        }
        if closing {
            return;
        }
    }
}

/// The SPDY-over-WebSocket tunnel as a byte stream: binary messages in, binary messages out,
/// the close handshake as end-of-file.
pub(crate) struct Tunnel<S> {
    ws: WebSocketStream<S>,
    pending: bytes::Bytes,
    eof: bool,
}

impl<S> Tunnel<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: bytes::Bytes::new(),
            eof: false,
        }
    }
}

fn ws_io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => closed(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tunnel<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message in a SPDY tunnel",
                    )));
                }
                // Pings are answered by the protocol library.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tunnel<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.ws.poll_ready_unpin(cx)).map_err(ws_io_error)?;
        let n = buf.len().min(MAX_OUT_PAYLOAD);
        self.ws
            .start_send_unpin(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(ws_io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.ws.poll_close_unpin(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_framing() {
        assert_eq!(
            encode(Codec::Binary, 1, b"hi"),
            Message::Binary(vec![1, b'h', b'i'].into())
        );
        assert_eq!(
            encode(Codec::Base64, 2, b"hi"),
            Message::Text("2aGk=".into())
        );
        assert_eq!(encode(Codec::Base64, 1, b""), Message::Text("1".into()));
        assert_eq!(
            decode(Codec::Base64, false, b"0aGk="),
            Ok(Frame::Data {
                channel: 0,
                payload: b"hi".to_vec()
            })
        );
        assert_eq!(
            decode(Codec::Binary, false, &[4, b'{']),
            Ok(Frame::Data {
                channel: 4,
                payload: b"{".to_vec()
            })
        );
        assert_eq!(decode(Codec::Binary, false, &[]), Ok(Frame::Empty));
    }

    #[test]
    fn v5_close_signal() {
        assert_eq!(
            decode(Codec::Binary, true, &[0xFF, 0]),
            Ok(Frame::Close { channel: 0 })
        );
        assert_eq!(
            decode(Codec::Binary, true, &[0xFF]),
            Err(FrameError::BadClose)
        );
        assert_eq!(
            decode(Codec::Binary, true, &[0xFF, 0, 1]),
            Err(FrameError::BadClose)
        );
        // Before v5, 0xFF is just a channel number (which the caller then refuses).
        assert!(matches!(
            decode(Codec::Binary, false, &[0xFF, 0]),
            Ok(Frame::Data { channel: 0xFF, .. })
        ));
    }

    const V5: WsProtocol = EXEC_PROTOCOLS[0];
    const HOLD: Duration = Duration::from_millis(250);

    /// A session that writes `out` on stdout at once and ends, served over an in-memory
    /// connection; returns the client's end.
    fn serve_immediate_output(
        out: &'static [u8],
    ) -> impl Future<Output = WebSocketStream<DuplexStream>> {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            let outgoing = Outgoing::new(Codec::Binary);
            let mut stdout = outgoing.writer(1);
            let (stdin, _session_stdin) = input_pipe();
            let work = async move {
                stdout.send_message(out).await;
            };
            let limits = Limits {
                idle_timeout: Duration::from_secs(3600),
                first_output_hold: HOLD,
            };
            run(ws, V5, vec![stdin], outgoing, work, Activity::new(), limits).await;
        });
        WebSocketStream::from_raw_socket(client_io, Role::Client, None)
    }

    #[tokio::test(start_paused = true)]
    async fn first_output_waits_for_the_hold_when_the_client_is_silent() {
        let mut client = serve_immediate_output(b"early").await;
        let start = tokio::time::Instant::now();
        let first = client.next().await.and_then(Result::ok);
        assert_eq!(first, Some(Message::Binary(b"\x01early".to_vec().into())));
        assert!(
            start.elapsed() >= HOLD,
            "output sent {:?} after the upgrade, before the hold ended",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_message_ends_the_hold_at_once() {
        let mut client = serve_immediate_output(b"early").await;
        let start = tokio::time::Instant::now();
        client
            .send(Message::Binary(vec![0, b'x'].into()))
            .await
            .unwrap();
        let first = client.next().await.and_then(Result::ok);
        assert_eq!(first, Some(Message::Binary(b"\x01early".to_vec().into())));
        // The paused clock only moves when every task waits on a timer: the hold's did not fire.
        assert!(
            start.elapsed() < HOLD,
            "output waited {:?} although the client had spoken",
            start.elapsed()
        );
    }

    #[test]
    fn malformed_base64() {
        assert_eq!(
            decode(Codec::Base64, false, b"x"),
            Err(FrameError::BadChannel('x'))
        );
        assert_eq!(
            decode(Codec::Base64, false, b"0!!"),
            Err(FrameError::BadBase64)
        );
    }
}
