//! One exec or attach session, independent of the wire protocol: copies the client's stdin and
//! terminal sizes to the provider's session and the session's stdout/stderr to the client, and
//! when the command ends, flushes its output, writes the outcome on the error stream and closes
//! the client's streams. Dropping the future drops the provider's session, which ends the
//! command (that is how a client disconnect or an idle timeout kills it).

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;
use vk_provider_api::streams::{ByteReader, ByteWriter, ExecSession, ExitResult, TerminalSize};

use crate::outcome::{Outcome, SessionKind, StatusFormat};

pub(crate) type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub(crate) type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// How long, after the command ended, its output may take to reach end-of-file: a background
/// child that inherited stdout would otherwise hold the session open for good.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(10);
const COPY_BUF: usize = 32 * 1024;
/// A terminal size message is a few dozen bytes; more than this unparsed is a broken client.
const MAX_RESIZE_PENDING: usize = 4096;

/// The client's side of a session, as byte streams.
pub(crate) struct ClientStreams {
    pub(crate) stdin: Option<BoxRead>,
    pub(crate) stdout: Option<BoxWrite>,
    pub(crate) stderr: Option<BoxWrite>,
    pub(crate) resize: Option<BoxRead>,
    pub(crate) error: BoxWrite,
    pub(crate) format: StatusFormat,
}

/// Runs the session to its end; see the module documentation.
pub(crate) async fn run(session: ExecSession, mut client: ClientStreams, kind: SessionKind) {
    let ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        mut exit,
    } = session;
    let result: ExitResult = {
        let outputs = futures::future::join(
            pump_output(stdout, client.stdout.as_mut()),
            pump_output(stderr, client.stderr.as_mut()),
        );
        let inputs = async {
            futures::future::join(
                pump_input(client.stdin.take(), stdin),
                pump_resize(client.resize.take(), resize),
            )
            .await;
            // The inputs having ended says nothing about the command: keep waiting for it.
            std::future::pending::<()>().await;
        };
        tokio::pin!(outputs, inputs);
        let mut outputs_done = false;
        let result = loop {
            tokio::select! {
                r = &mut exit => {
                    break r.unwrap_or_else(|_| Err("the command's exit status was lost".into()));
                }
                _ = &mut outputs, if !outputs_done => outputs_done = true,
                () = &mut inputs => {}
            }
        };
        if !outputs_done {
            let drain = async {
                tokio::select! {
                    _ = &mut outputs => {}
                    () = &mut inputs => {}
                }
            };
            if tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await.is_err() {
                debug!("the command ended but its output stayed open; closing it");
            }
        }
        result
    };
    debug!(?result, "session ended");
    for out in [client.stdout.as_mut(), client.stderr.as_mut()]
        .into_iter()
        .flatten()
    {
        let _ = out.shutdown().await;
    }
    let status = Outcome::of(&kind, &result).encode(client.format);
    if !status.is_empty() {
        if let Err(e) = client.error.write_all(&status).await {
            debug!(error = %e, "writing the exit status");
        }
        let _ = client.error.flush().await;
    }
    let _ = client.error.shutdown().await;
}

/// Copies one output of the command to the client until end-of-file. When the client's stream
/// is missing or broken, the output is still read (and dropped) so the command never blocks on
/// a full pipe.
async fn pump_output(from: Option<ByteReader>, to: Option<&mut BoxWrite>) {
    let Some(mut from) = from else { return };
    let mut to = to;
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            // A terminal's master side reports EIO once the last process holding it is gone.
            Err(e) => {
                debug!(error = %e, "reading the command's output");
                return;
            }
        };
        if let Some(out) = to.as_mut() {
            let written = async {
                out.write_all(&buf[..n]).await?;
                out.flush().await
            };
            if let Err(e) = written.await {
                debug!(error = %e, "writing output to the client");
                to = None;
            }
        }
    }
}

/// Copies the client's stdin to the command; the client's end-of-file closes the command's
/// stdin (so `cat` ends), input nobody takes is read and dropped.
async fn pump_input(from: Option<BoxRead>, to: Option<ByteWriter>) {
    let mut to = to;
    let Some(mut from) = from else {
        if let Some(mut to) = to {
            let _ = to.shutdown().await;
        }
        return;
    };
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "reading stdin from the client");
                break;
            }
        };
        if let Some(input) = to.as_mut() {
            let written = async {
                input.write_all(&buf[..n]).await?;
                input.flush().await
            };
            if let Err(e) = written.await {
                debug!(error = %e, "writing stdin to the command");
                to = None;
            }
        }
    }
    if let Some(mut input) = to {
        let _ = input.shutdown().await;
    }
}

/// Forwards terminal sizes; a malformed message stops resizing (as the kubelet does) but the
/// stream is still drained.
async fn pump_resize(from: Option<BoxRead>, to: Option<UnboundedSender<TerminalSize>>) {
    let Some(mut from) = from else { return };
    let mut to = to;
    let mut decoder = SizeDecoder::default();
    let mut buf = vec![0u8; 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Some(sizes) = to.as_ref() else { continue };
        match decoder.push(&buf[..n]) {
            Ok(decoded) => {
                for size in decoded {
                    // Like the kubelet, a zero size is no size.
                    if size.width > 0 && size.height > 0 && sizes.send(size).is_err() {
                        to = None;
                        break;
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "bad terminal size message; ignoring further resizes");
                to = None;
            }
        }
    }
}

/// `{"Width":w,"Height":h}` as the client's JSON encoder sends it.
#[derive(Debug, serde::Deserialize)]
struct WireSize {
    // Go's decoder matches field names case-insensitively; clients send either spelling.
    #[serde(rename = "Width", alias = "width", default)]
    width: u16,
    #[serde(rename = "Height", alias = "height", default)]
    height: u16,
}

/// Decodes a stream of concatenated JSON objects that may arrive split anywhere.
#[derive(Debug, Default)]
pub(crate) struct SizeDecoder {
    pending: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SizeError {
    #[error("malformed terminal size: {0}")]
    Json(#[from] serde_json::Error),
    #[error("terminal size message too long")]
    TooLong,
}

impl SizeDecoder {
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, SizeError> {
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut stream =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<WireSize>();
        for item in stream.by_ref() {
            match item {
                Ok(size) => sizes.push(TerminalSize {
                    width: size.width,
                    height: size.height,
                }),
                // The rest of the object is still on its way.
                Err(e) if e.is_eof() => break,
                Err(e) => return Err(e.into()),
            }
        }
        let consumed = stream.byte_offset();
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_RESIZE_PENDING {
            return Err(SizeError::TooLong);
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u16, height: u16) -> TerminalSize {
        TerminalSize { width, height }
    }

    #[test]
    fn sizes_split_across_reads() {
        let mut d = SizeDecoder::default();
        assert_eq!(d.push(b"{\"Width\":80,").unwrap(), []);
        assert_eq!(
            d.push(b"\"Height\":24}\n{\"width\":100,\"height\":40}{\"Wid")
                .unwrap(),
            [size(80, 24), size(100, 40)]
        );
        assert_eq!(d.push(b"th\":1,\"Height\":2}\n").unwrap(), [size(1, 2)]);
        assert!(d.pending.iter().all(u8::is_ascii_whitespace));
    }

    #[test]
    fn malformed_and_endless_sizes_are_errors() {
        assert!(SizeDecoder::default().push(b"{\"Width\":-1}").is_err());
        assert!(SizeDecoder::default().push(b"\"wide\"").is_err());
        let mut d = SizeDecoder::default();
        let long = format!("{{\"Width\":{}", "1".repeat(5000));
        assert!(d.push(long.as_bytes()).is_err());
    }
}
