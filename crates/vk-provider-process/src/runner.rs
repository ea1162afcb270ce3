//! One pod's life on this host, as the kubelet lives it: init containers in order, then the
//! app containers; restarts by `restartPolicy` with crash-loop backoff; probes; lifecycle hooks;
//! `activeDeadlineSeconds`; graceful termination; the pod status.
//!
//! Each pod has one task. It learns about container exits from the files the shims write (the
//! shims, not vkubelet, are the containers' parents), so a pod adopted after a vkubelet restart
//! is driven exactly like one it started. Per-container progress that must survive a restart
//! (instance number, last termination, backoff) is kept in `state.json` next to the shim files.
//!
//! What to do when something happens to a container (restart or not, backoff, which probes
//! run, when to stop and kill) is decided by [`crate::lifecycle`], free of I/O; this module is
//! the shell that observes, launches, signals and probes, and feeds each observation in there.
//!
//! The task sleeps until something happens, with no periodic wake-up: a shim's record renamed
//! into a container directory (an inotify watch, [`crate::watch`]), a shim or container process
//! exiting (a pidfd, [`ProcessId::exited`]), a probe result, a delete, or the next deadline
//! (backoff, grace period, start timeout, `activeDeadlineSeconds`). Each pass over the pod reads
//! and writes files, creates cgroups and may wait for a pod's processes to die, so it runs on
//! Tokio's blocking pool, never on an async worker thread.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, LifecycleHandler, PodCondition, PodIP, PodStatus, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use vk_provider_api::{PodUpdate, ProviderSinks};

use crate::cgroups::{Cgroups, Limits};
use crate::exec::ContainerExec;
use crate::lifecycle::{self, Action, Event, PodView, RestartPolicy, State, StopReason, Traits};
use crate::logs::LogConfig;
use crate::plan::{ContainerPlan, PodPlan, TERMINATION_LOG};
use crate::probes::{self, ExecRunner, ProbeKind, ProbeOutcome, ProbeResult, ProbeTarget};
use crate::procs::ProcessId;
use crate::shim::{EXIT_FILE, ExitRecord, SHIM_FILE, ShimArgs, ShimRecord, read_json, write_json};
use crate::watch::{DirWatcher, Watch};

const STATE_FILE: &str = "state.json";
const POD_STATE_FILE: &str = "runner.json";
/// How often a starting container's directory is looked at when it cannot be watched (no
/// inotify); everything else wakes the task by itself.
const UNWATCHED_POLL: Duration = Duration::from_millis(250);
/// The shim records whose arrival wakes a pod's task.
const WATCHED_FILES: &[&str] = &[SHIM_FILE, EXIT_FILE];
/// How long a shim may take to start its container before the start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_MESSAGE: usize = 4096;
const FALLBACK_LOG_LINES: usize = 80;

/// What every pod task needs from the provider.
#[derive(Clone)]
pub struct RunnerEnv {
    pub sinks: ProviderSinks,
    /// The program and arguments that start a shim (before the shim's own arguments).
    pub shim_command: Vec<String>,
    pub log: LogConfig,
    pub cgroups: Option<Cgroups>,
    /// Directory holding the pod's secret volumes (removed with the pod).
    pub secrets_dir: PathBuf,
    /// Watches the container directories for the shims' records (`None`: no inotify here).
    pub dirs: Option<DirWatcher>,
}

/// A termination as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub restart: u32,
}

impl Termination {
    fn to_k8s(&self, id: &str) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: Some(Time(self.started_at)),
            finished_at: Some(Time(self.finished_at)),
            container_id: Some(id.to_string()),
        }
    }
}

/// What survives a restart of vkubelet, per container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    /// Whether instance `restart` was ever launched.
    launched: bool,
    restart: u32,
    /// The previous termination (`lastState`).
    last: Option<Termination>,
    /// The final termination when the container will not run again (`state.terminated`).
    finished: Option<Termination>,
    /// The delay before the next restart after the one pending.
    backoff_secs: u64,
    /// When a pending restart may happen.
    restart_at: Option<Timestamp>,
    /// Why the pending restart waits.
    waiting_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodPersisted {
    deadline_exceeded: bool,
    /// When the pod's deletion must be over (SIGKILL), once it was asked to stop. Persisted so
    /// that a vkubelet restart in the middle of a graceful stop carries on stopping instead of
    /// starting containers that the stop already ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop_by: Option<Timestamp>,
}

struct Ctr {
    plan: ContainerPlan,
    dir: PathBuf,
    p: Persisted,
    /// The decisions' state ([`lifecycle`]).
    m: lifecycle::Container,
    /// The shim of the instance being started, when known.
    shim: Option<ProcessId>,
    /// The running instance's record (its processes).
    rec: Option<ShimRecord>,
    probe_tasks: Vec<AbortHandle>,
    oom_before: u64,
}

impl Ctr {
    fn new(plan: ContainerPlan, init: bool, pod: &PodPlan, pod_dir: &Path) -> Self {
        let dir = plan.dir(pod_dir);
        let mut p: Persisted = read_json(&dir, STATE_FILE).unwrap_or_default();
        let mut shim = None;
        let state = if let Some(t) = &p.finished {
            State::Finished {
                succeeded: t.exit_code == 0,
            }
        } else if let Some(at) = p.restart_at {
            State::BackOff {
                until: instant_at(at),
            }
        } else if p.launched && !launch_got_going(&dir, p.restart) {
            // vkubelet died between recording the launch and the shim starting: nothing ran,
            // so this is the same start again, not a restart.
            if p.restart == 0 {
                p.launched = false;
            } else {
                p.restart -= 1;
            }
            State::NotStarted
        } else if p.launched {
            shim = read_json::<ShimRecord>(&dir, SHIM_FILE)
                .filter(|r| r.restart == p.restart)
                .map(|r| r.shim)
                .or_else(|| shim_of(&dir, p.restart));
            State::Starting {
                since: Instant::now(),
                stop: None,
            }
        } else {
            State::NotStarted
        };
        let seconds = |s: i64| Duration::from_secs(s.max(0).unsigned_abs());
        let spec = &plan.spec;
        let lifecycle = spec.lifecycle.as_ref();
        let traits = Traits {
            init,
            policy: RestartPolicy::parse(&pod.restart_policy),
            startup_probe: spec.startup_probe.is_some(),
            liveness_probe: spec.liveness_probe.is_some(),
            readiness_probe: spec.readiness_probe.is_some(),
            post_start: lifecycle.is_some_and(|l| l.post_start.is_some()),
            pre_stop: lifecycle.is_some_and(|l| l.pre_stop.is_some()),
            grace: seconds(pod.termination_grace_seconds),
            startup_grace: spec
                .startup_probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds)
                .map(seconds),
            liveness_grace: spec
                .liveness_probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds)
                .map(seconds),
        };
        let m = lifecycle::Container::new(traits, state, p.backoff_secs);
        Self {
            plan,
            dir,
            p,
            m,
            shim,
            rec: None,
            probe_tasks: Vec::new(),
            oom_before: 0,
        }
    }

    fn init(&self) -> bool {
        self.m.traits.init
    }

    fn save(&self) {
        if let Err(e) = write_json(&self.dir, STATE_FILE, &self.p) {
            warn!(container = %self.plan.name, error = %e, "saving container state");
        }
    }

    fn id(&self, uid: &str) -> String {
        format!("process://{uid}/{}/{}", self.plan.name, self.p.restart)
    }

    fn is_active(&self) -> bool {
        self.m.state.is_active()
    }

    fn stop_probes(&mut self) {
        for t in self.probe_tasks.drain(..) {
            t.abort();
        }
    }

    fn exec(&self) -> Option<Arc<ContainerExec>> {
        self.rec.as_ref().map(|rec| {
            Arc::new(ContainerExec {
                target: rec.container,
                sandbox: self.plan.sandbox.clone(),
            })
        })
    }
}

/// The instance number (restart count) of a container's latest instance, if it ever started.
/// Whether instance `restart` of the container in `dir` ever got going: its shim wrote a record
/// or an exit, or is alive.
fn launch_got_going(dir: &Path, restart: u32) -> bool {
    read_json::<ShimRecord>(dir, SHIM_FILE).is_some_and(|r| r.restart == restart)
        || read_json::<ExitRecord>(dir, EXIT_FILE).is_some_and(|e| e.restart == restart)
        || shim_of(dir, restart).is_some()
}

/// The live shim of instance `restart` of the container in `dir`, found by its arguments (before
/// it wrote its record).
fn shim_of(dir: &Path, restart: u32) -> Option<ProcessId> {
    let mut dir_arg = b"dir=".to_vec();
    dir_arg.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    let restart_arg = format!("restart={restart}");
    crate::procs::with_args(&[&dir_arg, restart_arg.as_bytes()])
        .into_iter()
        .next()
}

pub fn latest_instance(container_dir: &Path) -> Option<u32> {
    let p: Persisted = read_json(container_dir, STATE_FILE)?;
    p.launched.then_some(p.restart)
}

/// Whether instance `restart` of the container has exited (or its files are gone).
pub fn instance_exited(container_dir: &Path, restart: u32) -> bool {
    !container_dir.exists()
        || read_json::<ExitRecord>(container_dir, EXIT_FILE).is_some_and(|e| e.restart >= restart)
        || latest_instance(container_dir).is_some_and(|latest| latest > restart)
}

/// The exit code of instance `restart`, once it has exited: from its shim's record or, after
/// the runner moved on to a later instance (which removes that record), from the container's
/// last termination.
pub fn instance_exit_code(container_dir: &Path, restart: u32) -> Option<i32> {
    if let Some(exit) =
        read_json::<ExitRecord>(container_dir, EXIT_FILE).filter(|e| e.restart == restart)
    {
        return Some(exit.exit_code);
    }
    let p: Persisted = read_json(container_dir, STATE_FILE)?;
    [p.last, p.finished]
        .into_iter()
        .flatten()
        .find(|t| t.restart == restart)
        .map(|t| t.exit_code)
}

/// Sleeps until `t`, or forever without one.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn instant_at(t: Timestamp) -> Instant {
    let delta = t.as_millisecond() - Timestamp::now().as_millisecond();
    Instant::now() + Duration::from_millis(u64::try_from(delta).unwrap_or(0))
}

fn timestamp_at(i: Instant) -> Timestamp {
    let delta = i.saturating_duration_since(Instant::now());
    Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::try_from(delta).unwrap_or_default())
        .unwrap_or_else(|_| Timestamp::now())
}

/// Commands from the provider to a pod task.
#[derive(Debug, Default)]
pub struct Control {
    delete_deadline: Option<Instant>,
}

/// The provider's handle on one pod task.
pub struct PodHandle {
    pub plan: Arc<PodPlan>,
    pub dir: PathBuf,
    status: Arc<Mutex<Option<Arc<PodStatus>>>>,
    control: Arc<Mutex<Control>>,
    wake: Arc<Notify>,
    /// Live container processes, for exec and stats.
    pub processes: Arc<Mutex<BTreeMap<String, ProcessId>>>,
    task: AbortHandle,
}

impl PodHandle {
    pub fn status(&self) -> Option<Arc<PodStatus>> {
        self.status.lock().clone()
    }

    /// Stop the pod: SIGTERM (after preStop hooks) now, SIGKILL once `grace` has passed. A second
    /// call can only shorten the deadline.
    pub fn delete(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut c = self.control.lock();
        c.delete_deadline = Some(match c.delete_deadline {
            Some(d) if d <= deadline => d,
            _ => deadline,
        });
        drop(c);
        self.wake.notify_one();
    }

    /// Abandon the task without touching the processes (provider shutdown).
    pub fn detach(&self) {
        self.task.abort();
    }
}

/// Start (or adopt, when the pod's files already exist) the task for `plan`.
pub fn spawn(env: RunnerEnv, plan: PodPlan, dir: PathBuf) -> PodHandle {
    let plan = Arc::new(plan);
    let status = Arc::new(Mutex::new(None));
    let control = Arc::new(Mutex::new(Control::default()));
    let wake = Arc::new(Notify::new());
    let processes = Arc::new(Mutex::new(BTreeMap::new()));
    let task = tokio::spawn({
        let (plan, dir, status, control, wake, processes) = (
            plan.clone(),
            dir.clone(),
            status.clone(),
            control.clone(),
            wake.clone(),
            processes.clone(),
        );
        async move {
            // Reading the pod's records is file work: off the async workers.
            let uid = plan.uid.clone();
            let runner = tokio::task::spawn_blocking(move || {
                Runner::new(env, plan, dir, status, control, wake, processes)
            })
            .await;
            match runner {
                Ok(runner) => runner.run().await,
                Err(e) => warn!(pod = %uid, error = %e, "the pod's task failed to start"),
            }
        }
    })
    .abort_handle();
    PodHandle {
        plan,
        dir,
        status,
        control,
        wake,
        processes,
        task,
    }
}

struct ProbeMsg {
    container: usize,
    restart: u32,
    report: Report,
}

/// What a probe or hook task tells its pod's task.
enum Report {
    Probe(ProbeResult),
    PostStartFailed(String),
}

/// The processes a pod task waits for (by pidfd, each in a small task of its own).
struct ExitWatches {
    /// `Some`: being waited for; `None`: has exited (and is not waited for again).
    watching: HashMap<ProcessId, Option<AbortHandle>>,
    tx: mpsc::UnboundedSender<ProcessId>,
    rx: mpsc::UnboundedReceiver<ProcessId>,
}

impl ExitWatches {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            watching: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Wait for exactly the processes in `wanted` (those not known to have exited yet).
    fn set(&mut self, wanted: &[ProcessId]) {
        self.watching.retain(|p, task| {
            let keep = wanted.contains(p);
            if !keep && let Some(t) = task.take() {
                t.abort();
            }
            keep
        });
        for &p in wanted {
            self.watching.entry(p).or_insert_with(|| {
                let tx = self.tx.clone();
                let task = tokio::spawn(async move {
                    p.exited().await;
                    let _ = tx.send(p);
                });
                Some(task.abort_handle())
            });
        }
    }

    fn exited(&mut self, p: ProcessId) {
        if let Some(task) = self.watching.get_mut(&p) {
            *task = None;
        }
    }
}

impl Drop for ExitWatches {
    fn drop(&mut self) {
        for t in self.watching.values_mut().filter_map(Option::take) {
            t.abort();
        }
    }
}

struct Runner {
    env: RunnerEnv,
    plan: Arc<PodPlan>,
    dir: PathBuf,
    ctrs: Vec<Ctr>,
    pod: PodPersisted,
    status: Arc<Mutex<Option<Arc<PodStatus>>>>,
    control: Arc<Mutex<Control>>,
    wake: Arc<Notify>,
    processes: Arc<Mutex<BTreeMap<String, ProcessId>>>,
    probe_tx: mpsc::UnboundedSender<ProbeMsg>,
    probe_rx: mpsc::UnboundedReceiver<ProbeMsg>,
    deleting: bool,
    /// Conditions' last transition times, kept while their status does not change.
    transitions: BTreeMap<&'static str, (bool, Timestamp)>,
    exits: ExitWatches,
    /// The inotify watches on the container directories; `false` when one could not be set up
    /// (then a starting container's directory is polled).
    dirs_watched: bool,
    _dir_watches: Vec<Watch>,
}

impl Runner {
    fn new(
        env: RunnerEnv,
        plan: Arc<PodPlan>,
        dir: PathBuf,
        status: Arc<Mutex<Option<Arc<PodStatus>>>>,
        control: Arc<Mutex<Control>>,
        wake: Arc<Notify>,
        processes: Arc<Mutex<BTreeMap<String, ProcessId>>>,
    ) -> Self {
        let ctrs: Vec<Ctr> = plan
            .init_containers
            .iter()
            .map(|c| Ctr::new(c.clone(), true, &plan, &dir))
            .chain(
                plan.containers
                    .iter()
                    .map(|c| Ctr::new(c.clone(), false, &plan, &dir)),
            )
            .collect();
        let pod: PodPersisted = read_json(&dir, POD_STATE_FILE).unwrap_or_default();
        if let Some(stop_by) = pod.stop_by {
            // Adopted mid-stop: the stop goes on with what is left of its grace period.
            let left = Timestamp::now().duration_until(stop_by);
            let deadline = Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO);
            let mut c = control.lock();
            c.delete_deadline = Some(c.delete_deadline.map_or(deadline, |d| d.min(deadline)));
        }
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        // Watching before the first look at the files: no record can slip in between.
        let mut dir_watches = Vec::new();
        let mut dirs_watched = env.dirs.is_some();
        if let Some(w) = &env.dirs {
            for c in &ctrs {
                match w.watch(&c.dir, WATCHED_FILES, &wake) {
                    Ok(guard) => dir_watches.push(guard),
                    Err(e) => {
                        debug!(dir = %c.dir.display(), error = %e, "cannot watch a container directory; polling it while the container starts");
                        dirs_watched = false;
                    }
                }
            }
        }
        Self {
            env,
            plan,
            dir,
            ctrs,
            pod,
            status,
            control,
            wake,
            processes,
            probe_tx,
            probe_rx,
            deleting: false,
            transitions: BTreeMap::new(),
            exits: ExitWatches::new(),
            dirs_watched,
            _dir_watches: dir_watches,
        }
    }

    #[tracing::instrument(name = "pod", skip_all, fields(pod = %format!("{}/{}", self.plan.namespace, self.plan.name)))]
    async fn run(mut self) {
        let span = tracing::Span::current();
        loop {
            let began = Instant::now();
            let span = span.clone();
            let passed = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let done = self.step();
                let waits = if done {
                    Vec::new()
                } else {
                    self.awaited_exits()
                };
                (self, done, waits)
            })
            .await;
            let (runner, done, waits) = match passed {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "the pod's task failed");
                    return;
                }
            };
            self = runner;
            if done {
                self.finish().await;
                return;
            }
            self.exits.set(&waits);
            let next = self.next_deadline(began);
            tokio::select! {
                () = sleep_until(next) => {}
                () = self.wake.notified() => {}
                Some(p) = self.exits.rx.recv() => self.exits.exited(p),
                Some(msg) = self.probe_rx.recv() => self.on_probe(msg).await,
            }
        }
    }

    /// The processes whose exit changes what [`Self::step`] does: the shims of starting and
    /// running containers, a running container whose shim is gone (killed from outside), and
    /// while the pod is deleted, every shim it waits for.
    fn awaited_exits(&self) -> Vec<ProcessId> {
        let mut out = Vec::new();
        for c in &self.ctrs {
            match (&c.m.state, c.shim, &c.rec) {
                (State::Starting { .. }, Some(s), _) => out.push(s),
                (State::Running { .. }, _, Some(rec)) => {
                    out.push(rec.shim);
                    if !rec.shim.is_alive() {
                        out.push(rec.container);
                    }
                }
                _ => {}
            }
            if self.deleting
                && let Some(rec) = read_json::<ShimRecord>(&c.dir, SHIM_FILE)
                && !out.contains(&rec.shim)
            {
                out.push(rec.shim);
            }
        }
        out
    }

    /// The earliest deadline after `after` (when the last pass began) at which a pass acts:
    /// a start timeout, a restart after backoff, a SIGKILL at the end of a grace period, or
    /// `activeDeadlineSeconds`. A deadline that had passed by then was acted on by that pass if
    /// it could be, so it is not waited for again.
    fn next_deadline(&self, after: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| {
            if t > after && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for c in &self.ctrs {
            match &c.m.state {
                State::Starting { since, .. } => {
                    at(*since + START_TIMEOUT);
                    if !self.dirs_watched {
                        at(Instant::now() + UNWATCHED_POLL);
                    }
                }
                State::BackOff { until } => at(*until),
                _ => {}
            }
            if let Some(s) = c.m.stopping() {
                at(s.kill_at);
            }
        }
        let delete_deadline = self.control.lock().delete_deadline;
        match delete_deadline {
            Some(d) => at(d),
            None => {
                if let Some(secs) = self.plan.active_deadline_seconds
                    && !self.pod.deadline_exceeded
                    && !self.terminal()
                    && let Ok(end) = self
                        .plan
                        .created_at
                        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
                {
                    // A millisecond late rather than early: the check counts whole seconds.
                    at(instant_at(end) + Duration::from_millis(1));
                }
            }
        }
        next
    }

    fn event(&self, warning: bool, reason: &str, message: String) {
        self.env.sinks.pod(
            &self.plan.uid,
            PodUpdate::Event {
                warning,
                reason: reason.into(),
                message,
            },
        );
    }

    /// Record the stop's deadline (when it is new or earlier) for a vkubelet that adopts the pod
    /// mid-stop.
    fn persist_stop(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(left) = k8s_openapi::jiff::SignedDuration::try_from(left) else {
            return;
        };
        let Ok(stop_by) = Timestamp::now().checked_add(left) else {
            return;
        };
        // Within a second is the same deadline: no rewrite on every pass.
        if self
            .pod
            .stop_by
            .is_some_and(|prev| prev.as_second() <= stop_by.as_second())
        {
            return;
        }
        self.pod.stop_by = Some(stop_by);
        if let Err(e) = write_json(&self.dir, POD_STATE_FILE, &self.pod) {
            warn!(error = %e, "saving pod state");
        }
    }

    /// One pass over the pod (blocking: run it on the blocking pool). Returns `true` once the
    /// pod is deleted and cleaned up.
    fn step(&mut self) -> bool {
        for i in 0..self.ctrs.len() {
            self.observe(i);
        }
        let deadline = self.control.lock().delete_deadline;
        if let Some(deadline) = deadline {
            if !self.deleting {
                self.deleting = true;
                info!("stopping the pod");
            }
            self.persist_stop(deadline);
            // Every pass: a second delete may have brought the deadline forward.
            self.stop_all(deadline, StopReason::PodDeleted);
        } else {
            self.check_deadline();
            if !self.pod.deadline_exceeded && !self.terminal() {
                self.start_due();
            }
        }
        self.enforce_kills();
        self.publish();
        // Once this says done, the task removes the pod's cgroups and files and reports it
        // gone (`finish`): the cgroup removal waits for exiting processes on a timer.
        if self.deleting && self.ctrs.iter().all(|c| !c.is_active()) && self.shims_gone() {
            return true;
        }
        false
    }

    /// Pick up what the shims wrote.
    fn observe(&mut self, i: usize) {
        let c = &self.ctrs[i];
        let restart = c.p.restart;
        let shim = c.shim;
        match (c.m.state.clone(), c.rec.clone()) {
            (State::Starting { since, .. }, _) => {
                if let Some(exit) =
                    read_json::<ExitRecord>(&c.dir, EXIT_FILE).filter(|e| e.restart == restart)
                {
                    self.on_exit(i, exit);
                } else if let Some(rec) =
                    read_json::<ShimRecord>(&c.dir, SHIM_FILE).filter(|r| r.restart == restart)
                {
                    self.on_running(i, rec);
                } else if since.elapsed() >= START_TIMEOUT && !shim.is_some_and(|s| s.is_alive()) {
                    let tail = std::fs::read_to_string(c.dir.join("shim.err")).unwrap_or_default();
                    let now = Timestamp::now();
                    self.on_exit(
                        i,
                        ExitRecord {
                            restart,
                            exit_code: 128,
                            signal: None,
                            started_at: now,
                            finished_at: now,
                            start_error: Some(format!(
                                "the container's shim exited before starting it: {}",
                                tail.trim()
                            )),
                        },
                    );
                }
            }
            (State::Running { .. }, Some(rec)) => {
                if let Some(exit) =
                    read_json::<ExitRecord>(&c.dir, EXIT_FILE).filter(|e| e.restart == restart)
                {
                    self.on_exit(i, exit);
                } else if !rec.shim.is_alive() && !rec.container.is_alive() {
                    // Both gone without a record: killed from outside (e.g. kill -9 of the shim).
                    let exit = ExitRecord {
                        restart,
                        exit_code: 137,
                        signal: Some(9),
                        started_at: rec.started_at,
                        finished_at: Timestamp::now(),
                        start_error: Some("ContainerStatusUnknown".into()),
                    };
                    self.on_exit(i, exit);
                }
            }
            _ => {}
        }
    }

    fn pod_view(&self) -> PodView {
        PodView {
            deleting: self.deleting,
            deadline_exceeded: self.pod.deadline_exceeded,
        }
    }

    /// Feed `event` to container `i`'s state machine and do what it decides. `detail` is the
    /// message of a probe or hook failure, for its event.
    fn apply(&mut self, i: usize, event: Event, detail: &str) {
        let view = self.pod_view();
        let actions = self.ctrs[i].m.step(view, event, Instant::now());
        for action in actions {
            self.execute(i, action, detail);
        }
    }

    fn execute(&mut self, i: usize, action: Action, detail: &str) {
        let name = self.ctrs[i].plan.name.clone();
        match action {
            Action::StartProbe(kind) => {
                let spec = &self.ctrs[i].plan.spec;
                let probe = match kind {
                    ProbeKind::Startup => spec.startup_probe.clone(),
                    ProbeKind::Liveness => spec.liveness_probe.clone(),
                    ProbeKind::Readiness => spec.readiness_probe.clone(),
                };
                if let (Some(probe), Some(exec), Some(restart)) = (
                    probe,
                    self.ctrs[i].exec(),
                    self.ctrs[i].rec.as_ref().map(|r| r.restart),
                ) {
                    let handle = self.spawn_probe(i, restart, kind, probe, exec);
                    self.ctrs[i].probe_tasks.push(handle);
                }
            }
            Action::RunPostStart => self.run_post_start(i),
            Action::StopProbes => self.ctrs[i].stop_probes(),
            Action::Unhealthy(kind) => {
                let label = match kind {
                    ProbeKind::Startup => "Startup",
                    ProbeKind::Liveness => "Liveness",
                    ProbeKind::Readiness => "Readiness",
                };
                self.event(true, "Unhealthy", format!("{label} probe failed: {detail}"));
            }
            Action::PostStartHookFailed => {
                self.event(
                    true,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {detail}"),
                );
            }
            Action::Killing(why) => {
                let message = match why {
                    StopReason::ProbeFailed(ProbeKind::Startup) => {
                        format!("Container {name} failed startup probe, will be restarted")
                    }
                    StopReason::ProbeFailed(_) => {
                        format!("Container {name} failed liveness probe, will be restarted")
                    }
                    StopReason::PostStartFailed => {
                        format!("Container {name} failed its postStart hook, will be killed")
                    }
                    StopReason::PodDeleted | StopReason::DeadlineExceeded => return,
                };
                self.event(false, "Killing", message);
            }
            Action::Terminate { deadline, pre_stop } => self.terminate(i, deadline, pre_stop),
            Action::Kill => {
                // SIGKILL to PID 1 of the sandbox's PID namespace takes every process in it.
                if let Some(rec) = &self.ctrs[i].rec
                    && let Err(e) = rec.container.signal(Signal::SIGKILL)
                {
                    warn!(container = %name, error = %e, "sending SIGKILL");
                }
            }
            Action::Cancel => {
                let c = &mut self.ctrs[i];
                if c.p.restart_at.take().is_some() {
                    c.save();
                }
            }
            // Recorded by `on_exit`, which has the termination.
            Action::Restart { .. } | Action::Finish => {}
        }
    }

    fn on_running(&mut self, i: usize, rec: ShimRecord) {
        let c = &mut self.ctrs[i];
        debug!(container = %c.plan.name, pid = rec.container.pid, "container running");
        self.processes
            .lock()
            .insert(c.plan.name.clone(), rec.container);
        c.rec = Some(rec);
        c.shim = None;
        let name = c.plan.name.clone();
        self.event(false, "Started", format!("Started container {name}"));
        // Deleted while it was starting (perhaps in this very pass, before `step` saw the
        // delete): it is stopped at once, without hooks or probes.
        let delete_deadline = self.control.lock().delete_deadline;
        if let Some(deadline) = delete_deadline {
            let why = StopReason::PodDeleted;
            self.apply(i, Event::Stop { why, deadline }, "");
        }
        self.apply(i, Event::Running, "");
    }

    fn run_post_start(&mut self, i: usize) {
        let c = &self.ctrs[i];
        let (Some(handler), Some(exec), Some(rec)) = (
            c.plan
                .spec
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.clone()),
            c.exec(),
            c.rec.as_ref(),
        ) else {
            return;
        };
        let tx = self.probe_tx.clone();
        let restart = rec.restart;
        let target = ProbeTarget::for_container(&self.plan.pod_ip, &c.plan.spec);
        let task = tokio::spawn(async move {
            if let ProbeOutcome::Failure(msg) =
                run_handler(&handler, &target, exec.as_ref(), Duration::from_secs(60)).await
            {
                let _ = tx.send(ProbeMsg {
                    container: i,
                    restart,
                    report: Report::PostStartFailed(msg),
                });
            }
        });
        self.ctrs[i].probe_tasks.push(task.abort_handle());
    }

    fn spawn_probe(
        &self,
        i: usize,
        restart: u32,
        kind: ProbeKind,
        probe: Probe,
        exec: Arc<ContainerExec>,
    ) -> AbortHandle {
        let tx = self.probe_tx.clone();
        let target = ProbeTarget::for_container(&self.plan.pod_ip, &self.ctrs[i].plan.spec);
        let exec: Arc<dyn ExecRunner> = exec;
        tokio::spawn(probes::run(kind, probe, target, exec, move |result| {
            let _ = tx.send(ProbeMsg {
                container: i,
                restart,
                report: Report::Probe(result),
            });
        }))
        .abort_handle()
    }

    async fn on_probe(&mut self, msg: ProbeMsg) {
        let Some(c) = self.ctrs.get(msg.container) else {
            return;
        };
        let current = matches!(c.m.state, State::Running { .. })
            && c.rec.as_ref().is_some_and(|r| r.restart == msg.restart);
        if !current || self.deleting {
            return;
        }
        let (event, detail) = match msg.report {
            Report::Probe(r) => (
                Event::Probe {
                    kind: r.kind,
                    success: r.success,
                },
                r.message,
            ),
            Report::PostStartFailed(m) => (Event::PostStartFailed, m),
        };
        self.apply(msg.container, event, &detail);
        self.publish();
    }

    fn on_exit(&mut self, i: usize, exit: ExitRecord) {
        let uid = self.plan.uid.clone();
        let pod_name = format!("{}_{}({})", self.plan.name, self.plan.namespace, uid);
        let oom_now = self
            .env
            .cgroups
            .as_ref()
            .map(|cg| cg.container(&uid, &self.ctrs[i].plan.name).oom_kills())
            .unwrap_or(0);
        let c = &mut self.ctrs[i];
        self.processes.lock().remove(&c.plan.name);
        let unknown = exit.start_error.as_deref() == Some("ContainerStatusUnknown");
        let reason = if unknown {
            "ContainerStatusUnknown".to_string()
        } else if exit.start_error.is_some() {
            "StartError".to_string()
        } else if oom_now > c.oom_before {
            "OOMKilled".to_string()
        } else if exit.exit_code == 0 {
            "Completed".to_string()
        } else {
            "Error".to_string()
        };
        let message = if unknown {
            Some("The container could not be located when it exited (its shim was killed)".into())
        } else if let Some(e) = &exit.start_error {
            Some(e.clone())
        } else {
            termination_message(c, &reason)
        };
        let term = Termination {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason,
            message,
            started_at: exit.started_at,
            finished_at: exit.finished_at,
            restart: exit.restart,
        };
        info!(container = %c.plan.name, exit_code = term.exit_code, reason = %term.reason, "container exited");
        let ran = exit
            .finished_at
            .duration_since(exit.started_at)
            .try_into()
            .unwrap_or_default();
        let event = Event::Exited {
            exit_code: term.exit_code,
            ran,
        };
        let view = self.pod_view();
        let actions = self.ctrs[i].m.step(view, event, Instant::now());
        let c = &mut self.ctrs[i];
        c.rec = None;
        c.shim = None;
        let mut term = Some(term);
        for action in actions {
            match action {
                Action::Restart { delay } => {
                    let c = &mut self.ctrs[i];
                    let until = Instant::now() + delay;
                    c.p.backoff_secs = c.m.backoff_secs;
                    c.p.last = term.take();
                    c.p.restart_at = Some(timestamp_at(until));
                    c.p.waiting_reason = (!delay.is_zero()).then(|| {
                        format!(
                            "back-off {}s restarting failed container={} pod={pod_name}",
                            delay.as_secs(),
                            c.plan.name
                        )
                    });
                    c.save();
                    if !delay.is_zero() {
                        let m = format!("Back-off restarting failed container {}", c.plan.name);
                        self.event(true, "BackOff", m);
                    }
                }
                Action::Finish => {
                    let c = &mut self.ctrs[i];
                    let failed = term.as_ref().is_some_and(|t| t.exit_code != 0);
                    c.p.finished = term.take();
                    c.p.restart_at = None;
                    c.save();
                    if c.init() && failed && !self.deleting {
                        warn!(container = %c.plan.name, "init container failed; the pod fails");
                    }
                }
                other => self.execute(i, other, ""),
            }
        }
    }

    fn check_deadline(&mut self) {
        let Some(secs) = self.plan.active_deadline_seconds else {
            return;
        };
        if self.pod.deadline_exceeded || self.terminal() {
            return;
        }
        let age = Timestamp::now().duration_since(self.plan.created_at);
        if age.as_secs() < secs {
            return;
        }
        self.pod.deadline_exceeded = true;
        if let Err(e) = write_json(&self.dir, POD_STATE_FILE, &self.pod) {
            warn!(error = %e, "saving pod state");
        }
        self.event(
            true,
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline".into(),
        );
        let grace = Duration::from_secs(self.plan.termination_grace_seconds.unsigned_abs());
        self.stop_all(Instant::now() + grace, StopReason::DeadlineExceeded);
    }

    /// Launch what is due: the next init container, else every app container not yet running.
    fn start_due(&mut self) {
        let machines: Vec<&lifecycle::Container> = self.ctrs.iter().map(|c| &c.m).collect();
        for i in lifecycle::due_to_start(&machines, Instant::now()) {
            self.launch(i);
        }
    }

    fn launch(&mut self, i: usize) {
        let uid = self.plan.uid.clone();
        let env = self.env.clone();
        let c = &mut self.ctrs[i];
        let restart = if c.p.launched { c.p.restart + 1 } else { 0 };
        let _ = std::fs::remove_file(c.dir.join(SHIM_FILE));
        let _ = std::fs::remove_file(c.dir.join(EXIT_FILE));
        let _ = std::fs::write(c.dir.join(TERMINATION_LOG), b"");
        let mut cgroup_procs = Vec::new();
        if let Some(cg) = &env.cgroups {
            match cg.create(&uid, &c.plan.name, &Limits::for_container(&c.plan.spec)) {
                Ok(cgroup) => {
                    c.oom_before = cgroup.oom_kills();
                    cgroup_procs = cgroup.procs_files();
                }
                Err(e) => {
                    warn!(container = %c.plan.name, error = %e, "creating the container's cgroup; limits are not enforced for it")
                }
            }
        }
        let env_file = c.dir.join("env.json");
        if let Err(e) = write_json(&c.dir, "env.json", &c.plan.sandbox.environment()) {
            warn!(container = %c.plan.name, error = %e, "writing the container's environment");
        }
        let args = ShimArgs {
            dir: c.dir.clone(),
            restart,
            log: env.log,
            cgroup_procs,
            env_file: Some(env_file),
            stdin: c.plan.spec.stdin.unwrap_or(false),
            tty: c.plan.spec.tty.unwrap_or(false),
            argv: c.plan.argv.iter().map(Into::into).collect(),
        };
        c.p.launched = true;
        c.p.restart = restart;
        c.p.restart_at = None;
        c.p.waiting_reason = None;
        c.save();
        c.shim = match launch_shim(&env.shim_command, &args, &c.dir) {
            Ok(pid) => pid,
            Err(e) => {
                warn!(container = %c.plan.name, error = %e, "starting the shim");
                None
            }
        };
        c.rec = None;
        self.apply(i, Event::Launched, "");
    }

    /// preStop hook (when `pre_stop`, within what is left until `deadline`), then SIGTERM. The
    /// SIGKILL at `deadline` is the state machine's (a `Tick` past it).
    fn terminate(&mut self, i: usize, deadline: Instant, pre_stop: bool) {
        let c = &self.ctrs[i];
        let Some(rec) = &c.rec else {
            return;
        };
        let target = rec.container;
        let pre_stop = pre_stop
            .then(|| {
                c.plan
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.pre_stop.clone())
            })
            .flatten();
        let exec = ContainerExec {
            target,
            sandbox: c.plan.sandbox.clone(),
        };
        let probe_target = ProbeTarget::for_container(&self.plan.pod_ip, &c.plan.spec);
        let name = c.plan.name.clone();
        let sinks = self.env.sinks.clone();
        let uid = self.plan.uid.clone();
        self.event(false, "Killing", format!("Stopping container {name}"));
        tokio::spawn(async move {
            if let Some(handler) = pre_stop {
                let budget = deadline.saturating_duration_since(Instant::now());
                if let ProbeOutcome::Failure(msg) =
                    run_handler(&handler, &probe_target, &exec, budget).await
                {
                    sinks.pod(
                        &uid,
                        PodUpdate::Event {
                            warning: true,
                            reason: "FailedPreStopHook".into(),
                            message: format!("PreStopHook failed: {msg}"),
                        },
                    );
                }
            }
            if let Err(e) = target.signal(Signal::SIGTERM) {
                warn!(container = %name, error = %e, "sending SIGTERM");
            }
        });
    }

    fn stop_all(&mut self, deadline: Instant, why: StopReason) {
        for i in 0..self.ctrs.len() {
            self.apply(i, Event::Stop { why, deadline }, "");
        }
    }

    /// SIGKILL what is past its grace period.
    fn enforce_kills(&mut self) {
        for i in 0..self.ctrs.len() {
            self.apply(i, Event::Tick, "");
        }
    }

    fn shims_gone(&self) -> bool {
        self.ctrs
            .iter()
            .all(|c| read_json::<ShimRecord>(&c.dir, SHIM_FILE).is_none_or(|r| !r.shim.is_alive()))
    }

    /// The deleted pod's last step: remove its cgroups and files, then report it gone.
    async fn finish(self) {
        if let Some(cg) = &self.env.cgroups
            && let Err(e) = cg.remove_pod(&self.plan.uid).await
        {
            warn!(error = %e, "removing the pod's cgroups");
        }
        let secrets = self.env.secrets_dir.join(&self.plan.uid);
        let dir = self.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&secrets);
            std::fs::remove_dir_all(&dir)
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, dir = %self.dir.display(), "removing the pod's directory")
            }
            Err(e) => warn!(error = %e, "removing the pod's directory: task failed"),
        }
        self.env.sinks.pod(&self.plan.uid, PodUpdate::Gone);
    }

    fn init_done(&self) -> bool {
        self.ctrs
            .iter()
            .filter(|c| c.init())
            .all(|c| c.p.finished.as_ref().is_some_and(|t| t.exit_code == 0))
    }

    fn init_failed(&self) -> bool {
        self.ctrs
            .iter()
            .any(|c| c.init() && c.p.finished.as_ref().is_some_and(|t| t.exit_code != 0))
    }

    fn apps(&self) -> impl Iterator<Item = &Ctr> {
        self.ctrs.iter().filter(|c| !c.init())
    }

    /// Whether the pod reached Succeeded or Failed.
    fn terminal(&self) -> bool {
        matches!(self.phase().0, "Succeeded" | "Failed")
    }

    /// The phase, and the pod-level reason and message.
    fn phase(&self) -> (&'static str, Option<&'static str>, Option<String>) {
        // The core never moves a pod out of a terminal phase, so Failed is reported once the
        // containers are stopped and their final states are known.
        if self.pod.deadline_exceeded && !self.ctrs.iter().any(Ctr::is_active) {
            return (
                "Failed",
                Some("DeadlineExceeded"),
                Some("Pod was active on the node longer than the specified deadline".into()),
            );
        }
        if self.init_failed() {
            return ("Failed", None, None);
        }
        if !self.init_done() {
            return ("Pending", None, None);
        }
        let apps: Vec<&Ctr> = self.apps().collect();
        // As the kubelet: a container waiting for its first start (no earlier termination)
        // keeps the pod Pending; one waiting to restart does not.
        if apps.iter().any(|c| {
            matches!(c.m.state, State::NotStarted | State::Starting { .. }) && c.p.last.is_none()
        }) {
            return ("Pending", None, None);
        }
        if apps
            .iter()
            .any(|c| !matches!(c.m.state, State::Finished { .. }))
        {
            return ("Running", None, None);
        }
        if apps
            .iter()
            .all(|c| c.p.finished.as_ref().is_some_and(|t| t.exit_code == 0))
        {
            ("Succeeded", None, None)
        } else {
            ("Failed", None, None)
        }
    }

    fn condition(
        &mut self,
        t: &'static str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) -> PodCondition {
        let now = Timestamp::now();
        let entry = self.transitions.entry(t).or_insert((ok, now));
        if entry.0 != ok {
            *entry = (ok, now);
        }
        PodCondition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.map(str::to_string),
            message,
            last_transition_time: Some(Time(entry.1)),
            ..Default::default()
        }
    }

    fn container_status(&self, c: &Ctr, initializing: bool) -> ContainerStatus {
        let uid = &self.plan.uid;
        let waiting = |reason: &str, message: Option<String>| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message,
            }),
            ..Default::default()
        };
        let state = match (&c.m.state, &c.rec) {
            (State::NotStarted, _) if initializing || !c.init() && !self.init_done() => {
                waiting("PodInitializing", None)
            }
            (State::NotStarted | State::Starting { .. }, _) | (State::Running { .. }, None) => {
                waiting("ContainerCreating", None)
            }
            (State::Running { .. }, Some(rec)) => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(rec.started_at)),
                }),
                ..Default::default()
            },
            (State::BackOff { .. }, _) => match &c.p.waiting_reason {
                Some(m) => waiting("CrashLoopBackOff", Some(m.clone())),
                None => waiting("ContainerCreating", None),
            },
            (State::Finished { .. }, _) => match &c.p.finished {
                Some(t) => ContainerState {
                    terminated: Some(t.to_k8s(&c.id(uid))),
                    ..Default::default()
                },
                None => waiting("ContainerCreating", None),
            },
        };
        let last_state = c.p.last.as_ref().map(|t| ContainerState {
            terminated: Some(t.to_k8s(&format!("process://{uid}/{}/{}", c.plan.name, t.restart))),
            ..Default::default()
        });
        let (running, started, ready) = match c.m.state {
            State::Running { started, ready, .. } => (true, started, ready),
            _ => (false, false, false),
        };
        ContainerStatus {
            name: c.plan.name.clone(),
            image: c.plan.image.clone(),
            image_id: format!("process://{}", c.plan.image),
            container_id: c.p.launched.then(|| c.id(uid)),
            ready: if c.init() {
                c.p.finished.as_ref().is_some_and(|t| t.exit_code == 0)
            } else {
                running && ready
            },
            started: Some(running && started),
            restart_count: self.plan.restart_count_base
                + i32::try_from(c.p.restart).unwrap_or(i32::MAX),
            state: Some(state),
            last_state,
            ..Default::default()
        }
    }

    fn build_status(&mut self) -> PodStatus {
        let (phase, reason, message) = self.phase();
        let init_done = self.init_done();
        let init_statuses: Vec<ContainerStatus> = self
            .ctrs
            .iter()
            .filter(|c| c.init())
            .map(|c| self.container_status(c, false))
            .collect();
        let app_statuses: Vec<ContainerStatus> = self
            .apps()
            .map(|c| self.container_status(c, !init_done))
            .collect();
        let unready: Vec<&str> = app_statuses
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.as_str())
            .collect();
        let all_ready = unready.is_empty();
        let not_ready_reason = if matches!(phase, "Succeeded" | "Failed") {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let unready_msg = (!all_ready)
            .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
        let incomplete: Vec<String> = init_statuses
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.clone())
            .collect();
        let conditions = vec![
            self.condition(
                "Initialized",
                init_done,
                (!init_done).then_some("ContainersNotInitialized"),
                (!init_done).then(|| {
                    format!(
                        "containers with incomplete status: [{}]",
                        incomplete.join(" ")
                    )
                }),
            ),
            self.condition(
                "Ready",
                all_ready,
                (!all_ready).then_some(not_ready_reason),
                unready_msg.clone(),
            ),
            self.condition(
                "ContainersReady",
                all_ready,
                (!all_ready).then_some(not_ready_reason),
                unready_msg,
            ),
        ];
        let ip = self.plan.pod_ip.clone();
        PodStatus {
            phase: Some(phase.into()),
            reason: reason.map(str::to_string),
            message,
            host_ip: Some(ip.clone()),
            host_ips: Some(vec![HostIP { ip: ip.clone() }]),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: Some(Time(self.plan.created_at)),
            conditions: Some(conditions),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            container_statuses: Some(app_statuses),
            ..Default::default()
        }
    }

    fn publish(&mut self) {
        let status = self.build_status();
        let mut current = self.status.lock();
        if current.as_deref() == Some(&status) {
            return;
        }
        let status = Arc::new(status);
        *current = Some(status.clone());
        drop(current);
        self.env
            .sinks
            .pod(&self.plan.uid, PodUpdate::Status(status));
    }
}

/// The message for `state.terminated.message`: the termination-message file, or with
/// `FallbackToLogsOnError` the end of the log when the file is empty and the container failed.
fn termination_message(c: &Ctr, reason: &str) -> Option<String> {
    let mut text = std::fs::read(c.dir.join(TERMINATION_LOG)).unwrap_or_default();
    text.truncate(MAX_MESSAGE);
    if text.is_empty()
        && reason != "Completed"
        && c.plan.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
    {
        let mut out = log_tail(&c.dir, c.p.restart, FALLBACK_LOG_LINES);
        if out.len() > MAX_MESSAGE {
            out = out.split_off(out.len() - MAX_MESSAGE);
        }
        text = out;
    }
    (!text.is_empty()).then(|| String::from_utf8_lossy(&text).into_owned())
}

/// The last `lines` lines of an instance's log, joined (content only).
fn log_tail(dir: &Path, restart: u32, lines: usize) -> Vec<u8> {
    let mut ring: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut partial: Vec<u8> = Vec::new();
    for file in crate::logs::instance_files(dir, restart) {
        let Ok(data) = std::fs::read(&file) else {
            continue;
        };
        for line in data.split(|b| *b == b'\n') {
            let Some(rec) = crate::logs::parse_record(line) else {
                continue;
            };
            partial.extend_from_slice(rec.content);
            if !rec.partial {
                partial.push(b'\n');
                ring.push_back(std::mem::take(&mut partial));
                if ring.len() > lines {
                    ring.pop_front();
                }
            }
        }
    }
    ring.into_iter().flatten().collect()
}

/// Run a lifecycle hook (exec or httpGet) within `budget`.
async fn run_handler(
    handler: &LifecycleHandler,
    target: &ProbeTarget,
    exec: &dyn ExecRunner,
    budget: Duration,
) -> ProbeOutcome {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0).unsigned_abs()).min(budget))
            .await;
        return ProbeOutcome::Success;
    }
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        timeout_seconds: Some(i32::try_from(budget.as_secs().max(1)).unwrap_or(i32::MAX)),
        ..Default::default()
    };
    probes::check(&probe, target, exec).await
}

/// Start a shim detached from vkubelet (own process group, output to a file), so it and its
/// container keep running when vkubelet stops. Returns the shim's identity.
fn launch_shim(
    shim_command: &[String],
    args: &ShimArgs,
    dir: &Path,
) -> std::io::Result<Option<ProcessId>> {
    let Some((program, pre)) = shim_command.split_first() else {
        return Err(std::io::Error::other("no shim command"));
    };
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.err"))?;
    let mut child = tokio::process::Command::new(program)
        .args(pre)
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let id = child.id().and_then(ProcessId::of);
    // Reap it while vkubelet lives; after a restart, init reaps it.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_counts_only_once_its_shim_left_a_trace() {
        let dir = std::env::temp_dir().join(format!("vk-runner-launch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Recorded as launched, but no shim record, no exit and no live shim: never got going.
        assert!(!launch_got_going(&dir, 0));
        let now = Timestamp::now();
        let exit = ExitRecord {
            restart: 1,
            exit_code: 1,
            signal: None,
            started_at: now,
            finished_at: now,
            start_error: None,
        };
        write_json(&dir, EXIT_FILE, &exit).unwrap();
        assert!(
            launch_got_going(&dir, 1),
            "an exit of this instance is a trace"
        );
        assert!(
            !launch_got_going(&dir, 2),
            "an exit of an earlier instance is not"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stop_deadline_survives_in_the_pod_record() {
        let stop_by = Timestamp::now();
        let rec = PodPersisted {
            deadline_exceeded: false,
            stop_by: Some(stop_by),
        };
        let back: PodPersisted =
            serde_json::from_slice(&serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        // Records written before the field existed still read.
        let old: PodPersisted = serde_json::from_str(r#"{"deadlineExceeded":true}"#).unwrap();
        assert_eq!(old.stop_by, None);
    }

    #[test]
    fn log_tail_joins_partial_records_and_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("vk-runner-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ts = "2026-11-22T10:00:00.000000000Z";
        let text = format!(
            "{ts} stdout F one\n{ts} stderr P tw\n{ts} stderr F o\n{ts} stdout F three\ngarbage\n"
        );
        std::fs::write(dir.join("0.log"), text).unwrap();
        assert_eq!(log_tail(&dir, 0, 2), b"two\nthree\n");
        assert_eq!(log_tail(&dir, 0, 10), b"one\ntwo\nthree\n");
        assert!(log_tail(&dir, 1, 10).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
