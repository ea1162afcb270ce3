//! The core's own errors (API server, configuration); the provider contract's `ProviderError`
//! lives in `vk-provider-api` and is re-exported here.

pub use vk_provider_api::ProviderError;

/// Errors of the core's own machinery (talking to the API server, configuration).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Self::Kube(kube::Error::Api(s)) if s.code == 429 => "throttled",
            Self::Kube(kube::Error::Api(_)) => "api_status",
            Self::Kube(_) => "api_transport",
            Self::Provider(e) => e.metric_label(),
            Self::Config(_) => "config",
            Self::Json(_) => "serialization",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The HTTP status code of a Kubernetes API error, if the error is one.
pub fn api_status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
