//! The `sim` provider: an in-memory backend for tests, demos and benchmarks. It behaves like a
//! real backend where the core can see it — start latency, stop latency bounded by the grace
//! period, failures, capacity, a sold-out switch, containers that exit (so Jobs finish) and restart
//! per restartPolicy — and, with a `stateDir`, survives a restart of the vkubelet process the way a
//! remote backend would (see [`state`]).
//!
//! Per-pod overrides: annotations `sim.vkubelet.io/lifetime` (a duration) and
//! `sim.vkubelet.io/exit-code`.
//!
//! With `recordResolved` (and a `stateDir`), everything the core resolved for a pod is written to
//! `<stateDir>/received/<uid>.json` (see [`received`]).

pub mod config;
pub mod received;
pub mod state;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use rand::Rng;
use vk_provider_api::resolution::{PodAddresses, ResolvedVolume};
use vk_provider_api::{
    BackendPod, NodeResources, PodKey, PodUpdate, Provider, ProviderError, ProviderLimits,
    ProviderSinks, ResolvedPod,
};

pub use config::{ConfigError, Control, Latency, SimConfig, parse_duration};
use state::{Journal, PodRecord};
use status::Phase;

pub const LIFETIME_ANNOTATION: &str = "sim.vkubelet.io/lifetime";
pub const EXIT_CODE_ANNOTATION: &str = "sim.vkubelet.io/exit-code";
/// A container that keeps exiting is restarted no faster than this.
const MIN_RESTART_INTERVAL: Duration = Duration::from_secs(1);
const CONTROL_POLL: Duration = Duration::from_millis(200);

struct SimPod {
    rec: PodRecord,
    created: Timestamp,
    phase: Phase,
    restarts: i32,
    last: Option<ContainerStateTerminated>,
    terminating: bool,
    /// Bumped on every transition, so a timer set for an older state does nothing.
    generation: u64,
    status: Arc<PodStatus>,
}

impl SimPod {
    fn new(rec: PodRecord, created: Timestamp) -> Self {
        Self {
            rec,
            created,
            phase: Phase::Creating,
            restarts: 0,
            last: None,
            terminating: false,
            generation: 0,
            status: Arc::default(),
        }
    }
}

struct Inner {
    cfg: SimConfig,
    node_ip: String,
    pods: Mutex<HashMap<String, SimPod>>,
    sinks: Mutex<Option<ProviderSinks>>,
    journal: Mutex<Option<Journal>>,
    control: Mutex<(Control, Option<std::time::SystemTime>)>,
    created_total: AtomicU64,
    received: Mutex<HashMap<String, received::Received>>,
}

/// See the crate documentation.
#[derive(Clone)]
pub struct SimProvider {
    inner: Arc<Inner>,
}

impl SimProvider {
    pub fn new(cfg: SimConfig, node_ip: String) -> Result<Self, ConfigError> {
        let control = cfg
            .control_file
            .as_deref()
            .map(Control::read)
            .unwrap_or_default();
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                node_ip,
                pods: Mutex::new(HashMap::new()),
                sinks: Mutex::new(None),
                journal: Mutex::new(None),
                control: Mutex::new((control, None)),
                created_total: AtomicU64::new(0),
                received: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn pod_count(&self) -> usize {
        self.inner.pods.lock().len()
    }

    /// Real creates done by this instance (idempotent re-creates do not count).
    pub fn created_total(&self) -> u64 {
        self.inner.created_total.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn push(&self, uid: &str, update: PodUpdate) {
        if let Some(s) = self.sinks.lock().as_ref() {
            s.pod(uid, update);
        }
    }

    /// The runtime overrides, re-read when the control file changed (one stat per call, so a
    /// test that flips a switch and then creates a pod sees the switch).
    fn control(&self) -> Control {
        let Some(path) = self.cfg.control_file.as_deref() else {
            return Control::default();
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut c = self.control.lock();
        if c.1 != mtime {
            *c = (Control::read(path), mtime);
        }
        c.0
    }

    fn sold_out(&self) -> bool {
        self.cfg.sold_out || self.control().sold_out
    }

    /// Move a pod to `phase`, push its new status and arm the timer for what comes next.
    fn transition(self: &Arc<Self>, uid: &str, phase: Phase) {
        let (status, next) = {
            let mut pods = self.pods.lock();
            let Some(p) = pods.get_mut(uid) else { return };
            p.phase = phase;
            p.generation += 1;
            p.status = Arc::new(status::build(
                &p.rec,
                &self.node_ip,
                p.created,
                &p.phase,
                p.restarts,
                p.last.as_ref(),
            ));
            let next = match (&p.phase, p.rec.lifetime_ms) {
                (Phase::Running { .. }, Some(ms)) => {
                    let d = Duration::from_millis(ms);
                    let d = if p.restarts > 0 {
                        d.max(MIN_RESTART_INTERVAL)
                    } else {
                        d
                    };
                    Some((d, p.generation))
                }
                _ => None,
            };
            (p.status.clone(), next)
        };
        self.push(uid, PodUpdate::Status(status));
        if let Some((after, generation)) = next {
            let this = self.clone();
            let uid = uid.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                this.container_exited(&uid, generation);
            });
        }
    }

    /// The container's lifetime ran out: finish or restart per restartPolicy.
    fn container_exited(self: &Arc<Self>, uid: &str, generation: u64) {
        let next = {
            let mut pods = self.pods.lock();
            let Some(p) = pods.get_mut(uid) else { return };
            if p.generation != generation || p.terminating {
                return;
            }
            let Phase::Running { started } = p.phase else {
                return;
            };
            let code = p.rec.exit_code;
            let now = Timestamp::now();
            let restart = match p.rec.restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if restart {
                p.restarts += 1;
                p.last = Some(status::exited(&p.rec, code, started, now));
                Phase::Running { started: now }
            } else {
                Phase::Finished {
                    exit_code: code,
                    started,
                    finished: now,
                }
            }
        };
        self.transition(uid, next);
    }

    fn addresses(&self) -> PodAddresses {
        PodAddresses {
            pod_ips: vec![self.node_ip.clone()],
            host_ips: vec![self.node_ip.clone()],
        }
    }

    /// Record (and persist) what the core resolved for a pod, when `recordResolved` is on.
    fn record_received(&self, uid: &str, update: impl FnOnce(&mut received::Received)) {
        let Some(dir) = self
            .cfg
            .state_dir
            .as_deref()
            .filter(|_| self.cfg.record_resolved)
        else {
            return;
        };
        let mut all = self.received.lock();
        let Some(rec) = all.get_mut(uid) else { return };
        update(rec);
        if let Err(e) = rec.write(dir, uid) {
            tracing::warn!(error = %e, "writing the sim's received record failed");
        }
    }

    /// Note an injected failure in `<stateDir>/faults.log` (nothing without a stateDir).
    fn fault(&self, op: &str, kind: &str, uid: &str) {
        if let Some(j) = self.journal.lock().as_mut()
            && let Err(e) = j.fault(op, kind, uid)
        {
            tracing::warn!(error = %e, "sim faults log write failed");
        }
    }

    fn remove(&self, uid: &str) -> bool {
        let removed = self.pods.lock().remove(uid).is_some();
        self.received.lock().remove(uid);
        if removed {
            if let Some(j) = self.journal.lock().as_mut()
                && let Err(e) = j.deleted(uid)
            {
                tracing::warn!(error = %e, "sim journal write failed");
            }
            self.push(uid, PodUpdate::Gone);
        }
        removed
    }

    fn record_of(pod: &ResolvedPod, cfg: &SimConfig) -> Result<PodRecord, ProviderError> {
        let spec = pod
            .pod
            .spec
            .as_ref()
            .ok_or_else(|| ProviderError::InvalidInput("pod has no spec".into()))?;
        if spec.containers.is_empty() {
            return Err(ProviderError::InvalidInput("pod has no containers".into()));
        }
        for c in &spec.containers {
            if c.image.as_deref().unwrap_or("").is_empty()
                && c.command.as_ref().is_none_or(|c| c.is_empty())
            {
                return Err(ProviderError::InvalidInput(format!(
                    "container {:?} has neither an image nor a command",
                    c.name
                )));
            }
        }
        let (lifetime, exit_code) = overrides(&pod.pod, cfg)?;
        let pair = |c: &k8s_openapi::api::core::v1::Container| {
            (c.name.clone(), c.image.clone().unwrap_or_default())
        };
        Ok(PodRecord {
            uid: pod.key.uid.clone(),
            namespace: pod.key.namespace.clone(),
            name: pod.key.name.clone(),
            containers: spec.containers.iter().map(pair).collect(),
            init_containers: spec.init_containers.iter().flatten().map(pair).collect(),
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            lifetime_ms: lifetime.map(|d| d.as_millis() as u64),
            exit_code,
            restart_base: pod.restart_count_base,
            created_at: Timestamp::now().to_string(),
        })
    }
}

/// Lifetime and exit code, from the pod's annotations or the config.
fn overrides(pod: &Pod, cfg: &SimConfig) -> Result<(Option<Duration>, i32), ProviderError> {
    let ann = pod.metadata.annotations.as_ref();
    let lifetime = match ann.and_then(|a| a.get(LIFETIME_ANNOTATION)) {
        Some(v) => Some(
            parse_duration(v)
                .map_err(|e| ProviderError::InvalidInput(format!("{LIFETIME_ANNOTATION}: {e}")))?,
        ),
        None => cfg.pod_lifetime,
    };
    let exit_code = match ann.and_then(|a| a.get(EXIT_CODE_ANNOTATION)) {
        Some(v) => v.trim().parse().map_err(|_| {
            ProviderError::InvalidInput(format!("{EXIT_CODE_ANNOTATION}: {v:?} is not an integer"))
        })?,
        None => cfg.exit_code,
    };
    Ok((lifetime, exit_code))
}

#[async_trait]
impl Provider for SimProvider {
    fn kind(&self) -> &str {
        "sim"
    }

    async fn start(&self, sinks: ProviderSinks) -> Result<(), ProviderError> {
        let inner = &self.inner;
        *inner.sinks.lock() = Some(sinks.clone());
        if let Some(dir) = inner.cfg.state_dir.as_deref() {
            let (journal, live) = Journal::open(dir).map_err(|e| {
                ProviderError::Other(format!("opening sim state in {}: {e}", dir.display()))
            })?;
            *inner.journal.lock() = Some(journal);
            let now = Timestamp::now();
            let mut pods = inner.pods.lock();
            for rec in live {
                let created = rec.created_at.parse().unwrap_or(now);
                pods.insert(rec.uid.clone(), SimPod::new(rec, created));
            }
        }
        // Replayed pods run again (a real backend kept them running while we were away).
        let uids: Vec<(String, Timestamp)> = inner
            .pods
            .lock()
            .iter()
            .map(|(u, p)| (u.clone(), p.created))
            .collect();
        for (uid, created) in uids {
            inner.transition(&uid, Phase::Running { started: created });
        }
        if inner.cfg.control_file.is_some() {
            // Sold-out flips change the node; nothing else calls node_resources often enough.
            let weak = Arc::downgrade(inner);
            let mut reported = inner.control().sold_out;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CONTROL_POLL).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let now = inner.control().sold_out;
                    if now != reported {
                        reported = now;
                        if let Some(s) = inner.sinks.lock().as_ref() {
                            s.node_changed();
                        }
                    }
                }
            });
        }
        Ok(())
    }

    async fn node_resources(&self) -> Result<NodeResources, ProviderError> {
        let capacity = self
            .inner
            .cfg
            .capacity
            .iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect();
        let sold_out = self.inner.sold_out();
        Ok(NodeResources {
            capacity,
            accepting_pods: !sold_out,
            message: sold_out.then(|| "the simulated backend is sold out".to_string()),
            ..Default::default()
        })
    }

    async fn create_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        let inner = &self.inner;
        if inner.pods.lock().contains_key(&pod.key.uid) {
            return Ok(());
        }
        if inner.control().fail_creates {
            inner.fault("create", "failCreates", &pod.key.uid);
            return Err(ProviderError::transient("simulated backend failure"));
        }
        if inner.sold_out() {
            inner.fault("create", "soldOut", &pod.key.uid);
            return Err(ProviderError::SoldOut(
                "the simulated backend is sold out".into(),
            ));
        }
        if inner.cfg.failure_rate > 0.0 && rand::rng().random_bool(inner.cfg.failure_rate) {
            inner.fault("create", "failureRate", &pod.key.uid);
            return Err(ProviderError::transient("simulated random create failure"));
        }
        let rec = Inner::record_of(pod, &inner.cfg)?;
        let latency = inner.cfg.start_latency.sample(&mut rand::rng());
        {
            let mut pods = inner.pods.lock();
            if pods.contains_key(&pod.key.uid) {
                return Ok(());
            }
            let cap = inner.cfg.pod_capacity().unwrap_or(usize::MAX);
            if pods.len() >= cap {
                return Err(ProviderError::SoldOut(format!(
                    "node capacity of {cap} pods reached"
                )));
            }
            if let Some(j) = inner.journal.lock().as_mut() {
                j.created(&rec)
                    .map_err(|e| ProviderError::Other(format!("sim journal: {e}")))?;
            }
            pods.insert(rec.uid.clone(), SimPod::new(rec, Timestamp::now()));
        }
        if inner.cfg.record_resolved {
            let rec = received::Received::new(&pod.resolution, &inner.addresses())
                .with_resources(&pod.pod);
            inner.received.lock().insert(pod.key.uid.clone(), rec);
            inner.record_received(&pod.key.uid, |_| {});
        }
        inner.created_total.fetch_add(1, Ordering::Relaxed);
        let uid = pod.key.uid.clone();
        if latency.is_zero() {
            inner.transition(
                &uid,
                Phase::Running {
                    started: Timestamp::now(),
                },
            );
        } else {
            inner.transition(&uid, Phase::Creating);
            let generation = inner.pods.lock().get(&uid).map(|p| p.generation);
            let this = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let current = this
                    .pods
                    .lock()
                    .get(&uid)
                    .map(|p| (p.generation, p.terminating));
                if current.is_some()
                    && current.map(|c| c.0) == generation
                    && current.map(|c| c.1) == Some(false)
                {
                    this.transition(
                        &uid,
                        Phase::Running {
                            started: Timestamp::now(),
                        },
                    );
                }
            });
        }
        Ok(())
    }

    async fn update_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        let inner = &self.inner;
        let images: HashMap<String, String> = pod
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect();
        let phase = {
            let mut pods = inner.pods.lock();
            let p = pods
                .get_mut(&pod.key.uid)
                .ok_or_else(|| ProviderError::NotFound(pod.key.to_string()))?;
            for (name, image) in p.rec.containers.iter_mut() {
                if let Some(new) = images.get(name) {
                    image.clone_from(new);
                }
            }
            p.phase.clone()
        };
        inner.transition(&pod.key.uid, phase);
        Ok(())
    }

    async fn update_volumes(
        &self,
        key: &PodKey,
        volumes: &[ResolvedVolume],
    ) -> Result<(), ProviderError> {
        let inner = &self.inner;
        if !inner.pods.lock().contains_key(&key.uid) {
            return Err(ProviderError::NotFound(key.to_string()));
        }
        if inner.cfg.record_resolved {
            // A pod adopted after a restart has no record yet: start one from its volumes.
            let addresses = inner.addresses();
            inner
                .received
                .lock()
                .entry(key.uid.clone())
                .or_insert_with(|| {
                    received::Received::new(
                        &vk_provider_api::resolution::Resolution::default(),
                        &addresses,
                    )
                });
        }
        inner.record_received(&key.uid, |r| {
            r.volumes = received::volume_records(volumes);
            r.volume_updates += 1;
        });
        Ok(())
    }

    fn limits(&self) -> ProviderLimits {
        ProviderLimits::default().with_max_volume_bytes(self.inner.cfg.max_volume_bytes)
    }

    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), ProviderError> {
        let inner = &self.inner;
        if inner.control().fail_deletes {
            inner.fault("delete", "failDeletes", &key.uid);
            return Err(ProviderError::transient("simulated backend delete failure"));
        }
        if inner.cfg.delete_failure_rate > 0.0
            && rand::rng().random_bool(inner.cfg.delete_failure_rate)
        {
            inner.fault("delete", "deleteFailureRate", &key.uid);
            return Err(ProviderError::transient("simulated random delete failure"));
        }
        let latency = inner.cfg.stop_latency.sample(&mut rand::rng());
        let stop = if inner.cfg.stop_beyond_grace {
            latency
        } else {
            latency.min(grace)
        };
        {
            let mut pods = inner.pods.lock();
            let Some(p) = pods.get_mut(&key.uid) else {
                return Ok(());
            };
            // A slow backend keeps stopping at its own pace whatever a later delete asks.
            if p.terminating && (!stop.is_zero() || inner.cfg.stop_beyond_grace) {
                return Ok(()); // already stopping
            }
            p.terminating = true;
        }
        if stop.is_zero() {
            inner.remove(&key.uid);
        } else {
            let this = inner.clone();
            let uid = key.uid.clone();
            tokio::spawn(async move {
                tokio::time::sleep(stop).await;
                this.remove(&uid);
            });
        }
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError> {
        Ok(self
            .inner
            .pods
            .lock()
            .values()
            .map(|p| BackendPod {
                key: PodKey::new(
                    p.rec.uid.clone(),
                    p.rec.namespace.clone(),
                    p.rec.name.clone(),
                ),
                status: (p.generation > 0).then(|| p.status.clone()),
            })
            .collect())
    }

    async fn cleanup_all(&self) -> Result<usize, ProviderError> {
        let uids: Vec<String> = self.inner.pods.lock().keys().cloned().collect();
        Ok(uids.iter().filter(|uid| self.inner.remove(uid)).count())
    }
}

#[cfg(test)]
mod tests;
