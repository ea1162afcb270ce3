//! A SPDY/3.1 stream multiplexer: the subset Kubernetes streaming needs.
//!
//! `kubectl exec`, `attach` and `port-forward` (and every client-go program) upgrade an HTTP
//! connection to `SPDY/3.1` and then open one SPDY stream per channel (stdin, stdout, error, …
//! or data/error per forwarded connection). The API server passes those bytes straight through to
//! the kubelet, so a kubelet must speak SPDY/3.1 as the peer of moby/spdystream. This crate owns
//! that framing layer and nothing above it: the HTTP upgrade, the `X-Stream-Protocol-Version`
//! negotiation and the meaning of `streamType` headers belong to the kubelet server.
//!
//! What it owns:
//! - [`frame`]: the wire frames, [`frame::decode`] / [`frame::encode`].
//! - [`headers`]: header blocks and the per-connection zlib contexts (SPDY/3 dictionary).
//! - [`Connection`] / [`Incoming`] / [`Stream`]: a session over any `AsyncRead + AsyncWrite`,
//!   run by one reader task and one writer task, with streams as `AsyncRead + AsyncWrite`.
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use vk_spdy::{Config, Connection, Headers, Role};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client_io, server_io) = tokio::io::duplex(64 * 1024);
//! let (client, _client_incoming) = Connection::new(client_io, Role::Client, Config::default());
//! let (_server, mut incoming) = Connection::new(server_io, Role::Server, Config::default());
//!
//! // Server side: answer every stream the peer opens, echo what it sends.
//! tokio::spawn(async move {
//!     while let Some(stream) = incoming.accept().await {
//!         if stream.headers().get("streamtype") != Some("stdin") {
//!             stream.reject(vk_spdy::RstStatus::RefusedStream);
//!             continue;
//!         }
//!         let mut stream = stream.accept(Headers::new());
//!         tokio::spawn(async move {
//!             let mut data = Vec::new();
//!             stream.read_to_end(&mut data).await?; // until the peer half-closes
//!             stream.write_all(&data).await?;
//!             stream.shutdown().await // our half-close
//!         });
//!     }
//! });
//!
//! let (mut stream, _reply) = client.open_stream(Headers::new().with("streamType", "stdin")).await?;
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?;
//! let mut echoed = Vec::new();
//! stream.read_to_end(&mut echoed).await?;
//! assert_eq!(echoed, b"hello");
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Protocol choices, and why:
//! - **No flow control.** moby/spdystream (every Go peer) neither sends WINDOW_UPDATE nor
//!   enforces SPDY/3.1 windows (its frame handler has no case for it), so we ignore
//!   WINDOW_UPDATE and SETTINGS and never send either: sending updates buys nothing with Go
//!   peers, and enforcing windows would stall against them. Backpressure comes from the
//!   transport plus bounded queues instead.
//! - **Receive backpressure is head-of-line.** Each stream has a queue of
//!   [`Config::stream_buffer_frames`] frames; when it is full the reader task waits, which stops
//!   reading the whole connection until that stream is read. Go peers behave the same way
//!   (their frame workers block on unbuffered per-stream channels).
//! - **Send backpressure** is a bounded queue in front of the single writer task
//!   ([`Config::write_queue_frames`]): a slow peer makes [`Stream`] writes wait.
//! - GOAWAY from the peer ends the connection, as in spdystream (its read loop stops on it).
//! - Session errors (malformed frame, bad header block, wrong version) send GOAWAY with
//!   PROTOCOL_ERROR and close; stream errors send RST_STREAM and keep the connection.
//!
//! `unsafe` is denied through the workspace lints (`[lints] workspace = true`).

mod conn;
pub mod frame;
pub mod headers;
mod stream;

use std::time::Duration;

pub use conn::{Connection, Incoming, IncomingStream};
pub use frame::{Frame, FrameError};
pub use headers::{HeaderDecoder, HeaderEncoder, HeaderError, Headers};
pub use stream::{MAX_DATA_CHUNK, Stream};

/// Which end of the connection we are: it decides stream id and ping id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens odd stream ids (kubectl's side).
    Client,
    /// Opens even stream ids (the kubelet's side).
    Server,
}

/// Connection limits. All limits apply to what the *peer* can make us hold.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame payload accepted; larger frames are a session error. Default: the protocol
    /// maximum (16 MiB - 1), because spdystream sends each `Write` as one unsplit DATA frame and
    /// client-go callers can write large buffers in one call.
    pub max_frame_len: usize,
    /// Largest decompressed header block (and expanded header list). Default 64 KiB;
    /// Kubernetes stream headers are a few dozen bytes.
    pub max_header_block_len: usize,
    /// Most streams the peer may have open at once; more are refused with REFUSED_STREAM.
    /// Default 1000 (port-forward uses two streams per forwarded connection).
    pub max_concurrent_streams: usize,
    /// Frames buffered per stream before the reader task waits (head-of-line). Default 16;
    /// kubectl writes at most 32 KiB per frame, so typically 512 KiB per stream.
    pub stream_buffer_frames: usize,
    /// Frames queued for the writer task before writers wait. Default 32 (at most 2 MiB of
    /// DATA, since writes are split into frames of at most [`MAX_DATA_CHUNK`]).
    pub write_queue_frames: usize,
    /// How long the writer may spend flushing queued frames once the connection is closing,
    /// before the transport is dropped regardless. Default 10 s.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_len: frame::MAX_PAYLOAD_LEN,
            max_header_block_len: 64 * 1024,
            max_concurrent_streams: 1000,
            stream_buffer_frames: 16,
            write_queue_frames: 32,
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Clamps values that would otherwise deadlock or panic (zero-sized queues, frames larger
    /// than the 24-bit length field).
    fn normalized(mut self) -> Self {
        self.max_frame_len = self.max_frame_len.min(frame::MAX_PAYLOAD_LEN);
        self.stream_buffer_frames = self.stream_buffer_frames.max(1);
        self.write_queue_frames = self
            .write_queue_frames
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }
}

/// RST_STREAM status codes (SPDY/3 §2.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RstStatus {
    /// Generic error; nothing more specific applies.
    ProtocolError = 1,
    /// A frame arrived for a stream that is not active.
    InvalidStream = 2,
    /// The stream was refused before any processing.
    RefusedStream = 3,
    /// The SPDY version is not supported.
    UnsupportedVersion = 4,
    /// The stream is no longer needed.
    Cancel = 5,
    /// An internal error unrelated to the protocol.
    InternalError = 6,
    /// Flow control was violated.
    FlowControlError = 7,
    /// A second SYN_STREAM/SYN_REPLY for an active stream.
    StreamInUse = 8,
    /// Data or SYN_REPLY on a half-closed stream.
    StreamAlreadyClosed = 9,
    /// Client certificate problems (SPDY/3 CREDENTIAL; unused here).
    InvalidCredentials = 10,
    /// A frame was too large to process.
    FrameTooLarge = 11,
}

impl RstStatus {
    /// The status for a wire code, if it is a known one.
    pub fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::ProtocolError,
            2 => Self::InvalidStream,
            3 => Self::RefusedStream,
            4 => Self::UnsupportedVersion,
            5 => Self::Cancel,
            6 => Self::InternalError,
            7 => Self::FlowControlError,
            8 => Self::StreamInUse,
            9 => Self::StreamAlreadyClosed,
            10 => Self::InvalidCredentials,
            11 => Self::FrameTooLarge,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u32 {
        self as u32
    }
}

impl TryFrom<u32> for RstStatus {
    type Error = u32;
    /// Unknown codes are returned as the error.
    fn try_from(code: u32) -> Result<Self, u32> {
        Self::from_u32(code).ok_or(code)
    }
}

impl From<RstStatus> for u32 {
    fn from(status: RstStatus) -> u32 {
        status.code()
    }
}

/// GOAWAY status codes (SPDY/3 §2.6.6).
pub mod goaway {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// The peer violated the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// We hit an internal error.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Errors of the connection API. Stream I/O reports these inside `std::io::Error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection has ended (peer closed, GOAWAY, I/O error, or [`Connection::close`]).
    #[error("SPDY connection closed")]
    ConnectionClosed,
    /// The peer refused the stream (RST_STREAM REFUSED_STREAM).
    #[error("stream refused by peer")]
    StreamRefused,
    /// The stream was reset; the raw RST_STREAM status (see [`RstStatus::from_u32`]).
    #[error("stream reset (status {0})")]
    StreamReset(u32),
    /// All 2^30 stream ids of our parity have been used; open a new connection.
    #[error("no stream ids left on this connection")]
    StreamIdsExhausted,
    /// Headers that cannot be sent, or a header block that cannot be decoded.
    #[error("header error: {0}")]
    Header(#[from] HeaderError),
    /// A frame that cannot be decoded or encoded.
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
    /// Transport error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_status_codes_round_trip() {
        for code in 1..=11 {
            let status = RstStatus::from_u32(code).unwrap();
            assert_eq!(status.code(), code);
            assert_eq!(RstStatus::try_from(code), Ok(status));
        }
        assert_eq!(RstStatus::from_u32(0), None);
        assert_eq!(RstStatus::try_from(12), Err(12));
        assert_eq!(RstStatus::FrameTooLarge as u32, 11);
    }

    #[test]
    fn config_is_normalized() {
        let cfg = Config {
            max_frame_len: usize::MAX,
            stream_buffer_frames: 0,
            write_queue_frames: 0,
            ..Config::default()
        }
        .normalized();
        assert_eq!(cfg.max_frame_len, frame::MAX_PAYLOAD_LEN);
        assert_eq!(cfg.stream_buffer_frames, 1);
        assert_eq!(cfg.write_queue_frames, 1);
    }
}
