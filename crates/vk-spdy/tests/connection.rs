//! Connection-level behaviour: two `Connection`s over `tokio::io::duplex`, or one against a
//! hand-driven raw peer when the exact frames on the wire matter.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use common::{RawPeer, h, pair, pair_with, with_raw_peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vk_spdy::frame::Frame;
use vk_spdy::{Config, Error, Headers, Role, RstStatus, Stream};

async fn read_all(stream: &mut Stream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}

fn reset_status(err: &std::io::Error) -> Option<u32> {
    match err.get_ref()?.downcast_ref::<Error>()? {
        Error::StreamReset(status) => Some(*status),
        _ => None,
    }
}

// ---------- two real connections ----------

#[tokio::test]
async fn open_exchange_and_half_close() {
    let p = pair();
    let mut server_incoming = p.server_incoming;
    let server = tokio::spawn(async move {
        let incoming = server_incoming.accept().await.unwrap();
        assert_eq!(incoming.id(), 1);
        assert_eq!(incoming.headers().get("streamtype"), Some("stdin"));
        assert!(!incoming.fin());
        let mut stream = incoming.accept(h(&[("x-reply", "yes")]));
        // Read until the client half-closes, then answer and half-close ourselves.
        let got = read_all(&mut stream).await;
        assert_eq!(got, b"hello from client");
        stream.write_all(b"hello from server").await.unwrap();
        stream.shutdown().await.unwrap();
        // Writing after our FIN is an error; shutdown again is fine.
        assert_eq!(
            stream.write(b"x").await.unwrap_err().kind(),
            ErrorKind::BrokenPipe
        );
        stream.shutdown().await.unwrap();
        server_incoming
    });

    let (mut stream, reply) = p
        .client
        .open_stream(h(&[("streamType", "stdin")]))
        .await
        .unwrap();
    assert_eq!(stream.id(), 1);
    assert_eq!(reply.get("x-reply"), Some("yes"));
    stream.write_all(b"hello from client").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await, b"hello from server");
    // EOF is sticky.
    assert_eq!(stream.read(&mut [0u8; 8]).await.unwrap(), 0);
    let _server_incoming = server.await.unwrap();

    // Ids increase by two per side.
    let mut server_incoming = _server_incoming;
    let accept = tokio::spawn(async move {
        let s = server_incoming.accept().await.unwrap();
        let id = s.id();
        drop(s.accept(Headers::new()));
        id
    });
    let (s3, _) = p.client.open_stream(Headers::new()).await.unwrap();
    assert_eq!(s3.id(), 3);
    assert_eq!(accept.await.unwrap(), 3);
}

#[tokio::test]
async fn server_initiated_streams_use_even_ids() {
    let p = pair();
    let mut client_incoming = p.client_incoming;
    let client = tokio::spawn(async move {
        for expected in [2, 4] {
            let incoming = client_incoming.accept().await.unwrap();
            assert_eq!(incoming.id(), expected);
            let mut stream = incoming.accept(Headers::new());
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).await.unwrap();
            stream.write_all(&buf).await.unwrap();
            stream.shutdown().await.unwrap();
            assert_eq!(read_all(&mut stream).await, b"");
        }
    });
    for _ in 0..2 {
        let (mut stream, _) = p.server.open_stream(Headers::new()).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(read_all(&mut stream).await, b"ping");
    }
    client.await.unwrap();
}

#[tokio::test]
async fn reset_reject_and_refuse() {
    let p = pair();
    let mut server_incoming = p.server_incoming;
    let server = tokio::spawn(async move {
        // 1: reject with REFUSED_STREAM, 3: reject with INTERNAL_ERROR, 5: drop unanswered,
        // 7: accept then reset.
        server_incoming
            .accept()
            .await
            .unwrap()
            .reject(RstStatus::RefusedStream);
        server_incoming
            .accept()
            .await
            .unwrap()
            .reject(RstStatus::InternalError);
        drop(server_incoming.accept().await.unwrap());
        let mut stream = server_incoming
            .accept()
            .await
            .unwrap()
            .accept(Headers::new());
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.reset(RstStatus::Cancel);
        server_incoming
    });
    assert!(matches!(
        p.client.open_stream(Headers::new()).await,
        Err(Error::StreamRefused)
    ));
    assert!(matches!(
        p.client.open_stream(Headers::new()).await,
        Err(Error::StreamReset(6))
    ));
    assert!(matches!(
        p.client.open_stream(Headers::new()).await,
        Err(Error::StreamRefused)
    ));
    let (mut stream, _) = p.client.open_stream(Headers::new()).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let err = stream.read(&mut [0u8; 1]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(reset_status(&err), Some(RstStatus::Cancel.code()));
    let err = stream.write(b"more").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let _keep = server.await.unwrap();
}

#[tokio::test]
async fn dropping_an_open_stream_resets_it_for_the_peer() {
    let p = pair();
    let mut server_incoming = p.server_incoming;
    let server = tokio::spawn(async move {
        let stream = server_incoming
            .accept()
            .await
            .unwrap()
            .accept(Headers::new());
        drop(stream); // neither side closed: CANCEL
        server_incoming
    });
    let (mut stream, _) = p.client.open_stream(Headers::new()).await.unwrap();
    let err = stream.read(&mut [0u8; 1]).await.unwrap_err();
    assert_eq!(reset_status(&err), Some(RstStatus::Cancel.code()));
    let _keep = server.await.unwrap();
}

#[tokio::test]
async fn close_ends_both_sides() {
    let p = pair();
    let mut server_incoming = p.server_incoming;
    let server_conn = p.server.clone();
    let server = tokio::spawn(async move {
        let mut stream = server_incoming
            .accept()
            .await
            .unwrap()
            .accept(Headers::new());
        // The client closes the connection: our stream reads EOF, the queue of new streams
        // ends, and the connection reports closed.
        assert_eq!(read_all(&mut stream).await, b"partial");
        assert!(server_incoming.accept().await.is_none());
        server_conn.closed().await;
        assert!(server_conn.is_closed());
        let err = stream.write_all(b"late").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);
        assert!(matches!(
            server_conn.open_stream(Headers::new()).await,
            Err(Error::ConnectionClosed)
        ));
    });
    let (mut stream, _) = p.client.open_stream(Headers::new()).await.unwrap();
    stream.write_all(b"partial").await.unwrap();
    p.client.close().await;
    assert!(p.client.is_closed());
    assert_eq!(read_all(&mut stream).await, b"");
    assert!(matches!(
        p.client.open_stream(Headers::new()).await,
        Err(Error::ConnectionClosed)
    ));
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams() {
    const STREAMS: usize = 200;
    let p = pair();
    let mut server_incoming = p.server_incoming;
    let server = tokio::spawn(async move {
        let mut echoes = Vec::new();
        for _ in 0..STREAMS {
            let incoming = server_incoming.accept().await.unwrap();
            let tag = incoming.headers().get("tag").unwrap().to_owned();
            echoes.push(tokio::spawn(async move {
                let mut stream = incoming.accept(h(&[("tag", &tag)]));
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await.unwrap();
                stream.write_all(&data).await.unwrap();
                stream.shutdown().await.unwrap();
            }));
        }
        for echo in echoes {
            echo.await.unwrap();
        }
        server_incoming
    });
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        let conn = p.client.clone();
        clients.push(tokio::spawn(async move {
            let tag = i.to_string();
            let (mut stream, reply) = conn.open_stream(h(&[("tag", &tag)])).await.unwrap();
            assert_eq!(reply.get("tag"), Some(tag.as_str()));
            let payload: Vec<u8> = (0..(1000 + i * 37)).map(|b| (b * 7 + i) as u8).collect();
            let (mut rd, mut wr) = tokio::io::split(&mut stream);
            let write = async {
                wr.write_all(&payload).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let read = async {
                let mut echoed = Vec::new();
                rd.read_to_end(&mut echoed).await.unwrap();
                echoed
            };
            let ((), echoed) = tokio::join!(write, read);
            assert_eq!(echoed, payload);
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let _keep = server.await.unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 11) as u8)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_both_ways_under_backpressure() {
    const LEN: usize = 6 << 20;
    // Tiny queues and a small pipe force every layer to push back.
    let cfg = Config {
        stream_buffer_frames: 2,
        write_queue_frames: 4,
        ..Config::default()
    };
    let p = pair_with(cfg.clone(), cfg, 16 * 1024);
    let mut server_incoming = p.server_incoming;
    let server = tokio::spawn(async move {
        let stream = server_incoming
            .accept()
            .await
            .unwrap()
            .accept(Headers::new());
        let (mut rd, mut wr) = tokio::io::split(stream);
        let up = tokio::spawn(async move {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            got
        });
        wr.write_all(&pattern(LEN, 2)).await.unwrap();
        wr.shutdown().await.unwrap();
        assert!(up.await.unwrap() == pattern(LEN, 1), "upload corrupted");
        server_incoming
    });
    let (stream, _) = p.client.open_stream(Headers::new()).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let down = tokio::spawn(async move {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        got
    });
    wr.write_all(&pattern(LEN, 1)).await.unwrap();
    wr.shutdown().await.unwrap();
    assert!(down.await.unwrap() == pattern(LEN, 2), "download corrupted");
    let _keep = server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_blocks_the_writer_until_it_reads() {
    const LEN: usize = 4 << 20;
    let cfg = Config {
        stream_buffer_frames: 2,
        write_queue_frames: 2,
        ..Config::default()
    };
    let p = pair_with(cfg.clone(), cfg, 8 * 1024);
    let mut server_incoming = p.server_incoming;
    let accept = async {
        server_incoming
            .accept()
            .await
            .unwrap()
            .accept(Headers::new())
    };
    let (opened, mut server_stream) = tokio::join!(p.client.open_stream(Headers::new()), accept);
    let (mut client_stream, _) = opened.unwrap();
    let data = vec![7u8; LEN];
    let mut write = Box::pin(client_stream.write_all(&data));
    // The server does not read: bounded queues fill up and the write cannot finish.
    let blocked = tokio::time::timeout(Duration::from_secs(30), &mut write).await;
    assert!(
        blocked.is_err(),
        "4 MiB fit into bounded queues: no backpressure"
    );
    // Once the server reads, the rest goes through.
    let read = async {
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while total < LEN {
            let n = server_stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            total += n;
        }
    };
    let (written, ()) = tokio::join!(write, read);
    written.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_ends_the_connection() {
    let p = pair();
    let server = p.server.clone();
    let mut server_incoming = p.server_incoming;
    // Keep one stream: the client connection must stay up while it lives.
    let accept = tokio::spawn(async move {
        let stream = server_incoming
            .accept()
            .await
            .unwrap()
            .accept(Headers::new());
        (stream, server_incoming)
    });
    let (mut client_stream, _) = p.client.open_stream(Headers::new()).await.unwrap();
    let (mut server_stream, mut server_incoming) = accept.await.unwrap();
    drop(p.client);
    drop(p.client_incoming);
    client_stream.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    server_stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    // Last client handle gone: GOAWAY, transport closed, the server side sees the end.
    drop(client_stream);
    server.closed().await;
    assert!(server_incoming.accept().await.is_none());
    let mut rest = Vec::new();
    // The stream was reset (CANCEL) before the connection ended, or just ended: never data.
    let _ = server_stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

// ---------- against a raw peer ----------

#[tokio::test]
async fn pings_from_the_peer_are_echoed_and_ours_are_not() {
    let (_conn, _incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    raw.ping_roundtrip(1).await;
    // An even id is a server (our) ping id: it is an answer, not a request.
    raw.send(Frame::Ping { id: 2 }).await;
    raw.ping_roundtrip(3).await;

    let (_conn, _incoming, mut raw) = with_raw_peer(Role::Client, Config::default());
    raw.ping_roundtrip(2).await;
    raw.send(Frame::Ping { id: 1 }).await;
    raw.ping_roundtrip(4).await;
}

#[tokio::test]
async fn stream_id_rules_for_peer_streams() {
    let cfg = Config {
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let (_conn, mut incoming, mut raw) = with_raw_peer(Role::Server, cfg);
    let none = Headers::new();
    let mut held = Vec::new();

    raw.syn(2, &none, false).await; // wrong parity
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: 1
        })
    );
    raw.syn(5, &none, false).await;
    held.push(incoming.accept().await.unwrap());
    raw.syn(3, &none, false).await; // not increasing
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: 1
        })
    );
    raw.syn(5, &none, false).await; // duplicate of an active stream
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: 8
        })
    );
    raw.syn(7, &none, false).await;
    held.push(incoming.accept().await.unwrap());
    raw.syn(9, &none, false).await;
    held.push(incoming.accept().await.unwrap());
    raw.syn(11, &none, false).await; // over max_concurrent_streams
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 11,
            status: 3
        })
    );
    // Stream 5 was reset by the duplicate: accepting it sends nothing, and it reads as reset.
    let mut five = held.remove(0).accept(Headers::new());
    assert_eq!(
        five.read(&mut [0u8; 1]).await.unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
    drop(five);
    raw.ping_roundtrip(13).await;
    // Dropping an unanswered stream refuses it; a freed slot admits a new stream.
    drop(held.remove(0));
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 7,
            status: 3
        })
    );
    raw.syn(13, &none, false).await;
    let thirteen = incoming.accept().await.unwrap();
    assert_eq!(thirteen.id(), 13);
    drop(thirteen.accept(Headers::new()));
    let (id, _) = raw.recv_reply().await;
    assert_eq!(id, 13);
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 13,
            status: 5
        })
    );
}

#[tokio::test]
async fn data_for_unknown_streams_is_answered_with_invalid_stream() {
    let (_conn, _incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    raw.data(7, b"who?", false).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 7,
            status: 2
        })
    );
    // The connection is fine.
    raw.ping_roundtrip(1).await;
}

#[tokio::test]
async fn unknown_and_flow_control_frames_are_ignored() {
    let (_conn, _incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    raw.send(Frame::Unknown {
        kind: 10,
        flags: 0,
        payload: Bytes::from_static(b"credential"),
    })
    .await;
    raw.send(Frame::Unknown {
        kind: 0x7777,
        flags: 3,
        payload: Bytes::new(),
    })
    .await;
    raw.send(Frame::Settings {
        clear: false,
        entries: vec![],
    })
    .await;
    raw.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1 << 20,
    })
    .await;
    raw.ping_roundtrip(1).await;
}

#[tokio::test]
async fn peer_stream_lifecycle_on_the_wire() {
    let (_conn, mut incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    raw.syn(1, &h(&[("streamtype", "stdout")]), false).await;
    let stream = incoming.accept().await.unwrap();
    assert_eq!(stream.headers().get("streamtype"), Some("stdout"));
    let mut stream = stream.accept(h(&[("ok", "1")]));
    let (id, reply) = raw.recv_reply().await;
    assert_eq!((id, reply.get("ok")), (1, Some("1")));

    raw.data(1, b"in", true).await;
    assert_eq!(read_all(&mut stream).await, b"in");
    stream.write_all(b"out").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(
        raw.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"out")
        })
    );
    assert_eq!(
        raw.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new()
        })
    );
    // Closed both ways: dropping it sends no RST (the ping echo is the very next frame).
    drop(stream);
    raw.ping_roundtrip(1).await;

    // SYN_STREAM with FIN: nothing to read, writing still works.
    raw.syn(3, &Headers::new(), true).await;
    let three = incoming.accept().await.unwrap();
    assert!(three.fin());
    let mut three = three.accept(Headers::new());
    raw.recv_reply().await;
    assert_eq!(read_all(&mut three).await, b"");
    three.write_all(b"x").await.unwrap();
    assert_eq!(
        raw.recv().await,
        Some(Frame::Data {
            stream_id: 3,
            fin: false,
            data: Bytes::from_static(b"x")
        })
    );

    // HEADERS with FIN half-closes too.
    raw.syn(5, &Headers::new(), false).await;
    let mut five = incoming.accept().await.unwrap().accept(Headers::new());
    raw.recv_reply().await;
    let block = raw.block(&h(&[("trailer", "t")]));
    raw.send(Frame::Headers {
        stream_id: 5,
        fin: true,
        header_block: block,
    })
    .await;
    assert_eq!(read_all(&mut five).await, b"");

    // DATA after FIN is a stream error.
    raw.data(5, b"late", false).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: 9
        })
    );
    assert_eq!(
        five.write(b"y").await.unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );

    // Dropping a half-open stream resets it.
    drop(three);
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: 5
        })
    );
}

#[tokio::test]
async fn data_before_a_reset_is_still_readable() {
    let (_conn, mut incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    raw.syn(1, &Headers::new(), false).await;
    let mut stream = incoming.accept().await.unwrap().accept(Headers::new());
    raw.recv_reply().await;
    raw.data(1, b"abc", false).await;
    raw.send(Frame::RstStream {
        stream_id: 1,
        status: 5,
    })
    .await;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"abc");
    let err = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(reset_status(&err), Some(5));
    assert_eq!(
        stream.write(b"x").await.unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
    // Never answer a RST with a RST; dropping sends nothing.
    drop(stream);
    raw.ping_roundtrip(1).await;
}

#[tokio::test]
async fn dropping_incoming_refuses_new_streams() {
    let (_conn, incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    drop(incoming);
    raw.syn(1, &Headers::new(), false).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 1,
            status: 3
        })
    );
}

#[tokio::test]
async fn open_stream_against_a_raw_server() {
    let (conn, _incoming, mut raw) = with_raw_peer(Role::Client, Config::default());
    let opener = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.open_stream(h(&[("streamtype", "error")])).await })
    };
    let (id, headers) = raw.recv_syn().await;
    assert_eq!((id, headers.get("streamtype")), (1, Some("error")));
    // Data may arrive before the reply; it is kept for the stream.
    raw.data(1, b"early ", false).await;
    raw.reply(1, &h(&[("x", "y")])).await;
    raw.data(1, b"late", true).await;
    let (mut stream, reply) = opener.await.unwrap().unwrap();
    assert_eq!(reply.get("x"), Some("y"));
    assert_eq!(read_all(&mut stream).await, b"early late");

    // Refused by the peer.
    let opener = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.open_stream(Headers::new()).await })
    };
    let (id, _) = raw.recv_syn().await;
    assert_eq!(id, 3);
    raw.send(Frame::RstStream {
        stream_id: 3,
        status: 3,
    })
    .await;
    assert!(matches!(opener.await.unwrap(), Err(Error::StreamRefused)));

    // Abandoned before the reply: CANCEL.
    let opener = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.open_stream(Headers::new()).await })
    };
    let (id, _) = raw.recv_syn().await;
    assert_eq!(id, 5);
    opener.abort();
    assert!(opener.await.unwrap_err().is_cancelled());
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: 5
        })
    );
    // A late reply for it is answered as an unknown stream.
    raw.reply(5, &Headers::new()).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::RstStream {
            stream_id: 5,
            status: 2
        })
    );

    // Invalid headers never reach the wire.
    assert!(matches!(
        conn.open_stream(h(&[("", "x")])).await,
        Err(Error::Header(_))
    ));

    // Pending when the connection closes: ConnectionClosed.
    let opener = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.open_stream(Headers::new()).await })
    };
    let (id, _) = raw.recv_syn().await;
    assert_eq!(id, 7);
    conn.close().await;
    assert!(matches!(
        opener.await.unwrap(),
        Err(Error::ConnectionClosed)
    ));
    // GOAWAY's last-good id is the peer's last stream: it opened none.
    assert_eq!(
        raw.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0
        })
    );
    assert_eq!(raw.recv().await, None);
    drop(stream);
}

#[tokio::test]
async fn protocol_errors_send_goaway_and_close() {
    let bad_inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "ping of length 5",
            b"\x80\x03\x00\x06\x00\x00\x00\x05\x00\x00\x00\x01\x00".to_vec(),
        ),
        (
            "version 2",
            b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01".to_vec(),
        ),
        (
            "data on stream 0",
            b"\x00\x00\x00\x00\x00\x00\x00\x01x".to_vec(),
        ),
        (
            "oversized frame",
            [&b"\x00\x00\x00\x01\x00\x00\x10\x00"[..], &[0u8; 4096]].concat(),
        ),
        (
            "garbage header block",
            b"\x80\x03\x00\x01\x00\x00\x00\x11\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00garbage"
                .to_vec(),
        ),
    ];
    for (what, bytes) in bad_inputs {
        let cfg = Config {
            max_frame_len: 1024,
            ..Config::default()
        };
        let (conn, mut incoming, mut raw) = with_raw_peer(Role::Server, cfg);
        raw.syn(1, &Headers::new(), false).await;
        let mut stream = incoming.accept().await.unwrap().accept(Headers::new());
        raw.recv_reply().await;
        raw.send_bytes(&bytes).await;
        assert_eq!(
            raw.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: 1,
                status: 1
            }),
            "{what}"
        );
        assert_eq!(raw.recv().await, None, "{what}: transport not closed");
        conn.closed().await;
        assert!(incoming.accept().await.is_none());
        assert_eq!(read_all(&mut stream).await, b"", "{what}");
    }
}

#[tokio::test]
async fn goaway_from_the_peer_ends_the_connection() {
    let (conn, mut incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    raw.syn(1, &Headers::new(), false).await;
    let mut stream = incoming.accept().await.unwrap().accept(Headers::new());
    raw.recv_reply().await;
    raw.data(1, b"bye", false).await;
    raw.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: 0,
    })
    .await;
    conn.closed().await;
    // We do not answer a GOAWAY with one; the transport is just closed.
    assert_eq!(raw.recv().await, None);
    assert_eq!(read_all(&mut stream).await, b"bye");
    assert_eq!(
        stream.write(b"x").await.unwrap_err().kind(),
        ErrorKind::BrokenPipe
    );
    assert!(incoming.accept().await.is_none());
}

#[tokio::test]
async fn transport_loss_ends_every_stream() {
    let (conn, mut incoming, mut raw) = with_raw_peer(Role::Server, Config::default());
    let mut streams = Vec::new();
    for id in [1, 3, 5] {
        raw.syn(id, &Headers::new(), false).await;
        streams.push(incoming.accept().await.unwrap().accept(Headers::new()));
        raw.recv_reply().await;
    }
    raw.data(3, b"partial", false).await;
    raw.ping_roundtrip(1).await;
    drop(raw);
    conn.closed().await;
    assert!(incoming.accept().await.is_none());
    let got: Vec<Vec<u8>> = {
        let mut got = Vec::new();
        for stream in &mut streams {
            got.push(read_all(stream).await);
        }
        got
    };
    assert_eq!(got, [b"".to_vec(), b"partial".to_vec(), b"".to_vec()]);
    for stream in &mut streams {
        assert_eq!(
            stream.write(b"x").await.unwrap_err().kind(),
            ErrorKind::BrokenPipe
        );
    }
}

#[tokio::test]
async fn dropping_all_handles_sends_goaway_and_releases_the_transport() {
    let (conn, incoming, mut raw) = with_raw_peer(Role::Client, Config::default());
    drop(conn);
    drop(incoming);
    assert_eq!(
        raw.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0
        })
    );
    assert_eq!(raw.recv().await, None);
    // Both tasks are gone: the transport itself was dropped.
    let err = raw.io.write_all(b"anyone?").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
}

#[tokio::test(start_paused = true)]
async fn close_gives_up_on_a_peer_that_never_reads() {
    let cfg = Config {
        close_timeout: Duration::from_secs(3),
        write_queue_frames: 2,
        ..Config::default()
    };
    let (ours, theirs) = tokio::io::duplex(1024);
    let (conn, mut incoming) = vk_spdy::Connection::new(ours, Role::Server, cfg);
    let mut raw = RawPeer::new(theirs);
    raw.syn(1, &Headers::new(), false).await;
    let mut stream = incoming.accept().await.unwrap().accept(Headers::new());
    // Fill the pipe: the peer never reads, so the writer task blocks mid-write. (With paused
    // time the timeout fires only once every task is idle, i.e. really blocked.)
    let data = vec![0u8; 1 << 20];
    let stuck = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&data)).await;
    assert!(stuck.is_err());
    let started = tokio::time::Instant::now();
    conn.close().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(
        stream.write(b"x").await.unwrap_err().kind(),
        ErrorKind::BrokenPipe
    );
    drop(raw);
}

#[tokio::test]
async fn header_blocks_share_one_context_per_direction_on_a_connection() {
    // Many streams with identical headers: each SYN_STREAM after the first must be tiny if the
    // client compresses on one context, and the raw peer (one decoder) must read them all.
    let (conn, _incoming, mut raw) = with_raw_peer(Role::Client, Config::default());
    let headers = h(&[
        ("streamtype", "data"),
        ("port", "8080"),
        ("x-kubernetes-pf-requestid", "0"),
        (
            "user-agent",
            "vk-spdy test client with a long user agent string",
        ),
    ]);
    let mut sizes = Vec::new();
    let mut streams = Vec::new();
    for i in 0..5u32 {
        let conn = conn.clone();
        let sent = headers.clone();
        let opener = tokio::spawn(async move { conn.open_stream(sent).await });
        let (id, block) = match raw.recv().await {
            Some(Frame::SynStream {
                stream_id,
                header_block,
                ..
            }) => (stream_id, header_block),
            other => panic!("{other:?}"),
        };
        assert_eq!(id, 1 + 2 * i);
        assert_eq!(raw.headers(&block), headers);
        sizes.push(block.len());
        raw.reply(id, &h(&[("n", &i.to_string())])).await;
        let (stream, reply) = opener.await.unwrap().unwrap();
        assert_eq!(reply.get("n"), Some(i.to_string().as_str()));
        streams.push(stream); // dropping it would send RST_STREAM CANCEL
    }
    assert!(sizes[1..].iter().all(|s| s * 3 < sizes[0]), "{sizes:?}");
}
