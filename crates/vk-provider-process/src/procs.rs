//! Host processes by identity: a pid alone can be recycled, so every process this provider
//! records is identified by (pid, start time in clock ticks since boot) from `/proc/<pid>/stat`.
//! Signals go to process groups, so a container's whole process tree is reached.
//!
//! Exits are awaited through a pidfd ([`ProcessId::exited`]): the shims are not vkubelet's
//! children once vkubelet restarted and adopted them, so `waitpid` cannot see them, but a pidfd
//! works for any process and becomes readable when it exits, with no polling.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How often [`ProcessId::exited`] checks a process where the kernel has no pidfd.
pub const EXIT_POLL_FALLBACK: Duration = Duration::from_millis(250);

/// A process as recorded in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_ticks: u64,
}

impl ProcessId {
    /// The identity of a live process, or `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start_ticks: start_ticks(Path::new("/proc"), pid)?,
        })
    }

    /// Whether this very process still exists (not a recycled pid). A zombie counts as gone.
    pub fn is_alive(&self) -> bool {
        let proc_root = Path::new("/proc");
        start_ticks(proc_root, self.pid) == Some(self.start_ticks)
            && state(proc_root, self.pid).is_some_and(|s| s != 'Z' && s != 'X')
    }

    /// Signal this process. `Ok(false)` if it is already gone.
    pub fn signal(&self, signal: Signal) -> Result<bool, nix::Error> {
        if !self.is_alive() {
            return Ok(false);
        }
        let pid = i32::try_from(self.pid).map_err(|_| nix::Error::EINVAL)?;
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => Ok(true),
            Err(nix::Error::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Resolves once this process has exited (at once if it already has, or if its pid now
    /// belongs to another process). Waits on a pidfd, so an idle wait costs no wake-ups; where
    /// the kernel offers none (before Linux 5.3, or a seccomp filter refusing `pidfd_open`) it
    /// checks every [`EXIT_POLL_FALLBACK`] instead.
    pub async fn exited(self) {
        match self.pidfd() {
            Ok(None) => {}
            Ok(Some(fd)) => {
                match crate::readiness::register(fd, tokio::io::Interest::READABLE) {
                    // Readable once the process has exited; nothing is ever read.
                    Ok(fd) => drop(fd.readable().await),
                    Err(_) => self.poll_exit().await,
                }
            }
            Err(_) => self.poll_exit().await,
        }
    }

    async fn poll_exit(self) {
        while self.is_alive() {
            tokio::time::sleep(EXIT_POLL_FALLBACK).await;
        }
    }

    /// A pidfd for this very process: `Ok(None)` if it is gone (or its pid was recycled).
    fn pidfd(&self) -> std::io::Result<Option<OwnedFd>> {
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(None);
        };
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            // The pid may have been recycled before the open: the descriptor is this process's
            // only if the process at that pid still has the recorded start time afterwards (a
            // pidfd keeps referring to the process it was opened for, whatever the pid does).
            Ok(fd) => Ok(self.is_alive().then_some(fd)),
            Err(rustix::io::Errno::SRCH) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Signal the process group this process leads. `Ok(false)` if it is already gone.
    pub fn signal_group(&self, signal: Signal) -> Result<bool, nix::Error> {
        if !self.is_alive() {
            return Ok(false);
        }
        let pid = i32::try_from(self.pid).map_err(|_| nix::Error::EINVAL)?;
        match killpg(Pid::from_raw(pid), signal) {
            Ok(()) => Ok(true),
            Err(nix::Error::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The first child of `pid` (from `/proc/<pid>/task/<pid>/children`).
pub fn first_child(pid: u32) -> Option<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Live processes with an argument that starts with `prefix` (how the shims of one pod are found
/// even before they wrote their records).
pub fn with_arg_prefix(prefix: &[u8]) -> Vec<ProcessId> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a.starts_with(prefix)))
        })
        .filter_map(ProcessId::of)
        .collect()
}

/// Live processes whose arguments include every one of `args` exactly (a container's shim by
/// its `dir=` and `restart=` arguments).
pub fn with_args(args: &[&[u8]]) -> Vec<ProcessId> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let have: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.iter().all(|want| have.contains(want))
            })
        })
        .filter_map(ProcessId::of)
        .collect()
}

fn stat_fields(proc_root: &Path, pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn start_ticks(proc_root: &Path, pid: u32) -> Option<u64> {
    // Fields after the name start at field 3; start time is field 22.
    stat_fields(proc_root, pid)?.get(22 - 3)?.parse().ok()
}

fn state(proc_root: &Path, pid: u32) -> Option<char> {
    stat_fields(proc_root, pid)?.first()?.chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let root = std::env::temp_dir().join(format!("vk-procs-test-{}", std::process::id()));
        let dir = root.join("4242");
        std::fs::create_dir_all(&dir).unwrap();
        let mut fields = vec!["S".to_string()];
        fields.extend((4..=52).map(|i| i.to_string()));
        fields[22 - 3] = "987654".into();
        std::fs::write(
            dir.join("stat"),
            format!("4242 (we) ird (name) {}\n", fields.join(" ")),
        )
        .unwrap();
        assert_eq!(start_ticks(&root, 4242), Some(987654));
        assert_eq!(state(&root, 4242), Some('S'));
        assert_eq!(start_ticks(&root, 4243), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let recycled = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!recycled.is_alive());
        assert_eq!(recycled.signal_group(Signal::SIGTERM), Ok(false));
    }

    #[tokio::test]
    async fn exited_resolves_when_a_process_that_is_not_our_child_exits() {
        // `sh` forks `sleep` and waits for it: `sleep` is not this process's child.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let sleep = ProcessId::of(line.trim().parse().unwrap()).unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), sleep.exited())
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(!sleep.is_alive());
        sh.wait().unwrap();
        // Gone (or recycled) processes resolve at once.
        tokio::time::timeout(Duration::from_secs(1), sleep.exited())
            .await
            .unwrap();
        let me = ProcessId::of(std::process::id()).unwrap();
        let recycled = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        tokio::time::timeout(Duration::from_secs(1), recycled.exited())
            .await
            .unwrap();
    }
}
