//! Tests of the decision step: every transition docs/architecture.md describes ("Pod
//! lifecycle"), driven through [`decide`] and [`after`] with builder-made pods and facts.

use super::*;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::sync::LazyLock;

static NO_SIZING: LazyLock<SizingProfile> = LazyLock::new(SizingProfile::none);

fn policy() -> Policy<'static> {
    Policy {
        node_name: "vk-0",
        provider_kind: "sim",
        fail_fast: false,
        sizing: &NO_SIZING,
    }
}

fn fail_fast() -> Policy<'static> {
    Policy {
        fail_fast: true,
        ..policy()
    }
}

fn epoch() -> Time {
    Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// An API pod, built up from a bare one-container pod bound to the node.
#[derive(Clone)]
struct PodBuilder(Pod);

fn pod() -> PodBuilder {
    PodBuilder(Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("p".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("vk-0".into()),
            containers: vec![Container {
                name: "c".into(),
                image: Some("img:1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    })
}

impl PodBuilder {
    fn spec(mut self, f: impl FnOnce(&mut PodSpec)) -> Self {
        if let Some(s) = self.0.spec.as_mut() {
            f(s);
        }
        self
    }

    fn restart_policy(self, policy: &str) -> Self {
        self.spec(|s| s.restart_policy = Some(policy.into()))
    }

    fn image(self, image: &str) -> Self {
        self.spec(|s| s.containers[0].image = Some(image.into()))
    }

    fn host_network(self) -> Self {
        self.spec(|s| s.host_network = Some(true))
    }

    /// One container requesting `cpu` and `memory`.
    fn requests(self, cpu: &str, memory: &str) -> Self {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        self.spec(|s| {
            s.containers[0].resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(memory.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            })
        })
    }

    fn phase(mut self, phase: &str) -> Self {
        self.0.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self
    }

    /// Reported as started by a kubelet (us, before a restart), with `restarts` so far.
    fn started(mut self, restarts: i32) -> Self {
        let status = self.0.status.get_or_insert_with(Default::default);
        status.phase = Some("Running".into());
        status.start_time = Some(epoch());
        status.container_statuses = Some(vec![running_container("c", restarts)]);
        self
    }

    fn deleting(mut self, grace_seconds: i64) -> Self {
        self.0.metadata.deletion_timestamp = Some(epoch());
        self.0.metadata.deletion_grace_period_seconds = Some(grace_seconds);
        self
    }

    /// The stored copy of a pod running as specified: no spec.
    fn slimmed(mut self) -> Self {
        self.0.spec = None;
        self
    }

    fn build(self) -> Arc<Pod> {
        Arc::new(self.0)
    }
}

fn running_container(name: &str, restarts: i32) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        image: "img:1".into(),
        restart_count: restarts,
        ready: true,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(epoch()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a backend reports for a running pod.
fn backend_running() -> Arc<PodStatus> {
    Arc::new(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some("127.0.0.2".into()),
        container_statuses: Some(vec![running_container("c", 0)]),
        ..Default::default()
    })
}

/// What a backend reports once every container has stopped.
fn backend_stopped(phase: &str) -> Arc<PodStatus> {
    Arc::new(PodStatus {
        phase: Some(phase.into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    })
}

/// Facts about one pod, built up from "the API has `pod`, the backend is `backend`".
struct FactsBuilder(Facts);

fn facts(pod: Option<Arc<Pod>>, backend: Backend) -> FactsBuilder {
    let api_spec = pod.as_deref().map(spec_hash).unwrap_or_default();
    let restart_policy = pod
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.restart_policy.clone());
    FactsBuilder(Facts {
        uid: "u1".into(),
        api: pod,
        api_spec,
        restart_policy,
        backend,
        backend_status: None,
        references_changed: 0,
        written: None,
        now: Instant::now(),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    })
}

impl FactsBuilder {
    fn reporting(mut self, status: Arc<PodStatus>) -> Self {
        self.0.backend_status = Some(status);
        self
    }

    /// The spec hash of a pod the stored (slimmed) copy stood for.
    fn api_spec_of(mut self, pod: &Pod) -> Self {
        self.0.api_spec = spec_hash(pod);
        self.0.restart_policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone());
        self
    }

    fn references_changed(mut self, n: u64) -> Self {
        self.0.references_changed = n;
        self
    }

    fn at(mut self, now: Instant) -> Self {
        self.0.now = now;
        self
    }

    fn build(self) -> Facts {
        self.0
    }
}

/// A running pod's state as a create of `pod` leaves it.
fn running_state(pod: &Pod) -> PodState {
    PodState::Running(Running {
        applied_spec: Some(spec_hash(pod)),
        restart_base: 0,
        volumes_applied: Some(7),
        volumes_seen: 0,
        refresh_at: None,
    })
}

fn new_state() -> PodState {
    PodState::New {
        verdict: None,
        unsettled: false,
    }
}

fn action(step: &Step) -> &Action {
    match &step.then {
        Then::Do(a) => a,
        Then::Finish(next) => panic!("expected an action, the pass ends with {next:?}: {step:?}"),
    }
}

fn finish(step: &Step) -> Next {
    match &step.then {
        Then::Finish(next) => *next,
        Then::Do(a) => panic!("expected the pass to end, got {a:?}"),
    }
}

/// (warning, reason) of every event in the step.
fn events(step: &Step) -> Vec<(bool, &str)> {
    step.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event {
                warning, reason, ..
            } => Some((*warning, reason.as_str())),
            _ => None,
        })
        .collect()
}

fn event_message<'a>(step: &'a Step, reason: &str) -> &'a str {
    step.effects
        .iter()
        .find_map(|e| match e {
            Effect::Event {
                reason: r, message, ..
            } if r == reason => Some(message.as_str()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {reason} event in {step:?}"))
}

/// The status a step patches, and what the pass returns after it.
fn patched(step: &Step) -> (&serde_json::Value, Next) {
    match action(step) {
        Action::PatchStatus { patch, then, .. } => (&patch["status"], *then),
        other => panic!("expected a status patch, got {other:?}"),
    }
}

fn transient(retry_after: Option<Duration>) -> ProviderError {
    ProviderError::Transient {
        message: "backend busy".into(),
        retry_after,
    }
}

/// Creates `pod`: the decision must be a create; returns what it created with.
fn expect_create(step: &Step) -> (i32, u64) {
    match action(step) {
        Action::Create {
            restart_base, spec, ..
        } => (*restart_base, *spec),
        other => panic!("expected a create, got {other:?}"),
    }
}

fn created(spec: u64) -> Done {
    Done::Created {
        spec,
        seen: 0,
        result: CreateResult::Created {
            volumes_print: 7,
            refresh_at: None,
        },
    }
}

fn create_failed(spec: u64, result: CreateResult) -> Done {
    Done::Created {
        spec,
        seen: 0,
        result,
    }
}

// ---- create ---------------------------------------------------------------------------------

#[test]
fn nothing_happens_before_the_backend_is_known() {
    let p = pod().build();
    let mut state = new_state();
    let step = decide(
        &mut state,
        &facts(Some(p), Backend::Unknown).build(),
        &policy(),
    );
    assert_eq!(finish(&step), Next::Done);
    assert!(step.effects.is_empty());
    assert_eq!(state, new_state());
}

#[test]
fn a_new_pod_is_created_then_its_status_reported() {
    let p = pod().build();
    let mut state = new_state();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let step = decide(&mut state, &f, &policy());
    let (restart_base, spec) = expect_create(&step);
    assert_eq!((restart_base, spec), (0, spec_hash(&p)));

    // The backend reported while the create ran.
    let f = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_running())
        .build();
    let step = after(&mut state, &f, &policy(), created(spec));
    assert_eq!(state, running_state(&p));
    assert!(step.effects.contains(&Effect::BackendCreated));
    assert_eq!(events(&step), vec![(false, "ProviderCreateSuccess")]);
    let (status, then) = patched(&step);
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["podIP"], "127.0.0.2");
    assert_eq!(then, Next::Done);
}

#[test]
fn a_status_already_written_is_not_written_again() {
    let p = pod().build();
    let mut state = running_state(&p);
    let f = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_running())
        .build();
    let step = decide(&mut state, &f, &policy());
    let desired_print = match action(&step) {
        Action::PatchStatus { desired_print, .. } => *desired_print,
        other => panic!("expected a patch, got {other:?}"),
    };
    let current_print = fingerprint(p.status.as_ref().unwrap_or(&PodStatus::default()));
    let mut f = f;
    f.written = Some((desired_print, current_print));
    assert_eq!(finish(&decide(&mut state, &f, &policy())), Next::Done);
}

#[test]
fn an_unsupported_spec_is_rejected_for_good() {
    let p = pod().host_network().build();
    let mut state = new_state();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let step = decide(&mut state, &f, &policy());
    assert_eq!(events(&step), vec![(true, UNSUPPORTED_REASON)]);
    assert!(
        event_message(&step, UNSUPPORTED_REASON).contains("hostNetwork"),
        "the message names the problem: {step:?}"
    );
    let (status, then) = patched(&step);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], UNSUPPORTED_REASON);
    assert_eq!(then, Next::Done);
    assert!(matches!(state, PodState::Rejected { .. }));
    // Never created afterwards, whatever wakes it.
    let step = decide(&mut state, &f, &policy());
    assert!(matches!(action(&step), Action::PatchStatus { .. }));
    assert!(events(&step).is_empty());
}

#[test]
fn a_pod_the_profile_cannot_size_fails_with_the_rule_it_broke() {
    let cci = SizingProfile::builtin("cci").expect("built-in profile");
    let p = Policy {
        sizing: &cci,
        ..policy()
    };
    let api = pod().requests("9e15", "7Ei").build();
    let mut state = new_state();
    let step = decide(&mut state, &facts(Some(api), Backend::Absent).build(), &p);
    assert_eq!(events(&step), vec![(true, NORMALIZATION_FAILED_REASON)]);
    assert!(event_message(&step, NORMALIZATION_FAILED_REASON).contains("virtual node vk-0"));
    assert_eq!(patched(&step).0["reason"], NORMALIZATION_FAILED_REASON);
    assert!(matches!(state, PodState::Rejected { .. }));

    // A pod it can size goes to the backend normalised.
    let api = pod().requests("250m", "512Mi").build();
    let mut state = new_state();
    let step = decide(&mut state, &facts(Some(api), Backend::Absent).build(), &p);
    match action(&step) {
        Action::Create { size, .. } => assert!(size.is_some(), "sized under cci"),
        other => panic!("expected a create, got {other:?}"),
    }
}

#[test]
fn a_missing_reference_keeps_the_pod_waiting_until_it_appears() {
    let p = pod().build();
    let mut state = new_state();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let (_, spec) = expect_create(&decide(&mut state, &f, &policy()));
    let missing = CreateResult::MissingReference {
        message: "configmap \"cfg\" not found".into(),
        volume: false,
    };
    let step = after(&mut state, &f, &policy(), create_failed(spec, missing));
    assert_eq!(events(&step), vec![(true, "Failed")]);
    assert_eq!(
        event_message(&step, "Failed"),
        "Error: configmap \"cfg\" not found"
    );
    let (status, then) = patched(&step);
    assert!(status.get("phase").is_none(), "stays Pending: {status}");
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["reason"],
        CONFIG_ERROR_REASON
    );
    assert_eq!(then, Next::Retry(Duration::ZERO));
    assert_eq!(
        state
            .verdict()
            .and_then(|v| v.containers.as_ref())
            .map(|c| c.1.len()),
        Some(1)
    );

    // A volume's missing object is a FailedMount.
    let mut volume_state = new_state();
    let missing = CreateResult::MissingReference {
        message: "secret \"s\" not found".into(),
        volume: true,
    };
    let step = after(
        &mut volume_state,
        &f,
        &policy(),
        create_failed(spec, missing),
    );
    assert_eq!(events(&step), vec![(true, "FailedMount")]);

    // The object appeared: the next pass creates, and the waiting containers give way to what
    // the backend reports.
    let step = decide(&mut state, &f, &policy());
    expect_create(&step);
    let f = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_running())
        .build();
    let step = after(&mut state, &f, &policy(), created(spec));
    assert_eq!(state.verdict(), None);
    let (status, _) = patched(&step);
    assert_eq!(status["phase"], "Running");
    assert!(status["containerStatuses"][0]["state"]["running"].is_object());
}

#[test]
fn references_that_can_never_resolve_reject_the_pod() {
    let p = pod().build();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    for (result, reason) in [
        (
            CreateResult::InvalidReference("bad fieldPath".into()),
            CONFIG_ERROR_REASON,
        ),
        (CreateResult::TooLarge("too big".into()), TOO_LARGE_REASON),
    ] {
        let mut state = new_state();
        let step = after(&mut state, &f, &policy(), create_failed(1, result));
        assert_eq!(events(&step), vec![(true, reason)]);
        assert_eq!(patched(&step).0["reason"], reason);
        assert_eq!(patched(&step).0["phase"], "Failed");
        assert!(matches!(state, PodState::Rejected { .. }));
    }
}

#[test]
fn a_provider_failure_is_retried_while_the_pod_stays_pending() {
    let p = pod().build();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let mut state = new_state();
    let failed = CreateResult::ProviderFailed(transient(Some(Duration::from_secs(3))));
    let step = after(&mut state, &f, &policy(), create_failed(1, failed));
    assert_eq!(events(&step), vec![(true, "ProviderCreateFailed")]);
    let (status, then) = patched(&step);
    assert!(status.get("phase").is_none(), "stays Pending: {status}");
    assert_eq!(status["reason"], "ProviderFailed");
    assert_eq!(then, Next::Retry(Duration::from_secs(3)));
    // The next pass tries again.
    expect_create(&decide(&mut state, &f, &policy()));

    let mut state = new_state();
    let sold_out = CreateResult::ProviderFailed(ProviderError::SoldOut("no capacity".into()));
    let step = after(&mut state, &f, &policy(), create_failed(1, sold_out));
    assert_eq!(patched(&step).0["reason"], "ProviderSoldOut");
    assert_eq!(patched(&step).1, Next::Retry(Duration::ZERO));
}

#[test]
fn with_fail_fast_the_first_provider_failure_fails_the_pod() {
    let p = pod().build();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let mut state = new_state();
    let failed = CreateResult::ProviderFailed(transient(None));
    let step = after(&mut state, &f, &fail_fast(), create_failed(1, failed));
    assert_eq!(events(&step), vec![(true, "ProviderCreateFailed")]);
    let (status, then) = patched(&step);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "ProviderFailed");
    assert_eq!(then, Next::Done);
    assert!(matches!(state, PodState::Rejected { .. }));
    let step = decide(&mut state, &f, &fail_fast());
    assert!(
        matches!(action(&step), Action::PatchStatus { .. }),
        "never created again"
    );
}

#[test]
fn a_refusing_backend_fails_the_pod_without_retries() {
    let p = pod().build();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let mut state = new_state();
    let refused = CreateResult::ProviderFailed(ProviderError::InvalidInput("bad image".into()));
    let step = after(&mut state, &f, &policy(), create_failed(1, refused));
    assert_eq!(
        events(&step),
        vec![(true, "ProviderCreateFailed"), (true, "ProviderRejected")]
    );
    assert_eq!(patched(&step).0["phase"], "Failed");
    assert!(matches!(state, PodState::Rejected { .. }));
}

// ---- adopt ----------------------------------------------------------------------------------

#[test]
fn a_pod_found_on_the_backend_is_adopted_not_created() {
    let p = pod().started(0).build();
    let mut state = new_state();
    let f = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_running())
        .build();
    let step = decide(&mut state, &f, &policy());
    assert_eq!(action(&step), &Action::Track);
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Tracked {
            seen: 0,
            refresh_at: None,
        },
    );
    assert!(
        matches!(&state, PodState::Running(r) if r.applied_spec.is_none()),
        "{state:?}"
    );
    assert!(events(&step).is_empty(), "no create, no event");
    let (status, _) = patched(&step);
    assert_eq!(status["podIP"], "127.0.0.2");

    // What an adopted pod runs is unknown: a spec change is not passed on.
    let changed = pod().started(0).image("img:2").build();
    let f = facts(Some(changed), Backend::Present)
        .reporting(backend_running())
        .build();
    let step = decide(&mut state, &f, &policy());
    assert!(!matches!(action(&step), Action::Update { .. }));
}

#[test]
fn an_adopted_pods_tokens_are_refreshed_when_due() {
    let p = pod().started(0).build();
    let mut state = new_state();
    let f = facts(Some(p.clone()), Backend::Present).build();
    decide(&mut state, &f, &policy());
    let due = f.wall - Duration::from_secs(1);
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Tracked {
            seen: 0,
            refresh_at: Some(due),
        },
    );
    assert_eq!(action(&step), &Action::RefreshVolumes { applied: None });
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::VolumesRefreshed {
            seen: 0,
            result: VolumesResult::Applied {
                print: 9,
                refresh_at: Some(f.wall + Duration::from_secs(600)),
            },
        },
    );
    // Back when the next token is due.
    assert_eq!(
        finish_or_patch_then(&step),
        Next::After(Duration::from_secs(600))
    );
}

#[test]
fn a_reference_change_while_adopting_refreshes_the_volumes() {
    let p = pod().started(0).build();
    let mut state = new_state();
    let f = facts(Some(p), Backend::Present)
        .references_changed(1)
        .build();
    decide(&mut state, &f, &policy());
    // Tracking began before the change was counted.
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Tracked {
            seen: 0,
            refresh_at: None,
        },
    );
    assert_eq!(action(&step), &Action::RefreshVolumes { applied: None });
}

/// What the pass returns: at once, or after its final status patch.
fn finish_or_patch_then(step: &Step) -> Next {
    match &step.then {
        Then::Finish(next) => *next,
        Then::Do(Action::PatchStatus { then, .. }) => *then,
        Then::Do(other) => panic!("expected the end of the pass, got {other:?}"),
    }
}

// ---- update and volumes ----------------------------------------------------------------------

#[test]
fn a_changed_spec_is_passed_to_the_backend() {
    let old = pod().build();
    let new = pod().image("img:2").build();
    let mut state = running_state(&old);
    let f = facts(Some(new.clone()), Backend::Present)
        .reporting(backend_running())
        .build();
    let step = decide(&mut state, &f, &policy());
    let spec = match action(&step) {
        Action::Update { spec, sized, .. } => {
            assert_eq!(
                sized.spec.as_ref().map(|s| s.containers[0].image.clone()),
                Some(Some("img:2".into()))
            );
            *spec
        }
        other => panic!("expected an update, got {other:?}"),
    };
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Updated {
            spec,
            result: Ok(()),
        },
    );
    assert_eq!(events(&step), vec![(false, "ProviderUpdateSuccess")]);
    assert!(state.runs_spec(spec_hash(&new)));
    assert!(matches!(action(&step), Action::PatchStatus { .. }));
}

#[test]
fn an_update_the_backend_cannot_apply_is_said_once_and_not_retried() {
    let old = pod().build();
    let new = pod().image("img:2").build();
    let f = facts(Some(new.clone()), Backend::Present).build();
    let mut state = running_state(&old);
    decide(&mut state, &f, &policy());
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Updated {
            spec: spec_hash(&new),
            result: Err(ProviderError::NotSupported("image".into())),
        },
    );
    assert_eq!(events(&step), vec![(false, "ProviderUpdateUnsupported")]);
    assert!(state.runs_spec(spec_hash(&new)), "not asked again");

    // A transient failure is retried; the spec stays unapplied.
    let mut state = running_state(&old);
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Updated {
            spec: spec_hash(&new),
            result: Err(transient(None)),
        },
    );
    assert_eq!(events(&step), vec![(true, "ProviderUpdateFailed")]);
    assert_eq!(finish(&step), Next::Retry(Duration::ZERO));
    assert!(!state.runs_spec(spec_hash(&new)));

    // The backend no longer has it: handled as gone on the next pass.
    let mut state = running_state(&old);
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::Updated {
            spec: spec_hash(&new),
            result: Err(ProviderError::NotFound("u1".into())),
        },
    );
    assert_eq!(step.effects, vec![Effect::BackendGone]);
    assert_eq!(finish(&step), Next::After(Duration::ZERO));
}

#[test]
fn an_update_the_profile_cannot_size_leaves_the_running_pod_alone() {
    let cci = SizingProfile::builtin("cci").expect("built-in profile");
    let p = Policy {
        sizing: &cci,
        ..policy()
    };
    let old = pod().requests("250m", "512Mi").build();
    let new = pod().requests("9e15", "7Ei").image("img:2").build();
    let mut state = running_state(&old);
    let f = facts(Some(new.clone()), Backend::Present).build();
    let step = decide(&mut state, &f, &p);
    assert_eq!(events(&step), vec![(true, NORMALIZATION_FAILED_REASON)]);
    assert!(!matches!(step.then, Then::Do(Action::Update { .. })));
    assert!(state.runs_spec(spec_hash(&new)), "not tried again");
}

#[test]
fn a_changed_reference_refreshes_a_running_pods_volumes() {
    let p = pod().build();
    let mut state = running_state(&p);
    let f = facts(Some(p.clone()), Backend::Present)
        .references_changed(1)
        .build();
    let step = decide(&mut state, &f, &policy());
    assert_eq!(action(&step), &Action::RefreshVolumes { applied: Some(7) });

    // The backend refused the new content: still stale, retried.
    let failed = Done::VolumesRefreshed {
        seen: 1,
        result: VolumesResult::UpdateFailed(transient(None)),
    };
    let step = after(&mut state, &f, &policy(), failed);
    assert_eq!(events(&step), vec![(true, "FailedVolumeUpdate")]);
    assert_eq!(finish(&step), Next::Retry(Duration::ZERO));
    let step = decide(&mut state, &f, &policy());
    assert_eq!(action(&step), &Action::RefreshVolumes { applied: Some(7) });

    let applied = Done::VolumesRefreshed {
        seen: 1,
        result: VolumesResult::Applied {
            print: 8,
            refresh_at: None,
        },
    };
    after(&mut state, &f, &policy(), applied);
    assert!(matches!(&state, PodState::Running(r) if r.volumes_applied == Some(8)));
    let step = decide(&mut state, &f, &policy());
    assert!(
        !matches!(step.then, Then::Do(Action::RefreshVolumes { .. })),
        "fresh now"
    );

    // Unresolvable now: the pod keeps its content and is not retried until the next change.
    let f = facts(Some(p.clone()), Backend::Present)
        .references_changed(2)
        .build();
    decide(&mut state, &f, &policy());
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::VolumesRefreshed {
            seen: 2,
            result: VolumesResult::Unresolvable("key gone".into()),
        },
    );
    assert_eq!(events(&step), vec![(true, "FailedMount")]);
    assert!(!matches!(
        decide(&mut state, &f, &policy()).then,
        Then::Do(Action::RefreshVolumes { .. })
    ));
}

// ---- lost instances -------------------------------------------------------------------------

#[test]
fn a_lost_instance_is_re_created_under_always_and_on_failure() {
    for policy_name in [None, Some("Always"), Some("OnFailure")] {
        let mut builder = pod().started(2);
        if let Some(name) = policy_name {
            builder = builder.restart_policy(name);
        }
        let p = builder.build();
        let mut state = running_state(&p);
        let f = facts(Some(p.clone()), Backend::Gone)
            .reporting(backend_running())
            .build();
        let step = decide(&mut state, &f, &policy());
        assert_eq!(events(&step), vec![(true, LOST_REASON)], "{policy_name:?}");
        assert!(
            event_message(&step, LOST_REASON).contains(&format!(
                "restartPolicy {}",
                policy_name.unwrap_or("Always")
            )),
            "{step:?}"
        );
        assert!(step.effects.contains(&Effect::BackendReplaced));
        assert_eq!(finish(&step), Next::After(Duration::ZERO));
        assert_eq!(
            state,
            PodState::Restarting {
                restart_base: 3,
                verdict: None,
                unsettled: false,
            }
        );
        // Re-created, its restart count carried on; not reported lost a second time.
        let f = facts(Some(p.clone()), Backend::Absent).build();
        let step = decide(&mut state, &f, &policy());
        assert_eq!(expect_create(&step).0, 3);
        assert!(events(&step).is_empty());
        after(&mut state, &f, &policy(), created(spec_hash(&p)));
        assert!(matches!(&state, PodState::Running(r) if r.restart_base == 3));
    }
}

#[test]
fn a_lost_instance_fails_the_pod_under_never() {
    let p = pod().started(0).restart_policy("Never").build();
    let mut state = running_state(&p);
    let f = facts(Some(p), Backend::Gone).build();
    let step = decide(&mut state, &f, &policy());
    assert_eq!(events(&step), vec![(true, LOST_REASON)]);
    let (status, then) = patched(&step);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], LOST_REASON);
    assert_eq!(then, Next::Done);
    assert!(matches!(state, PodState::Rejected { .. }));
}

#[test]
fn a_started_pod_missing_from_the_backend_at_start_up_was_lost() {
    let p = pod().started(1).build();
    let mut state = new_state();
    let step = decide(
        &mut state,
        &facts(Some(p), Backend::Absent).build(),
        &policy(),
    );
    assert_eq!(events(&step), vec![(true, LOST_REASON)]);
    assert!(matches!(
        state,
        PodState::Restarting {
            restart_base: 2,
            ..
        }
    ));
}

#[test]
fn a_lost_slimmed_pod_is_fetched_whole_before_it_is_re_created() {
    let whole = pod().started(0).build();
    let slim = pod().started(0).slimmed().build();
    let mut state = PodState::Restarting {
        restart_base: 1,
        verdict: None,
        unsettled: false,
    };
    let f = facts(Some(slim), Backend::Absent)
        .api_spec_of(&whole)
        .build();
    assert_eq!(
        action(&decide(&mut state, &f, &policy())),
        &Action::FetchSpec
    );
    let fetched = facts(Some(whole.clone()), Backend::Absent).build();
    let step = after(
        &mut state,
        &fetched,
        &policy(),
        Done::SpecFetched { found: true },
    );
    assert_eq!(expect_create(&step), (1, spec_hash(&whole)));
    let step = after(
        &mut state,
        &f,
        &policy(),
        Done::SpecFetched { found: false },
    );
    assert_eq!(finish(&step), Next::Done, "gone: the watch will say so");
}

#[test]
fn a_backend_pod_that_finished_is_reported_not_lost() {
    let p = pod().started(0).build();
    let mut state = running_state(&p);
    let f = facts(Some(p), Backend::Gone)
        .reporting(backend_stopped("Succeeded"))
        .build();
    let step = decide(&mut state, &f, &policy());
    assert!(events(&step).is_empty());
    assert_eq!(patched(&step).0["phase"], "Succeeded");
    assert!(matches!(state, PodState::Running(_)));
}

// ---- terminal pods --------------------------------------------------------------------------

#[test]
fn a_terminal_pod_is_left_alone() {
    for phase in ["Succeeded", "Failed"] {
        let p = pod().phase(phase).build();
        for (mut state, backend) in [
            (new_state(), Backend::Absent),
            (running_state(&p), Backend::Gone),
            (
                PodState::Rejected {
                    verdict: Verdict::failed("X", "y"),
                    unsettled: false,
                },
                Backend::Absent,
            ),
        ] {
            let before = state.clone();
            let step = decide(
                &mut state,
                &facts(Some(p.clone()), backend).build(),
                &policy(),
            );
            assert_eq!(step.effects, vec![Effect::ForgetReferences], "{phase}");
            assert_eq!(finish(&step), Next::Done);
            assert_eq!(state, before);
        }
    }
}

// ---- delete ---------------------------------------------------------------------------------

fn stop(grace: u64) -> Action {
    Action::DeleteBackend {
        grace: Duration::from_secs(grace),
        purpose: DeletePurpose::Stop {
            grace: Duration::from_secs(grace),
        },
    }
}

fn release() -> Action {
    Action::DeleteBackend {
        grace: Duration::ZERO,
        purpose: DeletePurpose::Release,
    }
}

fn deleted(purpose: DeletePurpose, result: Result<(), ProviderError>) -> Done {
    Done::BackendDeleted { purpose, result }
}

#[test]
fn a_graceful_delete_ends_when_the_backend_stops_the_pod() {
    let p = pod().started(0).deleting(30).build();
    let t0 = Instant::now();
    let mut state = running_state(&p);
    let f = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_running())
        .at(t0)
        .build();
    let step = decide(&mut state, &f, &policy());
    assert_eq!(action(&step), &stop(30));
    let grace = Duration::from_secs(30);
    let step = after(
        &mut state,
        &f,
        &policy(),
        deleted(DeletePurpose::Stop { grace }, Ok(())),
    );
    assert_eq!(state, PodState::Stopping { since: t0 });
    assert_eq!(
        finish(&step),
        Next::After(grace + DEADLINE_SLACK),
        "the deadline's wake-up"
    );

    // Still running 5 s in: wait for the rest of the grace period, ask nothing again.
    let later = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_running())
        .at(t0 + Duration::from_secs(5))
        .build();
    let step = decide(&mut state, &later, &policy());
    assert_eq!(
        finish(&step),
        Next::After(Duration::from_secs(25) + DEADLINE_SLACK)
    );

    // Every container stopped: release the backend pod, then the API object.
    let stopped = facts(Some(p.clone()), Backend::Present)
        .reporting(backend_stopped("Running"))
        .at(t0 + Duration::from_secs(6))
        .build();
    let step = decide(&mut state, &stopped, &policy());
    assert_eq!(action(&step), &release());
    let step = after(
        &mut state,
        &stopped,
        &policy(),
        deleted(DeletePurpose::Release, Ok(())),
    );
    assert_eq!(action(&step), &Action::DeleteApi);
    let step = after(
        &mut state,
        &stopped,
        &policy(),
        Done::ApiDeleted { existed: true },
    );
    assert_eq!(finish(&step), Next::Done);
    assert_eq!(state, PodState::Released);
    // Deleted once: now only the watch's Delete event is awaited.
    let released = facts(Some(p.clone()), Backend::Gone).at(t0).build();
    assert_eq!(
        finish(&decide(&mut state, &released, &policy())),
        Next::Done
    );

    // The backend reporting the pod gone ends it the same way.
    let mut state = PodState::Stopping { since: t0 };
    let gone = facts(Some(p), Backend::Gone).at(t0).build();
    assert_eq!(
        action(&decide(&mut state, &gone, &policy())),
        &Action::DeleteApi
    );
}

#[test]
fn a_graceful_delete_ends_at_its_deadline() {
    let p = pod().started(0).deleting(10).build();
    let t0 = Instant::now();
    let mut state = PodState::Stopping { since: t0 };
    let f = facts(Some(p), Backend::Present)
        .reporting(backend_running())
        .at(t0 + Duration::from_secs(10))
        .build();
    assert_eq!(action(&decide(&mut state, &f, &policy())), &release());
}

#[test]
fn a_delete_of_a_pod_not_on_the_backend_releases_the_api_object() {
    let p = pod().deleting(30).build();
    let mut state = new_state();
    let absent = facts(Some(p.clone()), Backend::Absent).build();
    assert_eq!(
        action(&decide(&mut state, &absent, &policy())),
        &Action::DeleteApi
    );
    // Already gone (or replaced by a pod of the same name): nothing more to do.
    let step = after(
        &mut state,
        &absent,
        &policy(),
        Done::ApiDeleted { existed: false },
    );
    assert_eq!(finish(&step), Next::Done);
    // Before the backend list, nothing is decided.
    let unknown = facts(Some(p.clone()), Backend::Unknown).build();
    assert_eq!(finish(&decide(&mut state, &unknown, &policy())), Next::Done);
    // The backend did not know it: straight to the API object.
    let mut state = running_state(&p);
    let present = facts(Some(p), Backend::Present).build();
    let grace = Duration::from_secs(30);
    let step = after(
        &mut state,
        &present,
        &policy(),
        deleted(
            DeletePurpose::Stop { grace },
            Err(ProviderError::NotFound("u1".into())),
        ),
    );
    assert_eq!(action(&step), &Action::DeleteApi);
}

#[test]
fn a_failed_stop_is_retried_with_an_event() {
    let p = pod().started(0).deleting(30).build();
    let mut state = running_state(&p);
    let f = facts(Some(p), Backend::Present).build();
    let grace = Duration::from_secs(30);
    let step = after(
        &mut state,
        &f,
        &policy(),
        deleted(
            DeletePurpose::Stop { grace },
            Err(transient(Some(Duration::from_secs(2)))),
        ),
    );
    assert_eq!(events(&step), vec![(true, "ProviderDeleteFailed")]);
    assert_eq!(finish(&step), Next::Retry(Duration::from_secs(2)));
    assert!(
        matches!(state, PodState::Running(_)),
        "the stop is asked again"
    );
}

/// Deleting a pod whose create failed, as the API server sees it (graceful) or after a force
/// delete (no API object): the step for a backend that reports the pod absent.
fn delete_while_absent(state: &mut PodState, p: PodBuilder) -> (Step, Step) {
    let graceful = decide(
        &mut state.clone(),
        &facts(Some(p.deleting(30).build()), Backend::Absent).build(),
        &policy(),
    );
    let forced = decide(state, &facts(None, Backend::Absent).build(), &policy());
    (graceful, forced)
}

#[test]
fn a_create_whose_outcome_is_unknown_is_deleted_from_the_backend_before_the_pod_goes() {
    let p = pod().build();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    let mut state = new_state();
    // A 5xx or a timeout: the backend may hold the pod, or what the create wrote before it.
    let failed = CreateResult::ProviderFailed(transient(None));
    after(&mut state, &f, &policy(), create_failed(1, failed));
    // A later attempt that stops short of the backend does not settle it.
    let missing = CreateResult::MissingReference {
        message: "configmap \"c\" not found".into(),
        volume: true,
    };
    after(&mut state, &f, &policy(), create_failed(1, missing));
    assert!(state.unsettled(), "{state:?}");

    let (graceful, forced) = delete_while_absent(&mut state.clone(), pod());
    assert_eq!(action(&graceful), &release());
    let orphan = Action::DeleteBackend {
        grace: Duration::ZERO,
        purpose: DeletePurpose::Orphan,
    };
    assert_eq!(action(&forced), &orphan);
    // The backend not knowing the pod is the expected answer; then the pod goes as usual.
    for result in [Ok(()), Err(ProviderError::NotFound("u1".into()))] {
        let step = after(
            &mut state.clone(),
            &f,
            &policy(),
            deleted(DeletePurpose::Release, result.clone()),
        );
        assert_eq!(action(&step), &Action::DeleteApi);
        let step = after(
            &mut state.clone(),
            &f,
            &policy(),
            deleted(DeletePurpose::Orphan, result),
        );
        assert_eq!(step.effects, vec![Effect::DropPod]);
    }
    // A later refusal fails the pod, and what the earlier attempt left is still deleted; under
    // fail-fast a first failure of unknown outcome fails it at once, unsettled all the same.
    let refused = ProviderError::InvalidInput("bad image".into());
    let eof = ProviderError::Other("EOF".into());
    for (mut state, failure, policy) in
        [(state, refused, policy()), (new_state(), eof, fail_fast())]
    {
        let failed = CreateResult::ProviderFailed(failure);
        after(&mut state, &f, &policy, create_failed(1, failed));
        assert!(
            matches!(
                state,
                PodState::Rejected {
                    unsettled: true,
                    ..
                }
            ),
            "{state:?}"
        );
        assert_eq!(
            action(&delete_while_absent(&mut state, pod()).0),
            &release()
        );
    }

    // A lost instance's re-create that fails carries it into the restart.
    let mut state = new_state();
    let failed = CreateResult::ProviderFailed(transient(None));
    after(&mut state, &f, &policy(), create_failed(1, failed));
    let started = pod().started(0).build();
    decide(
        &mut state,
        &facts(Some(started), Backend::Gone).build(),
        &policy(),
    );
    assert!(
        matches!(
            state,
            PodState::Restarting {
                unsettled: true,
                ..
            }
        ),
        "{state:?}"
    );
}

#[test]
fn a_refused_create_leaves_nothing_to_delete() {
    let p = pod().build();
    let f = facts(Some(p.clone()), Backend::Absent).build();
    for refusal in [
        ProviderError::SoldOut("pool".into()),
        ProviderError::QuotaExceeded("pods".into()),
        ProviderError::InvalidInput("bad image".into()),
    ] {
        let mut state = new_state();
        let failed = CreateResult::ProviderFailed(refusal.clone());
        after(&mut state, &f, &policy(), create_failed(1, failed));
        assert!(!state.unsettled(), "{refusal}: {state:?}");
        let (graceful, forced) = delete_while_absent(&mut state, pod());
        assert_eq!(action(&graceful), &Action::DeleteApi, "{refusal}");
        assert_eq!(forced.effects, vec![Effect::DropPod], "{refusal}");
        assert_eq!(finish(&forced), Next::Done);
    }
}

// ---- orphans --------------------------------------------------------------------------------

#[test]
fn an_orphan_is_deleted_from_the_backend_then_forgotten() {
    let orphan = Action::DeleteBackend {
        grace: Duration::ZERO,
        purpose: DeletePurpose::Orphan,
    };
    for backend in [Backend::Present, Backend::Unknown] {
        let mut state = new_state();
        let f = facts(None, backend).build();
        assert_eq!(action(&decide(&mut state, &f, &policy())), &orphan);
        for result in [Ok(()), Err(ProviderError::NotFound("u1".into()))] {
            let step = after(
                &mut state,
                &f,
                &policy(),
                deleted(DeletePurpose::Orphan, result),
            );
            assert_eq!(step.effects, vec![Effect::DropPod]);
            assert_eq!(finish(&step), Next::Done);
        }
        let step = after(
            &mut state,
            &f,
            &policy(),
            deleted(DeletePurpose::Orphan, Err(transient(None))),
        );
        assert_eq!(events(&step), vec![(true, "ProviderDeleteFailed")]);
        assert_eq!(finish(&step), Next::Retry(Duration::ZERO));
    }
    // Nothing on the backend: only forgotten.
    let mut state = running_state(&pod().0);
    let step = decide(&mut state, &facts(None, Backend::Gone).build(), &policy());
    assert_eq!(step.effects, vec![Effect::DropPod]);
}

// ---- helpers --------------------------------------------------------------------------------

#[test]
fn a_volume_pod_is_checked_against_the_profile() {
    // Volumes the node's profile does not carry fail the pod like any unsupported spec.
    let only_config =
        SizingProfile::from_yaml("name: t\nmethod: none\nvolumes: [configMap]\n").expect("profile");
    let p = Policy {
        sizing: &only_config,
        ..policy()
    };
    let api = pod()
        .spec(|s| {
            s.volumes = Some(vec![Volume {
                name: "scratch".into(),
                empty_dir: Some(Default::default()),
                ..Default::default()
            }])
        })
        .build();
    let mut state = new_state();
    let step = decide(&mut state, &facts(Some(api), Backend::Absent).build(), &p);
    assert_eq!(events(&step), vec![(true, UNSUPPORTED_REASON)]);
}

fn pod_with_image(image: &str) -> Pod {
    Pod {
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn own_size_annotation_is_not_a_spec_change() {
    let a = pod_with_image("nginx:1");
    let mut b = a.clone();
    b.metadata.annotations = Some([(SIZE_ANNOTATION.to_string(), "0.5_1".to_string())].into());
    assert_eq!(spec_hash(&a), spec_hash(&b));
    b.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("team".into(), "a".into());
    assert_ne!(
        spec_hash(&a),
        spec_hash(&b),
        "other annotations still count"
    );
}

#[test]
fn spec_hash_follows_images_not_status() {
    let a = pod_with_image("nginx:1");
    let mut b = a.clone();
    b.status = Some(PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    });
    assert_eq!(spec_hash(&a), spec_hash(&b));
    assert_ne!(spec_hash(&a), spec_hash(&pod_with_image("nginx:2")));
}

#[test]
fn restart_count_is_the_max_over_containers() {
    let s = PodStatus {
        container_statuses: Some(vec![
            ContainerStatus {
                name: "a".into(),
                restart_count: 2,
                ..Default::default()
            },
            ContainerStatus {
                name: "b".into(),
                restart_count: 5,
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    assert_eq!(max_restart_count(Some(&s)), 5);
    assert_eq!(max_restart_count(None), 0);
}

#[test]
fn started_means_reported_by_a_kubelet() {
    let mut p = pod_with_image("x");
    assert!(!was_started(&p));
    p.status = Some(PodStatus {
        start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        )),
        ..Default::default()
    });
    assert!(was_started(&p));
}
