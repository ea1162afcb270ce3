//! The process provider's side of the user's streams: logs from the CRI files, commands run in a
//! container's namespaces (with pipes or a terminal), attaching to a running container through
//! its shim's FIFOs, connections to a pod's ports.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use vk_provider_api::ProviderError;
use vk_provider_api::streams::{
    AttachRequest, ByteReader, ExecRequest, ExecSession, ExitResult, LogRequest, TerminalSize,
};

use crate::exec::command_in;
use crate::logs::{LogOptions, Stream, read_logs};
use crate::plan::ContainerPlan;
use crate::procs::ProcessId;
use crate::pty;
use crate::runner::{instance_exit_code, instance_exited, latest_instance};
use crate::shim::{CONTROL_FIFO, SHIM_FILE, STDIN_FIFO, ShimRecord, read_json};

/// Buffer between the log reader task and the consumer.
const LOG_PIPE_BYTES: usize = 64 * 1024;
const DEFAULT_TERMINAL: (u16, u16) = (80, 24);

/// A container's log as a byte stream (see [`vk_provider_api::Provider::container_logs`]).
pub fn logs(
    pod_dir: &Path,
    container: &ContainerPlan,
    req: &LogRequest,
) -> Result<ByteReader, ProviderError> {
    let dir = container.dir(pod_dir);
    let latest = latest_instance(&dir).ok_or_else(|| {
        ProviderError::NotFound(format!(
            "container {:?} has not started yet",
            container.name
        ))
    })?;
    let instance = if req.previous {
        latest.checked_sub(1).ok_or_else(|| {
            ProviderError::NotFound(format!(
                "previous terminated container {:?} not found",
                container.name
            ))
        })?
    } else {
        latest
    };
    let opts = LogOptions {
        tail_lines: req.tail_lines,
        since: req.since,
        timestamps: req.timestamps,
        limit_bytes: req.limit_bytes,
        // A previous instance has ended: there is nothing to follow.
        follow: req.follow && !req.previous,
        stream: None,
    };
    Ok(read_in_background(dir, instance, opts))
}

/// The log of instance `instance` in `dir`, read by a task into a pipe; the task ends with the
/// read (for `follow`, when the instance has exited) or when the consumer drops the reader.
fn read_in_background(dir: PathBuf, instance: u32, opts: LogOptions) -> ByteReader {
    let (reader, mut writer) = tokio::io::duplex(LOG_PIPE_BYTES);
    tokio::spawn(async move {
        let finished = || instance_exited(&dir, instance);
        if let Err(e) = read_logs(&dir, instance, &opts, &mut writer, finished).await {
            // Mostly the consumer going away.
            debug!(error = %e, "log stream ended");
        }
    });
    Box::pin(reader)
}

/// How often an attach session looks for the end of the instance it is attached to while it
/// cannot wait for the instance's shim to exit (the shim has not recorded itself yet, or died
/// without recording the exit).
const EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Attach to the running instance of `container`: its output from now on (read from its log,
/// where the shim writes it), and, when the spec has `stdin`, its input through the shim's FIFO.
pub fn attach(
    pod_dir: &Path,
    container: &ContainerPlan,
    req: &AttachRequest,
) -> Result<ExecSession, ProviderError> {
    let dir = container.dir(pod_dir);
    let not_running =
        || ProviderError::NotFound(format!("container {:?} is not running", container.name));
    let instance = latest_instance(&dir).ok_or_else(not_running)?;
    if instance_exited(&dir, instance) {
        return Err(not_running());
    }
    let spec = &container.spec;
    if req.stdin && !spec.stdin.unwrap_or(false) {
        return Err(ProviderError::InvalidInput(format!(
            "container {:?} was not created with stdin: true, so it has no input to attach to",
            container.name
        )));
    }
    // A terminal container's output is one stream, recorded as stdout.
    let tty = spec.tty.unwrap_or(false);
    // Output from now on: fixed here, not when the reader task first runs, or output the
    // container writes in between (say, in answer to the client's first input) would be lost.
    let attached_at = k8s_openapi::jiff::Timestamp::now();
    let open = |name: &str| {
        tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(dir.join(name))
            .map_err(|e| {
                ProviderError::NotFound(format!(
                    "container {:?} does not take input now: {e}",
                    container.name
                ))
            })
    };
    let stdin = if req.stdin {
        let fifo = open(STDIN_FIFO)?;
        let control = spec
            .stdin_once
            .unwrap_or(false)
            .then(|| open(CONTROL_FIFO))
            .transpose()?;
        let (client, relay) = tokio::io::duplex(LOG_PIPE_BYTES);
        tokio::spawn(relay_stdin(relay, fifo, control));
        Some(Box::pin(client) as _)
    } else {
        None
    };
    let resize = if tty {
        let control = open(CONTROL_FIFO)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(relay_resizes(rx, control));
        Some(tx)
    } else {
        None
    };
    // Readers start once nothing can fail any more: a refused attach leaves no task following
    // the log behind.
    let follow = |stream| {
        let opts = LogOptions {
            since: Some(attached_at),
            follow: true,
            stream: Some(stream),
            ..LogOptions::default()
        };
        read_in_background(dir.clone(), instance, opts)
    };
    let stdout = req.stdout.then(|| follow(Stream::Stdout));
    let stderr = (req.stderr && !tty).then(|| follow(Stream::Stderr));
    let (exit_tx, exit) = oneshot::channel();
    tokio::spawn(report_instance_exit(dir, instance, exit_tx));
    Ok(ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    })
}

/// Copies the client's input to the container until the client closes it; then, for a
/// `stdinOnce` container, closes the container's stdin for good.
async fn relay_stdin(
    mut from: tokio::io::DuplexStream,
    mut fifo: tokio::net::unix::pipe::Sender,
    close_after: Option<tokio::net::unix::pipe::Sender>,
) {
    use tokio::io::AsyncWriteExt;
    if let Err(e) = tokio::io::copy(&mut from, &mut fifo).await {
        debug!(error = %e, "attach input ended");
    }
    if let Some(mut control) = close_after {
        let _ = control.write_all(b"close-stdin\n").await;
    }
}

async fn relay_resizes(
    mut sizes: mpsc::UnboundedReceiver<TerminalSize>,
    mut control: tokio::net::unix::pipe::Sender,
) {
    use tokio::io::AsyncWriteExt;
    while let Some(size) = sizes.recv().await {
        let line = format!("resize {} {}\n", size.width, size.height);
        // One short write is atomic on a FIFO: commands of concurrent sessions do not interleave.
        if control.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Resolves the session's exit with the instance's exit code once it ends; stops watching when
/// the session is dropped. It waits for the instance's shim to exit (a pidfd: the shim records
/// the exit just before), so the session ends at once; the files are read on the blocking pool.
async fn report_instance_exit(
    dir: PathBuf,
    instance: u32,
    mut exit_tx: oneshot::Sender<ExitResult>,
) {
    let mut shim_gone = false;
    loop {
        let d = dir.clone();
        let looked = tokio::task::spawn_blocking(move || {
            if instance_exited(&d, instance) {
                return Err(instance_exit_code(&d, instance));
            }
            Ok(read_json::<ShimRecord>(&d, SHIM_FILE)
                .filter(|r| r.restart == instance)
                .map(|r| r.shim))
        })
        .await;
        let shim = match looked {
            Ok(Ok(shim)) => shim.filter(|_| !shim_gone),
            Ok(Err(code)) => {
                let result = code.ok_or_else(|| {
                    "the container instance ended; its exit was not recorded".into()
                });
                let _ = exit_tx.send(result);
                return;
            }
            Err(_) => return,
        };
        let wait = async move {
            match shim {
                Some(s) => s.exited().await,
                None => tokio::time::sleep(EXIT_POLL).await,
            }
            shim.is_some()
        };
        tokio::select! {
            gone = wait => shim_gone |= gone,
            () = exit_tx.closed() => return,
        }
    }
}

/// Run `req.command` in the container whose PID 1 is `target`.
pub fn exec(
    target: ProcessId,
    container: &ContainerPlan,
    req: &ExecRequest,
) -> Result<ExecSession, ProviderError> {
    if req.command.is_empty() {
        return Err(ProviderError::InvalidInput("exec needs a command".into()));
    }
    if !target.is_alive() {
        return Err(ProviderError::NotFound(format!(
            "container {:?} is not running",
            container.name
        )));
    }
    if req.tty {
        return exec_tty(target, container, req);
    }
    let mut cmd = command_in(target, &container.sandbox, &req.command);
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(piped(req.stdin))
        .stdout(piped(req.stdout))
        .stderr(piped(req.stderr))
        // Its own process group, so a cancelled session kills nsenter and the command it forked.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| ProviderError::Other(format!("starting nsenter: {e}")))?;
    let stdin = child.stdin.take().map(|s| Box::pin(s) as _);
    let stdout = child.stdout.take().map(|s| Box::pin(s) as _);
    let stderr = child.stderr.take().map(|s| Box::pin(s) as _);
    let pgid = child.id();
    let (exit_tx, exit) = oneshot::channel();
    tokio::spawn(wait_or_cancel(child, pgid, exit_tx));
    Ok(ExecSession {
        stdin,
        stdout,
        stderr,
        resize: None,
        exit,
    })
}

/// Whether the container's filesystem has `setsid` (util-linux), to start a terminal session
/// from inside the container's PID namespace.
fn has_setsid(sandbox: &crate::sandbox::SandboxSpec) -> bool {
    let root = match &sandbox.root {
        crate::sandbox::RootFs::Host => Path::new("/"),
        crate::sandbox::RootFs::Dir(dir) => dir.as_path(),
    };
    ["usr/bin/setsid", "bin/setsid"]
        .iter()
        .any(|p| root.join(p).is_file())
}

fn exec_tty(
    target: ProcessId,
    container: &ContainerPlan,
    req: &ExecRequest,
) -> Result<ExecSession, ProviderError> {
    let io_err =
        |what: &str, e: &dyn std::fmt::Display| ProviderError::Other(format!("{what}: {e}"));
    let (master, slave) = pty::open(DEFAULT_TERMINAL.0, DEFAULT_TERMINAL.1)
        .map_err(|e| io_err("allocating a terminal", &e))?;
    let slave_fd = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| io_err("terminal", &e))
    };
    // `setsid --ctty` makes the terminal the controlling terminal of a new session, so shells
    // get job control and a closed terminal hangs the command up. Started inside the
    // container's PID namespace, the session's process groups are ones the command can see: a
    // job-control shell restores the terminal's foreground group when it exits, and fails with
    // exit code 2 if that group lives outside its namespace.
    let mut cmd = if has_setsid(&container.sandbox) {
        let mut argv = vec!["setsid".to_string(), "--ctty".into(), "--".into()];
        argv.extend(req.command.iter().cloned());
        let mut cmd = command_in(target, &container.sandbox, &argv);
        // nsenter leads a group of its own, so a cancelled session can kill it.
        cmd.process_group(0);
        cmd
    } else {
        let inner = command_in(target, &container.sandbox, &req.command);
        let std_cmd = inner.as_std();
        let mut outer = tokio::process::Command::new("setsid");
        outer
            .arg("--ctty")
            .arg(std_cmd.get_program())
            .args(std_cmd.get_args())
            .env_clear()
            .envs(std_cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
        outer
    };
    let child = cmd
        .stdin(slave_fd(&slave)?)
        .stdout(slave_fd(&slave)?)
        .stderr(slave_fd(&slave)?)
        .spawn()
        .map_err(|e| io_err("starting nsenter", &e))?;
    drop(slave);
    let pgid = child.id();
    let control = master.try_clone().map_err(|e| io_err("terminal", &e))?;
    // Separate files for the two directions: a tokio `File` runs one operation at a time, and a
    // read waiting for output would hold back the input the output waits for.
    let writer = master.try_clone().map_err(|e| io_err("terminal", &e))?;
    let read_half = tokio::fs::File::from_std(std::fs::File::from(master));
    let write_half = tokio::fs::File::from_std(std::fs::File::from(writer));
    let (resize_tx, mut resize_rx) =
        mpsc::unbounded_channel::<vk_provider_api::streams::TerminalSize>();
    tokio::spawn(async move {
        while let Some(size) = resize_rx.recv().await {
            if let Err(e) = pty::resize(&control, size.width, size.height) {
                debug!(error = %e, "resizing the terminal");
            }
        }
    });
    let (exit_tx, exit) = oneshot::channel();
    tokio::spawn(wait_or_cancel(child, pgid, exit_tx));
    Ok(ExecSession {
        stdin: req.stdin.then(|| Box::pin(write_half) as _),
        stdout: Some(Box::pin(read_half)),
        stderr: None,
        resize: Some(resize_tx),
        exit,
    })
}

/// Report the exit code, or kill the command's process group when the session is dropped.
async fn wait_or_cancel(
    mut child: tokio::process::Child,
    pgid: Option<u32>,
    mut exit_tx: oneshot::Sender<ExitResult>,
) {
    tokio::select! {
        status = child.wait() => {
            let result = match status {
                Ok(s) => Ok(s.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
                })),
                Err(e) => Err(format!("waiting for the command: {e}")),
            };
            let _ = exit_tx.send(result);
        }
        () = exit_tx.closed() => {
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
        }
    }
}
