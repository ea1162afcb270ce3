//! One forwarded connection, independent of the wire protocol: connect to the pod's port through
//! the provider, copy bytes both ways with half-close, and report failures as text on the
//! connection's error stream, worded as the kubelet words them.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;
use vk_provider_api::PodKey;
use vk_provider_api::provider::DynProvider;

/// Once the pod's side has finished sending, how long the client's side may still take to
/// finish (the kubelet's runtimes give one second, like socat).
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
const COPY_BUF: usize = 32 * 1024;

/// The kubelet's message: `error forwarding port 80 to pod web_default, uid 1234: ...` (the pod
/// named by its kubelet "full name", `name_namespace`).
pub(crate) fn forward_error(key: &PodKey, port: u16, error: &dyn std::fmt::Display) -> String {
    format!(
        "error forwarding port {port} to pod {}_{}, uid {}: {error}",
        key.name, key.namespace, key.uid
    )
}

/// Forwards one client connection to `port` of the pod, then closes the client's streams.
pub(crate) async fn forward<R, W, E>(
    provider: &DynProvider,
    key: &PodKey,
    port: u16,
    from_client: R,
    to_client: W,
    mut error: E,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut to_client = to_client;
    let result = match provider.port_forward(key, port).await {
        Ok(backend) => splice(from_client, &mut to_client, backend)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // Already done when the pod's side ended normally; needed on every other path.
    let _ = to_client.shutdown().await;
    if let Err(e) = result {
        let message = forward_error(key, port, &e);
        debug!(%message, "port-forward failed");
        let _ = error.write_all(message.as_bytes()).await;
        let _ = error.flush().await;
    }
    let _ = error.shutdown().await;
}

/// Copies both ways until the pod's side ends (then the client's side gets a short grace) or
/// either side fails. The client's end-of-file half-closes the pod connection; the pod's
/// end-of-file half-closes the client's stream.
pub(crate) async fn splice<R, W, B>(from_client: R, to_client: W, backend: B) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (backend_read, backend_write) = tokio::io::split(backend);
    let up = copy_then_shutdown(from_client, backend_write);
    let down = copy_then_shutdown(backend_read, to_client);
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => {
            r?;
            // The pod's side is done and delivered: how the client then ends its side (kubectl
            // resets the stream once it has read everything) is no forwarding error.
            let _ = tokio::time::timeout(HALF_CLOSE_GRACE, up).await;
            Ok(())
        }
        r = &mut up => {
            match r {
                Ok(()) => {}
                // A client that resets its side has gone away, as Go's spdystream sees it
                // (end of stream): stop and report nothing.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
            down.await
        }
    }
}

async fn copy_then_shutdown<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splice_half_closes_both_ways() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut pod) = tokio::io::duplex(1024);
        let (client_r, client_w) = tokio::io::split(client);
        let task = tokio::spawn(splice(client_r, client_w, backend));
        client_peer.write_all(b"request").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        pod.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        pod.write_all(b"response").await.unwrap();
        pod.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pod_closing_first_gives_the_client_a_grace() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, pod) = tokio::io::duplex(1024);
        let (client_r, client_w) = tokio::io::split(client);
        drop(pod);
        let start = tokio::time::Instant::now();
        splice(client_r, client_w, backend).await.unwrap();
        assert_eq!(start.elapsed(), HALF_CLOSE_GRACE);
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn error_wording() {
        let key = PodKey::new("u-1", "default", "web");
        assert_eq!(
            forward_error(&key, 80, &"connection refused"),
            "error forwarding port 80 to pod web_default, uid u-1: connection refused"
        );
    }
}
