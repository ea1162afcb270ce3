//! A control plane of a test's own (`scripts/cluster.sh up` under `target/`), for tests that
//! break it — kill -9 its API server and start it again — which must never touch the shared test
//! cluster other tests run on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::cluster::{KUBECONFIG_ENV, TestCluster, cluster_required};
use crate::error::Error;
use crate::names;

/// A control plane started for one test; stopped (`scripts/cluster.sh down`) when dropped. Its
/// directory (logs, etcd data) is removed then too, unless the test failed.
pub struct OwnControlPlane {
    dir: PathBuf,
    cluster: TestCluster,
}

impl fmt::Debug for OwnControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnControlPlane")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The repository's root (where `scripts/cluster.sh` lives).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/cluster.sh`.
pub fn cluster_script() -> PathBuf {
    repo_root().join("scripts/cluster.sh")
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the repository.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Runs `scripts/cluster.sh VERB DIR` and returns its stdout.
async fn cluster_sh(verb: &str, dir: &Path) -> Result<String, Error> {
    let out = Command::new("bash")
        .arg(cluster_script())
        .arg(verb)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::ControlPlane {
            verb: verb.to_string(),
            dir: dir.to_path_buf(),
            detail: format!("cannot run {}: {e}", cluster_script().display()),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(Error::ControlPlane {
            verb: verb.to_string(),
            dir: dir.to_path_buf(),
            detail: format!(
                "{}; stderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

impl OwnControlPlane {
    /// Starts a fresh control plane in `target/own-clusters/<test>` for the running test (named
    /// as [`names::current_test_name`] names it) and connects to it.
    ///
    /// Returns `None` (after printing why) where integration tests skip: no shared test cluster
    /// is configured ([`KUBECONFIG_ENV`] unset), so this is not an integration run. Under `CI=true`
    /// (or with `VKUBELET_TEST_REQUIRE_CLUSTER`) that, and any failure to start, panics instead.
    pub async fn start() -> Option<Self> {
        Self::start_named(&names::current_test_name()).await
    }

    /// Like [`OwnControlPlane::start`] with an explicit name for its directory.
    pub async fn start_named(test_name: &str) -> Option<Self> {
        if std::env::var_os(KUBECONFIG_ENV).is_none_or(|v| v.is_empty()) && !cluster_required() {
            eprintln!(
                "skipping: not an integration run ({KUBECONFIG_ENV} is unset); this test starts \
                 a control plane of its own"
            );
            return None;
        }
        match Self::try_start(test_name).await {
            Ok(cp) => Some(cp),
            Err(e) => panic!("cannot start a control plane for {test_name}: {e}"),
        }
    }

    async fn try_start(test_name: &str) -> Result<Self, Error> {
        let dir = target_dir()
            .join("own-clusters")
            .join(names::name_prefix(test_name));
        // A directory left by an interrupted run: stop what it started, then start from empty
        // (a restarted stopped directory can come up without its controller-manager).
        let _ = cluster_sh("down", &dir).await;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::ControlPlane {
                    verb: "up".into(),
                    dir,
                    detail: format!("cannot clear the directory: {e}"),
                });
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::ControlPlane {
            verb: "up".into(),
            dir: dir.clone(),
            detail: format!("cannot create the directory: {e}"),
        })?;
        let kubeconfig = cluster_sh("up", &dir).await?;
        // From here on the processes run: dropping `cp` on an error below stops them.
        let cluster = match TestCluster::connect_to(kubeconfig.lines().last().unwrap_or("")).await {
            Ok(c) => c,
            Err(e) => {
                let _ = cluster_sh("down", &dir).await;
                return Err(e);
            }
        };
        Ok(Self { dir, cluster })
    }

    /// The connection to this control plane (its admin kubeconfig).
    pub fn cluster(&self) -> &TestCluster {
        &self.cluster
    }

    /// Where its state, logs (`logs/`) and pid files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of the running API server, if one runs.
    pub fn apiserver_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("kube-apiserver.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A zombie (state Z, after the ')' of the command name) has exited.
        let running = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        running.then_some(pid)
    }

    /// kill -9 the API server (`scripts/cluster.sh kill-apiserver`); returns once it is gone.
    pub async fn kill_apiserver(&self) -> Result<(), Error> {
        cluster_sh("kill-apiserver", &self.dir).await.map(|_| ())
    }

    /// Starts the API server again with the flags it had (`scripts/cluster.sh
    /// restart-apiserver`); returns once it answers `/readyz`.
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        cluster_sh("restart-apiserver", &self.dir).await.map(|_| ())
    }

    /// Moves etcd's revision past every resourceVersion a client holds (`scripts/cluster.sh
    /// advance-etcd`: one write outside `/registry`). Between [`Self::kill_apiserver`] and
    /// [`Self::restart_apiserver`] it makes every watch resumed on the new API server expire
    /// (410 Gone), so its client must list again.
    pub async fn advance_etcd_revision(&self) -> Result<(), Error> {
        cluster_sh("advance-etcd", &self.dir).await.map(|_| ())
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let stopped = std::process::Command::new("bash")
            .arg(cluster_script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            eprintln!(
                "[vk-testkit] could not stop the control plane in {}",
                self.dir.display()
            );
        } else if std::thread::panicking() {
            eprintln!(
                "[vk-testkit] test failed; keeping its control plane's logs in {}",
                self.dir.join("logs").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
