//! Kubernetes `Status` objects, on k8s-openapi's `meta/v1` type: the one place where vkubelet's
//! kubelet API builds them, their two JSON encodings, the HTTP answer that carries one, and the
//! one mapping from a backend's [`ProviderError`] to an HTTP code and reason.
//!
//! It lives here rather than in `vk-kubelet-api` because that crate depends on this one (the
//! reverse would be a cycle); `vk-kubelet-api`'s `ApiError` builds its bodies with it.
//!
//! Reasons are `metav1.StatusReason` values where apimachinery defines one. It defines none for
//! 501: [`reason::NOT_IMPLEMENTED`] follows the rule every defined reason for a plain HTTP code
//! follows (the code's HTTP status text in CamelCase: `BadRequest`, `NotFound`,
//! `ServiceUnavailable`, ...). A reason "clarifies an HTTP status code but does not override
//! it", so a client that does not know it still goes by the 501.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use vk_provider_api::ProviderError;

/// The `reason` strings vkubelet answers with.
pub mod reason {
    pub const BAD_REQUEST: &str = "BadRequest";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const NOT_FOUND: &str = "NotFound";
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    /// 422: the request parsed but does not validate.
    pub const INVALID: &str = "Invalid";
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// 501. Not a `metav1.StatusReason` constant (there is none for 501); see the module docs.
    pub const NOT_IMPLEMENTED: &str = "NotImplemented";
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    /// A remotecommand session whose command exited with a code other than 0 (no HTTP code).
    pub const NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
}

const FAILURE: &str = "Failure";
const SUCCESS: &str = "Success";

/// A `Failure` Status without a `code`. The kubelet sends one only on the remotecommand error
/// stream (`NonZeroExitCode`); HTTP answers take [`failure`].
pub fn failure_without_code(reason: &str, message: impl Into<String>) -> Status {
    Status {
        code: None,
        details: None,
        message: Some(message.into()),
        metadata: ListMeta::default(),
        reason: Some(reason.to_owned()),
        status: Some(FAILURE.to_owned()),
    }
}

/// A `Failure` Status for an HTTP code.
pub fn failure(code: StatusCode, reason: &str, message: impl Into<String>) -> Status {
    Status {
        code: Some(i32::from(code.as_u16())),
        ..failure_without_code(reason, message)
    }
}

/// A `Success` Status (what a remotecommand v4+ session that went well ends with).
pub fn success() -> Status {
    Status {
        status: Some(SUCCESS.to_owned()),
        ..Status::default()
    }
}

/// Whether `status` says `Success`.
pub fn is_success(status: &Status) -> bool {
    status.status.as_deref() == Some(SUCCESS)
}

/// The JSON of an HTTP body: the whole object, `kind: Status` and `apiVersion: v1` included.
pub fn to_json(status: &Status) -> Vec<u8> {
    // Serializing a Status cannot fail (strings, integers and lists, no maps with non-string
    // keys, no custom serializers that error); an empty body would still carry the HTTP code.
    serde_json::to_vec(status).unwrap_or_default()
}

/// The JSON a remotecommand v4+ session writes on its error stream: the object without `kind`
/// and `apiVersion`, byte for byte what the kubelet writes (Go marshals its `metav1.Status`
/// with an empty `TypeMeta` there, e.g. `{"metadata":{},"status":"Success"}`).
pub(crate) fn to_stream_json(status: &Status) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::to_value(status) else {
        // Unreachable for the same reason as in `to_json`.
        return Vec::new();
    };
    object.remove("kind");
    object.remove("apiVersion");
    serde_json::to_vec(&object).unwrap_or_default()
}

/// An HTTP answer carrying `status` as JSON. `code` is both the response's code and the body's,
/// so the two cannot disagree.
pub fn response(code: StatusCode, mut status: Status) -> Response {
    status.code = Some(i32::from(code.as_u16()));
    let mut response = (code, to_json(&status)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An HTTP failure answer: [`failure`] as a [`response`].
pub fn failure_response(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    response(code, failure(code, reason, message))
}

/// The HTTP code and reason for a backend's error: the one mapping of the kubelet API (documented
/// in docs/kubelet-api.md, "Errors").
///
/// - `NotFound` → 404 `NotFound`: the backend has no such pod, container or port listener.
/// - `InvalidInput` → 400 `BadRequest`: the backend refuses the request as asked.
/// - `NotSupported` → 501 `NotImplemented`: the backend lacks the capability (exec, logs,
///   stats); no retry helps, and it is no fault of the request.
/// - `SoldOut`, `QuotaExceeded`, `Transient` → 503 `ServiceUnavailable`: the backend cannot serve
///   now and may later; the quota is the backend account's, not the caller's, so it is not 403.
/// - `Other` → 500 `InternalError`.
pub fn provider_error_code(err: &ProviderError) -> (StatusCode, &'static str) {
    match err {
        ProviderError::NotFound(_) => (StatusCode::NOT_FOUND, reason::NOT_FOUND),
        ProviderError::InvalidInput(_) => (StatusCode::BAD_REQUEST, reason::BAD_REQUEST),
        ProviderError::NotSupported(_) => (StatusCode::NOT_IMPLEMENTED, reason::NOT_IMPLEMENTED),
        ProviderError::SoldOut(_)
        | ProviderError::QuotaExceeded(_)
        | ProviderError::Transient { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, reason::SERVICE_UNAVAILABLE)
        }
        ProviderError::Other(_) => (StatusCode::INTERNAL_SERVER_ERROR, reason::INTERNAL_ERROR),
    }
}

/// The message for a backend's error. A missing object or a refused request is relayed in the
/// backend's own words (it wrote them for the user, as the kubelet relays the runtime's); the
/// others keep the error's kind in front, which is what tells them apart.
pub fn provider_error_message(err: &ProviderError) -> String {
    match err {
        ProviderError::NotFound(m) | ProviderError::InvalidInput(m) => m.clone(),
        ProviderError::NotSupported(m) => format!("the backend does not support {m}"),
        ProviderError::SoldOut(_)
        | ProviderError::QuotaExceeded(_)
        | ProviderError::Transient { .. }
        | ProviderError::Other(_) => err.to_string(),
    }
}

/// A backend's error as a `Failure` Status ([`provider_error_code`], [`provider_error_message`]).
pub fn provider_error(err: &ProviderError) -> (StatusCode, Status) {
    let (code, reason) = provider_error_code(err);
    (code, failure(code, reason, provider_error_message(err)))
}

/// A backend's error as an HTTP answer.
pub fn provider_error_response(err: &ProviderError) -> Response {
    let (code, status) = provider_error(err);
    response(code, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One error of every `ProviderError` variant, in declaration order.
    fn every_provider_error() -> Vec<ProviderError> {
        let all = vec![
            ProviderError::NotFound("pod x".into()),
            ProviderError::InvalidInput("bad image".into()),
            ProviderError::NotSupported("exec".into()),
            ProviderError::SoldOut("pool a".into()),
            ProviderError::QuotaExceeded("cpu".into()),
            ProviderError::Transient {
                message: "timeout".into(),
                retry_after: Some(Duration::from_secs(1)),
            },
            ProviderError::Other("boom".into()),
        ];
        // Exhaustive on purpose: a new variant stops this compiling until it is listed above
        // (and its row is added to the tables below).
        for e in &all {
            match e {
                ProviderError::NotFound(_)
                | ProviderError::InvalidInput(_)
                | ProviderError::NotSupported(_)
                | ProviderError::SoldOut(_)
                | ProviderError::QuotaExceeded(_)
                | ProviderError::Transient { .. }
                | ProviderError::Other(_) => {}
            }
        }
        all
    }

    #[test]
    fn provider_error_mapping_table() {
        let table: Vec<(u16, &str)> = every_provider_error()
            .iter()
            .map(|e| {
                let (code, reason) = provider_error_code(e);
                (code.as_u16(), reason)
            })
            .collect();
        assert_eq!(
            table,
            [
                (404, "NotFound"),
                (400, "BadRequest"),
                (501, "NotImplemented"),
                (503, "ServiceUnavailable"),
                (503, "ServiceUnavailable"),
                (503, "ServiceUnavailable"),
                (500, "InternalError"),
            ]
        );
    }

    #[test]
    fn provider_error_messages() {
        let messages: Vec<String> = every_provider_error()
            .iter()
            .map(provider_error_message)
            .collect();
        assert_eq!(
            messages,
            [
                "pod x",
                "bad image",
                "the backend does not support exec",
                "backend capacity sold out: pool a",
                "backend quota exceeded: cpu",
                "transient backend failure: timeout",
                "backend failure: boom",
            ]
        );
    }

    async fn answer(response: Response) -> (StatusCode, String, serde_json::Value) {
        use http_body_util::BodyExt;
        let code = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (code, content_type, serde_json::from_slice(&body).unwrap())
    }

    /// A valid failure Status that goes with an HTTP code.
    fn assert_failure_status(body: &serde_json::Value, code: StatusCode) {
        assert_eq!(body["kind"], "Status", "{body}");
        assert_eq!(body["apiVersion"], "v1", "{body}");
        assert_eq!(body["metadata"], serde_json::json!({}), "{body}");
        assert_eq!(body["status"], "Failure", "{body}");
        assert_eq!(body["code"], code.as_u16(), "{body}");
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        // It reads back as k8s-openapi's type, as a Rust client (kube) would read it.
        let back: Status = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(back.code, Some(i32::from(code.as_u16())));
    }

    #[tokio::test]
    async fn every_provider_error_answers_a_valid_status() {
        for e in every_provider_error() {
            let (want_code, want_reason) = provider_error_code(&e);
            let (code, content_type, body) = answer(provider_error_response(&e)).await;
            assert_eq!(code, want_code, "{e}");
            assert_eq!(content_type, "application/json");
            assert_failure_status(&body, code);
            assert_eq!(body["reason"], want_reason);
            assert_eq!(body["message"], provider_error_message(&e));
        }
    }

    #[tokio::test]
    async fn the_response_code_is_the_body_code() {
        // A Status built for another code (or none) is answered with the response's code.
        let status = failure(StatusCode::BAD_REQUEST, reason::BAD_REQUEST, "x");
        let (code, _, body) = answer(response(StatusCode::CONFLICT, status)).await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(body["code"], 409);
        let (code, _, body) = answer(failure_response(
            StatusCode::FORBIDDEN,
            reason::FORBIDDEN,
            "no",
        ))
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_failure_status(&body, code);
    }

    #[test]
    fn http_json_is_the_whole_object() {
        let mut status = failure(StatusCode::NOT_FOUND, reason::NOT_FOUND, "gone");
        status.details = Some(StatusDetails {
            kind: Some("pods".into()),
            name: Some("web".into()),
            ..StatusDetails::default()
        });
        let v: serde_json::Value = serde_json::from_slice(&to_json(&status)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "gone", "reason": "NotFound", "code": 404,
                "details": {"kind": "pods", "name": "web"}})
        );
    }

    #[test]
    fn stream_json_has_no_type_meta() {
        assert_eq!(
            to_stream_json(&success()),
            br#"{"metadata":{},"status":"Success"}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&to_stream_json(&failure_without_code(
            reason::NON_ZERO_EXIT_CODE,
            "exit 7",
        )))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": "exit 7"})
        );
        assert!(is_success(&success()));
        assert!(!is_success(&failure_without_code("R", "m")));
    }
}
