//! What a remotecommand session writes on its error stream when it ends: a JSON `Status` for
//! protocol v4 and later (kubectl takes the exit code from it), the bare error message for older
//! protocols (nothing on success).

use serde_json::json;
use vk_core::streams::ExitResult;

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
pub(crate) struct Outcome(serde_json::Value);

impl Outcome {
    pub(crate) fn of(kind: &SessionKind, result: &ExitResult) -> Self {
        match (kind, result) {
            (SessionKind::Exec { command }, Ok(code)) if *code != 0 => {
                // Go prints the command with %v: `[sh -c exit 7]`.
                let message = format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                );
                Self(json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                }))
            }
            (_, Ok(_)) => Self(json!({"metadata": {}, "status": "Success"})),
            (kind, Err(error)) => {
                let what = match kind {
                    SessionKind::Exec { .. } => "error executing command in container",
                    SessionKind::Attach => "error attaching to container",
                };
                let error = format!("{what}: {error}");
                Self(json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("Internal error occurred: {error}"),
                    "reason": "InternalError",
                    "details": {"causes": [{"message": error}]},
                    "code": 500,
                }))
            }
        }
    }

    /// The bytes to write on the error stream; empty when there is nothing to say.
    pub(crate) fn encode(&self, format: StatusFormat) -> Vec<u8> {
        match format {
            StatusFormat::Json => self.0.to_string().into_bytes(),
            StatusFormat::Text => {
                if self.0["status"] == "Success" {
                    Vec::new()
                } else {
                    self.0["message"]
                        .as_str()
                        .unwrap_or_default()
                        .as_bytes()
                        .to_vec()
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
