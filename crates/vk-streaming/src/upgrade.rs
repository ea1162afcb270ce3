//! The HTTP/1.1 upgrade handshake of a streaming request: which transport the client asks for
//! (SPDY/3.1 or WebSocket), which sub-protocol both sides speak, and the `101` or error answer.
//!
//! As in the kubelet: the client's preference order wins; a client that offers sub-protocols of
//! which none is supported gets `403 Forbidden` (for SPDY with the supported list in
//! `X-Accepted-Stream-Protocol-Versions`); a request without upgrade headers gets `400`.

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::status::{failure_response, reason};

pub(crate) const SPDY_PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const SPDY_ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
const WS_PROTOCOL_HEADER: &str = "sec-websocket-protocol";

/// What the client asked to upgrade to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket {
        /// `Sec-WebSocket-Accept` for the answer.
        accept: String,
        /// Sub-protocols offered, in the client's order.
        offered: Vec<String>,
    },
    Spdy {
        /// `X-Stream-Protocol-Version` values, in the client's order.
        offered: Vec<String>,
    },
}

/// All values of a list header, split on commas, in order.
fn tokens(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    tokens(headers, name)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(token))
}

fn bad_request(message: &str) -> Response {
    failure_response(StatusCode::BAD_REQUEST, reason::BAD_REQUEST, message)
}

/// Which transport the request upgrades to, or the `400` answer.
#[allow(clippy::result_large_err)] // the error is the finished HTTP answer
pub(crate) fn transport(version: Version, headers: &HeaderMap) -> Result<Transport, Response> {
    let upgrading = has_token(headers, header::CONNECTION.as_str(), "upgrade");
    let websocket = upgrading && has_token(headers, header::UPGRADE.as_str(), "websocket");
    let spdy = upgrading && has_token(headers, header::UPGRADE.as_str(), "spdy/3.1");
    if !websocket && !spdy {
        return Err(bad_request(
            "unable to upgrade: missing upgrade headers in request (want Upgrade: SPDY/3.1 or websocket)",
        ));
    }
    if version != Version::HTTP_11 {
        return Err(bad_request("unable to upgrade: streaming needs HTTP/1.1"));
    }
    if spdy {
        return Ok(Transport::Spdy {
            offered: tokens(headers, SPDY_PROTOCOL_HEADER),
        });
    }
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if !version_ok {
        let mut response = bad_request("unable to upgrade: unsupported Sec-WebSocket-Version");
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(response);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let key_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !key_ok {
        return Err(bad_request(
            "unable to upgrade: missing or malformed Sec-WebSocket-Key",
        ));
    }
    Ok(Transport::WebSocket {
        accept: derive_accept_key(key),
        offered: tokens(headers, WS_PROTOCOL_HEADER),
    })
}

/// The first protocol of the client's list that the server supports.
pub(crate) fn negotiate<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

/// `403` for a SPDY client none of whose protocol versions is supported.
pub(crate) fn spdy_forbidden(offered: &[String], supported: &[&'static str]) -> Response {
    let message = format!(
        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
    );
    let mut response = failure_response(StatusCode::FORBIDDEN, reason::FORBIDDEN, message);
    for protocol in supported {
        response
            .headers_mut()
            .append(SPDY_ACCEPTED_HEADER, HeaderValue::from_static(protocol));
    }
    response
}

/// `403` for a WebSocket client none of whose sub-protocols is supported.
pub(crate) fn websocket_forbidden(offered: &[String], supported: &[&str]) -> Response {
    let message = format!(
        "unable to upgrade: requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
    );
    failure_response(StatusCode::FORBIDDEN, reason::FORBIDDEN, message)
}

/// `101` for SPDY, confirming the negotiated protocol (kubectl refuses the upgrade otherwise).
pub(crate) fn spdy_switching(protocol: Option<&'static str>) -> Response {
    let mut response = switching();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(p) = protocol {
        headers.insert(SPDY_PROTOCOL_HEADER, HeaderValue::from_static(p));
    }
    response
}

/// `101` for WebSocket; `protocol` empty when the client offered none.
#[allow(clippy::result_large_err)]
pub(crate) fn websocket_switching(
    accept: &str,
    protocol: &'static str,
) -> Result<Response, Response> {
    let accept = HeaderValue::from_str(accept)
        .map_err(|_| bad_request("unable to upgrade: bad Sec-WebSocket-Key"))?;
    let mut response = switching();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if !protocol.is_empty() {
        headers.insert(WS_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    }
    Ok(response)
}

fn switching() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn recognises_spdy_and_websocket() {
        let spdy = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            (
                "x-stream-protocol-version",
                "v3.channel.k8s.io, v2.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            transport(Version::HTTP_11, &spdy).unwrap(),
            Transport::Spdy {
                offered: vec![
                    "v4.channel.k8s.io".into(),
                    "v3.channel.k8s.io".into(),
                    "v2.channel.k8s.io".into()
                ]
            }
        );
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v5.channel.k8s.io,v4.channel.k8s.io",
            ),
        ]);
        match transport(Version::HTTP_11, &ws).unwrap() {
            Transport::WebSocket { accept, offered } => {
                // RFC 6455's worked example.
                assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(offered, ["v5.channel.k8s.io", "v4.channel.k8s.io"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_plain_and_broken_upgrades() {
        let plain = headers(&[("accept", "*/*")]);
        let r = transport(Version::HTTP_11, &plain).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(transport(Version::HTTP_11, &no_connection).is_err());
        let old_ws = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let r = transport(Version::HTTP_11, &old_ws).unwrap_err();
        assert_eq!(r.headers()["sec-websocket-version"], "13");
        let h2 = headers(&[("connection", "upgrade"), ("upgrade", "SPDY/3.1")]);
        assert!(transport(Version::HTTP_2, &h2).is_err());
    }

    #[test]
    fn client_order_wins() {
        let offered = vec![
            "v2.channel.k8s.io".to_owned(),
            "v4.channel.k8s.io".to_owned(),
        ];
        let supported = ["v4.channel.k8s.io", "v2.channel.k8s.io"];
        assert_eq!(negotiate(&offered, &supported), Some("v2.channel.k8s.io"));
        assert_eq!(negotiate(&["x".into()], &supported), None);
    }
}
