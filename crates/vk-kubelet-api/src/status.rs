//! Failed requests as Kubernetes `Status` objects (`kind: Status`, `status: Failure`), so that
//! kubectl and the API server, which relay a kubelet's error body, show a readable message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vk_core::ProviderError;

/// An HTTP error with the Kubernetes `Status` reason that goes with its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// `details.kind` / `details.name` for a missing object (as the API server reports them).
    pub details: Option<(&'static str, String)>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// A request that parsed but is invalid (the kubelet's 422 for bad log options).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// A missing pod, with the details the API server puts in its own NotFound.
    pub fn pod_not_found(name: &str) -> Self {
        let mut e = Self::not_found(format!("pod {name:?} does not exist"));
        e.details = Some(("pods", name.to_string()));
        e
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the method is not allowed on this path",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    /// A backend error on a stream request. A missing pod or container, or a request the backend
    /// cannot serve as asked, is the client's problem (the kubelet answers 400 for log errors of
    /// this kind, e.g. no previous instance); a missing capability is 501; the rest is ours.
    pub fn from_provider(err: &ProviderError) -> Self {
        match err {
            ProviderError::NotFound(m) | ProviderError::InvalidInput(m) => Self::bad_request(m),
            ProviderError::NotSupported(m) => {
                Self::not_implemented(format!("the backend does not support {m}"))
            }
            ProviderError::SoldOut(_)
            | ProviderError::QuotaExceeded(_)
            | ProviderError::Transient { .. } => Self::unavailable(err.to_string()),
            ProviderError::Other(_) => Self::internal(err.to_string()),
        }
    }

    /// The `Status` object as JSON.
    pub fn body(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some((kind, name)) = &self.details {
            v["details"] = serde_json::json!({ "name": name, "kind": kind });
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.code, self.body().to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(e: ApiError) -> (StatusCode, String, serde_json::Value) {
        let resp = e.into_response();
        let code = resp.status();
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (code, ct, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn denials_are_status_objects() {
        let (code, ct, body) = parts(ApiError::unauthorized()).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(ct, "application/json");
        assert_eq!(
            body,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized",
                "code": 401})
        );
        let (code, _, body) = parts(ApiError::forbidden("no")).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(body["reason"], "Forbidden");
        assert_eq!(body["code"], 403);
        assert_eq!(body["message"], "no");
    }

    #[tokio::test]
    async fn missing_pod_names_it() {
        let (code, _, body) = parts(ApiError::pod_not_found("web")).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(
            body["details"],
            serde_json::json!({"name": "web", "kind": "pods"})
        );
        assert_eq!(body["message"], "pod \"web\" does not exist");
    }

    #[test]
    fn provider_errors_map_to_codes() {
        let code = |e: ProviderError| ApiError::from_provider(&e).code.as_u16();
        assert_eq!(code(ProviderError::NotFound("x".into())), 400);
        assert_eq!(code(ProviderError::InvalidInput("x".into())), 400);
        assert_eq!(code(ProviderError::NotSupported("x".into())), 501);
        assert_eq!(code(ProviderError::transient("x")), 503);
        assert_eq!(code(ProviderError::Other("x".into())), 500);
    }
}
