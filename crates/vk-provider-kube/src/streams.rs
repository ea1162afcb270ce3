//! `kubectl logs/exec/attach/port-forward` relayed to the backend API's own `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward` (WebSocket, which every API server from
//! 1.20 on forwards to its kubelets), as the provider contract's plain byte streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::SinkExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess, LogParams, Portforwarder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use vk_provider_api::ProviderError;
use vk_provider_api::streams::{
    AttachRequest, ByteReader, Duplex, ExecRequest, ExecSession, ExitResult, LogRequest,
    TerminalSize,
};

use crate::api_error;

pub fn log_params(r: &LogRequest) -> LogParams {
    LogParams {
        container: Some(r.container.clone()),
        follow: r.follow,
        limit_bytes: r.limit_bytes.and_then(|n| i64::try_from(n).ok()),
        pretty: false,
        previous: r.previous,
        since_seconds: None,
        since_time: r.since,
        tail_lines: r.tail_lines.and_then(|n| i64::try_from(n).ok()),
        timestamps: r.timestamps,
    }
}

pub async fn logs(api: &Api<Pod>, name: &str, r: &LogRequest) -> Result<ByteReader, ProviderError> {
    let stream = api
        .log_stream(name, &log_params(r))
        .await
        .map_err(|e| api_error("logs", e))?;
    Ok(Box::pin(
        tokio_util::compat::FuturesAsyncReadCompatExt::compat(stream),
    ))
}

/// The exit of a remote command, from the Status the API server sends at its end.
pub fn exit_of(status: Option<Status>) -> ExitResult {
    let Some(s) = status else {
        return Err("the backend ended the session without an exit status".into());
    };
    if s.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if s.reason.as_deref() == Some("NonZeroExitCode") {
        let code = s
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
                    .and_then(|c| c.message.as_deref())
                    .and_then(|m| m.parse::<i32>().ok())
            });
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(s
        .message
        .unwrap_or_else(|| "the command failed on the backend".into()))
}

/// A stream that ends the remote process when the session lets go of it.
struct Owned<S> {
    inner: S,
    process: Option<AttachedProcess>,
}

impl<S> Drop for Owned<S> {
    fn drop(&mut self) {
        if let Some(p) = self.process.take() {
            p.abort();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Owned<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

fn session(mut process: AttachedProcess, tty: bool) -> ExecSession {
    let stdin = process
        .stdin()
        .map(|w| Box::pin(w) as vk_provider_api::streams::ByteWriter);
    let stderr = process.stderr().map(|r| Box::pin(r) as ByteReader);
    let resize = if tty {
        process.terminal_size().map(|mut sender| {
            let (tx, mut rx) = mpsc::unbounded_channel::<TerminalSize>();
            tokio::spawn(async move {
                while let Some(size) = rx.recv().await {
                    let size = kube::api::TerminalSize {
                        width: size.width,
                        height: size.height,
                    };
                    if sender.send(size).await.is_err() {
                        break;
                    }
                }
            });
            tx
        })
    } else {
        None
    };
    let (exit_tx, exit) = oneshot::channel();
    if let Some(status) = process.take_status() {
        tokio::spawn(async move {
            let _ = exit_tx.send(exit_of(status.await));
        });
    }
    // The stdout half owns the process: dropping the session ends it.
    let stdout = process.stdout();
    let stdout: Option<ByteReader> = match stdout {
        Some(r) => Some(Box::pin(Owned {
            inner: r,
            process: Some(process),
        })),
        None => Some(Box::pin(Owned {
            inner: tokio::io::empty(),
            process: Some(process),
        })),
    };
    ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    }
}

fn attach_params(
    container: &str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> AttachParams {
    AttachParams {
        container: Some(container.to_string()),
        stdin,
        stdout,
        // With a TTY the API server merges stderr into stdout and refuses a stderr stream.
        stderr: stderr && !tty,
        tty,
        ..Default::default()
    }
}

pub async fn exec(
    api: &Api<Pod>,
    name: &str,
    r: &ExecRequest,
) -> Result<ExecSession, ProviderError> {
    let ap = attach_params(&r.container, r.stdin, r.stdout, r.stderr, r.tty);
    let process = api
        .exec(name, r.command.clone(), &ap)
        .await
        .map_err(|e| api_error("exec", e))?;
    Ok(session(process, r.tty))
}

pub async fn attach(
    api: &Api<Pod>,
    name: &str,
    r: &AttachRequest,
) -> Result<ExecSession, ProviderError> {
    let ap = attach_params(&r.container, r.stdin, r.stdout, r.stderr, r.tty);
    let process = api
        .attach(name, &ap)
        .await
        .map_err(|e| api_error("attach", e))?;
    Ok(session(process, r.tty))
}

/// One forwarded connection, keeping its forwarder alive while it is used.
struct Forwarded {
    stream: tokio::io::DuplexStream,
    _forwarder: Portforwarder,
}

impl AsyncRead for Forwarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Forwarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

pub async fn port_forward(
    api: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<Pin<Box<dyn Duplex>>, ProviderError> {
    let mut forwarder = api
        .portforward(name, &[port])
        .await
        .map_err(|e| api_error("port-forward", e))?;
    let stream = forwarder.take_stream(port).ok_or_else(|| {
        ProviderError::transient(format!("the backend opened no stream for port {port}"))
    })?;
    if let Some(errors) = forwarder.take_error(port) {
        tokio::spawn(async move {
            if let Some(e) = errors.await {
                tracing::debug!(port, error = %e, "backend port-forward error");
            }
        });
    }
    Ok(Box::pin(Forwarded {
        stream,
        _forwarder: forwarder,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn exit_codes_from_the_api_servers_status() {
        assert_eq!(
            exit_of(Some(Status {
                status: Some("Success".into()),
                ..Default::default()
            })),
            Ok(0)
        );
        let failed = Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            message: Some("command terminated with non-zero exit code".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("7".into()),
                    field: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_of(Some(failed)), Ok(7));
        let other = Status {
            status: Some("Failure".into()),
            message: Some("container not found".into()),
            ..Default::default()
        };
        assert_eq!(exit_of(Some(other)), Err("container not found".into()));
        assert!(exit_of(None).is_err());
    }

    #[test]
    fn log_options_carry_over() {
        let p = log_params(&LogRequest {
            container: "app".into(),
            follow: true,
            previous: true,
            tail_lines: Some(5),
            since: None,
            timestamps: true,
            limit_bytes: Some(100),
        });
        assert_eq!(p.container.as_deref(), Some("app"));
        assert!(p.follow && p.previous && p.timestamps);
        assert_eq!((p.tail_lines, p.limit_bytes), (Some(5), Some(100)));
    }
}
