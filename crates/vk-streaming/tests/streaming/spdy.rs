//! exec and port-forward over SPDY/3.1, as kubectl and client-go speak them: the HTTP upgrade by
//! hand, then a client-role `vk-spdy` connection opening one stream per channel.

use std::io;
use std::net::SocketAddr;

use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vk_provider_api::streams::TerminalSize;
use vk_spdy::{Config, Connection, Headers, Incoming, Role, Stream};
use vk_streaming::StreamConfig;

use crate::harness::{Event, exec_query, header, process_gone, server, upgrade};

async fn spdy_connect(addr: SocketAddr, path: &str, protocols: &str) -> (Connection, Incoming) {
    let (tcp, status, headers) = upgrade(
        addr,
        path,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", protocols),
        ],
    )
    .await;
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(header(&headers, "upgrade"), Some("SPDY/3.1"));
    Connection::new(tcp, Role::Client, Config::default())
}

async fn open(conn: &Connection, stream_type: &str) -> Stream {
    let headers = Headers::new().with("streamType", stream_type);
    conn.open_stream(headers).await.unwrap().0
}

async fn read_all(stream: &mut Stream) -> String {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn v4_exec_streams_and_exit_code() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(
        &["sh", "-c", "cat; echo err >&2; exit 7"],
        "input=1&output=1&error=1",
    );
    let (conn, _incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io",
    )
    .await;
    // kubectl's order: error first, then the data streams.
    let mut error = open(&conn, "error").await;
    let mut stdin = open(&conn, "stdin").await;
    let mut stdout = open(&conn, "stdout").await;
    let mut stderr = open(&conn, "stderr").await;
    stdin.write_all(b"piped \"in\" ").await.unwrap();
    stdin.write_all(b"with 'quotes'").await.unwrap();
    // Half-close: `cat` sees end-of-file.
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stdout).await, "piped \"in\" with 'quotes'");
    assert_eq!(read_all(&mut stderr).await, "err\n");
    let status: serde_json::Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "7");
    // The client closes; the server's side then ends too.
    conn.close().await;
}

#[tokio::test]
async fn server_closes_the_connection_after_the_status() {
    // A client that keeps the connection open after the status holds it until it is idle.
    let srv = server(StreamConfig {
        idle_timeout: std::time::Duration::from_secs(2),
        ..StreamConfig::default()
    })
    .await;
    let q = exec_query(&["echo", "a b", "c"], "output=1");
    let (conn, _incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v5.channel.k8s.io",
    )
    .await;
    let mut error = open(&conn, "error").await;
    let mut stdout = open(&conn, "stdout").await;
    assert_eq!(read_all(&mut stdout).await, "a b c\n");
    assert_eq!(
        read_all(&mut error).await,
        r#"{"metadata":{},"status":"Success"}"#
    );
    conn.closed().await;
}

#[tokio::test]
async fn old_protocols_write_text_errors_and_no_header_means_v1() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(&["sh", "-c", "exit 3"], "output=1");
    let (conn, _incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v2.channel.k8s.io",
    )
    .await;
    let mut error = open(&conn, "error").await;
    let mut stdout = open(&conn, "stdout").await;
    assert_eq!(read_all(&mut stdout).await, "");
    assert_eq!(
        read_all(&mut error).await,
        "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
    );
    conn.close().await;

    let (tcp, status, _) = upgrade(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(status, 101);
    let (conn, _incoming) = Connection::new(tcp, Role::Client, Config::default());
    let mut error = open(&conn, "error").await;
    let _stdout = open(&conn, "stdout").await;
    assert!(read_all(&mut error).await.contains("exit code 3"));
}

#[tokio::test]
async fn tty_resize_stream() {
    let mut srv = server(StreamConfig::default()).await;
    let q = exec_query(&["cat"], "input=1&output=1&tty=1");
    let (conn, _incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let _error = open(&conn, "error").await;
    let mut stdin = open(&conn, "stdin").await;
    let mut stdout = open(&conn, "stdout").await;
    let mut resize = open(&conn, "resize").await;
    resize
        .write_all(b"{\"Width\":132,\"Height\":43}\n")
        .await
        .unwrap();
    assert_eq!(
        srv.sizes.recv().await.unwrap(),
        TerminalSize {
            width: 132,
            height: 43
        }
    );
    stdin.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    stdout.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"x");
}

#[tokio::test]
async fn client_disconnect_kills_the_command() {
    let mut srv = server(StreamConfig::default()).await;
    let q = exec_query(&["sleep", "1000"], "output=1");
    let (conn, incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    let error = open(&conn, "error").await;
    let stdout = open(&conn, "stdout").await;
    drop((error, stdout, incoming, conn));
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
    assert!(process_gone(pid));
}

#[tokio::test(start_paused = true)]
async fn streams_never_opened_time_out_and_kill() {
    let mut srv = server(StreamConfig::default()).await;
    let q = exec_query(&["sleep", "1000"], "output=1");
    let (conn, _incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let pid = srv.started().await;
    // Only the error stream; stdout never comes.
    let _error = open(&conn, "error").await;
    let start = tokio::time::Instant::now();
    conn.closed().await;
    assert!(start.elapsed() >= std::time::Duration::from_secs(30));
    assert_eq!(srv.ended(pid).await, Event::Killed(pid));
}

/// Reads the request to end-of-file, answers `<tag>:<request>` and closes.
async fn half_close_service(tag: &'static str, mut conn: TcpStream) {
    let mut request = Vec::new();
    conn.read_to_end(&mut request).await.unwrap();
    let mut reply = format!("{tag}:").into_bytes();
    reply.extend(request);
    conn.write_all(&reply).await.unwrap();
}

async fn open_pair(conn: &Connection, port: u16, request_id: &str) -> (Stream, Stream) {
    let headers = |t: &str| {
        Headers::new()
            .with("streamType", t)
            .with("port", port.to_string())
            .with("requestID", request_id)
    };
    let (error, _) = conn.open_stream(headers("error")).await.unwrap();
    let (data, _) = conn.open_stream(headers("data")).await.unwrap();
    (error, data)
}

#[tokio::test]
async fn port_forward_pairs_on_two_ports_concurrently() {
    let srv = server(StreamConfig::default()).await;
    srv.listen(80, |c| half_close_service("eighty", c)).await;
    srv.listen(8080, |c| half_close_service("eighty-eighty", c))
        .await;
    let (conn, _incoming) =
        spdy_connect(srv.addr, "/portForward/ns/web", "portforward.k8s.io").await;
    let mut exchanges = Vec::new();
    for (i, port) in [80u16, 8080, 80, 8080].into_iter().enumerate() {
        let (mut error, mut data) = open_pair(&conn, port, &i.to_string()).await;
        exchanges.push(tokio::spawn(async move {
            error.shutdown().await.unwrap();
            data.write_all(format!("request {i}").as_bytes())
                .await
                .unwrap();
            // Half-close: the service answers only after end-of-file.
            data.shutdown().await.unwrap();
            let reply = read_all(&mut data).await;
            assert_eq!(read_all(&mut error).await, "");
            (port, reply)
        }));
    }
    for (i, exchange) in exchanges.into_iter().enumerate() {
        let (port, reply) = exchange.await.unwrap();
        let tag = if port == 80 {
            "eighty"
        } else {
            "eighty-eighty"
        };
        assert_eq!(reply, format!("{tag}:request {i}"));
    }
    conn.close().await;
}

#[tokio::test]
async fn port_forward_failure_is_reported_on_the_error_stream() {
    let srv = server(StreamConfig::default()).await;
    let (conn, _incoming) =
        spdy_connect(srv.addr, "/portForward/ns/web", "portforward.k8s.io").await;
    let (mut error, mut data) = open_pair(&conn, 9, "r1").await;
    assert_eq!(
        read_all(&mut error).await,
        "error forwarding port 9 to pod web_ns, uid uid-web: not found: nothing listens on port 9"
    );
    assert_eq!(read_all(&mut data).await, "");
    // A stream without a port is refused; the connection stays usable.
    let refused = conn
        .open_stream(Headers::new().with("streamType", "data"))
        .await;
    assert!(refused.is_err());
    let (mut error, _data) = open_pair(&conn, 9, "r2").await;
    assert!(
        read_all(&mut error)
            .await
            .starts_with("error forwarding port 9")
    );
}

/// client-go's port-forward tunnel: SPDY in WebSocket binary messages, no port in the query.
#[tokio::test]
async fn port_forward_through_the_websocket_tunnel() {
    let srv = server(StreamConfig::default()).await;
    srv.listen(80, |c| half_close_service("eighty", c)).await;
    let mut request = format!("ws://{}/portForward/ns/web", srv.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "SPDY/3.1+portforward.k8s.io".parse().unwrap(),
    );
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "SPDY/3.1+portforward.k8s.io"
    );
    let (sink, stream) = ws.split();
    let reader = StreamReader::new(Box::pin(stream.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(b)) => Some(Ok(b)),
            Ok(_) => None,
            Err(e) => Some(Err(io::Error::other(e))),
        }
    })));
    let writer = SinkWriter::new(CopyToBytes::new(Box::pin(
        sink.with(|b: bytes::Bytes| async move {
            Ok::<_, tokio_tungstenite::tungstenite::Error>(Message::Binary(b))
        })
        .sink_map_err(io::Error::other),
    )));
    let (conn, _incoming) = Connection::new(
        tokio::io::join(reader, writer),
        Role::Client,
        Config::default(),
    );
    let (mut error, mut data) = open_pair(&conn, 80, "0").await;
    error.shutdown().await.unwrap();
    data.write_all(b"tunnelled").await.unwrap();
    data.shutdown().await.unwrap();
    assert_eq!(read_all(&mut data).await, "eighty:tunnelled");
    assert_eq!(read_all(&mut error).await, "");
    conn.close().await;
}

#[tokio::test]
async fn large_output_arrives_whole_before_the_status() {
    let srv = server(StreamConfig::default()).await;
    let q = exec_query(
        &[
            "sh",
            "-c",
            "head -c 3000000 /dev/zero | tr '\\0' x; echo done >&2",
        ],
        "output=1&error=1",
    );
    let (conn, _incoming) = spdy_connect(
        srv.addr,
        &format!("/exec/ns/web/app?{q}"),
        "v4.channel.k8s.io",
    )
    .await;
    let mut error = open(&conn, "error").await;
    let mut stdout = open(&conn, "stdout").await;
    let mut stderr = open(&conn, "stderr").await;
    let out = read_all(&mut stdout).await;
    assert_eq!(out.len(), 3_000_000);
    assert!(out.bytes().all(|b| b == b'x'));
    assert_eq!(read_all(&mut stderr).await, "done\n");
    assert!(read_all(&mut error).await.contains("Success"));
    conn.close().await;
}

#[tokio::test(start_paused = true)]
async fn port_forward_pair_without_partner_times_out() {
    let srv = server(StreamConfig::default()).await;
    let (conn, _incoming) =
        spdy_connect(srv.addr, "/portForward/ns/web", "portforward.k8s.io").await;
    let headers = Headers::new()
        .with("streamType", "error")
        .with("port", "80")
        .with("requestID", "lonely");
    let (mut error, _) = conn.open_stream(headers).await.unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(
        read_all(&mut error).await,
        "timed out waiting for streams for request lonely"
    );
    assert!(start.elapsed() >= std::time::Duration::from_secs(30));
}
