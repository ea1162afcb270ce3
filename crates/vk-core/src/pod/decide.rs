//! The pod controller's decisions, free of I/O: given one pod's [`PodState`], what the API and
//! the backend say of it ([`Facts`]) and the time, [`decide`] says what to do next; once the
//! shell has done it, [`after`] takes the result and says what follows. The shell in
//! `controller.rs` only executes [`Action`]s and [`Effect`]s and feeds results back.
//!
//! Invariants:
//! - a pass ends with [`Then::Finish`]; every [`Action`] is followed by a call to [`after`] with
//!   its own [`Done`], and [`Action::PatchStatus`] is always the last action of a pass;
//! - nothing is created while the backend's word is unknown ([`Backend::Unknown`]);
//! - a [`PodState::Rejected`] pod is never created, updated or retried: only its verdict is
//!   written, and a terminal API pod is never written at all;
//! - a pod whose API object is being deleted is only ever stopped and released, never created;
//! - a pod a create may have left something of on the backend (a failure that was not a
//!   refusal: [`ProviderError::may_have_created`]) is deleted from the backend before it is let
//!   go, even while the backend reports it absent;
//! - the same inputs give the same decision (no clock, no randomness read here).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::time::Instant;

use super::admission::{UNSUPPORTED_REASON, unsupported_features};
use super::status::{
    Verdict, all_containers_terminated, desired_status, is_terminal_phase, owned_fields,
    status_patch,
};
use crate::error::ProviderError;
use crate::sizing::{NORMALIZATION_FAILED_REASON, PodSize, SIZE_ANNOTATION, SizingProfile};

/// Reason for a pod whose backend instance disappeared without being asked to.
pub const LOST_REASON: &str = "ProviderPodLost";
/// The kubelet's reason for a container whose env or volumes cannot be resolved.
pub const CONFIG_ERROR_REASON: &str = "CreateContainerConfigError";
/// Reason for a pod whose resolved volume data exceeds the backend's limit.
pub const TOO_LARGE_REASON: &str = "VolumeDataTooLarge";

/// After a graceful stop's deadline, this much more before the enforcing wake-up, so the
/// deadline has surely passed when it comes.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// What the backend last said about the pod (an input: provider pushes and lists set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// Not known yet (before the first backend list).
    Unknown,
    /// The backend does not have this pod.
    Absent,
    Present,
    /// The backend reported the pod gone.
    Gone,
}

/// The controller's own progress with one pod. Only the worker reconciling the pod changes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PodState {
    /// Not created by this process yet: created when the backend lacks it, adopted when the
    /// backend has it. `verdict` says why it is still Pending (a missing reference, a create
    /// failure being retried). `unsettled`: a create failed in a way that may have left
    /// something on the backend.
    New {
        verdict: Option<Verdict>,
        unsettled: bool,
    },
    /// The backend lost the pod's instance and the loss was accounted for (event, restart count):
    /// the next create is the restart, not a lost instance found again.
    Restarting {
        restart_base: i32,
        verdict: Option<Verdict>,
        unsettled: bool,
    },
    /// On the backend: created by us, or adopted after a restart.
    Running(Running),
    /// Failed for good; only this verdict is written from now on. `unsettled` as for `New`.
    Rejected { verdict: Verdict, unsettled: bool },
    /// The API pod is being deleted; the backend was asked at `since` to stop it within the grace
    /// period.
    Stopping { since: Instant },
    /// The API object was deleted for good; only the watch's Delete event is awaited.
    Released,
}

impl PodState {
    /// The core's own word on the pod, which overrides the backend's status.
    pub(crate) fn verdict(&self) -> Option<&Verdict> {
        match self {
            Self::New { verdict, .. } | Self::Restarting { verdict, .. } => verdict.as_ref(),
            Self::Rejected { verdict, .. } => Some(verdict),
            Self::Running(_) | Self::Stopping { .. } | Self::Released => None,
        }
    }

    /// The restart count the pod's next instance starts from.
    fn restart_base(&self) -> i32 {
        match self {
            Self::Restarting { restart_base, .. } => *restart_base,
            Self::Running(r) => r.restart_base,
            _ => 0,
        }
    }

    /// Whether a create may have left something on the backend that no backend pod accounts
    /// for: the backend must be asked to delete the pod before it is let go.
    fn unsettled(&self) -> bool {
        match self {
            Self::New { unsettled, .. }
            | Self::Restarting { unsettled, .. }
            | Self::Rejected { unsettled, .. } => *unsettled,
            Self::Running(_) | Self::Stopping { .. } | Self::Released => false,
        }
    }

    /// The same pre-create state with another verdict; once unsettled, it stays so.
    fn with_verdict(&self, verdict: Verdict, unsettled: bool) -> PodState {
        let unsettled = unsettled || self.unsettled();
        match self {
            Self::Restarting { restart_base, .. } => Self::Restarting {
                restart_base: *restart_base,
                verdict: Some(verdict),
                unsettled,
            },
            _ => Self::New {
                verdict: Some(verdict),
                unsettled,
            },
        }
    }

    /// Failed for good with `verdict`; unsettled if this state was or `unsettled` says so.
    fn rejected(&self, verdict: Verdict, unsettled: bool) -> PodState {
        Self::Rejected {
            verdict,
            unsettled: unsettled || self.unsettled(),
        }
    }

    /// Whether the backend runs the spec the API pod has (so the stored copy may drop it).
    pub(crate) fn runs_spec(&self, api_spec: u64) -> bool {
        matches!(self, Self::Running(r) if r.applied_spec == Some(api_spec))
    }
}

/// What the controller knows of a pod the backend runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Running {
    /// Hash ([`spec_hash`]) of the spec the backend last accepted; `None` for a pod adopted after
    /// a restart, whose spec as run is not known (it is never updated).
    pub applied_spec: Option<u64>,
    pub restart_base: i32,
    /// Fingerprint of the volume contents the backend last received.
    pub volumes_applied: Option<u64>,
    /// The count of referenced-object changes ([`Facts::references_changed`]) the volumes were
    /// resolved after: when the count moves on, the volumes are stale.
    pub volumes_seen: u64,
    /// When a service-account token in the pod's volumes is due for refresh.
    pub refresh_at: Option<SystemTime>,
}

/// What the API and the backend say of one pod, read at the start of a step.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub uid: String,
    pub api: Option<Arc<Pod>>,
    /// [`spec_hash`] of the API pod, taken before the stored copy was slimmed.
    pub api_spec: u64,
    pub restart_policy: Option<String>,
    pub backend: Backend,
    pub backend_status: Option<Arc<PodStatus>>,
    /// How often a ConfigMap or Secret behind one of the pod's volumes changed.
    pub references_changed: u64,
    /// Fingerprints of what was last written to `pods/status` and of the API server's echo.
    pub written: Option<(u64, u64)>,
    pub now: Instant,
    pub wall: SystemTime,
}

/// The node-wide settings decisions depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    pub node_name: &'a str,
    pub provider_kind: &'a str,
    pub fail_fast: bool,
    pub sizing: &'a SizingProfile,
}

/// What the worker does with a key after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Done,
    After(Duration),
    /// A handled failure: retried with the queue's backoff, not sooner than this.
    Retry(Duration),
}

/// Why the backend is asked to delete a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeletePurpose {
    /// No API pod (an orphan, or a pod deleted from the API): delete at once, then forget it.
    Orphan,
    /// The first ask of a graceful delete: stop within the grace period.
    Stop { grace: Duration },
    /// The containers stopped or the deadline passed: release the pod at once.
    Release,
}

/// An I/O step for the shell; its result comes back to [`after`] as the matching [`Done`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    DeleteBackend {
        grace: Duration,
        purpose: DeletePurpose,
    },
    /// Delete the API object with grace 0 and a UID precondition.
    DeleteApi,
    /// The stored copy was slimmed; creating needs the whole spec from the API server.
    FetchSpec,
    /// Record the size annotation, resolve references and create the pod on the backend.
    Create {
        sized: Arc<Pod>,
        size: Option<PodSize>,
        restart_base: i32,
        /// [`spec_hash`] of the pod being created.
        spec: u64,
    },
    Update {
        sized: Arc<Pod>,
        restart_base: i32,
        spec: u64,
    },
    /// Watch what an adopted pod references, and plan its token refresh.
    Track,
    /// Re-resolve the running pod's volumes; hand them to the backend if they differ from
    /// `applied`.
    RefreshVolumes { applied: Option<u64> },
    /// Merge-patch `pods/status`; the pass then ends with `then`.
    PatchStatus {
        patch: serde_json::Value,
        desired_print: u64,
        then: Next,
    },
}

impl Action {
    /// A short name for logs (an action may carry a whole pod).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::DeleteBackend { .. } => "delete_backend",
            Self::DeleteApi => "delete_api",
            Self::FetchSpec => "fetch_spec",
            Self::Create { .. } => "create",
            Self::Update { .. } => "update",
            Self::Track => "track",
            Self::RefreshVolumes { .. } => "refresh_volumes",
            Self::PatchStatus { .. } => "patch_status",
        }
    }
}

/// A side effect that needs no answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
    /// The pod fails for good (logged as such; the event comes separately).
    Rejected {
        reason: String,
        message: String,
    },
    /// Stop watching what the pod references.
    ForgetReferences,
    /// Drop the pod from the table (it has no API object and no backend instance).
    DropPod,
    /// The backend accepted the pod: it is present (unless it reported it gone meanwhile).
    BackendCreated,
    /// The backend's instance is written off; the next one is created afresh.
    BackendReplaced,
    BackendGone,
    /// `pods/status` already says what we want: remember so, to skip the comparison next time.
    StatusMatches {
        desired_print: u64,
        current_print: u64,
    },
}

/// What comes after a step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Then {
    Do(Action),
    Finish(Next),
}

/// One decision: effects to apply now, then an action or the end of the pass.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub effects: Vec<Effect>,
    pub then: Then,
}

impl Step {
    fn finish(next: Next) -> Self {
        Self {
            effects: Vec::new(),
            then: Then::Finish(next),
        }
    }

    fn act(action: Action) -> Self {
        Self {
            effects: Vec::new(),
            then: Then::Do(action),
        }
    }

    /// `effects` happen before this step's own.
    fn after_effects(mut self, mut effects: Vec<Effect>) -> Self {
        effects.append(&mut self.effects);
        self.effects = effects;
        self
    }
}

/// The result of an [`Action::Create`].
#[derive(Debug)]
pub(crate) enum CreateResult {
    Created {
        volumes_print: u64,
        refresh_at: Option<SystemTime>,
    },
    /// A referenced ConfigMap/Secret/key does not exist (yet); `volume` when a volume needs it.
    MissingReference {
        message: String,
        volume: bool,
    },
    InvalidReference(String),
    TooLarge(String),
    ProviderFailed(ProviderError),
}

/// The result of an [`Action::RefreshVolumes`].
#[derive(Debug)]
pub(crate) enum VolumesResult {
    /// The backend has the current content (given now, or already), or cannot take new content.
    Applied {
        print: u64,
        refresh_at: Option<SystemTime>,
    },
    /// The pod is gone from the API, or from the backend: nothing to refresh.
    PodGone,
    /// The volumes cannot be resolved now; the running pod keeps the content it has.
    Unresolvable(String),
    UpdateFailed(ProviderError),
}

/// What an [`Action`] came to, with what [`after`] needs of the action itself.
#[derive(Debug)]
pub(crate) enum Done {
    BackendDeleted {
        purpose: DeletePurpose,
        result: Result<(), ProviderError>,
    },
    /// `existed`: the delete was accepted (false: the object was already gone or replaced).
    ApiDeleted {
        existed: bool,
    },
    /// `found`: the facts now carry the whole pod; otherwise it is gone.
    SpecFetched {
        found: bool,
    },
    Created {
        spec: u64,
        /// [`Facts::references_changed`] when resolution started.
        seen: u64,
        result: CreateResult,
    },
    Updated {
        spec: u64,
        result: Result<(), ProviderError>,
    },
    Tracked {
        /// [`Facts::references_changed`] when tracking started.
        seen: u64,
        refresh_at: Option<SystemTime>,
    },
    VolumesRefreshed {
        seen: u64,
        result: VolumesResult,
    },
}

/// The first step of a pass over one pod.
pub(crate) fn decide(state: &mut PodState, f: &Facts, p: &Policy<'_>) -> Step {
    let Some(pod) = f.api.clone() else {
        return without_api_pod(state, f);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return deletion(state, f, &pod);
    }
    if is_terminal_phase(pod.status.as_ref()) {
        return Step {
            effects: vec![Effect::ForgetReferences],
            then: Then::Finish(Next::Done),
        };
    }
    if let PodState::Rejected { verdict, .. } = state {
        return sync_status(f, &pod, Some(verdict), Next::Done);
    }
    match f.backend {
        Backend::Unknown => Step::finish(Next::Done),
        Backend::Gone if is_terminal_phase(f.backend_status.as_deref()) => {
            sync_status(f, &pod, state.verdict(), Next::Done)
        }
        Backend::Gone => instance_lost(state, f, &pod, p),
        Backend::Absent if !matches!(state, PodState::Restarting { .. }) && was_started(&pod) => {
            instance_lost(state, f, &pod, p)
        }
        Backend::Absent => create(state, f, &pod, p),
        Backend::Present => running(Stage::Update, state, f, &pod, p),
    }
}

/// The step after `done`. `f` is read again after the action, except its `api`: the pass keeps
/// the copy it started with (or the whole pod it fetched), so it is there whenever the action was
/// decided for an API pod.
pub(crate) fn after(state: &mut PodState, f: &Facts, p: &Policy<'_>, done: Done) -> Step {
    match done {
        Done::BackendDeleted { purpose, result } => backend_deleted(state, f, purpose, result),
        Done::ApiDeleted { existed } => {
            if existed {
                *state = PodState::Released;
            }
            Step::finish(Next::Done)
        }
        Done::SpecFetched { found } => match &f.api {
            Some(pod) if found && pod.spec.is_some() => {
                let pod = pod.clone();
                create(state, f, &pod, p)
            }
            // Gone; the watch will say so.
            _ => Step::finish(Next::Done),
        },
        Done::Created { spec, seen, result } => {
            let Some(pod) = f.api.clone() else {
                return Step::finish(Next::Done);
            };
            created(state, f, &pod, p, spec, seen, result)
        }
        Done::Updated { spec, result } => {
            let Some(pod) = f.api.clone() else {
                return Step::finish(Next::Done);
            };
            updated(state, f, &pod, p, spec, result)
        }
        Done::Tracked { seen, refresh_at } => {
            *state = PodState::Running(Running {
                applied_spec: None,
                restart_base: state.restart_base(),
                volumes_applied: None,
                volumes_seen: seen,
                refresh_at,
            });
            let Some(pod) = f.api.clone() else {
                return Step::finish(Next::Done);
            };
            running(Stage::Volumes, state, f, &pod, p)
        }
        Done::VolumesRefreshed { seen, result } => {
            let Some(pod) = f.api.clone() else {
                return Step::finish(Next::Done);
            };
            volumes_refreshed(state, f, &pod, p, seen, result)
        }
    }
}

fn event(warning: bool, reason: &str, message: impl Into<String>) -> Effect {
    Effect::Event {
        warning,
        reason: reason.to_string(),
        message: message.into(),
    }
}

fn without_api_pod(state: &PodState, f: &Facts) -> Step {
    let leftovers = f.backend == Backend::Absent && state.unsettled();
    if matches!(f.backend, Backend::Present | Backend::Unknown) || leftovers {
        // An orphan, or a pod deleted from the API (force delete, or our own final delete), or
        // what a create whose outcome is unknown may have left.
        return Step::act(Action::DeleteBackend {
            grace: Duration::ZERO,
            purpose: DeletePurpose::Orphan,
        });
    }
    Step {
        effects: vec![Effect::DropPod],
        then: Then::Finish(Next::Done),
    }
}

fn deletion(state: &mut PodState, f: &Facts, pod: &Pod) -> Step {
    let grace = Duration::from_secs(
        pod.metadata
            .deletion_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    );
    match f.backend {
        Backend::Unknown => return Step::finish(Next::Done),
        // What a create whose outcome is unknown may have left goes first.
        Backend::Absent if state.unsettled() => {
            return Step::act(Action::DeleteBackend {
                grace: Duration::ZERO,
                purpose: DeletePurpose::Release,
            });
        }
        Backend::Absent | Backend::Gone => return release_api_pod(state),
        Backend::Present => {}
    }
    let stopped = is_terminal_phase(pod.status.as_ref())
        || f.backend_status
            .as_deref()
            .is_some_and(all_containers_terminated);
    let since = match state {
        PodState::Stopping { since } => Some(*since),
        _ => None,
    };
    let waited = since.map(|t| f.now.saturating_duration_since(t));
    let deadline_passed = waited.is_some_and(|w| w >= grace);
    if stopped || deadline_passed || since.is_none() {
        // First ask: stop within the grace period. Later asks: the containers have stopped (or
        // the deadline passed), so release the backend pod right away.
        let purpose = if since.is_none() && !stopped {
            DeletePurpose::Stop { grace }
        } else {
            DeletePurpose::Release
        };
        let grace = match purpose {
            DeletePurpose::Stop { grace } => grace,
            _ => Duration::ZERO,
        };
        return Step::act(Action::DeleteBackend { grace, purpose });
    }
    Step::finish(Next::After(
        grace.saturating_sub(waited.unwrap_or_default()) + DEADLINE_SLACK,
    ))
}

/// Remove the API object for good, unless that was done already.
fn release_api_pod(state: &PodState) -> Step {
    if matches!(state, PodState::Released) {
        return Step::finish(Next::Done); // the watch's Delete event is on its way
    }
    Step::act(Action::DeleteApi)
}

fn backend_deleted(
    state: &mut PodState,
    f: &Facts,
    purpose: DeletePurpose,
    result: Result<(), ProviderError>,
) -> Step {
    let result = match result {
        Err(e) if !matches!(purpose, DeletePurpose::Stop { .. }) && e.is_not_found() => Ok(()),
        other => other,
    };
    match (purpose, result) {
        (_, Err(ProviderError::NotFound(_))) => release_api_pod(state),
        (_, Err(e)) => Step {
            effects: vec![event(true, "ProviderDeleteFailed", e.to_string())],
            then: Then::Finish(Next::Retry(e.retry_after().unwrap_or_default())),
        },
        (DeletePurpose::Orphan, Ok(())) => Step {
            effects: vec![Effect::DropPod],
            then: Then::Finish(Next::Done),
        },
        (DeletePurpose::Stop { grace }, Ok(())) => {
            *state = PodState::Stopping { since: f.now };
            // The backend reports Gone (or terminated containers) before the deadline; this
            // wake-up only enforces it.
            Step::finish(Next::After(grace + DEADLINE_SLACK))
        }
        (DeletePurpose::Release, Ok(())) => release_api_pod(state),
    }
}

/// Write the status the pod should have, if the API object does not say it already; the pass
/// then ends with `then`.
fn sync_status(f: &Facts, pod: &Pod, verdict: Option<&Verdict>, then: Next) -> Step {
    let current = pod.status.clone().unwrap_or_default();
    if is_terminal_phase(Some(&current)) {
        return Step::finish(then); // a kubelet never moves a pod out of a terminal phase
    }
    let desired = desired_status(&current, f.backend_status.as_deref(), verdict);
    // Compared as serialized (second-precision timestamps, server defaults dropped).
    let desired_print = fingerprint(&desired);
    let current_print = fingerprint(&current);
    if f.written == Some((desired_print, current_print)) {
        return Step::finish(then);
    }
    match status_patch(&current, &desired, &f.uid) {
        None => Step {
            effects: vec![Effect::StatusMatches {
                desired_print,
                current_print,
            }],
            then: Then::Finish(then),
        },
        Some(patch) => Step::act(Action::PatchStatus {
            patch,
            desired_print,
            then,
        }),
    }
}

/// Fail the pod for good with `reason`.
fn reject(state: &mut PodState, f: &Facts, pod: &Pod, reason: &str, message: String) -> Step {
    let effects = vec![
        Effect::Rejected {
            reason: reason.to_string(),
            message: message.clone(),
        },
        event(true, reason, message.clone()),
    ];
    let verdict = Verdict::failed(reason, message);
    let step = sync_status(f, pod, Some(&verdict), Next::Done);
    *state = state.rejected(verdict, false);
    step.after_effects(effects)
}

/// The backend lost a pod it ran: like a container exit, the restartPolicy decides.
fn instance_lost(state: &mut PodState, f: &Facts, pod: &Pod, p: &Policy<'_>) -> Step {
    let policy = f.restart_policy.as_deref().unwrap_or("Always");
    if policy == "Never" {
        let message = format!(
            "the pod's instance vanished from the {} backend; restartPolicy is Never",
            p.provider_kind
        );
        return reject(state, f, pod, LOST_REASON, message);
    }
    let restarts = max_restart_count(pod.status.as_ref());
    *state = PodState::Restarting {
        restart_base: restarts + 1,
        verdict: state.verdict().cloned(),
        unsettled: state.unsettled(),
    };
    Step {
        effects: vec![
            event(
                true,
                LOST_REASON,
                format!(
                    "the pod's instance vanished from the {} backend; re-creating it (restartPolicy {policy})",
                    p.provider_kind
                ),
            ),
            Effect::BackendReplaced,
        ],
        then: Then::Finish(Next::After(Duration::ZERO)),
    }
}

fn create(state: &mut PodState, f: &Facts, pod: &Arc<Pod>, p: &Policy<'_>) -> Step {
    if pod.spec.is_none() {
        return Step::act(Action::FetchSpec);
    }
    // Checked on the whole spec: a running pod's stored copy is slimmed, and a lost instance is
    // re-created from the fetched pod.
    let mut problems = unsupported_features(pod);
    problems.extend(p.sizing.spec_problems(pod));
    if !problems.is_empty() {
        let message = format!(
            "Pod cannot run on virtual node {} (provider {}): {}",
            p.node_name,
            p.provider_kind,
            problems.join("; ")
        );
        return reject(state, f, pod, UNSUPPORTED_REASON, message);
    }
    match sized(pod, p) {
        Ok((sized, size)) => Step::act(Action::Create {
            sized,
            size,
            restart_base: state.restart_base(),
            spec: spec_hash(pod),
        }),
        Err(message) => reject(state, f, pod, NORMALIZATION_FAILED_REASON, message),
    }
}

fn created(
    state: &mut PodState,
    f: &Facts,
    pod: &Pod,
    p: &Policy<'_>,
    spec: u64,
    seen: u64,
    result: CreateResult,
) -> Step {
    match result {
        CreateResult::Created {
            volumes_print,
            refresh_at,
        } => {
            *state = PodState::Running(Running {
                applied_spec: Some(spec),
                restart_base: state.restart_base(),
                volumes_applied: Some(volumes_print),
                volumes_seen: seen,
                refresh_at,
            });
            // The backend may have reported already; this also clears any failure verdict.
            sync_status(f, pod, None, Next::Done).after_effects(vec![
                Effect::BackendCreated,
                event(
                    false,
                    "ProviderCreateSuccess",
                    "Create pod in provider successfully",
                ),
            ])
        }
        CreateResult::MissingReference { message, volume } => {
            // As a kubelet's pod does, it waits; the object's watch wakes it the moment the
            // object appears, and backoff bounds the retries meanwhile.
            let effect = if volume {
                event(true, "FailedMount", message.clone())
            } else {
                event(true, "Failed", format!("Error: {message}"))
            };
            let verdict = Verdict::containers_waiting(pod, CONFIG_ERROR_REASON, message);
            let step = sync_status(f, pod, Some(&verdict), Next::Retry(Duration::ZERO));
            *state = state.with_verdict(verdict, false);
            step.after_effects(vec![effect])
        }
        CreateResult::InvalidReference(message) => {
            reject(state, f, pod, CONFIG_ERROR_REASON, message)
        }
        CreateResult::TooLarge(message) => reject(state, f, pod, TOO_LARGE_REASON, message),
        CreateResult::ProviderFailed(e) => {
            let failed = event(true, "ProviderCreateFailed", e.to_string());
            if e.is_permanent() {
                return reject(state, f, pod, e.pod_reason(), e.to_string())
                    .after_effects(vec![failed]);
            }
            if p.fail_fast {
                let verdict = Verdict::failed(e.pod_reason(), e.to_string());
                let step = sync_status(f, pod, Some(&verdict), Next::Done);
                *state = state.rejected(verdict, e.may_have_created());
                return step.after_effects(vec![failed]);
            }
            let verdict = Verdict::pending(e.pod_reason(), e.to_string());
            let step = sync_status(
                f,
                pod,
                Some(&verdict),
                Next::Retry(e.retry_after().unwrap_or_default()),
            );
            *state = state.with_verdict(verdict, e.may_have_created());
            step.after_effects(vec![failed])
        }
    }
}

/// Where a pass over a running pod goes on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Update,
    Track,
    Volumes,
    Status,
}

/// A pod the backend has: pass a spec change on, adopt it if it was found there, refresh its
/// volumes if due, and report its status.
fn running(from: Stage, state: &mut PodState, f: &Facts, pod: &Arc<Pod>, p: &Policy<'_>) -> Step {
    let mut effects = Vec::new();
    if from <= Stage::Update
        && let PodState::Running(r) = state
        && r.applied_spec.is_some_and(|h| h != f.api_spec)
    {
        match sized(pod, p) {
            Ok((sized, _)) => {
                return Step::act(Action::Update {
                    sized,
                    restart_base: r.restart_base,
                    spec: f.api_spec,
                })
                .after_effects(effects);
            }
            // A spec change the profile cannot size leaves the running pod as it is.
            Err(message) => {
                effects.push(event(true, NORMALIZATION_FAILED_REASON, message));
                r.applied_spec = Some(f.api_spec);
            }
        }
    }
    if from <= Stage::Track && !matches!(state, PodState::Running(_)) {
        if pod.spec.is_some() {
            return Step::act(Action::Track).after_effects(effects);
        }
        *state = PodState::Running(Running {
            applied_spec: None,
            restart_base: state.restart_base(),
            volumes_applied: None,
            volumes_seen: f.references_changed,
            refresh_at: None,
        });
    }
    if from <= Stage::Volumes
        && let PodState::Running(r) = state
    {
        let stale = r.volumes_seen != f.references_changed;
        let token_due = r.refresh_at.is_some_and(|t| f.wall >= t);
        if stale || token_due {
            return Step::act(Action::RefreshVolumes {
                applied: r.volumes_applied,
            })
            .after_effects(effects);
        }
    }
    // Come back when a token is due.
    let then = match state {
        PodState::Running(Running {
            refresh_at: Some(t),
            ..
        }) => Next::After(t.duration_since(f.wall).unwrap_or_default()),
        _ => Next::Done,
    };
    sync_status(f, pod, state.verdict(), then).after_effects(effects)
}

fn updated(
    state: &mut PodState,
    f: &Facts,
    pod: &Arc<Pod>,
    p: &Policy<'_>,
    spec: u64,
    result: Result<(), ProviderError>,
) -> Step {
    let mut effects = Vec::new();
    let applied = match result {
        Ok(()) => {
            effects.push(event(
                false,
                "ProviderUpdateSuccess",
                "Update pod in provider successfully",
            ));
            true
        }
        Err(ProviderError::NotFound(_)) => {
            return Step {
                effects: vec![Effect::BackendGone],
                then: Then::Finish(Next::After(Duration::ZERO)),
            };
        }
        // An honest "cannot": say so once; the running pod keeps its spec.
        Err(ProviderError::NotSupported(what)) => {
            effects.push(event(
                false,
                "ProviderUpdateUnsupported",
                format!(
                    "the {} backend does not change a running pod ({what}); the new spec applies when the pod is re-created",
                    p.provider_kind
                ),
            ));
            true
        }
        Err(e) => {
            effects.push(event(true, "ProviderUpdateFailed", e.to_string()));
            if !e.is_permanent() {
                return Step {
                    effects,
                    then: Then::Finish(Next::Retry(e.retry_after().unwrap_or_default())),
                };
            }
            // The running pod stays as it is; retrying cannot help.
            true
        }
    };
    if applied && let PodState::Running(r) = state {
        r.applied_spec = Some(spec);
    }
    running(Stage::Track, state, f, pod, p).after_effects(effects)
}

fn volumes_refreshed(
    state: &mut PodState,
    f: &Facts,
    pod: &Arc<Pod>,
    p: &Policy<'_>,
    seen: u64,
    result: VolumesResult,
) -> Step {
    let PodState::Running(r) = state else {
        return running(Stage::Status, state, f, pod, p);
    };
    let mut effects = Vec::new();
    match result {
        VolumesResult::Applied { print, refresh_at } => {
            r.volumes_seen = seen;
            r.volumes_applied = Some(print);
            r.refresh_at = refresh_at;
        }
        VolumesResult::PodGone => r.volumes_seen = seen,
        VolumesResult::Unresolvable(message) => {
            // As a kubelet does, the running pod keeps the content it has.
            r.volumes_seen = seen;
            effects.push(event(true, "FailedMount", message));
        }
        VolumesResult::UpdateFailed(e) => {
            // Still stale: the next pass tries again.
            return Step {
                effects: vec![event(true, "FailedVolumeUpdate", e.to_string())],
                then: Then::Finish(Next::Retry(e.retry_after().unwrap_or_default())),
            };
        }
    }
    running(Stage::Status, state, f, pod, p).after_effects(effects)
}

/// The pod as the backend is to run it: container resources normalised by the node's sizing
/// profile. `Err` quotes the rule the pod cannot meet.
pub(crate) fn sized(pod: &Arc<Pod>, p: &Policy<'_>) -> Result<(Arc<Pod>, Option<PodSize>), String> {
    if p.sizing.is_none() {
        return Ok((pod.clone(), None));
    }
    match p.sizing.normalize(pod) {
        Ok(n) => Ok((Arc::new(n.pod), n.size)),
        Err(e) => Err(format!(
            "Pod cannot run on virtual node {}: {e}",
            p.node_name
        )),
    }
}

/// A fingerprint of a status's owned fields, as serialized.
pub(crate) fn fingerprint(status: &PodStatus) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::Value::Object(owned_fields(status))
        .to_string()
        .hash(&mut h);
    h.finish()
}

/// Whether a kubelet (us, before a restart) already reported this pod as started.
pub(crate) fn was_started(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.start_time.is_some() || s.container_statuses.as_ref().is_some_and(|c| !c.is_empty())
    })
}

pub(crate) fn max_restart_count(status: Option<&PodStatus>) -> i32 {
    status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// Hash of what a running pod's backend instance must follow: the mutable parts of the spec and
/// the metadata a backend may surface.
pub(crate) fn spec_hash(pod: &Pod) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(spec) = &pod.spec {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            c.name.hash(&mut h);
            c.image.hash(&mut h);
        }
        spec.active_deadline_seconds.hash(&mut h);
    }
    pod.metadata.labels.hash(&mut h);
    // The size annotation is vkubelet's own record of what the backend runs: writing it must
    // not look like a change to pass to the backend.
    for (k, v) in pod.metadata.annotations.iter().flatten() {
        if k != SIZE_ANNOTATION {
            (k, v).hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests;
