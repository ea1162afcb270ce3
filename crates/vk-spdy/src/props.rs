//! Property tests of the two parsers a SPDY peer feeds: frames and header blocks. Any bytes
//! decode to a frame, "need more" or an error — never a panic, and "need more" consumes nothing;
//! every frame this crate can encode decodes back to itself, however the bytes are split across
//! reads; every valid header set survives a connection's shared zlib contexts, block after block.
//!
//! Case count: `PROPTEST_CASES` (256 by default, what CI runs). A longer run:
//! `PROPTEST_CASES=100000 cargo test -p vk-spdy --lib props`.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::frame::{self, Frame, HEADER_LEN, MAX_STREAM_ID, Setting};
use crate::headers::DICTIONARY;
use crate::{HeaderDecoder, HeaderEncoder, Headers};

const MAX_HEADER_BLOCK: usize = 16 * 1024;

fn stream_id() -> impl Strategy<Value = u32> {
    1..=MAX_STREAM_ID
}

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Control frame types the decoder knows; anything else decodes as `Unknown`.
const KNOWN_KINDS: [u16; 8] = [1, 2, 3, 4, 6, 7, 8, 9];

/// Every frame the encoder can write, with fields in the ranges the wire can carry.
fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (stream_id(), any::<bool>(), payload(64)).prop_map(|(stream_id, fin, data)| Frame::Data {
            stream_id,
            fin,
            data
        }),
        (
            stream_id(),
            0..=MAX_STREAM_ID,
            0u8..8,
            any::<bool>(),
            any::<bool>(),
            payload(64)
        )
            .prop_map(
                |(stream_id, associated_id, priority, fin, unidirectional, header_block)| {
                    Frame::SynStream {
                        stream_id,
                        associated_id,
                        priority,
                        fin,
                        unidirectional,
                        header_block,
                    }
                }
            ),
        (stream_id(), any::<bool>(), payload(64)).prop_map(|(stream_id, fin, header_block)| {
            Frame::SynReply {
                stream_id,
                fin,
                header_block,
            }
        }),
        (stream_id(), any::<bool>(), payload(64)).prop_map(|(stream_id, fin, header_block)| {
            Frame::Headers {
                stream_id,
                fin,
                header_block,
            }
        }),
        (stream_id(), any::<u32>())
            .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        (
            any::<bool>(),
            vec((any::<u8>(), 0u32..0x0100_0000, any::<u32>()), 0..8)
        )
            .prop_map(|(clear, entries)| Frame::Settings {
                clear,
                entries: entries
                    .into_iter()
                    .map(|(flags, id, value)| Setting { flags, id, value })
                    .collect(),
            }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0..=MAX_STREAM_ID, any::<u32>()).prop_map(|(last_good_stream_id, status)| {
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }),
        (0..=MAX_STREAM_ID, 0u32..=0x7FFF_FFFF)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (
            any::<u16>().prop_filter("a known type", |k| !KNOWN_KINDS.contains(k)),
            any::<u8>(),
            payload(64)
        )
            .prop_map(|(kind, flags, payload)| Frame::Unknown {
                kind,
                flags,
                payload
            }),
    ]
}

fn encoded(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for f in frames {
        frame::try_encode(f, &mut out).expect("every generated frame is encodable");
    }
    out
}

/// Decodes `bytes` delivered in chunks of the given sizes (cycled), as reads would deliver them.
fn decode_in_chunks(bytes: &[u8], chunks: &[usize]) -> Result<(Vec<Frame>, usize), String> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < bytes.len() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, bytes.len() - at);
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        loop {
            let before = buf.len();
            match frame::decode(&mut buf, frame::MAX_PAYLOAD_LEN) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => {
                    if buf.len() != before {
                        return Err("Ok(None) consumed bytes".into());
                    }
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok((frames, buf.len()))
}

/// Header names a peer may send: lowercase, not the hop-by-hop ones SPDY forbids.
fn header_name() -> impl Strategy<Value = String> {
    "[a-z0-9:-][a-z0-9:._-]{0,15}".prop_filter("a connection-specific header", |n| {
        ![
            "connection",
            "host",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
        ]
        .contains(&n.as_str())
    })
}

/// Values: any text without NUL (the separator between values of one name).
fn header_value() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

fn header_set() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((header_name(), header_value()), 0..8)
}

/// What a header set looks like after a round trip: the values of one name grouped at its
/// first position (they travel NUL-joined in one entry).
fn grouped(entries: &[(String, String)]) -> Vec<(String, String)> {
    let mut names: Vec<&String> = Vec::new();
    for (n, _) in entries {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
        .into_iter()
        .flat_map(|name| {
            entries
                .iter()
                .filter(move |(n, _)| n == name)
                .map(|(n, v)| (n.clone(), v.clone()))
        })
        .collect()
}

/// zlib-compress `raw` with the SPDY dictionary and a sync flush, as a peer would.
fn compress_like_a_peer(z: &mut Compress, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1024);
    let mut input = raw;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(1024);
        }
        let before = z.total_in();
        z.compress_vec(input, &mut out, FlushCompress::Sync)
            .expect("compress");
        let consumed = (z.total_in() - before) as usize;
        input = &input[consumed..];
        if input.is_empty() && out.len() < out.capacity() {
            return out;
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_decode_to_a_frame_more_or_an_error(
        bytes in vec(any::<u8>(), 0..512),
        max_frame_len in prop_oneof![Just(0usize), 0usize..128, Just(frame::MAX_PAYLOAD_LEN)],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match frame::decode(&mut buf, max_frame_len) {
                Ok(Some(_)) => prop_assert!(buf.len() + HEADER_LEN <= before, "a frame is at least its header"),
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn frames_round_trip_however_the_bytes_are_split(
        frames in vec(any_frame(), 1..6),
        chunks in vec(1usize..40, 1..8),
    ) {
        let bytes = encoded(&frames);
        let (decoded, left) = decode_in_chunks(&bytes, &chunks).map_err(TestCaseError::fail)?;
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(left, 0, "bytes left over after the last frame");
    }

    #[test]
    fn a_truncated_frame_asks_for_more_and_consumes_nothing(f in any_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encoded(std::slice::from_ref(&f));
        let cut = cut.index(bytes.len()); // strictly shorter than the frame
        let mut buf = BytesMut::from(&bytes[..cut]);
        prop_assert_eq!(frame::decode(&mut buf, frame::MAX_PAYLOAD_LEN), Ok(None));
        prop_assert_eq!(buf.len(), cut);
    }

    #[test]
    fn header_sets_round_trip_over_one_connection(blocks in vec(header_set(), 1..5)) {
        let mut encoder = HeaderEncoder::new();
        let mut decoder = HeaderDecoder::new(MAX_HEADER_BLOCK);
        for entries in &blocks {
            let headers: Headers = entries.iter().cloned().collect();
            prop_assert!(headers.validate().is_ok());
            let block = encoder.encode(&headers).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = decoder.decode(&block).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<(String, String)> =
                back.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            prop_assert_eq!(got, grouped(entries));
        }
    }

    #[test]
    fn names_are_sent_lowercase(name in "[A-Za-z][A-Za-z0-9-]{0,10}", value in header_value()) {
        let name_lower = name.to_ascii_lowercase();
        prop_assume!(!["connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"]
            .contains(&name_lower.as_str()));
        let headers: Headers = [(name, value.clone())].into_iter().collect();
        let block = HeaderEncoder::new().encode(&headers).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = HeaderDecoder::new(MAX_HEADER_BLOCK).decode(&block).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.get(&name_lower), Some(value.as_str()));
    }

    #[test]
    fn any_compressed_bytes_parse_to_headers_or_an_error(
        raw in prop_oneof![
            vec(any::<u8>(), 0..256),
            // Mostly well-formed blocks with a field or two broken: the parser's edge cases.
            (header_set(), vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)).prop_map(|(entries, flips)| {
                let mut raw = Vec::new();
                raw.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (n, v) in &entries {
                    raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    raw.extend_from_slice(n.as_bytes());
                    raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    raw.extend_from_slice(v.as_bytes());
                }
                for (at, byte) in flips {
                    let i = at.index(raw.len());
                    raw[i] = byte;
                }
                raw
            }),
        ],
        budget in prop_oneof![Just(0usize), 1usize..64, Just(MAX_HEADER_BLOCK)],
    ) {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).expect("dictionary");
        let block = compress_like_a_peer(&mut z, &raw);
        // Errors are expected; a panic or a result over the budget is the bug.
        if let Ok(h) = HeaderDecoder::new(budget).decode(&block) {
            let size: usize = h.iter().map(|(n, v)| n.len() + v.len() + 8).sum();
            prop_assert!(size <= budget, "{size} bytes of headers from a {budget}-byte budget");
        }
    }

    #[test]
    fn any_bytes_as_a_header_block_are_an_error_or_headers(block in vec(any::<u8>(), 0..256)) {
        let mut decoder = HeaderDecoder::new(MAX_HEADER_BLOCK);
        let _ = decoder.decode(&block);
        // A second block on the same (possibly broken) context must not panic either.
        let _ = decoder.decode(&block);
    }
}
