//! What the kubelet API asks of a backend for a user's streams — `kubectl logs`, `exec`,
//! `port-forward`, `top` — as plain async byte streams, independent of the wire protocol
//! (SPDY or WebSocket) the HTTP server speaks.

use std::pin::Pin;

use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;
pub type ByteWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A bidirectional byte stream (a port-forward connection).
pub trait Duplex: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Duplex for T {}

/// `/containerLogs` options, as the kubelet takes them (`sinceSeconds` already turned into a
/// time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    pub container: String,
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<u64>,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

/// A command to run in a container (`/exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// With a TTY, stdout and stderr are one stream and the terminal can be resized.
    pub tty: bool,
}

/// A connection to a running container's own stdin/stdout/stderr (`/attach`). Output starts at
/// the moment of attaching; stdin reaches the container only when its spec has `stdin: true`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub container: String,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// How a command ended: the exit code, or why it could not be run.
pub type ExitResult = Result<i32, String>;

/// A running command's streams. Dropping the session (all of its parts) ends the command.
pub struct ExecSession {
    pub stdin: Option<ByteWriter>,
    pub stdout: Option<ByteReader>,
    pub stderr: Option<ByteReader>,
    /// Terminal size changes (TTY sessions only).
    pub resize: Option<mpsc::UnboundedSender<TerminalSize>>,
    pub exit: oneshot::Receiver<ExitResult>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.resize.is_some())
            .finish()
    }
}

/// Resource usage of one container, for `/stats/summary` and `/metrics/resource`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_core_nanoseconds: u64,
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
}
