//! What a remotecommand session writes on its error stream when it ends: a JSON `Status` for
//! protocol v4 and later (kubectl takes the exit code from it), the bare error message for older
//! protocols (nothing on success). The Status itself comes from [`crate::status`].

use vk_provider_api::streams::ExitResult;

use crate::status::{self, Status, StatusCause, StatusDetails, reason};

/// How the error stream carries the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusFormat {
    /// v4+: a JSON `metav1.Status`.
    Json,
    /// v1-v3 and the unversioned WebSocket protocols: the failure message as text.
    Text,
}

/// What kind of session ended: an exec reports the exit code, an attach does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionKind {
    Exec { command: Vec<String> },
    Attach,
}

/// A session's outcome, as the kubelet phrases it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome(Status);

/// `details.causes` with one cause.
fn cause(reason: Option<&str>, message: String) -> Option<StatusDetails> {
    Some(StatusDetails {
        causes: Some(vec![StatusCause {
            reason: reason.map(str::to_owned),
            message: Some(message),
            ..StatusCause::default()
        }]),
        ..StatusDetails::default()
    })
}

impl Outcome {
    pub(crate) fn of(kind: &SessionKind, result: &ExitResult) -> Self {
        match (kind, result) {
            (SessionKind::Exec { command }, Ok(code)) if *code != 0 => {
                // Go prints the command with %v: `[sh -c exit 7]`.
                let message = format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                );
                // The kubelet's NonZeroExitCode Status has no HTTP code: it is no HTTP answer.
                let mut status = status::failure_without_code(reason::NON_ZERO_EXIT_CODE, message);
                status.details = cause(Some("ExitCode"), code.to_string());
                Self(status)
            }
            (_, Ok(_)) => Self(status::success()),
            (kind, Err(error)) => {
                let what = match kind {
                    SessionKind::Exec { .. } => "error executing command in container",
                    SessionKind::Attach => "error attaching to container",
                };
                let error = format!("{what}: {error}");
                // As apimachinery's NewInternalError words it.
                let mut status = status::failure(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    reason::INTERNAL_ERROR,
                    format!("Internal error occurred: {error}"),
                );
                status.details = cause(None, error);
                Self(status)
            }
        }
    }

    /// The bytes to write on the error stream; empty when there is nothing to say.
    pub(crate) fn encode(&self, format: StatusFormat) -> Vec<u8> {
        match format {
            StatusFormat::Json => status::to_stream_json(&self.0),
            StatusFormat::Text => {
                if status::is_success(&self.0) {
                    Vec::new()
                } else {
                    self.0.message.clone().unwrap_or_default().into_bytes()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> SessionKind {
        SessionKind::Exec {
            command: vec!["sh".into(), "-c".into(), "exit 7".into()],
        }
    }

    #[test]
    fn non_zero_exit_carries_the_code_as_a_cause() {
        let out = Outcome::of(&exec(), &Ok(7));
        let v: serde_json::Value = serde_json::from_slice(&out.encode(StatusFormat::Json)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        assert_eq!(
            v["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7"
        );
        let text = String::from_utf8(out.encode(StatusFormat::Text)).unwrap();
        assert!(text.starts_with("command terminated with non-zero exit code"));
    }

    #[test]
    fn success_is_a_status_in_json_and_nothing_in_text() {
        let out = Outcome::of(&exec(), &Ok(0));
        assert_eq!(
            out.encode(StatusFormat::Json),
            br#"{"metadata":{},"status":"Success"}"#
        );
        assert!(out.encode(StatusFormat::Text).is_empty());
        let attach = Outcome::of(&SessionKind::Attach, &Ok(3));
        assert!(attach.encode(StatusFormat::Text).is_empty());
    }

    #[test]
    fn failures_are_internal_errors() {
        let out = Outcome::of(&SessionKind::Attach, &Err("gone".into()));
        let v: serde_json::Value = serde_json::from_slice(&out.encode(StatusFormat::Json)).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(
            v["message"],
            "Internal error occurred: error attaching to container: gone"
        );
    }
}
