//! HTTP answers for requests refused before the upgrade. Their `Status` bodies and the codes for a
//! backend's errors come from [`crate::status`].

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::status::{self, reason};

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
        status::failure_response(StatusCode::BAD_REQUEST, reason::BAD_REQUEST, self.0)
    }
}
