//! Requests refused before any upgrade: each gets a 4xx with a Kubernetes Status body.

use vk_streaming::StreamConfig;

use crate::harness::{exec_query, header, http, server, status_body};

const WS: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn no_upgrade_is_a_bad_request() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["ls"], "output=1");
    let (status, headers, body) = http(srv.addr, &format!("/exec/ns/web/app?{q}"), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v = status_body(&body);
    assert_eq!(v["reason"], "BadRequest");
    assert_eq!(v["code"], 400);
    assert!(v["message"].as_str().unwrap().contains("upgrade"));
}

#[tokio::test]
async fn bad_queries_are_bad_requests() {
    let srv = server(StreamConfig::default()).await;
    for path in [
        "/exec/ns/web/app?command=ls",
        "/exec/ns/web/app?output=1",
        "/exec/ns/web/app?command=ls&output=yes",
        "/attach/ns/web/app?tty=1",
        "/portForward/ns/web?port=0",
        "/portForward/ns/web?port=http",
    ] {
        let (status, _, body) = http(srv.addr, path, WS).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(status_body(&body)["reason"], "BadRequest");
    }
}

#[tokio::test]
async fn websocket_port_forward_needs_ports() {
    let srv = server(StreamConfig::default()).await;
    let (status, _, body) = http(srv.addr, "/portForward/ns/web", WS).await;
    assert_eq!(status, 400);
    assert!(
        status_body(&body)["message"]
            .as_str()
            .unwrap()
            .contains("\"port\" is required")
    );
}

#[tokio::test]
async fn unknown_protocols_are_forbidden() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["ls"], "output=1");
    let mut ws = WS.to_vec();
    ws.push(("Sec-WebSocket-Protocol", "v9.channel.k8s.io"));
    let (status, _, body) = http(srv.addr, &format!("/exec/ns/web/app?{q}"), &ws).await;
    assert_eq!(status, 403);
    assert_eq!(status_body(&body)["reason"], "Forbidden");

    let spdy = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
    ];
    let (status, headers, body) = http(srv.addr, &format!("/exec/ns/web/app?{q}"), &spdy).await;
    assert_eq!(status, 403);
    assert_eq!(status_body(&body)["reason"], "Forbidden");
    let accepted: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "x-accepted-stream-protocol-versions")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        accepted,
        [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io"
        ]
    );

    // Port-forward over WebSocket speaks channels or tunnels SPDY; bare SPDY names are refused.
    let mut ws = WS.to_vec();
    ws.push(("Sec-WebSocket-Protocol", "portforward.k8s.io"));
    let (status, _, _) = http(srv.addr, "/portForward/ns/web?port=80", &ws).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn missing_pod_is_not_found_before_the_upgrade() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["ls"], "output=1");
    let (status, _, body) = http(srv.addr, &format!("/exec/ns/nope/app?{q}"), WS).await;
    assert_eq!(status, 404);
    assert_eq!(status_body(&body)["reason"], "NotFound");
}

#[tokio::test]
async fn unsupported_websocket_version_is_refused() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["ls"], "output=1");
    let old = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, headers, _) = http(srv.addr, &format!("/exec/ns/web/app?{q}"), &old).await;
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "sec-websocket-version"), Some("13"));
}
