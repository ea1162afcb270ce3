//! Commands run inside a running container (exec probes, lifecycle hooks, `kubectl exec`):
//! `nsenter` joins the container's mount, PID, UTS and IPC namespaces and its root and working
//! directory, so the command sees exactly what the container sees, with the container's
//! environment and user.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::probes::{ExecRunner, ProbeOutcome};
use crate::procs::ProcessId;
use crate::sandbox::{SandboxSpec, setpriv_prefix};

/// Most output kept from a probe or hook command (the kubelet keeps 10 KiB too).
const MAX_OUTPUT: usize = 10 * 1024;

/// A command that runs `argv` inside the container whose PID 1 is `target`.
pub fn command_in(target: ProcessId, sandbox: &SandboxSpec, argv: &[String]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--target={}", target.pid))
        .args(["--mount", "--pid", "--uts", "--ipc", "--root", "--wd", "--"]);
    if let Some(user) = &sandbox.user {
        cmd.args(setpriv_prefix(user));
    }
    cmd.args(argv);
    cmd.env_clear();
    cmd.envs(sandbox.environment());
    cmd
}

/// Runs exec probes and hooks in one container instance.
#[derive(Debug, Clone)]
pub struct ContainerExec {
    pub target: ProcessId,
    pub sandbox: SandboxSpec,
}

#[async_trait]
impl ExecRunner for ContainerExec {
    async fn run(&self, command: &[String], timeout: Duration) -> ProbeOutcome {
        if !self.target.is_alive() {
            return ProbeOutcome::Failure("the container is not running".into());
        }
        let mut cmd = command_in(self.target, &self.sandbox, command);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return ProbeOutcome::Failure(format!("starting nsenter: {e}")),
        };
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.take(MAX_OUTPUT as u64).read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.take(MAX_OUTPUT as u64).read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let status = child.wait().await;
            out.extend(err);
            out.truncate(MAX_OUTPUT);
            (status, out)
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => ProbeOutcome::Failure(format!(
                "command {command:?} timed out after {}s",
                timeout.as_secs_f64()
            )),
            Ok((Err(e), _)) => ProbeOutcome::Failure(format!("waiting for {command:?}: {e}")),
            Ok((Ok(status), output)) if status.success() => {
                let _ = output;
                ProbeOutcome::Success
            }
            Ok((Ok(status), output)) => {
                let text = String::from_utf8_lossy(&output).trim_end().to_string();
                let code = status
                    .code()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "a signal".into());
                ProbeOutcome::Failure(if text.is_empty() {
                    format!("command {command:?} exited with {code}")
                } else {
                    format!("command {command:?} exited with {code}: {text}")
                })
            }
        }
    }
}
