//! HTTP answers for requests refused before the upgrade: a Kubernetes `Status` JSON body with
//! the matching HTTP code, as the kubelet and API server send them.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use vk_core::ProviderError;

/// A streaming request that cannot be served as asked (bad query, missing upgrade headers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl BadRequest {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        status_response(StatusCode::BAD_REQUEST, "BadRequest", &self.0)
    }
}

/// A `Status` failure response.
pub(crate) fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = (code, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer when the provider refuses to start a session.
pub(crate) fn provider_error_response(err: &ProviderError) -> Response {
    let (code, reason) = match err {
        ProviderError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
        ProviderError::InvalidInput(_) | ProviderError::NotSupported(_) => {
            (StatusCode::BAD_REQUEST, "BadRequest")
        }
        ProviderError::SoldOut(_)
        | ProviderError::QuotaExceeded(_)
        | ProviderError::Transient { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
        }
        ProviderError::Other(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    status_response(code, reason, &err.to_string())
}
