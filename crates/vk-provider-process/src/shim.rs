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
//! - `<restart>.log`: the CRI log of this instance (see [`crate::logs`]).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::logs::{LogConfig, LogWriter, Stream, pump};
use crate::procs::ProcessId;

pub const SHIM_FILE: &str = "shim.json";
pub const EXIT_FILE: &str = "exit.json";

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
        out.push("--".into());
        out.extend(self.argv.iter().cloned());
        out
    }

    pub fn parse(args: &[OsString]) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt;
        let sep = args.iter().position(|a| a == "--")?;
        let (mut dir, mut restart, mut log, mut cgroup_procs, mut env_file) =
            (None, None, LogConfig::default(), Vec::new(), None);
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

/// The container's own process: bubblewrap (`--unshare-pid --as-pid-1`) forks the command as
/// PID 1 of the sandbox, and that process, not bubblewrap, is what termination signals go to
/// (bubblewrap itself would die of SIGTERM and report the signal instead of the exit code).
/// Without a sandbox (tests) the child itself is the container.
async fn container_process(child: u32) -> Option<ProcessId> {
    let is_bwrap =
        std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == "bwrap");
    if !is_bwrap {
        return ProcessId::of(child);
    }
    for _ in 0..200 {
        if let Some(inner) = crate::procs::first_child(child) {
            return ProcessId::of(inner);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    None
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
    let spawned = Command::new(program)
        .args(rest)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: vkubelet signals the container's group, never the shim's.
        .process_group(0)
        .spawn();
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
    let status = child.wait().await?;
    // Output written just before exit is still in the pipes: drain it before recording the exit.
    for p in pumps {
        let _ = p.await;
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
                parsed.argv
            ),
            (a.dir, 3, a.log, a.cgroup_procs, a.argv)
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
            argv: vec!["/nonexistent/binary".into()],
        };
        supervise(&args).await.unwrap();
        let exit: ExitRecord = read_json(&dir, EXIT_FILE).unwrap();
        assert!(exit.start_error.unwrap().contains("/nonexistent/binary"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
