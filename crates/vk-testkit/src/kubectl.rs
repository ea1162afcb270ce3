//! Running the real `kubectl` against the test cluster.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

/// Environment variable naming the kubectl binary to run (default: `kubectl` on `PATH`).
const KUBECTL_ENV: &str = "VKUBELET_KUBECTL";
/// A kubectl call that takes longer than this is killed and reported.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a kubectl run produced. `Display` shows the command line, exit status and both streams.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// The full argument list, including the `--kubeconfig` (and `-n`) the kit added.
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    /// Whether kubectl exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Returns `self` if kubectl succeeded; otherwise panics with the command, status, stdout
    /// and stderr.
    #[track_caller]
    pub fn assert_success(self) -> Self {
        if !self.success() {
            panic!("kubectl failed: {self}");
        }
        self
    }

    /// Returns `self` if kubectl failed; otherwise panics showing what it printed.
    #[track_caller]
    pub fn assert_failure(self) -> Self {
        if self.success() {
            panic!("kubectl unexpectedly succeeded: {self}");
        }
        self
    }

    /// The non-empty lines of stdout, trimmed.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl fmt::Display for KubectlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`kubectl")?;
        for a in &self.args {
            if a.is_empty() || a.contains(char::is_whitespace) {
                write!(f, " {a:?}")?;
            } else {
                write!(f, " {a}")?;
            }
        }
        write!(f, "` exited with {}", self.status)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if text.trim().is_empty() {
                write!(f, "\n--- {name}: (empty)")?;
            } else {
                write!(f, "\n--- {name}:\n{}", text.trim_end())?;
            }
        }
        Ok(())
    }
}

/// Runs kubectl with `--kubeconfig kubeconfig` (and `-n namespace`) before `args`. Panics, with
/// the command line, if kubectl cannot be started or does not finish within two minutes; a
/// non-zero exit is returned, not a panic.
pub(crate) async fn run<I, S>(kubeconfig: &Path, namespace: Option<&str>, args: I) -> KubectlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut all: Vec<String> = vec![
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
    ];
    if let Some(ns) = namespace {
        all.push("-n".into());
        all.push(ns.into());
    }
    all.extend(
        args.into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned()),
    );
    let program = std::env::var(KUBECTL_ENV).unwrap_or_else(|_| "kubectl".into());
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&all)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(KUBECTL_TIMEOUT, cmd.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!(
            "cannot run `{program} {}`: {e} (is kubectl installed and on PATH? \
             set {KUBECTL_ENV} to use another binary)",
            all.join(" ")
        ),
        Err(_) => panic!(
            "`{program} {}` did not finish within {KUBECTL_TIMEOUT:?}",
            all.join(" ")
        ),
    };
    KubectlOutput {
        args: all,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn output(code: i32) -> KubectlOutput {
        KubectlOutput {
            args: vec!["get".into(), "ns".into(), "a b".into()],
            status: ExitStatus::from_raw(code << 8),
            stdout: "NAME\n default \n\n".into(),
            stderr: "".into(),
        }
    }

    #[test]
    fn display_shows_command_status_and_streams() {
        let text = output(1).to_string();
        assert!(
            text.starts_with("`kubectl get ns \"a b\"` exited with"),
            "{text}"
        );
        assert!(text.contains("--- stdout:\nNAME\n default"), "{text}");
        assert!(text.contains("--- stderr: (empty)"), "{text}");
    }

    #[test]
    fn success_checks() {
        assert_eq!(
            output(0).assert_success().stdout_lines(),
            ["NAME", "default"]
        );
        output(2).assert_failure();
    }

    #[test]
    #[should_panic(expected = "kubectl failed")]
    fn assert_success_panics_on_failure() {
        output(1).assert_success();
    }
}
