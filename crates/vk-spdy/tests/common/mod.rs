//! Test helpers: a hand-driven SPDY peer over `tokio::io::duplex`, and connection pairs.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use vk_spdy::frame::{self, Frame, MAX_PAYLOAD_LEN};
use vk_spdy::{Config, Connection, HeaderDecoder, HeaderEncoder, Headers, Incoming, Role};

/// A peer that speaks raw frames, with its own pair of header contexts.
pub struct RawPeer {
    pub io: DuplexStream,
    buf: BytesMut,
    enc: HeaderEncoder,
    dec: HeaderDecoder,
}

impl RawPeer {
    pub fn new(io: DuplexStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            enc: HeaderEncoder::new(),
            dec: HeaderDecoder::new(1 << 20),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame::encode(&frame, &mut out);
        self.io.write_all(&out).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    pub fn block(&mut self, headers: &Headers) -> Bytes {
        self.enc.encode(headers).unwrap()
    }

    pub async fn syn(&mut self, stream_id: u32, headers: &Headers, fin: bool) {
        let header_block = self.block(headers);
        self.send(Frame::SynStream {
            stream_id,
            associated_id: 0,
            priority: 0,
            fin,
            unidirectional: false,
            header_block,
        })
        .await;
    }

    pub async fn reply(&mut self, stream_id: u32, headers: &Headers) {
        let header_block = self.block(headers);
        self.send(Frame::SynReply {
            stream_id,
            fin: false,
            header_block,
        })
        .await;
    }

    pub async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// Next frame, or `None` at EOF. Header blocks of SYN_STREAM / SYN_REPLY / HEADERS are
    /// inflated on this peer's context (to keep it in step) and returned via `recv_headers`.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = frame::decode(&mut self.buf, MAX_PAYLOAD_LEN).unwrap() {
                return Some(frame);
            }
            if self.io.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                assert!(self.buf.is_empty(), "EOF inside a frame");
                return None;
            }
        }
    }

    pub fn headers(&mut self, block: &Bytes) -> Headers {
        self.dec.decode(block).unwrap()
    }

    /// Receives a SYN_STREAM and returns its id and headers.
    pub async fn recv_syn(&mut self) -> (u32, Headers) {
        match self.recv().await {
            Some(Frame::SynStream {
                stream_id,
                header_block,
                ..
            }) => (stream_id, self.headers(&header_block)),
            other => panic!("expected SYN_STREAM, got {other:?}"),
        }
    }

    /// Receives a SYN_REPLY and returns its id and headers.
    pub async fn recv_reply(&mut self) -> (u32, Headers) {
        match self.recv().await {
            Some(Frame::SynReply {
                stream_id,
                header_block,
                ..
            }) => (stream_id, self.headers(&header_block)),
            other => panic!("expected SYN_REPLY, got {other:?}"),
        }
    }

    /// Sends a PING and waits for its echo, asserting that nothing else arrives first.
    pub async fn ping_roundtrip(&mut self, id: u32) {
        self.send(Frame::Ping { id }).await;
        assert_eq!(self.recv().await, Some(Frame::Ping { id }));
    }
}

/// A `Connection` with the given role, and a raw peer on the other end.
pub fn with_raw_peer(role: Role, config: Config) -> (Connection, Incoming, RawPeer) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (conn, incoming) = Connection::new(ours, role, config);
    (conn, incoming, RawPeer::new(theirs))
}

pub struct Pair {
    pub client: Connection,
    pub client_incoming: Incoming,
    pub server: Connection,
    pub server_incoming: Incoming,
}

pub fn pair() -> Pair {
    pair_with(Config::default(), Config::default(), 64 * 1024)
}

pub fn pair_with(client: Config, server: Config, pipe: usize) -> Pair {
    let (a, b) = tokio::io::duplex(pipe);
    let (client, client_incoming) = Connection::new(a, Role::Client, client);
    let (server, server_incoming) = Connection::new(b, Role::Server, server);
    Pair {
        client,
        client_incoming,
        server,
        server_incoming,
    }
}

pub fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (*n, *v)).collect()
}
