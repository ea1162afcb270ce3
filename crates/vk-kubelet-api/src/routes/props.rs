//! Property tests of the kubelet API's query strings, which any authorised client writes: log
//! options, exec/attach streams and `/run`'s command, port-forward ports. Any query is a request
//! or a 4xx (400 what does not decode, 422 what does not validate), never a panic or a 5xx; every
//! valid set of log options parses to exactly what was asked.
//!
//! Case count: `PROPTEST_CASES` (256 by default, what CI runs). A longer run:
//! `PROPTEST_CASES=100000 cargo test -p vk-kubelet-api --lib props`.

use axum::http::StatusCode;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::collection::vec;
use proptest::prelude::*;

use super::logs::parse_log_query;
use super::streaming::{parse_attach, parse_exec, parse_ports, parse_run};

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("a valid time")
}

#[derive(Debug, Clone)]
struct LogOptions {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<u32>,
    /// Sent as the legacy `tail` instead of `tailLines`.
    legacy_tail: bool,
    since: Option<Since>,
    limit_bytes: Option<u32>,
}

#[derive(Debug, Clone)]
enum Since {
    Seconds(u32),
    Time(i64),
}

fn log_options() -> impl Strategy<Value = LogOptions> {
    (
        any::<(bool, bool, bool)>(),
        proptest::option::of(0u32..100_000),
        any::<bool>(),
        proptest::option::of(prop_oneof![
            (1u32..1_000_000).prop_map(Since::Seconds),
            (0i64..2_000_000_000).prop_map(Since::Time),
        ]),
        proptest::option::of(1u32..u32::MAX),
    )
        .prop_map(
            |((follow, previous, timestamps), tail_lines, legacy_tail, since, limit_bytes)| {
                LogOptions {
                    follow,
                    previous,
                    timestamps,
                    tail_lines,
                    legacy_tail,
                    since,
                    limit_bytes,
                }
            },
        )
}

/// The query a client (kubectl through the API server) sends for `o`; booleans in any case the
/// API's conversion accepts, false ones sometimes left out.
fn log_query(o: &LogOptions, spell: &[bool]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (i, (name, on)) in [
        ("follow", o.follow),
        ("previous", o.previous),
        ("timestamps", o.timestamps),
    ]
    .into_iter()
    .enumerate()
    {
        let upper = spell.get(i).copied().unwrap_or(false);
        match (on, upper) {
            (true, false) => q.append_pair(name, "true"),
            (true, true) => q.append_pair(name, "True"),
            (false, false) => q.append_pair(name, "false"),
            (false, true) => &mut q, // left out
        };
    }
    if let Some(t) = o.tail_lines {
        q.append_pair(
            if o.legacy_tail { "tail" } else { "tailLines" },
            &t.to_string(),
        );
    }
    match &o.since {
        Some(Since::Seconds(s)) => {
            q.append_pair("sinceSeconds", &s.to_string());
        }
        Some(Since::Time(t)) => {
            let ts = Timestamp::from_second(*t).expect("in range");
            q.append_pair("sinceTime", &ts.to_string());
        }
        None => {}
    }
    if let Some(l) = o.limit_bytes {
        q.append_pair("limitBytes", &l.to_string());
    }
    q.finish()
}

/// Anything a client could send, including broken escapes and out-of-range numbers.
fn raw_query() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,64}",
        vec(
            (
                prop::sample::select(vec![
                    "follow",
                    "previous",
                    "timestamps",
                    "tail",
                    "tailLines",
                    "sinceSeconds",
                    "sinceTime",
                    "limitBytes",
                    "stream",
                    "command",
                    "cmd",
                    "input",
                    "output",
                    "error",
                    "tty",
                    "port",
                    "ports",
                ]),
                prop_oneof![
                    "[ -~]{0,12}",
                    any::<i64>().prop_map(|n| n.to_string()),
                    Just("null".to_string()),
                    Just("all".to_string()),
                    Just("1".to_string()),
                ]
            ),
            0..6
        )
        .prop_map(|pairs| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
            q.finish()
        }),
    ]
}

fn is_client_error(code: StatusCode) -> bool {
    code == StatusCode::BAD_REQUEST || code == StatusCode::UNPROCESSABLE_ENTITY
}

proptest! {
    #[test]
    fn valid_log_options_parse_to_what_was_asked(o in log_options(), spell in vec(any::<bool>(), 3)) {
        let q = log_query(&o, &spell);
        let req = parse_log_query(Some(&q), "app", now())
            .map_err(|e| TestCaseError::fail(format!("{q}: {} {e:?}", e.code)))?;
        prop_assert_eq!(req.container.as_str(), "app");
        prop_assert_eq!((req.follow, req.previous, req.timestamps), (o.follow, o.previous, o.timestamps));
        prop_assert_eq!(req.tail_lines, o.tail_lines.map(u64::from));
        prop_assert_eq!(req.limit_bytes, o.limit_bytes.map(u64::from));
        let since = match o.since {
            None => None,
            Some(Since::Seconds(s)) => Some(now().checked_sub(SignedDuration::from_secs(i64::from(s))).expect("in range")),
            Some(Since::Time(t)) => Some(Timestamp::from_second(t).expect("in range")),
        };
        prop_assert_eq!(req.since, since);
    }

    #[test]
    fn any_log_query_is_options_or_a_client_error(q in raw_query()) {
        match parse_log_query(Some(&q), "app", now()) {
            // What parsed is valid: the limits the kubelet enforces hold.
            Ok(req) => prop_assert!(req.limit_bytes != Some(0)),
            Err(e) => prop_assert!(is_client_error(e.code), "{q}: {}", e.code),
        }
    }

    #[test]
    fn any_streaming_query_is_a_request_or_a_bad_request(q in raw_query()) {
        for result in [
            parse_exec(Some(&q), "c").map(|_| ()),
            parse_attach(Some(&q), "c").map(|_| ()),
            parse_run(Some(&q), "c").map(|_| ()),
            parse_ports(Some(&q)).map(|_| ()),
        ] {
            if let Err(e) = result {
                prop_assert_eq!(e.code, StatusCode::BAD_REQUEST, "{}", q);
            }
        }
        if let Ok(run) = parse_run(Some(&q), "c") {
            prop_assert!(!run.command.is_empty() && run.command.iter().all(|w| !w.is_empty() && !w.contains(' ')));
        }
    }

    #[test]
    fn run_splits_its_command_on_spaces(words in vec("[!-~]{1,8}", 1..6)) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("cmd", &words.join(" "));
        let run = parse_run(Some(&q.finish()), "c").map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(run.command, words);
    }
}
