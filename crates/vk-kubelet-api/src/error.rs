//! Errors of setting up the kubelet API server (certificates, binding). Request-time failures are
//! [`crate::status::ApiError`]s, answered to the client.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{what} {path} holds no {expected}")]
    EmptyPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("generating the self-signed serving certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
    #[error(
        "kubelet API address {addr} is already in use; pick another --kubelet-port (node i of \
         several gets --kubelet-port + i) or stop what listens there"
    )]
    AddrInUse { addr: SocketAddr },
    #[error("binding the kubelet API to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
