//! The query parameters of `/exec`, `/attach` and `/portForward`, parsed as the kubelet reads
//! them: repeated `command`, the stream flags `input`/`output`/`error`/`tty` (the API server
//! sends `=1`), and the port list of a WebSocket port-forward.

use vk_provider_api::streams::{AttachRequest, ExecRequest};

use crate::error::BadRequest;

/// The stream flags shared by exec and attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A boolean as Go's `strconv.ParseBool` reads it; anything else is refused rather than taken
/// as false, so a typo does not silently drop a stream.
fn parse_bool(name: &str, value: &str) -> Result<bool, BadRequest> {
    match value {
        "1" | "t" | "T" | "true" | "True" | "TRUE" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "False" | "FALSE" => Ok(false),
        other => Err(BadRequest::new(format!(
            "invalid value {other:?} for query parameter {name:?}"
        ))),
    }
}

/// The first value of the first of `names` present (the kubelet's `FormValue` takes the first).
fn flag(pairs: &[(String, String)], names: &[&str]) -> Result<bool, BadRequest> {
    match pairs.iter().find(|(k, _)| names.contains(&k.as_str())) {
        Some((k, v)) => parse_bool(k, v),
        None => Ok(false),
    }
}

fn parse_flags(pairs: &[(String, String)]) -> Result<Flags, BadRequest> {
    let mut flags = Flags {
        stdin: flag(pairs, &["input", "stdin"])?,
        stdout: flag(pairs, &["output", "stdout"])?,
        stderr: flag(pairs, &["error", "stderr"])?,
        tty: flag(pairs, &["tty"])?,
    };
    // A terminal merges stderr into stdout; the kubelet drops the stream rather than failing.
    if flags.tty && flags.stderr {
        flags.stderr = false;
    }
    if !flags.stdin && !flags.stdout && !flags.stderr {
        return Err(BadRequest::new(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    Ok(flags)
}

/// The command and streams of an `/exec` request.
pub fn parse_exec_query(query: Option<&str>, container: &str) -> Result<ExecRequest, BadRequest> {
    let pairs = pairs(query);
    let flags = parse_flags(&pairs)?;
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return Err(BadRequest::new("query parameter \"command\" is required"));
    }
    Ok(ExecRequest {
        container: container.to_owned(),
        command,
        stdin: flags.stdin,
        stdout: flags.stdout,
        stderr: flags.stderr,
        tty: flags.tty,
    })
}

/// The streams of an `/attach` request.
pub fn parse_attach_query(
    query: Option<&str>,
    container: &str,
) -> Result<AttachRequest, BadRequest> {
    let flags = parse_flags(&pairs(query))?;
    Ok(AttachRequest {
        container: container.to_owned(),
        stdin: flags.stdin,
        stdout: flags.stdout,
        stderr: flags.stderr,
        tty: flags.tty,
    })
}

/// The ports of a `/portForward` request: `port` (what the API server sends; repeated and/or
/// comma-separated), also accepted as `ports`. Empty when none is given: a SPDY client names the
/// port per stream, a WebSocket client must give at least one (checked by
/// [`crate::serve_port_forward`]).
pub fn parse_port_forward_query(query: Option<&str>) -> Result<Vec<u16>, BadRequest> {
    let mut ports = Vec::new();
    for (name, value) in pairs(query) {
        if name != "port" && name != "ports" {
            continue;
        }
        if value.is_empty() {
            return Err(BadRequest::new(format!(
                "query parameter {name:?} cannot be empty"
            )));
        }
        for part in value.split(',') {
            ports.push(parse_port(part.trim()).map_err(BadRequest::new)?);
        }
    }
    Ok(ports)
}

/// A port number between 1 and 65535.
pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err(format!("port {text:?} must be > 0")),
        Ok(port) => Ok(port),
        Err(e) => Err(format!("unable to parse {text:?} as a port: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_keeps_repeated_commands_in_order_with_spaces_and_quotes() {
        let q = "command=sh&command=-c&command=echo+%22a+b%22+%27c%27&output=1&error=1";
        let req = parse_exec_query(Some(q), "app").unwrap();
        assert_eq!(req.command, ["sh", "-c", "echo \"a b\" 'c'"]);
        assert_eq!(req.container, "app");
        assert!(req.stdout && req.stderr && !req.stdin && !req.tty);
    }

    #[test]
    fn exec_flag_aliases_and_tty_drops_stderr() {
        let req =
            parse_exec_query(Some("command=ls&stdin=true&tty=1&stderr=1&stdout=1"), "c").unwrap();
        assert!(req.stdin && req.stdout && req.tty);
        assert!(!req.stderr, "a terminal has no separate stderr");
    }

    #[test]
    fn exec_needs_a_stream_and_a_command() {
        let err = parse_exec_query(Some("command=ls"), "c").unwrap_err();
        assert!(err.0.contains("at least 1 of stdin, stdout, stderr"));
        let err = parse_exec_query(Some("output=1"), "c").unwrap_err();
        assert!(err.0.contains("command"));
        assert!(parse_exec_query(None, "c").is_err());
        assert!(parse_exec_query(Some("command=ls&output=maybe"), "c").is_err());
    }

    #[test]
    fn attach_flags() {
        let req = parse_attach_query(Some("input=1&output=1&tty=1"), "c").unwrap();
        assert_eq!(
            req,
            AttachRequest {
                container: "c".into(),
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true
            }
        );
        assert!(parse_attach_query(Some("tty=1"), "c").is_err());
    }

    #[test]
    fn port_lists() {
        assert_eq!(
            parse_port_forward_query(Some("port=80,8080&port=9000")).unwrap(),
            [80, 8080, 9000]
        );
        assert_eq!(parse_port_forward_query(Some("ports=53")).unwrap(), [53]);
        assert!(parse_port_forward_query(None).unwrap().is_empty());
        assert!(parse_port_forward_query(Some("port=")).is_err());
        assert!(parse_port_forward_query(Some("port=0")).is_err());
        assert!(parse_port_forward_query(Some("port=70000")).is_err());
        assert!(parse_port_forward_query(Some("port=80,x")).is_err());
    }
}
