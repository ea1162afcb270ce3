//! The server side of kubelet streaming: `kubectl exec`, `attach` and `port-forward` as the API
//! server (or a client talking to the kubelet port directly) speaks them, over SPDY/3.1 and over
//! WebSocket, as handler functions the kubelet HTTPS server mounts on its routes.
//!
//! Each `serve_*` function takes the HTTP request, checks its upgrade headers, negotiates the
//! sub-protocol, asks the provider for the session, answers `101 Switching Protocols` and runs
//! the session on the upgraded connection in a task of its own that ends with the connection.
//! Everything it refuses is answered with a Kubernetes `Status` body, built by [`status`], which
//! also holds the one mapping from a backend's error to an HTTP code that `vk-kubelet-api` shares.
//!
//! Protocols, as the kubelet serves them:
//! - remotecommand (exec, attach) over SPDY: `v5.channel.k8s.io`, `v4.channel.k8s.io`,
//!   `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io` (also assumed when the client
//!   names none);
//! - remotecommand over WebSocket: `v5.channel.k8s.io` (with stream CLOSE frames),
//!   `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `channel.k8s.io`, `base64.channel.k8s.io`
//!   and no sub-protocol;
//! - port-forward over SPDY: `portforward.k8s.io`; over WebSocket: `v4.channel.k8s.io`,
//!   `v4.base64.channel.k8s.io` and no sub-protocol, with the ports in the `port` query parameter.

mod error;
mod idle;
mod outcome;
mod portforward;
#[cfg(test)]
mod props;
mod query;
mod remotecommand;
mod serve;
mod spdy;
pub mod status;
mod upgrade;
mod ws;

use std::time::Duration;

pub use error::BadRequest;
pub use query::{parse_attach_query, parse_exec_query, parse_port_forward_query};
pub use serve::{serve_attach, serve_exec, serve_port_forward};

/// Limits of streaming sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// A session with no bytes moving in either direction for this long is closed (the
    /// kubelet's `streamingConnectionIdleTimeout`, 4 h by default).
    pub idle_timeout: Duration,
    /// How long the client has, after the upgrade, to open the SPDY streams a session needs
    /// (and, for port-forward, the second stream of a pair): the kubelet's 30 s.
    pub creation_timeout: Duration,
    /// Largest WebSocket message accepted from a client; a larger one closes the connection
    /// with status 1009.
    pub max_message_bytes: usize,
    /// How long an exec or attach over WebSocket holds back its first message until the
    /// client has sent one. client-go's WebSocket executor before 1.33 (kubectl 1.30–1.32)
    /// starts reading the connection before it has registered its channels and drops what
    /// arrives first (kubernetes/kubernetes#131189): a command that fails at once would lose
    /// its output and exit code. Any client message (stdin, a resize) ends the hold at once.
    pub ws_first_output_hold: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            creation_timeout: Duration::from_secs(30),
            max_message_bytes: 16 << 20,
            ws_first_output_hold: Duration::from_millis(250),
        }
    }
}
