//! The per-container shim: a small process (the vkubelet binary run as `process-shim`) that
//! starts one container instance, writes its output to CRI log files, and records its exit.
//!
//! It exists so containers outlive vkubelet: the shim, not vkubelet, is the container's parent,
//! reaps it and writes `exit.json`, so an exit that happens while vkubelet is down (or being
//! restarted) is never lost. vkubelet only reads the files and signals process groups.
//!
//! Files in the container directory:
//! - `shim.json`: the shim's and the container's identities (pid + start time), written once the
//!   container runs;
//! - `exit.json`: exit code, signal and times, written (atomically) when the container exits;
//! - `<restart>.log`: the CRI log of this instance (see [`crate::logs`]);
//! - `stdin`, `control` (containers with `stdin` or `tty` only): FIFOs through which `kubectl
//!   attach` reaches the running instance. The shim holds both open for reading *and* writing, so
//!   attach clients can come and go without the container seeing end-of-file; `control` takes
//!   line commands (`close-stdin`, `resize <width> <height>`).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tokio::process::Command;

use crate::logs::{LogConfig, LogWriter, Stream, pump};
use crate::procs::ProcessId;

pub const SHIM_FILE: &str = "shim.json";
pub const EXIT_FILE: &str = "exit.json";
pub const STDIN_FIFO: &str = "stdin";
pub const CONTROL_FIFO: &str = "control";
/// How long output still buffered in a terminal may take to drain after the container exits.
const TERMINAL_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub dir: PathBuf,
    pub restart: u32,
    pub log: LogConfig,
    /// cgroup membership files the shim joins before starting the container, so the container
    /// and everything it forks are limited from their first instruction.
    pub cgroup_procs: Vec<PathBuf>,
    /// A JSON file with the container's environment (`[[name, value], ...]`), kept off the
    /// command line because env values can be secret.
    pub env_file: Option<PathBuf>,
    /// The container spec's `stdin` and `tty`. (`stdinOnce` is the attach client's business:
    /// it asks the shim to close stdin through the `control` FIFO.)
    pub stdin: bool,
    pub tty: bool,
    pub argv: Vec<OsString>,
}

impl ShimArgs {
    /// The arguments after the shim subcommand, for [`Self::parse`]: `key=value` options, `--`,
    /// then the command line.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: &std::ffi::OsStr| {
            let mut o = OsString::from(format!("{k}="));
            o.push(v);
            out.push(o);
        };
        opt("dir", self.dir.as_os_str());
        opt("restart", self.restart.to_string().as_ref());
        opt("log-max-bytes", self.log.max_bytes.to_string().as_ref());
        opt("log-max-files", self.log.max_files.to_string().as_ref());
        for p in &self.cgroup_procs {
            opt("cgroup-procs", p.as_os_str());
        }
        if let Some(f) = &self.env_file {
            opt("env-file", f.as_os_str());
        }
        for (flag, on) in [("stdin", self.stdin), ("tty", self.tty)] {
            if on {
                opt(flag, "1".as_ref());
            }
        }
        out.push("--".into());
        out.extend(self.argv.iter().cloned());
        out
    }

    pub fn parse(args: &[OsString]) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        let sep = args.iter().position(|a| a == "--")?;
        let (mut dir, mut restart, mut log, mut cgroup_procs, mut env_file) =
            (None, None, LogConfig::default(), Vec::new(), None);
        let (mut stdin, mut tty) = (false, false);
        let flag = |v: &std::ffi::OsStr| v == "1";
        for a in &args[..sep] {
            let bytes = a.as_bytes();
            let eq = bytes.iter().position(|b| *b == b'=')?;
            let (key, value) = (&bytes[..eq], std::ffi::OsStr::from_bytes(&bytes[eq + 1..]));
            match key {
                b"dir" => dir = Some(PathBuf::from(value)),
                b"restart" => restart = Some(value.to_str()?.parse().ok()?),
                b"log-max-bytes" => log.max_bytes = value.to_str()?.parse().ok()?,
                b"log-max-files" => log.max_files = value.to_str()?.parse().ok()?,
                b"cgroup-procs" => cgroup_procs.push(PathBuf::from(value)),
                b"env-file" => env_file = Some(PathBuf::from(value)),
                b"stdin" => stdin = flag(value),
                b"tty" => tty = flag(value),
                _ => return None,
            }
        }
        let argv = args[sep + 1..].to_vec();
        if argv.is_empty() {
            return None;
        }
        Some(Self {
            dir: dir?,
            restart: restart?,
            log,
            cgroup_procs,
            env_file,
            stdin,
            tty,
            argv,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimRecord {
    pub restart: u32,
    pub shim: ProcessId,
    pub container: ProcessId,
    pub started_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub restart: u32,
    /// The exit code, or 128 + signal for a killed process (as container runtimes report it).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// Why the container could not start at all (the exec failed), if so.
    pub start_error: Option<String>,
}

/// Write `value` as JSON to `dir/name` atomically (readers never see a torn file), readable by
/// the owner only: records can hold env values that came from Secrets.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(value)?)?;
    drop(file);
    std::fs::rename(tmp, dir.join(name))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The container's own process: PID 1 of the sandbox's PID namespace (bubblewrap's child, which
/// builds the sandbox and then runs the command under it), and that process, not the outer
/// bubblewrap, is what termination signals go to (the outer one would die of SIGTERM and report
/// the signal instead of the exit code). Found only once the sandbox is complete.
/// Without a sandbox (tests) the child itself is the container.
async fn container_process(child: u32) -> Option<ProcessId> {
    let comm = || std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
    // A terminal container starts as `setsid`, which execs bubblewrap in the same process.
    for _ in 0..200 {
        if comm().trim() != "setsid" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let is_bwrap = comm().trim() == "bwrap";
    if !is_bwrap {
        return ProcessId::of(child);
    }
    let mut inner = None;
    for _ in 0..200 {
        inner = crate::procs::first_child(child);
        if inner.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let inner = inner?;
    // The sandbox is ready only once bubblewrap has built it: its PID 1 (this child, cloned
    // before any mount is made) forks the command only after the mount namespace is complete.
    // Reported earlier, a hook or probe joining that namespace (`nsenter --mount --root`) may
    // find a half-built root ("nsenter: failed to execute touch"). Also ready: PID 1 exec'd
    // the command itself, or is gone. Bounded, so a stuck sandbox is still reported.
    let ready = || match std::fs::read_to_string(format!("/proc/{inner}/comm")) {
        Ok(comm) => comm.trim() != "bwrap" || crate::procs::first_child(inner).is_some(),
        Err(_) => true,
    };
    for _ in 0..400 {
        if ready() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    ProcessId::of(inner)
}

/// The shim's main: run the container to completion. Returns the shim's own exit code (0 once
/// the container's exit is recorded).
pub fn run(args: ShimArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("process-shim: {e}");
            return 1;
        }
    };
    match runtime.block_on(supervise(&args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("process-shim: {e}");
            1
        }
    }
}

async fn supervise(args: &ShimArgs) -> std::io::Result<()> {
    let started_at = Timestamp::now();
    let writer = Arc::new(tokio::sync::Mutex::new(LogWriter::create(
        &args.dir,
        args.restart,
        args.log,
    )?));
    let Some((program, rest)) = args.argv.split_first() else {
        return Err(std::io::Error::other("no command"));
    };
    for procs in &args.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string()).map_err(|e| {
            std::io::Error::other(format!("joining cgroup {}: {e}", procs.display()))
        })?;
    }
    let env: Vec<(String, String)> = match &args.env_file {
        Some(f) => serde_json::from_slice(&std::fs::read(f)?)?,
        None => std::env::vars().collect(),
    };
    let terminal = if args.tty {
        Some(crate::pty::open(80, 24).map_err(std::io::Error::from)?)
    } else {
        None
    };
    let spawned = {
        let mut cmd = match &terminal {
            Some((_, tty)) => {
                // `setsid --ctty` (exec'ing in place, as the child is no group leader) gives the
                // container a session whose controlling terminal is ours, as a runtime does for
                // `tty: true`.
                let mut cmd = Command::new(find_in_path("setsid").unwrap_or("setsid".into()));
                cmd.arg("--ctty")
                    .arg(program)
                    .args(rest)
                    .stdin(Stdio::from(tty.try_clone()?))
                    .stdout(Stdio::from(tty.try_clone()?))
                    .stderr(Stdio::from(tty.try_clone()?));
                cmd
            }
            None => {
                let mut cmd = Command::new(program);
                cmd.args(rest)
                    .stdin(if args.stdin {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    // Its own process group: vkubelet signals the container's group, never the
                    // shim's.
                    .process_group(0);
                cmd
            }
        };
        cmd.env_clear().envs(env).spawn()
        // `cmd` drops here with its copies of the terminal side: once the container's own
        // copies close, reading the controller side ends.
    };
    let terminal = terminal.map(|(controller, _tty)| controller);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let record = ExitRecord {
                restart: args.restart,
                exit_code: 128,
                signal: None,
                started_at,
                finished_at: Timestamp::now(),
                start_error: Some(format!("starting {}: {e}", program.to_string_lossy())),
            };
            return write_json(&args.dir, EXIT_FILE, &record);
        }
    };
    let shim = ProcessId::of(std::process::id());
    let container = match child.id() {
        Some(pid) => container_process(pid).await,
        None => None,
    };
    if let (Some(shim), Some(container)) = (shim, container) {
        write_json(
            &args.dir,
            SHIM_FILE,
            &ShimRecord {
                restart: args.restart,
                shim,
                container,
                started_at,
            },
        )?;
    }
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, Stream::Stdout, writer.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, Stream::Stderr, writer.clone())));
    }
    let mut input: Option<Box<dyn AsyncWrite + Send + Unpin>> =
        child.stdin.take().map(|s| Box::new(s) as _);
    let mut resize_target = None;
    if let Some(controller) = terminal {
        let reader = tokio::fs::File::from_std(std::fs::File::from(controller.try_clone()?));
        pumps.push(tokio::spawn(pump(reader, Stream::Stdout, writer.clone())));
        if args.stdin {
            let w = tokio::fs::File::from_std(std::fs::File::from(controller.try_clone()?));
            input = Some(Box::new(w));
        }
        resize_target = Some(controller);
    }
    // The attach side runs until the shim exits with the container.
    let attach = (args.stdin || args.tty).then(|| {
        tokio::spawn(serve_attach(
            args.dir.clone(),
            input,
            args.tty,
            resize_target,
        ))
    });
    let status = child.wait().await?;
    if let Some(task) = attach {
        task.abort();
    }
    // Output written just before exit is still in the pipes: drain it before recording the exit.
    // A terminal is drained with a bound: a process the container left behind could keep it open.
    for p in pumps {
        if args.tty {
            let _ = tokio::time::timeout(TERMINAL_DRAIN, p).await;
        } else {
            let _ = p.await;
        }
    }
    writer.lock().await.flush().await?;
    let signal = status.signal();
    let record = ExitRecord {
        restart: args.restart,
        exit_code: status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
        started_at,
        finished_at: Timestamp::now(),
        start_error: None,
    };
    write_json(&args.dir, EXIT_FILE, &record)
}

/// `name` resolved against the shim's own PATH (the container's environment, which the command
/// is spawned with, may have none).
fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A FIFO in `dir`, replacing whatever an earlier instance left, opened for reading and writing
/// so that it never reports end-of-file between writers and writers never block on opening.
fn open_fifo(dir: &Path, name: &str) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(
        &path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(std::io::Error::from)?;
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
}

/// Input for the container's stdin; a stdin that fails (the container closed it) or was closed
/// (stdinOnce) takes nothing more: the input goes nowhere, as with a runtime.
async fn feed(input: &mut Option<Box<dyn AsyncWrite + Send + Unpin>>, data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    if let Some(w) = input
        && (w.write_all(data).await.is_err() || w.flush().await.is_err())
    {
        *input = None;
    }
}

/// Feeds the `stdin` FIFO to the container and obeys the `control` FIFO. `input` is the
/// container's stdin (a pipe, or the terminal's controller side); `None` once closed.
async fn serve_attach(
    dir: PathBuf,
    mut input: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    tty: bool,
    terminal: Option<std::os::fd::OwnedFd>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let (stdin, control) = match (open_fifo(&dir, STDIN_FIFO), open_fifo(&dir, CONTROL_FIFO)) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("process-shim: attach FIFOs in {}: {e}", dir.display());
            return;
        }
    };
    let mut stdin = stdin;
    let mut commands = BufReader::new(control).lines();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = stdin.read(&mut buf) => {
                let Ok(n) = read else { return };
                feed(&mut input, &buf[..n]).await;
            }
            line = commands.next_line() => {
                let Ok(Some(line)) = line else { return };
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("close-stdin"), None, None) => {
                        // The client wrote all its input before asking to close: what is still
                        // in the FIFO goes to the container first.
                        while let Ok(n @ 1..) = stdin.try_read(&mut buf) {
                            feed(&mut input, &buf[..n]).await;
                        }
                        // A terminal has no half-close: end-of-transmission is what a user's
                        // ^D sends, and the line discipline turns it into end-of-file.
                        if tty {
                            feed(&mut input, &[0x04]).await;
                        }
                        input = None;
                    }
                    (Some("resize"), Some(w), Some(h)) => {
                        if let (Some(t), Ok(w), Ok(h)) = (&terminal, w.parse(), h.parse()) {
                            let _ = crate::pty::resize(t, w, h);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            dir: "/var/lib/x/c".into(),
            restart: 3,
            log: LogConfig {
                max_bytes: 1024,
                max_files: 2,
            },
            cgroup_procs: vec!["/sys/fs/cgroup/vkubelet/p/c/cgroup.procs".into()],
            env_file: Some("/var/lib/x/c/env.json".into()),
            stdin: true,
            tty: true,
            argv: vec![
                "bwrap".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                "echo hi".into(),
            ],
        };
        let parsed = ShimArgs::parse(&a.to_args()).unwrap();
        assert_eq!(
            (
                parsed.dir,
                parsed.restart,
                parsed.log,
                parsed.cgroup_procs,
                (parsed.stdin, parsed.tty),
                parsed.argv
            ),
            (a.dir, 3, a.log, a.cgroup_procs, (true, true), a.argv)
        );
        assert!(ShimArgs::parse(&["x".into(), "--".into(), "sh".into()]).is_none());
        assert!(ShimArgs::parse(&["dir=/d".into(), "restart=0".into(), "--".into()]).is_none());
        assert!(ShimArgs::parse(&["dir=/d".into(), "--".into(), "sh".into()]).is_none());
    }

    #[tokio::test]
    async fn records_output_and_exit_code() {
        let dir = std::env::temp_dir().join(format!("vk-shim-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = ShimArgs {
            dir: dir.clone(),
            restart: 0,
            log: LogConfig::default(),
            cgroup_procs: Vec::new(),
            env_file: None,
            stdin: false,
            tty: false,
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 7".into(),
            ],
        };
        supervise(&args).await.unwrap();
        let exit: ExitRecord = read_json(&dir, EXIT_FILE).unwrap();
        assert_eq!(exit.exit_code, 7);
        assert_eq!(exit.signal, None);
        let shim: ShimRecord = read_json(&dir, SHIM_FILE).unwrap();
        assert_eq!(shim.shim.pid, std::process::id());
        let log = std::fs::read_to_string(dir.join("0.log")).unwrap();
        assert!(log.contains(" stdout F out\n"), "{log}");
        assert!(log.contains(" stderr F err\n"), "{log}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_recorded() {
        let dir = std::env::temp_dir().join(format!("vk-shim-test-nx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = ShimArgs {
            dir: dir.clone(),
            restart: 0,
            log: LogConfig::default(),
            cgroup_procs: Vec::new(),
            env_file: None,
            stdin: false,
            tty: false,
            argv: vec!["/nonexistent/binary".into()],
        };
        supervise(&args).await.unwrap();
        let exit: ExitRecord = read_json(&dir, EXIT_FILE).unwrap();
        assert!(exit.start_error.unwrap().contains("/nonexistent/binary"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
