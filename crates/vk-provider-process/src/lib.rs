//! The `process` provider, vkubelet's embedded default backend: every pod runs on this host as
//! sandboxed processes (bubblewrap: private mount, PID, IPC and UTS namespaces; the host's
//! network, so the pod IP is the node's address).
//!
//! Layout under `stateDir` (it survives vkubelet restarts; pods keep running meanwhile):
//! `pods/<uid>/pod.json` (the plan, see [`plan`]), `pods/<uid>/volumes/`, `pods/<uid>/etc/`,
//! and `pods/<uid>/containers/<name>/` with the shim's records, `state.json` and the CRI logs.
//! Secret volumes live under `secretsDir` instead.
//!
//! Each container instance runs under a shim ([`shim`]), a small process that is the
//! container's parent, so exits are recorded even while vkubelet is down. Each pod is driven by
//! one task ([`runner`]), woken by events (inotify, pidfds), never by a timer of its own.
//!
//! No async worker thread blocks: file-system work (pod directories, volumes, plans, cgroups,
//! cleanup, stats from `/proc`) runs on Tokio's blocking pool ([`blocking`]).

pub mod cgroups;
pub mod config;
pub mod exec;
pub mod lifecycle;
pub mod logs;
pub mod plan;
pub mod probes;
pub mod procs;
pub mod pty;
mod readiness;
pub mod runner;
pub mod sandbox;
pub mod session;
pub mod shim;
pub mod stats;
pub mod volumes;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use tracing::{info, warn};
use vk_provider_api::resolution::ResolvedVolume;
use vk_provider_api::streams::{
    AttachRequest, ByteReader, ContainerStats, Duplex, ExecRequest, ExecSession, LogRequest,
};
use vk_provider_api::{
    BackendPod, NodeResources, PodKey, PodUpdate, Provider, ProviderError, ProviderSinks,
    ResolvedPod,
};

pub use config::{ConfigError, ProcessConfig};
use runner::{PodHandle, RunnerEnv};
use shim::{SHIM_FILE, ShimRecord, read_json};
use volumes::VolumeDirs;

/// The name of the node condition that says whether resource limits are enforced.
pub const LIMITS_CONDITION: &str = "vkubelet.io/ResourceLimitsEnforced";

/// The pods this host runs, by UID. A pod it cannot run is never in here: `create_pod` refuses
/// it with an error (see [`refusal`]), so the core fails it with the reason.
type Pods = Mutex<HashMap<String, PodHandle>>;

/// Runs `f` on Tokio's blocking pool: file-system work never runs on an async worker thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::Other(format!("blocking task failed: {e}")))
}

/// A pod being created: its entry in [`ProcessProvider::creating`], removed when done (or when
/// the call is dropped midway).
struct Creating<'a> {
    map: &'a Mutex<HashMap<String, Option<Duration>>>,
    uid: &'a str,
}

impl Creating<'_> {
    /// Done: the grace period of a delete that came meanwhile, if one did.
    fn finish(self) -> Option<Duration> {
        let pending = self.map.lock().remove(self.uid).flatten();
        // Removed: dropping it must not remove the entry of a create that came after.
        std::mem::forget(self);
        pending
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.map.lock().remove(self.uid);
    }
}

/// What preparing a new pod's files came to.
enum Prepared {
    Plan(plan::PodPlan),
    /// The pod cannot run here; nothing of it is left on disk.
    Refused(ProviderError),
}

/// The error that refuses a pod this host cannot run. The kubelet's reason for it
/// (`InvalidImageName`, `CreateContainerConfigError`) leads the message, which the core puts in
/// the pod's status message and in a Warning event; `unsupported` says the spec is valid but
/// needs something this provider lacks (a volume kind, a gRPC probe), otherwise it is invalid
/// for this host (an image it cannot map to a command, a bad probe port).
fn refusal(reason: &str, message: &str, unsupported: bool) -> ProviderError {
    let message = format!("{reason}: {message}");
    if unsupported {
        ProviderError::NotSupported(message)
    } else {
        ProviderError::InvalidInput(message)
    }
}

pub struct ProcessProvider {
    cfg: Arc<ProcessConfig>,
    node_ip: String,
    pods: Arc<Pods>,
    /// Pods whose files are being prepared, with the grace period of a delete that came
    /// meanwhile (applied once the pod exists).
    creating: Mutex<HashMap<String, Option<Duration>>>,
    env: Mutex<Option<RunnerEnv>>,
    cgroups: Result<cgroups::Cgroups, String>,
}

impl ProcessProvider {
    pub fn new(cfg: ProcessConfig, node_ip: String) -> Self {
        let cgroups = if cfg.enforce_limits {
            cgroups::Cgroups::detect("vkubelet").map_err(|e| e.to_string())
        } else {
            Err("disabled in the provider config (enforceLimits: false)".into())
        };
        if let Err(why) = &cgroups {
            warn!(reason = %why, "resource limits will not be enforced");
        }
        Self {
            cfg: Arc::new(cfg),
            node_ip,
            pods: Arc::new(Mutex::new(HashMap::new())),
            creating: Mutex::new(HashMap::new()),
            env: Mutex::new(None),
            cgroups,
        }
    }

    fn pods_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("pods")
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir().join(uid)
    }

    fn volume_dirs(&self, uid: &str) -> VolumeDirs {
        VolumeDirs {
            plain: self.pod_dir(uid).join("volumes"),
            secret: self.cfg.secrets_dir.join(uid),
        }
    }

    fn runner_env(&self) -> Result<RunnerEnv, ProviderError> {
        self.env
            .lock()
            .clone()
            .ok_or_else(|| ProviderError::Other("the provider is not started".into()))
    }

    /// Live container processes of a pod, by container name (for exec, attach and stats).
    pub fn processes(
        &self,
        uid: &str,
    ) -> Option<std::collections::BTreeMap<String, procs::ProcessId>> {
        Some(self.pods.lock().get(uid)?.processes.lock().clone())
    }

    /// CPU and memory usage of a pod's running containers, by container name: from their
    /// cgroups when limits are enforced, otherwise from `/proc`.
    /// Blocking (it reads cgroup files or scans `/proc`); [`Provider::pod_stats`] runs it on
    /// the blocking pool.
    pub fn container_usage(
        &self,
        uid: &str,
    ) -> std::collections::BTreeMap<String, stats::ContainerUsage> {
        usage_of(
            self.cgroups.as_ref().ok(),
            uid,
            self.processes(uid).unwrap_or_default(),
        )
    }

    /// A pod's directory and plan (for logs and exec).
    pub fn pod_plan(&self, uid: &str) -> Option<(PathBuf, Arc<plan::PodPlan>)> {
        let pods = self.pods.lock();
        let h = pods.get(uid)?;
        Some((h.dir.clone(), h.plan.clone()))
    }

    /// The pods found in the state directory, to adopt (blocking). Directories of pods whose
    /// creation was interrupted before the plan was committed are removed: nothing runs there.
    fn pods_to_adopt(pods_dir: &Path, secrets_dir: &Path) -> Vec<(String, plan::PodPlan, PathBuf)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(pods_dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let uid = entry.file_name().to_string_lossy().into_owned();
            match plan::load(&dir) {
                Some(p) if p.uid == uid => out.push((uid, p, dir)),
                _ => {
                    warn!(dir = %dir.display(), "removing an incomplete pod directory");
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = std::fs::remove_dir_all(secrets_dir.join(&uid));
                }
            }
        }
        out
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Other(format!("{what} {}: {e}", path.display()))
}

#[async_trait]
impl Provider for ProcessProvider {
    fn kind(&self) -> &str {
        "process"
    }

    async fn start(&self, sinks: ProviderSinks) -> Result<(), ProviderError> {
        let check = tokio::process::Command::new(&self.cfg.bwrap)
            .arg("--version")
            .output()
            .await;
        match check {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(ProviderError::Other(format!(
                    "bubblewrap ({}) does not work: {}",
                    self.cfg.bwrap.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Err(e) => {
                return Err(ProviderError::Other(format!(
                    "bubblewrap ({}) is needed to sandbox pods: {e}; install the bubblewrap package",
                    self.cfg.bwrap.display()
                )));
            }
        }
        let (pods_dir, secrets_dir) = (self.pods_dir(), self.cfg.secrets_dir.clone());
        let found = blocking(move || {
            for dir in [&pods_dir, &secrets_dir] {
                std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
            }
            Ok::<_, ProviderError>(Self::pods_to_adopt(&pods_dir, &secrets_dir))
        })
        .await??;
        let shim_command = if self.cfg.shim_command.is_empty() {
            let exe = std::env::current_exe()
                .map_err(|e| ProviderError::Other(format!("finding this executable: {e}")))?;
            vec![exe.to_string_lossy().into_owned(), "process-shim".into()]
        } else {
            self.cfg.shim_command.clone()
        };
        // Forget a pod once its task reports it gone.
        let pods: Weak<Pods> = Arc::downgrade(&self.pods);
        let inner = sinks.clone();
        let sinks = ProviderSinks::new(
            move |uid, update| {
                if matches!(update, PodUpdate::Gone)
                    && let Some(pods) = pods.upgrade()
                {
                    pods.lock().remove(uid);
                }
                inner.pod(uid, update);
            },
            {
                let inner = sinks.clone();
                move || inner.node_changed()
            },
        );
        let dirs = match watch::DirWatcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "no inotify: starting containers are polled every 250 ms");
                None
            }
        };
        let env = RunnerEnv {
            sinks,
            shim_command,
            log: self.cfg.log(),
            cgroups: self.cgroups.as_ref().ok().cloned(),
            secrets_dir: self.cfg.secrets_dir.clone(),
            dirs,
        };
        *self.env.lock() = Some(env.clone());
        let adopted = found.len();
        for (uid, p, dir) in found {
            let handle = runner::spawn(env.clone(), p, dir);
            self.pods.lock().insert(uid, handle);
        }
        info!(adopted, state_dir = %self.cfg.state_dir.display(), "process provider started");
        Ok(())
    }

    async fn node_resources(&self) -> Result<NodeResources, ProviderError> {
        let capacity = self
            .cfg
            .capacity
            .iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect();
        let (status, reason, message) = match &self.cgroups {
            Ok(cg) => (
                "True",
                "CgroupsAvailable",
                format!(
                    "container limits are enforced with cgroup {:?}",
                    cg.version()
                ),
            ),
            Err(why) => (
                "False",
                "CgroupsUnavailable",
                format!("container CPU and memory limits are NOT enforced: {why}"),
            ),
        };
        Ok(NodeResources {
            capacity,
            conditions: vec![NodeCondition {
                type_: LIMITS_CONDITION.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                ..Default::default()
            }],
            accepting_pods: true,
            ..Default::default()
        })
    }

    async fn create_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        if self.pods.lock().contains_key(&pod.key.uid) {
            return Ok(());
        }
        let env = self.runner_env()?;
        let uid = &pod.key.uid;
        if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
            return Err(ProviderError::InvalidInput(format!(
                "invalid pod UID {uid:?}"
            )));
        }
        if let Some(spec) = &pod.pod.spec {
            for c in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                for (what, probe) in [
                    ("startupProbe", &c.startup_probe),
                    ("livenessProbe", &c.liveness_probe),
                    ("readinessProbe", &c.readiness_probe),
                ] {
                    if let Some(p) = probe
                        && let Err(e) = probes::validate(p, c)
                    {
                        let msg = format!("container {:?}: {what}: {e}", c.name);
                        warn!(pod = %pod.key, %msg, "refusing a pod with a probe this host cannot run");
                        return Err(refusal(
                            "CreateContainerConfigError",
                            &msg,
                            p.grpc.is_some(),
                        ));
                    }
                }
            }
        }
        if self.creating.lock().insert(uid.clone(), None).is_some() {
            // Another call is creating it.
            return Ok(());
        }
        // Should this call be dropped while it waits, a later one may create the pod.
        let creating = Creating {
            map: &self.creating,
            uid,
        };
        let dir = self.pod_dir(uid);
        let (cfg, resolved, vdirs, node_ip) = (
            self.cfg.clone(),
            pod.clone(),
            self.volume_dirs(uid),
            self.node_ip.clone(),
        );
        let secrets = self.cfg.secrets_dir.join(uid);
        let pod_dir = dir.clone();
        let prepared =
            blocking(move || Self::prepare(&cfg, &resolved, &pod_dir, &vdirs, &secrets, &node_ip))
                .await;
        match prepared.and_then(|p| p) {
            Ok(Prepared::Plan(plan)) => {
                let handle = runner::spawn(env, plan, dir);
                self.pods.lock().insert(uid.clone(), handle);
            }
            Ok(Prepared::Refused(e)) => {
                warn!(pod = %pod.key, error = %e, "pod cannot run on this host");
                if creating.finish().is_some() {
                    // Deleted meanwhile: nothing of it exists here.
                    env.sinks.pod(uid, PodUpdate::Gone);
                }
                return Err(e);
            }
            Err(e) => {
                if creating.finish().is_none() {
                    return Err(e);
                }
                // Deleted while its files were being prepared, and they could not be: it is
                // gone (a partial directory without a plan is removed at the next start).
                warn!(pod = %pod.key, error = %e, "a deleted pod could not be created");
                env.sinks.pod(uid, PodUpdate::Gone);
                return Ok(());
            }
        }
        // Only now that the pod is in `pods` (a second create finds it there), a delete that
        // came meanwhile applies.
        if let Some(grace) = creating.finish() {
            self.delete_pod(&pod.key, grace).await?;
        }
        Ok(())
    }

    async fn update_pod(&self, _pod: &ResolvedPod) -> Result<(), ProviderError> {
        // Running containers keep their spec: saying so is honest, pretending it applied is not.
        Err(ProviderError::NotSupported(
            "images, labels and annotations of running containers".into(),
        ))
    }

    async fn update_volumes(
        &self,
        key: &PodKey,
        volumes: &[ResolvedVolume],
    ) -> Result<(), ProviderError> {
        if !self.pods.lock().contains_key(&key.uid) {
            return Err(ProviderError::NotFound(key.to_string()));
        }
        let (dirs, volumes) = (self.volume_dirs(&key.uid), volumes.to_vec());
        let changed = blocking(move || volumes::update_pod_volumes(&dirs, &volumes))
            .await?
            .map_err(|e| ProviderError::Other(e.to_string()))?;
        if !changed.is_empty() {
            info!(pod = %key, volumes = ?changed, "volume content updated");
        }
        Ok(())
    }

    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), ProviderError> {
        if let Some(pending) = self.creating.lock().get_mut(&key.uid) {
            // Its files are being prepared: deleted once it exists.
            *pending = Some(pending.map_or(grace, |g| g.min(grace)));
            return Ok(());
        }
        match self.pods.lock().get(&key.uid) {
            Some(h) => {
                h.delete(grace);
                Ok(())
            }
            None => Err(ProviderError::NotFound(key.to_string())),
        }
    }

    async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError> {
        Ok(self
            .pods
            .lock()
            .values()
            .map(|h| BackendPod {
                key: h.plan.key(),
                status: h.status(),
            })
            .collect())
    }

    async fn container_logs(
        &self,
        key: &PodKey,
        request: &LogRequest,
    ) -> Result<ByteReader, ProviderError> {
        let (dir, c) = self.running_container(key, &request.container)?;
        let request = request.clone();
        blocking(move || session::logs(&dir, &c, &request)).await?
    }

    async fn exec(
        &self,
        key: &PodKey,
        request: &ExecRequest,
    ) -> Result<ExecSession, ProviderError> {
        let (_, c) = self.running_container(key, &request.container)?;
        let target = self
            .processes(&key.uid)
            .and_then(|p| p.get(&request.container).copied())
            .ok_or_else(|| {
                ProviderError::NotFound(format!("container {:?} is not running", request.container))
            })?;
        let request = request.clone();
        blocking(move || session::exec(target, &c, &request)).await?
    }

    async fn attach(
        &self,
        key: &PodKey,
        request: &AttachRequest,
    ) -> Result<ExecSession, ProviderError> {
        let (dir, c) = self.running_container(key, &request.container)?;
        let request = request.clone();
        blocking(move || session::attach(&dir, &c, &request)).await?
    }

    async fn port_forward(
        &self,
        key: &PodKey,
        port: u16,
    ) -> Result<std::pin::Pin<Box<dyn Duplex>>, ProviderError> {
        let (_, plan) = self
            .pod_plan(&key.uid)
            .ok_or_else(|| ProviderError::NotFound(format!("pod {key} is not running here")))?;
        // Pods share the host's network: the pod's port is the node address's port.
        let stream = tokio::net::TcpStream::connect((plan.pod_ip.as_str(), port))
            .await
            .map_err(|e| {
                ProviderError::Other(format!(
                    "connecting to port {port} of pod {key} ({}): {e}",
                    plan.pod_ip
                ))
            })?;
        Ok(Box::pin(stream))
    }

    async fn pod_stats(
        &self,
        key: &PodKey,
    ) -> Result<std::collections::BTreeMap<String, ContainerStats>, ProviderError> {
        if self.pod_plan(&key.uid).is_none() {
            return Err(ProviderError::NotFound(format!(
                "pod {key} is not running here"
            )));
        }
        let processes = self.processes(&key.uid).unwrap_or_default();
        let (cgroups, uid) = (self.cgroups.as_ref().ok().cloned(), key.uid.clone());
        let usage = blocking(move || usage_of(cgroups.as_ref(), &uid, processes)).await?;
        Ok(usage
            .into_iter()
            .map(|(name, u)| {
                (
                    name,
                    ContainerStats {
                        cpu_usage_core_nanoseconds: u.cpu_usage_nanos,
                        memory_working_set_bytes: u.memory_working_set_bytes,
                        memory_rss_bytes: u.memory_rss_bytes,
                    },
                )
            })
            .collect())
    }

    async fn cleanup_all(&self) -> Result<usize, ProviderError> {
        for (_, h) in self.pods.lock().drain() {
            h.detach();
        }
        let (pods_dir, secrets_dir) = (self.pods_dir(), self.cfg.secrets_dir.clone());
        let cgroups = self.cgroups.as_ref().ok().cloned();
        remove_all_pods(pods_dir, secrets_dir, cgroups).await
    }
}

/// SIGKILL every pod's processes and remove its files and cgroups. File work runs on the
/// blocking pool; waiting for the processes to die is a pidfd wait, holding no thread.
async fn remove_all_pods(
    pods_dir: PathBuf,
    secrets_dir: PathBuf,
    cgroups: Option<cgroups::Cgroups>,
) -> Result<usize, ProviderError> {
    let list = pods_dir.clone();
    let pods: Vec<(PathBuf, String)> = blocking(move || {
        std::fs::read_dir(&list)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    })
    .await?;
    let mut removed = 0;
    for (dir, uid) in pods {
        let victims = {
            let dir = dir.clone();
            blocking(move || kill_pod_processes(&dir)).await?
        };
        // All were killed at once, so waiting for each in turn takes as long as the slowest;
        // bounded, so a process stuck in the kernel does not hold up the rest.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for p in victims {
                p.exited().await;
            }
        })
        .await;
        if let Some(cg) = &cgroups
            && let Err(e) = cg.remove_pod(&uid).await
        {
            warn!(pod = %uid, error = %e, "removing cgroups");
        }
        let secrets = secrets_dir.join(&uid);
        blocking(move || {
            let _ = std::fs::remove_dir_all(&secrets);
            std::fs::remove_dir_all(&dir).map_err(|e| io_err("removing", &dir, e))
        })
        .await??;
        removed += 1;
    }
    Ok(removed)
}

/// CPU and memory usage of a pod's running containers (blocking): from their cgroups when
/// limits are enforced, otherwise from `/proc`.
fn usage_of(
    cgroups: Option<&cgroups::Cgroups>,
    uid: &str,
    processes: std::collections::BTreeMap<String, procs::ProcessId>,
) -> std::collections::BTreeMap<String, stats::ContainerUsage> {
    let mut out = std::collections::BTreeMap::new();
    for (name, pid) in processes {
        let from_cgroup = cgroups.and_then(|cg| {
            let u = cg.container(uid, &name).usage().ok()?;
            Some(stats::ContainerUsage {
                cpu_usage_nanos: u.cpu_usage_nanos,
                memory_working_set_bytes: u.memory_working_set_bytes,
                memory_rss_bytes: u.memory_usage_bytes,
            })
        });
        if let Some(u) = from_cgroup.or_else(|| stats::from_proc(pid)) {
            out.insert(name, u);
        }
    }
    out
}

impl ProcessProvider {
    /// A new pod's files (blocking): its directory, volumes and plan, committed last so that
    /// the pod is adoptable after a restart only once complete. A pod this host cannot run
    /// leaves nothing behind.
    fn prepare(
        cfg: &ProcessConfig,
        pod: &ResolvedPod,
        dir: &Path,
        volume_dirs: &VolumeDirs,
        secrets: &Path,
        node_ip: &str,
    ) -> Result<Prepared, ProviderError> {
        let discard = || {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_dir_all(secrets);
        };
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        // Out of range (negative) is left to the plan, which refuses the pod naming it.
        let fs_group = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        let prepared =
            match volumes::prepare_pod_volumes(volume_dirs, &pod.resolution.volumes, fs_group) {
                Ok(p) => p,
                Err(e @ volumes::VolumeError::Io { .. }) => {
                    return Err(ProviderError::Other(e.to_string()));
                }
                Err(e) => {
                    discard();
                    let unsupported = matches!(e, volumes::VolumeError::Unsupported { .. });
                    return Ok(Prepared::Refused(refusal(
                        "CreateContainerConfigError",
                        &e.to_string(),
                        unsupported,
                    )));
                }
            };
        let plan = match plan::plan(cfg, pod, dir, &prepared, node_ip) {
            Ok(p) => p,
            Err(e) => {
                discard();
                return Ok(Prepared::Refused(refusal(e.reason, &e.message, false)));
            }
        };
        shim::write_json(dir, plan::PLAN_FILE, &plan)
            .map_err(|e| io_err("writing the plan in", dir, e))?;
        Ok(Prepared::Plan(plan))
    }

    /// The plan of a running pod's container (or an error naming what is missing).
    fn running_container(
        &self,
        key: &PodKey,
        container: &str,
    ) -> Result<(PathBuf, plan::ContainerPlan), ProviderError> {
        let (dir, plan) = self
            .pod_plan(&key.uid)
            .ok_or_else(|| ProviderError::NotFound(format!("pod {key} is not running here")))?;
        let c = plan
            .all_containers()
            .find(|c| c.name == container)
            .cloned()
            .ok_or_else(|| {
                ProviderError::NotFound(format!("container {container:?} is not in pod {key}"))
            })?;
        Ok((dir, c))
    }
}

/// SIGKILL every container and shim a pod directory records (blocking: reads the records);
/// returns them, to wait for.
fn kill_pod_processes(pod_dir: &Path) -> Vec<procs::ProcessId> {
    let Ok(containers) = std::fs::read_dir(pod_dir.join("containers")) else {
        return Vec::new();
    };
    let mut victims: Vec<procs::ProcessId> = containers
        .flatten()
        .filter_map(|c| read_json::<ShimRecord>(&c.path(), SHIM_FILE))
        .flat_map(|r| [r.container, r.shim])
        .collect();
    // Shims that have not written their record yet are found by the directory in their
    // arguments; killing a shim kills its container (bubblewrap's --die-with-parent).
    let mut prefix = b"dir=".to_vec();
    prefix.extend_from_slice(pod_dir.as_os_str().as_encoded_bytes());
    prefix.push(b'/');
    victims.extend(procs::with_arg_prefix(&prefix));
    for p in &victims {
        let _ = p.signal(Signal::SIGKILL);
    }
    victims
}
