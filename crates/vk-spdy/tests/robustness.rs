//! Deterministic robustness tests: thousands of seeded random and mutated-valid inputs to the
//! frame decoder, the header decoder and a live `Connection`. Nothing may panic (checked with a
//! panic hook, which also sees panics inside spawned tasks), every error must be a clean value,
//! and every connection must end once its input does.

// Test code: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vk_spdy::frame::{self, Frame, Setting};
use vk_spdy::headers::DICTIONARY;
use vk_spdy::{Config, Connection, HeaderDecoder, HeaderEncoder, Headers, Role, RstStatus};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn assert_no_panics() {
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a panic happened (see output)"
    );
}

fn random_bytes(rng: &mut StdRng, max_len: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max_len);
    (0..len).map(|_| rng.random()).collect()
}

/// Applies 1–4 random edits: flip, overwrite, truncate, insert, duplicate or delete a range.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 if len > 0 => data.truncate(rng.random_range(0..len)),
            3 => {
                let at = rng.random_range(0..=len);
                let extra = random_bytes(rng, 16);
                data.splice(at..at, extra);
            }
            4 if len > 0 => {
                let start = rng.random_range(0..len);
                let end = rng.random_range(start..=len.min(start + 64));
                let copy = data[start..end].to_vec();
                let at = rng.random_range(0..=len);
                data.splice(at..at, copy);
            }
            5 if len > 0 => {
                let start = rng.random_range(0..len);
                let end = rng.random_range(start..=len);
                data.drain(start..end);
            }
            _ => data.push(rng.random()),
        }
    }
}

/// Decodes everything in `bytes`; returns how many frames came out before the end or an error.
fn decode_all(bytes: &[u8], max: usize) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    loop {
        let before = buf.len();
        match frame::decode(&mut buf, max) {
            Ok(Some(_)) => {
                assert!(buf.len() < before, "decode made no progress");
                frames += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return frames;
            }
            Err(err) => {
                assert!(!err.to_string().is_empty());
                return frames;
            }
        }
    }
}

fn random_headers(rng: &mut StdRng) -> Headers {
    let names = [
        "streamtype",
        "port",
        "requestid",
        "x-a",
        "x-b",
        "user-agent",
    ];
    let mut headers = Headers::new();
    for _ in 0..rng.random_range(0..5) {
        let name = names[rng.random_range(0..names.len())];
        let value: String = (0..rng.random_range(0..20))
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect();
        headers.push(name, value);
    }
    headers
}

fn random_valid_frame(rng: &mut StdRng, enc: &mut HeaderEncoder) -> Frame {
    let id = rng.random_range(1..64u32);
    match rng.random_range(0..10) {
        0 | 1 => Frame::Data {
            stream_id: id,
            fin: rng.random(),
            data: Bytes::from(random_bytes(rng, 300)),
        },
        2 => Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: rng.random_range(0..8),
            fin: rng.random(),
            unidirectional: rng.random_bool(0.1),
            header_block: enc.encode(&random_headers(rng)).unwrap(),
        },
        3 => Frame::SynReply {
            stream_id: id,
            fin: rng.random(),
            header_block: enc.encode(&random_headers(rng)).unwrap(),
        },
        4 => Frame::Headers {
            stream_id: id,
            fin: rng.random(),
            header_block: enc.encode(&random_headers(rng)).unwrap(),
        },
        5 => Frame::RstStream {
            stream_id: id,
            status: rng.random_range(0..13),
        },
        6 => Frame::Ping { id: rng.random() },
        7 => Frame::Settings {
            clear: rng.random(),
            entries: (0..rng.random_range(0..4))
                .map(|_| Setting {
                    flags: rng.random_range(0..3),
                    id: rng.random_range(1..9),
                    value: rng.random(),
                })
                .collect(),
        },
        8 => Frame::WindowUpdate {
            stream_id: id,
            delta: rng.random_range(1..1 << 20),
        },
        _ => Frame::Unknown {
            kind: rng.random_range(10..20),
            flags: rng.random(),
            payload: Bytes::from(random_bytes(rng, 20)),
        },
    }
}

#[test]
fn frame_decoder_survives_random_and_mutated_input() {
    count_panics();
    let mut rng = StdRng::seed_from_u64(0x5bd1_0001);
    let limits = [0usize, 8, 64, 4096, frame::MAX_PAYLOAD_LEN];
    for _ in 0..4000 {
        let max = limits[rng.random_range(0..limits.len())];
        decode_all(&random_bytes(&mut rng, 256), max);
        // A plausible control header in front of random bytes reaches the per-type checks.
        let mut control = vec![0x80, 0x03, 0x00, rng.random_range(0..12), rng.random()];
        let len: u32 = rng.random_range(0..40);
        control.extend_from_slice(&len.to_be_bytes()[1..]);
        control.extend(random_bytes(&mut rng, 48));
        decode_all(&control, max);
    }
    let mut enc = HeaderEncoder::new();
    for _ in 0..4000 {
        let mut wire = BytesMut::new();
        let frames: Vec<Frame> = (0..rng.random_range(1..6))
            .map(|_| random_valid_frame(&mut rng, &mut enc))
            .collect();
        for frame in &frames {
            frame::encode(frame, &mut wire);
        }
        assert_eq!(decode_all(&wire, frame::MAX_PAYLOAD_LEN), frames.len());
        let mut bytes = wire.to_vec();
        mutate(&mut rng, &mut bytes);
        decode_all(&bytes, 4096);
    }
    assert_no_panics();
}

fn raw_block(entries: &[(Vec<u8>, Vec<u8>)], count: u32) -> Vec<u8> {
    let mut raw = count.to_be_bytes().to_vec();
    for (name, value) in entries {
        raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
        raw.extend_from_slice(name);
        raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
        raw.extend_from_slice(value);
    }
    raw
}

/// Compresses like a conforming peer would (dictionary, sync flush), so malformed *contents*
/// reach the parser instead of failing in zlib.
fn compress(z: &mut Compress, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * 2 + 256);
    z.compress_vec(raw, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.len() < out.capacity());
    out
}

#[test]
fn header_decoder_survives_random_and_mutated_blocks() {
    count_panics();
    let mut rng = StdRng::seed_from_u64(0x5bd1_0002);

    // Random bytes: zlib errors, never panics.
    for _ in 0..2000 {
        let mut dec = HeaderDecoder::new(4096);
        for _ in 0..3 {
            let _ = dec.decode(&random_bytes(&mut rng, 200));
        }
    }

    // Structurally random contents on a valid compression stream: counts and lengths that lie,
    // uppercase names, NULs, invalid UTF-8. Valid blocks must round-trip.
    for _ in 0..2000 {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).unwrap();
        let mut dec = HeaderDecoder::new(2048);
        for _ in 0..3 {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.random_range(0..5))
                .map(|_| {
                    let name = if rng.random_bool(0.7) {
                        format!("h{}", rng.random_range(0..6u8)).into_bytes()
                    } else {
                        random_bytes(&mut rng, 8)
                    };
                    (name, random_bytes(&mut rng, 12))
                })
                .collect();
            let count = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => entries.len() as u32 + 1,
                _ => entries.len() as u32,
            };
            let mut raw = raw_block(&entries, count);
            if rng.random_bool(0.2) {
                mutate(&mut rng, &mut raw);
            }
            let result = dec.decode(&compress(&mut z, &raw));
            if let Ok(headers) = &result {
                assert!(
                    headers
                        .iter()
                        .all(|(n, _)| !n.bytes().any(|b| b.is_ascii_uppercase()))
                );
            }
            if result.is_err() {
                break; // the session would end here
            }
        }
    }

    // Mutated valid streams: an encoder's blocks with one block damaged.
    for _ in 0..2000 {
        let mut enc = HeaderEncoder::new();
        let mut blocks: Vec<Vec<u8>> = (0..4)
            .map(|_| enc.encode(&random_headers(&mut rng)).unwrap().to_vec())
            .collect();
        let victim = rng.random_range(0..blocks.len());
        mutate(&mut rng, &mut blocks[victim]);
        let mut dec = HeaderDecoder::new(1024);
        for block in &blocks {
            if dec.decode(block).is_err() {
                break;
            }
        }
    }

    // Decompression bomb and absurd counts are cut off cheaply.
    let mut z = Compress::new(Compression::default(), true);
    z.set_dictionary(DICTIONARY).unwrap();
    let bomb = compress(&mut z, &vec![b'a'; 4 << 20]);
    assert!(HeaderDecoder::new(64 * 1024).decode(&bomb).is_err());
    assert_no_panics();
}

/// Frames a peer with the given parity might send, header blocks on one context, then maybe
/// mutated; sometimes pure noise.
fn live_input(rng: &mut StdRng, peer_parity: u32) -> Vec<u8> {
    if rng.random_bool(0.1) {
        return random_bytes(rng, 2000);
    }
    let mut enc = HeaderEncoder::new();
    let mut wire = BytesMut::new();
    let mut next_id = if peer_parity == 1 { 1 } else { 2 };
    let mut opened = Vec::new();
    for _ in 0..rng.random_range(1..30) {
        let frame = match rng.random_range(0..8) {
            0 | 1 => {
                let id = next_id;
                next_id += 2;
                opened.push(id);
                Frame::SynStream {
                    stream_id: id,
                    associated_id: 0,
                    priority: 0,
                    fin: rng.random_bool(0.2),
                    unidirectional: rng.random_bool(0.05),
                    header_block: enc.encode(&random_headers(rng)).unwrap(),
                }
            }
            2..=4 if !opened.is_empty() => Frame::Data {
                stream_id: opened[rng.random_range(0..opened.len())],
                fin: rng.random_bool(0.3),
                data: Bytes::from(random_bytes(rng, 3000)),
            },
            5 if !opened.is_empty() => Frame::RstStream {
                stream_id: opened[rng.random_range(0..opened.len())],
                status: RstStatus::Cancel.code(),
            },
            6 => Frame::SynReply {
                // Replies to streams our side may have opened.
                stream_id: rng.random_range(1..4u32) * 2 - (1 - peer_parity),
                fin: rng.random(),
                header_block: enc.encode(&random_headers(rng)).unwrap(),
            },
            _ => random_valid_frame(rng, &mut enc),
        };
        frame::encode(&frame, &mut wire);
    }
    if rng.random_bool(0.1) {
        frame::encode(
            &Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            },
            &mut wire,
        );
    }
    let mut bytes = wire.to_vec();
    if rng.random_bool(0.5) {
        mutate(rng, &mut bytes);
    }
    bytes
}

#[tokio::test(start_paused = true)]
async fn live_connection_survives_random_and_mutated_input() {
    count_panics();
    let mut rng = StdRng::seed_from_u64(0x5bd1_0003);
    // Proof that the input reaches past the framing layer, not just into error paths.
    static ACCEPTED: AtomicUsize = AtomicUsize::new(0);
    static BYTES_READ: AtomicUsize = AtomicUsize::new(0);
    static REPLIED: AtomicUsize = AtomicUsize::new(0);
    for round in 0..400 {
        let role = if rng.random() {
            Role::Server
        } else {
            Role::Client
        };
        let peer_parity = match role {
            Role::Server => 1,
            Role::Client => 0,
        };
        let config = Config {
            max_frame_len: 4096,
            max_header_block_len: 1024,
            max_concurrent_streams: 4,
            stream_buffer_frames: 2,
            write_queue_frames: 4,
            close_timeout: Duration::from_secs(1),
        };
        let (ours, theirs) = tokio::io::duplex(4096);
        let (conn, mut incoming) = Connection::new(ours, role, config);

        // Our application: accepts or rejects streams, reads them to the end, answers briefly.
        let mut app_rng = StdRng::seed_from_u64(rng.random());
        let app = tokio::spawn(async move {
            let mut handlers = Vec::new();
            while let Some(stream) = incoming.accept().await {
                match app_rng.random_range(0..4) {
                    0 => stream.reject(RstStatus::RefusedStream),
                    1 => drop(stream),
                    _ => {
                        let close_write = app_rng.random_bool(0.5);
                        let mut stream = stream.accept(Headers::new().with("ok", "1"));
                        ACCEPTED.fetch_add(1, Ordering::Relaxed);
                        handlers.push(tokio::spawn(async move {
                            let mut sink = Vec::new();
                            let _ = stream.read_to_end(&mut sink).await;
                            BYTES_READ.fetch_add(sink.len(), Ordering::Relaxed);
                            let _ = stream.write_all(b"done").await;
                            if close_write {
                                let _ = stream.shutdown().await;
                            }
                        }));
                    }
                }
            }
            for handler in handlers {
                handler.await.unwrap();
            }
        });
        // Streams of our own, which the peer's SYN_REPLYs may match.
        let mut openers = Vec::new();
        for _ in 0..rng.random_range(0..3) {
            let conn = conn.clone();
            openers.push(tokio::spawn(async move {
                if let Ok((mut stream, _)) = conn.open_stream(Headers::new().with("n", "1")).await {
                    REPLIED.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.write_all(b"hi").await;
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                }
            }));
        }

        let input = live_input(&mut rng, peer_parity);
        let (mut peer_rd, mut peer_wr) = tokio::io::split(theirs);
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 8192];
            while matches!(peer_rd.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(700));
            if peer_wr.write_all(&rest[..n]).await.is_err() {
                break; // we closed the transport (protocol error): fine
            }
            rest = &rest[n..];
        }
        let _ = peer_wr.shutdown().await;

        let ended = tokio::time::timeout(Duration::from_secs(120), async {
            conn.closed().await;
            drop(conn);
            for opener in openers {
                opener.await.unwrap();
            }
            app.await.unwrap();
            drain.await.unwrap();
        })
        .await;
        assert!(
            ended.is_ok(),
            "round {round}: connection or its users did not finish"
        );
    }
    let (accepted, read, replied) = (
        ACCEPTED.load(Ordering::Relaxed),
        BYTES_READ.load(Ordering::Relaxed),
        REPLIED.load(Ordering::Relaxed),
    );
    eprintln!("accepted {accepted} streams, read {read} bytes, {replied} opens answered");
    assert!(
        accepted > 200 && read > 100_000 && replied > 10,
        "{accepted} {read} {replied}"
    );
    assert_no_panics();
}
