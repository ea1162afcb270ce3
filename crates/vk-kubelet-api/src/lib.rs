//! vkubelet's kubelet API: the HTTPS endpoint the API server (and metrics-server) call on a
//! node's kubelet port for `kubectl logs`, `exec`, `attach`, `port-forward`, `top` and the
//! node proxy.
//!
//! - [`tls`]: serving certificate from files or self-signed with the node's addresses; client
//!   certificates verified against the client CA (rustls, TLS 1.2+).
//! - [`auth`]: x509 / TokenReview / anonymous authentication and SubjectAccessReview
//!   authorization with the kubelet's attribute mapping, both cached.
//! - [`routes`]: `/containerLogs`, `/pods`, `/runningpods/`, `/stats/summary`,
//!   `/metrics/resource`, `/metrics`, `/healthz`, and the streaming routes, whose protocols are
//!   handed to `vk-streaming` at [`routes::streaming::serve_stream`].
//! - [`server`]: one HTTP/1.1 server per node, upgrades enabled.
//!
//! See docs/kubelet-api.md.

pub mod auth;
pub mod error;
pub mod metrics;
pub mod pods;
pub mod routes;
pub mod server;
pub mod stats;
pub mod status;
pub mod tls;
mod x509;

pub use auth::{
    Auth, AuthConfig, SubjectAccessReviewAuthorizer, TokenReviewAuthenticator, UserInfo,
};
pub use error::Error;
pub use metrics::ApiMetrics;
pub use pods::{ControllerPods, NodePods};
pub use routes::NodeApi;
pub use server::{KubeletServer, bind};
pub use status::ApiError;
