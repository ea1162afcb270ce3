//! `GET /containerLogs/{namespace}/{pod}/{container}`: the container's log, streamed.
//!
//! Query handling follows the kubelet (`getContainerLogs`): the legacy `tail` parameter, the
//! API's query conversions (a boolean is true unless `false` or `0`; integers are base 10;
//! `sinceTime` is RFC 3339), 400 for what does not decode and 422 for what does not validate
//! (`ValidatePodLogOptions`: both `sinceSeconds` and `sinceTime`, negative `tailLines`,
//! `limitBytes` or `sinceSeconds` below 1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio_util::io::ReaderStream;
use tracing::{debug, instrument};
use vk_core::ProviderError;
use vk_core::streams::LogRequest;
use vk_streaming::status::provider_error_message;

use super::NodeApi;
use crate::pods::container_names;
use crate::status::ApiError;

/// The first value of each parameter, as Go's query decoding takes it.
fn first_values(query: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !out.iter().any(|(seen, _)| *seen == k) {
            out.push((k.into_owned(), v.into_owned()));
        }
    }
    out
}

fn decode_error() -> ApiError {
    ApiError::bad_request("Unable to decode query.")
}

fn int(v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>().map_err(|_| decode_error())
}

/// Parse and validate the log options of a request for `container`, `now` being the time
/// `sinceSeconds` counts back from.
pub fn parse_log_query(
    query: Option<&str>,
    container: &str,
    now: Timestamp,
) -> Result<LogRequest, ApiError> {
    let mut params = first_values(query);
    // Backwards compatibility: `tail=N` is `tailLines=N`, `tail=all` is no limit.
    if let Some((_, tail)) = params.iter().find(|(k, _)| k == "tail").cloned()
        && !tail.is_empty()
    {
        params.retain(|(k, _)| k != "tailLines");
        if tail != "all" {
            params.push(("tailLines".into(), tail));
        }
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let flag = |name: &str| {
        get(name).is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "0"))
    };
    let tail_lines = get("tailLines").map(int).transpose()?;
    let since_seconds = get("sinceSeconds").map(int).transpose()?;
    let limit_bytes = get("limitBytes").map(int).transpose()?;
    let since_time = match get("sinceTime") {
        None | Some("") | Some("null") => None,
        Some(t) => Some(t.parse::<Timestamp>().map_err(|_| decode_error())?),
    };
    if let Some(stream) = get("stream")
        && stream != "All"
    {
        return Err(ApiError::bad_request(format!(
            "unable to return the given log stream: {stream:?}"
        )));
    }

    let mut problems = Vec::new();
    if since_seconds.is_some() && since_time.is_some() {
        problems.push("at most one of `sinceTime` or `sinceSeconds` may be specified");
    }
    if since_seconds.is_some_and(|s| s < 1) {
        problems.push("sinceSeconds: must be greater than 0");
    }
    if tail_lines.is_some_and(|t| t < 0) {
        problems.push("tailLines: must be greater than or equal to 0");
    }
    if limit_bytes.is_some_and(|l| l < 1) {
        problems.push("limitBytes: must be greater than 0");
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(format!(
            "invalid log options: {}",
            problems.join("; ")
        )));
    }

    let since = match (since_seconds, since_time) {
        (Some(secs), _) => Some(
            now.checked_sub(SignedDuration::from_secs(secs))
                .unwrap_or(Timestamp::MIN),
        ),
        (None, t) => t,
    };
    Ok(LogRequest {
        container: container.to_string(),
        follow: flag("follow"),
        previous: flag("previous"),
        // Validated non-negative above.
        tail_lines: tail_lines.map(|t| t.unsigned_abs()),
        since,
        timestamps: flag("timestamps"),
        limit_bytes: limit_bytes.map(|l| l.unsigned_abs()),
    })
}

#[instrument(name = "container_logs", skip_all, fields(node = %api.node, namespace, pod, container))]
pub async fn container_logs(
    State(api): State<Arc<NodeApi>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(Path((namespace, name, container))) = path else {
        return ApiError::bad_request("malformed containerLogs path").into_response();
    };
    let span = tracing::Span::current();
    span.record("namespace", namespace.as_str());
    span.record("pod", name.as_str());
    span.record("container", container.as_str());
    match logs(&api, &namespace, &name, &container, query.as_deref()).await {
        Ok(resp) => resp,
        Err(e) => {
            debug!(error = %e, "containerLogs refused");
            e.into_response()
        }
    }
}

async fn logs(
    api: &NodeApi,
    namespace: &str,
    name: &str,
    container: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let request = parse_log_query(query, container, Timestamp::now())?;
    let summary = api
        .pods
        .find(namespace, name)
        .ok_or_else(|| ApiError::pod_not_found(name))?;
    if let Some(names) = summary.pod.as_deref().and_then(container_names)
        && !names.iter().any(|n| n == container)
    {
        return Err(ApiError::not_found(format!(
            "container {container:?} not found in pod {name:?}"
        )));
    }
    let reader = api
        .provider
        .container_logs(&summary.key, &request)
        .await
        .map_err(|e| {
            api.metrics
                .error(&api.node, "kubelet_api_logs", e.metric_label());
            log_refusal(&e)
        })?;
    // The body streams as the backend produces it (chunked). When the client goes away hyper
    // drops the body, which drops the reader, which ends the backend's follow.
    let mut resp = Response::new(Body::from_stream(ReaderStream::new(reader)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

/// A backend's error on a log request: the shared mapping ([`ApiError::from_provider`]) but for
/// `NotFound`, which is 400 here as in the kubelet. Pod and container were already checked
/// against the API object (404 above), so a backend's `NotFound` at this point means that the
/// instance the options ask for is missing (no previous instance, not started yet); the kubelet
/// answers every such refusal 400 (`getContainerLogs`: `GetKubeletContainerLogs` errors are
/// written with `http.StatusBadRequest`), and the API server relays a kubelet's 400 to kubectl
/// as `BadRequest` with the kubelet's message, where a 404 would become its generic "the server
/// could not find the requested resource".
fn log_refusal(err: &ProviderError) -> ApiError {
    match err {
        ProviderError::NotFound(_) => ApiError::bad_request(provider_error_message(err)),
        _ => ApiError::from_provider(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn parse(q: &str) -> Result<LogRequest, ApiError> {
        parse_log_query(Some(q), "app", now())
    }

    #[test]
    fn defaults() {
        let r = parse_log_query(None, "app", now()).unwrap();
        assert_eq!(
            r,
            LogRequest {
                container: "app".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_option() {
        let r = parse(
            "follow=true&previous=1&timestamps=yes&tailLines=10&limitBytes=500&sinceTime=2024-05-01T11:00:00Z",
        )
        .unwrap();
        assert!(r.follow && r.previous && r.timestamps);
        assert_eq!(r.tail_lines, Some(10));
        assert_eq!(r.limit_bytes, Some(500));
        assert_eq!(r.since, Some("2024-05-01T11:00:00Z".parse().unwrap()));
        let r = parse("sinceSeconds=60&follow=false&previous=0").unwrap();
        assert_eq!(r.since, Some("2024-05-01T11:59:00Z".parse().unwrap()));
        assert!(!r.follow && !r.previous);
    }

    #[test]
    fn booleans_as_the_api_decodes_them() {
        // Present means true unless "false" or "0" (any case); absent means false.
        assert!(parse("follow").unwrap().follow);
        assert!(parse("follow=").unwrap().follow);
        assert!(parse("follow=TRUE").unwrap().follow);
        assert!(!parse("follow=False").unwrap().follow);
        assert!(!parse("timestamps=0").unwrap().timestamps);
    }

    #[test]
    fn legacy_tail() {
        assert_eq!(parse("tail=5").unwrap().tail_lines, Some(5));
        assert_eq!(parse("tail=5&tailLines=9").unwrap().tail_lines, Some(5));
        assert_eq!(parse("tailLines=9&tail=all").unwrap().tail_lines, None);
        assert_eq!(parse("tail=").unwrap().tail_lines, None);
    }

    #[test]
    fn first_value_wins() {
        assert_eq!(
            parse("tailLines=1&tailLines=2").unwrap().tail_lines,
            Some(1)
        );
    }

    #[test]
    fn undecodable_values_are_400() {
        for q in [
            "tailLines=ten",
            "tailLines=",
            "sinceSeconds=1.5",
            "limitBytes=99999999999999999999",
            "sinceTime=yesterday",
            "sinceTime=2024-13-01T00:00:00Z",
            "stream=Stdout",
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e.code.as_u16(), 400, "{q}: {e}");
            assert_eq!(e.reason, "BadRequest");
        }
    }

    #[test]
    fn invalid_combinations_are_422() {
        for (q, why) in [
            (
                "sinceSeconds=10&sinceTime=2024-05-01T11:00:00Z",
                "at most one",
            ),
            ("sinceSeconds=0", "sinceSeconds"),
            ("tailLines=-1", "tailLines"),
            ("limitBytes=0", "limitBytes"),
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e.code.as_u16(), 422, "{q}: {e}");
            assert_eq!(e.reason, "Invalid");
            assert!(e.message.contains(why), "{q}: {e}");
        }
        assert_eq!(parse("tailLines=0").unwrap().tail_lines, Some(0));
        assert_eq!(parse("stream=All").unwrap().tail_lines, None);
    }

    #[test]
    fn since_seconds_far_in_the_past_saturates() {
        let r = parse(&format!("sinceSeconds={}", i64::MAX)).unwrap();
        assert_eq!(r.since, Some(Timestamp::MIN));
    }

    #[test]
    fn backend_refusals_are_400_as_in_the_kubelet() {
        let e = log_refusal(&ProviderError::NotFound(
            "previous terminated container".into(),
        ));
        assert_eq!((e.code.as_u16(), e.reason), (400, "BadRequest"));
        assert_eq!(e.message, "previous terminated container");
        let e = log_refusal(&ProviderError::InvalidInput("not started".into()));
        assert_eq!((e.code.as_u16(), e.reason), (400, "BadRequest"));
        // The rest is the shared mapping: a backend without logs is 501.
        for err in [
            ProviderError::NotSupported("logs".into()),
            ProviderError::transient("x"),
            ProviderError::Other("x".into()),
        ] {
            assert_eq!(log_refusal(&err), ApiError::from_provider(&err));
        }
        assert_eq!(
            log_refusal(&ProviderError::NotSupported("logs".into()))
                .code
                .as_u16(),
            501
        );
    }
}
