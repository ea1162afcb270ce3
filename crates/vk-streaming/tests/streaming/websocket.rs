//! exec, attach and port-forward over WebSocket, as kubectl ≥ 1.30 (v5), client-go/python (v4,
//! base64) speak them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use vk_provider_api::streams::TerminalSize;
use vk_streaming::StreamConfig;

use crate::harness::{Event, exec_query, process_gone, server};

type Ws = WebSocketStream<TcpStream>;

async fn connect(addr: SocketAddr, path: &str, protocol: &str) -> Ws {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The test sends oversize messages on purpose.
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, response) = client_async_with_config(request, tcp, Some(config))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        protocol,
        "the server must confirm the sub-protocol"
    );
    ws
}

/// Everything the server sent, by channel, until it closed the connection.
#[derive(Debug, Default)]
struct Received {
    channels: HashMap<u8, Vec<u8>>,
    /// Channel of each data message, in order (including empty ones).
    order: Vec<(u8, usize)>,
    close: Option<(CloseCode, String)>,
}

impl Received {
    fn text(&self, channel: u8) -> String {
        String::from_utf8(self.channels.get(&channel).cloned().unwrap_or_default()).unwrap()
    }
    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.text(3)).unwrap()
    }
}

fn decode(message: &Message) -> Option<(u8, Vec<u8>)> {
    match message {
        Message::Binary(b) => Some((b[0], b[1..].to_vec())),
        Message::Text(t) => {
            let t = t.as_str();
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t[1..])
                .unwrap();
            Some((t.as_bytes()[0] - b'0', data))
        }
        _ => None,
    }
}

async fn receive_all(ws: &mut Ws) -> Received {
    let mut got = Received::default();
    while let Some(message) = ws.next().await {
        let message = match message {
            Ok(m) => m,
            Err(_) => break,
        };
        if let Message::Close(frame) = &message {
            got.close = frame.as_ref().map(|f| (f.code, f.reason.to_string()));
            continue;
        }
        if let Some((channel, data)) = decode(&message) {
            got.order.push((channel, data.len()));
            got.channels.entry(channel).or_default().extend(data);
        }
    }
    got
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut frame = vec![channel];
    frame.extend_from_slice(data);
    Message::Binary(frame.into())
}

#[tokio::test]
async fn v4_separates_stdout_and_stderr_and_reports_exit_code() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        "output=1&error=1",
    );
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let got = receive_all(&mut ws).await;
    // The "connection established" notice: an empty message on stdout, first.
    assert_eq!(got.order[0], (1, 0));
    assert_eq!(got.text(1), "out\n");
    assert_eq!(got.text(2), "err\n");
    let status = got.status();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "7");
    // All output comes before the status.
    let status_at = got.order.iter().position(|(c, _)| *c == 3).unwrap();
    assert!(got.order[status_at..].iter().all(|(c, _)| *c == 3));
    assert_eq!(got.close.unwrap().0, CloseCode::Normal);
}

#[tokio::test]
async fn v5_close_frame_half_closes_stdin() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["cat"], "input=1&output=1&error=1");
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v5.channel.k8s.io",
    )
    .await;
    ws.send(binary(0, b"hello ")).await.unwrap();
    ws.send(binary(0, b"world")).await.unwrap();
    // CLOSE signal for stdin: `cat` sees end-of-file and exits 0.
    ws.send(Message::Binary(vec![0xFF, 0].into()))
        .await
        .unwrap();
    let got = receive_all(&mut ws).await;
    assert_eq!(got.text(1), "hello world");
    assert_eq!(got.status()["status"], "Success");
}

#[tokio::test]
async fn v5_offered_first_among_others_is_chosen() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["true"], "output=1");
    let mut request = format!("ws://{}/exec/ns/web/app?{q}", srv.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
    );
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    assert_eq!(receive_all(&mut ws).await.status()["status"], "Success");
}

#[tokio::test]
async fn base64_keeps_arguments_with_spaces_and_quotes() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(
        &[
            "sh",
            "-c",
            r#"printf '%s|%s|%s' "$1" "$2" "$3""#,
            "sh",
            "a b",
            r#"c'd"e"#,
            " ",
        ],
        "output=1",
    );
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.base64.channel.k8s.io",
    )
    .await;
    let first = ws.next().await.unwrap().unwrap();
    assert!(
        matches!(&first, Message::Text(t) if t.as_str() == "1"),
        "{first:?}"
    );
    let got = receive_all(&mut ws).await;
    assert_eq!(got.text(1), r#"a b|c'd"e| "#);
    assert_eq!(got.status()["status"], "Success");
}

#[tokio::test]
async fn pre_v4_protocol_reports_failures_as_text() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["sh", "-c", "exit 3"], "output=1");
    let mut ws = connect(srv.addr, &format!("/exec/ns/web/app?{q}"), "channel.k8s.io").await;
    let got = receive_all(&mut ws).await;
    assert_eq!(
        got.text(3),
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
    );
}

#[tokio::test]
async fn resize_messages_reach_the_session() {
    let mut srv = server(StreamConfig::default()).await;
    let q = exec_query(&["cat"], "input=1&output=1&tty=1");
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    // Split across messages on purpose; then a second size in the same message as the rest.
    ws.send(binary(4, br#"{"Width":100,"#)).await.unwrap();
    ws.send(binary(
        4,
        b"\"Height\":40}\n{\"Width\":120,\"Height\":50}\n",
    ))
    .await
    .unwrap();
    assert_eq!(
        srv.sizes.recv().await.unwrap(),
        TerminalSize {
            width: 100,
            height: 40
        }
    );
    assert_eq!(
        srv.sizes.recv().await.unwrap(),
        TerminalSize {
            width: 120,
            height: 50
        }
    );
    ws.send(binary(0, b"typed")).await.unwrap();
    let pid = srv.started().await;
    let mut echoed = Vec::new();
    while echoed.len() < 5 {
        let message = ws.next().await.unwrap().unwrap();
        if let Some((1, data)) = decode(&message) {
            echoed.extend(data);
        }
    }
    assert_eq!(echoed, b"typed");
    drop(ws);
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
}

#[tokio::test]
async fn client_disconnect_kills_the_command() {
    let mut srv = server(StreamConfig::default()).await;
    let q = exec_query(&["sleep", "1000"], "output=1");
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    // The established notice proves the session runs.
    let first = ws.next().await.unwrap().unwrap();
    assert_eq!(decode(&first), Some((1, vec![])));
    drop(ws);
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
    assert!(process_gone(pid));
}

#[tokio::test]
async fn unknown_channel_closes_with_protocol_error_and_kills() {
    let mut srv = server(StreamConfig::default()).await;
    let q = exec_query(&["sleep", "1000"], "input=1&output=1");
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    ws.send(binary(9, b"?")).await.unwrap();
    let got = receive_all(&mut ws).await;
    assert_eq!(got.close.unwrap().0, CloseCode::Protocol);
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
}

#[tokio::test]
async fn malformed_base64_and_oversize_messages_close_cleanly() {
    let cfg = StreamConfig {
        max_message_bytes: 1024,
        ..StreamConfig::default()
    };
    let mut srv = server(cfg).await;
    let q = exec_query(&["cat"], "input=1&output=1");
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.base64.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    ws.send(Message::Text("0!!!".into())).await.unwrap();
    assert_eq!(
        receive_all(&mut ws).await.close.unwrap().0,
        CloseCode::Protocol
    );
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));

    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    ws.send(binary(0, &[b'x'; 4096])).await.unwrap();
    assert_eq!(receive_all(&mut ws).await.close.unwrap().0, CloseCode::Size);
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
}

#[tokio::test(start_paused = true)]
async fn idle_connection_is_closed_and_the_command_killed() {
    let cfg = StreamConfig {
        idle_timeout: Duration::from_secs(600),
        ..StreamConfig::default()
    };
    let mut srv = server(cfg).await;
    let q = exec_query(&["sleep", "1000"], "output=1");
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    let start = tokio::time::Instant::now();
    let got = receive_all(&mut ws).await;
    assert!(start.elapsed() >= Duration::from_secs(600));
    assert_eq!(
        got.close.unwrap(),
        (CloseCode::Away, "idle timeout".to_owned())
    );
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
}

#[tokio::test]
async fn attach_streams_and_ends_with_success() {
    let srv = server(StreamConfig::default()).await;
    let mut ws = connect(
        srv.addr,
        "/attach/ns/web/app?input=1&output=1",
        "v5.channel.k8s.io",
    )
    .await;
    ws.send(binary(0, b"ping\n")).await.unwrap();
    ws.send(Message::Binary(vec![0xFF, 0].into()))
        .await
        .unwrap();
    let got = receive_all(&mut ws).await;
    assert_eq!(got.text(1), "attached\nping\n");
    assert_eq!(got.status()["status"], "Success");
}

/// Answers each connection with `<tag>:` and what it read, then closes.
async fn tagging_service(tag: &'static str, mut conn: TcpStream) {
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    let mut reply = format!("{tag}:").into_bytes();
    reply.extend_from_slice(&buf[..n]);
    conn.write_all(&reply).await.unwrap();
}

#[tokio::test]
async fn port_forward_two_ports_both_ways() {
    let srv = server(StreamConfig::default()).await;
    srv.listen(80, |c| tagging_service("eighty", c)).await;
    srv.listen(8080, |c| tagging_service("eighty-eighty", c))
        .await;
    let mut ws = connect(
        srv.addr,
        "/portForward/ns/web?port=80,8080",
        "v4.channel.k8s.io",
    )
    .await;
    ws.send(binary(0, b"to 80")).await.unwrap();
    ws.send(binary(2, b"to 8080")).await.unwrap();
    let got = receive_all(&mut ws).await;
    // Each channel starts with its port, little-endian.
    let mut expect80 = 80u16.to_le_bytes().to_vec();
    expect80.extend_from_slice(b"eighty:to 80");
    let mut expect8080 = 8080u16.to_le_bytes().to_vec();
    expect8080.extend_from_slice(b"eighty-eighty:to 8080");
    assert_eq!(got.channels[&0], expect80);
    assert_eq!(got.channels[&2], expect8080);
    assert_eq!(got.channels[&1], 80u16.to_le_bytes());
    assert_eq!(got.channels[&3], 8080u16.to_le_bytes());
    assert_eq!(got.close.unwrap().0, CloseCode::Normal);
}

#[tokio::test]
async fn port_forward_error_goes_to_the_error_channel() {
    let srv = server(StreamConfig::default()).await;
    let mut ws = connect(
        srv.addr,
        "/portForward/ns/web?port=81",
        "v4.base64.channel.k8s.io",
    )
    .await;
    let got = receive_all(&mut ws).await;
    let error = got.channels[&1].clone();
    assert_eq!(&error[..2], &81u16.to_le_bytes());
    assert_eq!(
        String::from_utf8_lossy(&error[2..]),
        "error forwarding port 81 to pod web_ns, uid uid-web: not found: nothing listens on port 81"
    );
}

#[tokio::test]
async fn large_output_arrives_whole_before_the_status() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(
        &["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"],
        "output=1",
    );
    let mut ws = connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v5.channel.k8s.io",
    )
    .await;
    let got = receive_all(&mut ws).await;
    let out = &got.channels[&1];
    assert_eq!(out.len(), 3_000_000);
    assert!(out.iter().all(|b| *b == b'x'));
    assert_eq!(got.status()["status"], "Success");
    assert_eq!(got.close.unwrap().0, CloseCode::Normal);
}
