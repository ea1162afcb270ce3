//! Failed requests as Kubernetes `Status` objects (`kind: Status`, `status: Failure`), so that
//! kubectl and the API server, which relay a kubelet's error body, show a readable message.
//!
//! [`ApiError`] is the request-time error of every route. Its body is built by
//! `vk_streaming::status` (k8s-openapi's `Status` type), and a backend's error gets its code
//! there too ([`vk_streaming::status::provider_error_code`]), so the streaming handlers and
//! these routes answer alike. (`vk-streaming` holds them because this crate depends on it.)

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vk_core::ProviderError;
use vk_streaming::status::{self, Status, StatusDetails, reason};

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
        Self::new(StatusCode::BAD_REQUEST, reason::BAD_REQUEST, message)
    }

    /// A request that parsed but is invalid (the kubelet's 422 for bad log options).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, reason::INVALID, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            reason::UNAUTHORIZED,
            "Unauthorized",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, reason::NOT_FOUND, message)
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
            reason::METHOD_NOT_ALLOWED,
            "the method is not allowed on this path",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            reason::INTERNAL_ERROR,
            message,
        )
    }

    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            reason::NOT_IMPLEMENTED,
            message,
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            reason::SERVICE_UNAVAILABLE,
            message,
        )
    }

    /// A backend's error, with the kubelet API's one code and reason for it
    /// ([`vk_streaming::status::provider_error_code`]: 404, 400, 501, 503 or 500).
    pub fn from_provider(err: &ProviderError) -> Self {
        let (code, reason) = status::provider_error_code(err);
        Self::new(code, reason, status::provider_error_message(err))
    }

    /// The `Status` object.
    pub fn status(&self) -> Status {
        let mut s = status::failure(self.code, self.reason, self.message.as_str());
        if let Some((kind, name)) = &self.details {
            s.details = Some(StatusDetails {
                kind: Some((*kind).to_owned()),
                name: Some(name.clone()),
                ..StatusDetails::default()
            });
        }
        s
    }

    /// The `Status` object as JSON.
    pub fn body(&self) -> serde_json::Value {
        // Serializing a Status does not fail (see `vk_streaming::status::to_json`).
        serde_json::to_value(self.status()).unwrap_or_default()
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
        status::response(self.code, self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
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
        // 404 since issue 11: one mapping for every route (it was 400 here, 404 in streaming).
        assert_eq!(code(ProviderError::NotFound("x".into())), 404);
        assert_eq!(code(ProviderError::InvalidInput("x".into())), 400);
        assert_eq!(code(ProviderError::NotSupported("x".into())), 501);
        assert_eq!(code(ProviderError::transient("x")), 503);
        assert_eq!(code(ProviderError::Other("x".into())), 500);
    }

    #[test]
    fn provider_errors_use_the_shared_mapping() {
        let errors = [
            ProviderError::NotFound("x".into()),
            ProviderError::InvalidInput("x".into()),
            ProviderError::NotSupported("exec".into()),
            ProviderError::SoldOut("x".into()),
            ProviderError::QuotaExceeded("x".into()),
            ProviderError::transient("x"),
            ProviderError::Other("x".into()),
        ];
        for e in &errors {
            let api = ApiError::from_provider(e);
            assert_eq!(
                (api.code, api.reason),
                vk_streaming::status::provider_error_code(e)
            );
            assert_eq!(api.message, vk_streaming::status::provider_error_message(e));
        }
        assert_eq!(
            ApiError::from_provider(&ProviderError::NotSupported("exec".into())).reason,
            "NotImplemented"
        );
    }

    #[tokio::test]
    async fn every_error_body_is_a_valid_status() {
        let all = [
            ApiError::bad_request("b"),
            ApiError::invalid("i"),
            ApiError::unauthorized(),
            ApiError::forbidden("f"),
            ApiError::not_found("n"),
            ApiError::pod_not_found("web"),
            ApiError::method_not_allowed(),
            ApiError::internal("x"),
            ApiError::not_implemented("y"),
            ApiError::unavailable("z"),
            ApiError::from_provider(&ProviderError::SoldOut("pool".into())),
        ];
        for e in all {
            let want = e.clone();
            let (code, ct, body) = parts(e).await;
            assert_eq!(code, want.code);
            assert_eq!(ct, "application/json");
            assert_eq!(body["kind"], "Status", "{body}");
            assert_eq!(body["apiVersion"], "v1", "{body}");
            assert_eq!(body["status"], "Failure", "{body}");
            assert_eq!(body["code"], code.as_u16(), "{body}");
            assert_eq!(body["reason"], want.reason, "{body}");
            assert_eq!(body["message"], want.message.as_str(), "{body}");
            assert!(
                !want.reason.is_empty() && !want.message.is_empty(),
                "{want}"
            );
            assert_eq!(body, want.body());
            // A Rust client reads it back as k8s-openapi's type.
            let back: Status = serde_json::from_value(body).unwrap();
            assert_eq!(back, want.status());
        }
    }
}
