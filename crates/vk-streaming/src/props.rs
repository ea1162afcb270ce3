//! Property tests of what a streaming client controls: WebSocket channel frames (both codecs,
//! with and without v5's stream-close signal) and the query strings of `/exec`, `/attach` and
//! `/portForward`. Any input is a value or a clean refusal, never a panic; what the server
//! encodes decodes back to itself; every query a client can build parses to what it asked for.
//!
//! Case count: `PROPTEST_CASES` (256 by default, what CI runs). A longer run:
//! `PROPTEST_CASES=100000 cargo test -p vk-streaming --lib props`.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::query::{parse_attach_query, parse_exec_query, parse_port_forward_query};
use crate::ws::{Codec, Frame, FrameError, decode, encode};

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Binary), Just(Codec::Base64)]
}

/// Spellings of true and false Go's `strconv.ParseBool` accepts.
fn spelled(on: bool) -> impl Strategy<Value = &'static str> {
    if on {
        prop::sample::select(vec!["1", "t", "T", "true", "True", "TRUE"])
    } else {
        prop::sample::select(vec!["0", "f", "F", "false", "False", "FALSE", ""])
    }
}

#[derive(Debug, Clone)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn streams() -> impl Strategy<Value = Streams> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
        // Only stderr with a terminal is refused like the kubelet refuses it (the terminal drops
        // stderr, which leaves no stream): covered by the raw-query property.
        .prop_filter("at least one stream", |(i, o, e, t)| {
            *i || *o || (*e && !*t)
        })
        .prop_map(|(stdin, stdout, stderr, tty)| Streams {
            stdin,
            stdout,
            stderr,
            tty,
        })
}

/// The flags as query pairs: each under one of its names (or left out when false), spelled in
/// any way Go accepts.
fn flag_pairs(s: &Streams) -> impl Strategy<Value = Vec<(String, String)>> + use<> {
    let flags = [
        (s.stdin, ["input", "stdin"]),
        (s.stdout, ["output", "stdout"]),
        (s.stderr, ["error", "stderr"]),
        (s.tty, ["tty", "tty"]),
    ];
    flags
        .map(|(on, names)| {
            (
                prop::sample::select(names.to_vec()),
                spelled(on),
                any::<bool>(),
            )
                .prop_map(move |(name, value, omit_if_false)| {
                    (!on && omit_if_false).then_some(()).map_or_else(
                        || vec![(name.to_string(), value.to_string())],
                        |()| Vec::new(),
                    )
                })
        })
        .prop_map(|parts| parts.into_iter().flatten().collect())
}

fn query_of(pairs: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// Anything a client could put in a query string, including broken escapes.
fn raw_query() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,64}",
        vec(
            (
                prop::sample::select(vec![
                    "command", "input", "stdin", "output", "stdout", "error", "stderr", "tty",
                    "port", "ports", "x"
                ]),
                "[ -~]{0,12}"
            ),
            0..6
        )
        .prop_map(|pairs| pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")),
    ]
}

proptest! {
    #[test]
    fn any_message_decodes_or_is_refused(codec in codec(), stream_close in any::<bool>(), data in vec(any::<u8>(), 0..64)) {
        match decode(codec, stream_close, &data) {
            Ok(Frame::Empty) => prop_assert!(data.is_empty()),
            Ok(Frame::Close { channel }) => {
                prop_assert!(stream_close);
                prop_assert_eq!(&data[..], &[0xFF, channel][..]);
            }
            Ok(Frame::Data { .. }) => prop_assert!(!data.is_empty()),
            Err(FrameError::BadClose) => prop_assert!(stream_close && data[0] == 0xFF && data.len() != 2),
            Err(FrameError::BadChannel(c)) => {
                prop_assert!(matches!(codec, Codec::Base64));
                prop_assert!(!c.is_ascii_digit());
            }
            Err(FrameError::BadBase64) => prop_assert!(matches!(codec, Codec::Base64)),
        }
    }

    #[test]
    fn binary_frames_round_trip(channel in 0u8..=0xFE, data in vec(any::<u8>(), 0..256), stream_close in any::<bool>()) {
        let message = encode(Codec::Binary, channel, &data).into_data();
        prop_assert_eq!(decode(Codec::Binary, stream_close, &message), Ok(Frame::Data { channel, payload: data }));
    }

    #[test]
    fn base64_frames_round_trip(channel in 0u8..=9, data in vec(any::<u8>(), 0..256), stream_close in any::<bool>()) {
        let message = encode(Codec::Base64, channel, &data).into_data();
        prop_assert!(std::str::from_utf8(&message).is_ok(), "base64 frames are text");
        prop_assert_eq!(decode(Codec::Base64, stream_close, &message), Ok(Frame::Data { channel, payload: data }));
    }

    #[test]
    fn stream_close_names_its_channel(codec in codec(), channel in any::<u8>()) {
        prop_assert_eq!(decode(codec, true, &[0xFF, channel]), Ok(Frame::Close { channel }));
        // Without v5's stream close, 0xFF is just a channel byte (binary) or not a digit (base64).
        let without = decode(codec, false, &[0xFF, channel]);
        let closed = matches!(without, Ok(Frame::Close { .. }));
        prop_assert!(!closed, "a close without v5");
    }

    #[test]
    fn exec_queries_parse_to_what_the_client_asked_for(
        command in vec("[^\u{0}]{0,16}", 1..5),
        s in streams().prop_flat_map(|s| (Just(s.clone()), flag_pairs(&s))),
        container in "[a-z][a-z0-9-]{0,10}",
    ) {
        let (s, flags) = s;
        let mut pairs: Vec<(String, String)> = command.iter().map(|c| ("command".to_string(), c.clone())).collect();
        pairs.extend(flags);
        let req = parse_exec_query(Some(&query_of(&pairs)), &container).map_err(|e| TestCaseError::fail(e.0))?;
        prop_assert_eq!(&req.command, &command);
        prop_assert_eq!(&req.container, &container);
        prop_assert_eq!((req.stdin, req.stdout, req.tty), (s.stdin, s.stdout, s.tty));
        // A terminal carries stderr on stdout: the stream is dropped, as the kubelet does.
        prop_assert_eq!(req.stderr, s.stderr && !s.tty);
    }

    #[test]
    fn attach_queries_parse_to_what_the_client_asked_for(
        s in streams().prop_flat_map(|s| (Just(s.clone()), flag_pairs(&s))),
    ) {
        let (s, flags) = s;
        let req = parse_attach_query(Some(&query_of(&flags)), "c").map_err(|e| TestCaseError::fail(e.0))?;
        prop_assert_eq!((req.stdin, req.stdout, req.stderr, req.tty), (s.stdin, s.stdout, s.stderr && !s.tty, s.tty));
    }

    #[test]
    fn any_exec_or_attach_query_is_a_request_or_a_bad_request(q in raw_query()) {
        if let Ok(req) = parse_exec_query(Some(&q), "c") {
            prop_assert!(!req.command.is_empty());
            prop_assert!(req.stdin || req.stdout || req.stderr);
            prop_assert!(!(req.tty && req.stderr));
        }
        if let Ok(req) = parse_attach_query(Some(&q), "c") {
            prop_assert!(req.stdin || req.stdout || req.stderr);
        }
    }

    #[test]
    fn port_lists_parse_in_order(groups in vec(vec(1u16..=u16::MAX, 1..4), 0..4), ports_name in any::<bool>()) {
        let name = if ports_name { "ports" } else { "port" };
        let pairs: Vec<(String, String)> = groups
            .iter()
            .map(|g| (name.to_string(), g.iter().map(u16::to_string).collect::<Vec<_>>().join(",")))
            .collect();
        let parsed = parse_port_forward_query(Some(&query_of(&pairs))).map_err(|e| TestCaseError::fail(e.0))?;
        prop_assert_eq!(parsed, groups.concat());
    }

    #[test]
    fn any_port_query_is_ports_or_a_bad_request(q in raw_query()) {
        if let Ok(ports) = parse_port_forward_query(Some(&q)) {
            prop_assert!(ports.iter().all(|p| *p > 0));
        }
    }
}
