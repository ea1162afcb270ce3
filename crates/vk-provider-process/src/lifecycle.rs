//! The decisions of a container's life, without any I/O: which state a container is in, and
//! what the runner must do when something happens to it. [`Container::step`] takes one
//! [`Event`] at one instant and returns the [`Action`]s; [`due_to_start`] says which containers
//! of a pod to launch (init containers one at a time, in order, then every app container).
//! The runner ([`crate::runner`]) reads the shims' records, launches, signals and probes, and
//! feeds what it saw back in here; all timing is explicit `Instant`s, so every transition is
//! unit-tested without a clock.
//!
//! The rules are the kubelet's: restarts by `restartPolicy` (init containers restart only on
//! failure, and never under `Never`), crash-loop backoff (first restart at once, then 10 s
//! doubling to 5 min, reset after 10 min of running), a startup probe gating liveness and
//! readiness, a failed liveness/startup probe or postStart hook stopping the container (and,
//! under `OnFailure`, a probe kill counting as a failure), preStop then SIGTERM then SIGKILL at
//! the end of the grace period.

use std::time::Duration;

use tokio::time::Instant;

use crate::probes::ProbeKind;

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without exiting starts its backoff afresh.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The API's spelling; anything else is the API server's default, `Always`.
    pub fn parse(policy: &str) -> Self {
        match policy {
            "Never" => Self::Never,
            "OnFailure" => Self::OnFailure,
            _ => Self::Always,
        }
    }
}

/// What a container has that changes the decisions (from its spec and the pod's).
#[derive(Debug, Clone, PartialEq)]
pub struct Traits {
    pub init: bool,
    pub policy: RestartPolicy,
    pub startup_probe: bool,
    pub liveness_probe: bool,
    pub readiness_probe: bool,
    pub post_start: bool,
    pub pre_stop: bool,
    /// The pod's `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// A probe's own `terminationGracePeriodSeconds`, used when that probe kills the container.
    pub startup_grace: Option<Duration>,
    pub liveness_grace: Option<Duration>,
}

/// Why vkubelet itself stops a container instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    PodDeleted,
    DeadlineExceeded,
    ProbeFailed(ProbeKind),
    PostStartFailed,
}

/// A stop under way: SIGKILL is due at `kill_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopping {
    pub why: StopReason,
    pub kill_at: Instant,
}

/// The state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Never launched (an app container also waits here for the init containers).
    NotStarted,
    /// Launched; the shim has not reported the container running. A stop requested meanwhile
    /// is applied once it runs.
    Starting {
        since: Instant,
        stop: Option<Stopping>,
    },
    Running {
        /// The startup probe passed (or there is none): liveness and readiness probes run.
        started: bool,
        ready: bool,
        stopping: Option<Stopping>,
    },
    /// Waiting for its restart.
    BackOff { until: Instant },
    /// Will not run again; `succeeded` when its last instance exited 0.
    Finished { succeeded: bool },
}

impl State {
    /// Whether an instance is launched (starting or running).
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Starting { .. } | Self::Running { .. })
    }
}

/// What happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The runner launched a new instance.
    Launched,
    /// The shim reports the instance running.
    Running,
    /// The instance exited (or could not start, or vanished) after running for `ran`.
    Exited { exit_code: i32, ran: Duration },
    /// A probe's debounced result changed.
    Probe { kind: ProbeKind, success: bool },
    /// The postStart hook failed.
    PostStartFailed,
    /// Stop the container, SIGKILL at `deadline` at the latest.
    Stop { why: StopReason, deadline: Instant },
    /// Time passed: act on a deadline that is due.
    Tick,
}

/// What the runner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StartProbe(ProbeKind),
    RunPostStart,
    /// The instance ended: its probe and hook tasks go.
    StopProbes,
    /// A probe failed (an `Unhealthy` event).
    Unhealthy(ProbeKind),
    /// The postStart hook failed (a `FailedPostStartHook` event).
    PostStartHookFailed,
    /// Stopping for `why` (the `Killing` event saying so, when vkubelet's own decision).
    Killing(StopReason),
    /// Run the preStop hook when `pre_stop` (within the time left until `deadline`), then send
    /// SIGTERM.
    Terminate {
        deadline: Instant,
        pre_stop: bool,
    },
    /// SIGKILL (the grace period is over).
    Kill,
    /// Restart after `delay` (a zero delay is no crash loop, so no `BackOff` event).
    Restart {
        delay: Duration,
    },
    /// Record the termination as final.
    Finish,
    /// A launch that will not happen: the pending restart is dropped.
    Cancel,
}

/// A container's state, with the backoff the next restart waits.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub traits: Traits,
    pub state: State,
    /// The delay stored for the restart after the next one (seconds, as persisted).
    pub backoff_secs: u64,
}

/// What the pod as a whole says about its containers' restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodView {
    pub deleting: bool,
    pub deadline_exceeded: bool,
}

impl Container {
    pub fn new(traits: Traits, state: State, backoff_secs: u64) -> Self {
        Self {
            traits,
            state,
            backoff_secs,
        }
    }

    /// Why vkubelet is stopping the current instance, if it is.
    pub fn stopping(&self) -> Option<Stopping> {
        match &self.state {
            State::Starting { stop, .. } => *stop,
            State::Running { stopping, .. } => *stopping,
            _ => None,
        }
    }

    /// The one transition function: `event` at `now`, and what to do about it.
    pub fn step(&mut self, pod: PodView, event: Event, now: Instant) -> Vec<Action> {
        let t = &self.traits;
        match (&mut self.state, event) {
            (State::NotStarted | State::BackOff { .. }, Event::Launched) => {
                self.state = State::Starting {
                    since: now,
                    stop: None,
                };
                Vec::new()
            }
            (State::Starting { stop, .. }, Event::Running) => {
                let pending = *stop;
                if let Some(s) = pending {
                    // Stopped while it was starting: stop it right away, nothing else runs.
                    self.state = State::Running {
                        started: false,
                        ready: false,
                        stopping: Some(s),
                    };
                    return vec![Action::Terminate {
                        deadline: s.kill_at,
                        pre_stop: !t.init && t.pre_stop,
                    }];
                }
                if t.init {
                    self.state = State::Running {
                        started: true,
                        ready: false,
                        stopping: None,
                    };
                    return Vec::new();
                }
                let mut actions = Vec::new();
                if t.post_start {
                    actions.push(Action::RunPostStart);
                }
                let started = !t.startup_probe;
                if started {
                    actions.extend(self.after_startup());
                } else {
                    actions.push(Action::StartProbe(ProbeKind::Startup));
                }
                self.state = State::Running {
                    started,
                    ready: started && !self.traits.readiness_probe,
                    stopping: None,
                };
                actions
            }
            (State::Starting { .. } | State::Running { .. }, Event::Exited { exit_code, ran }) => {
                let killed_for = self.stopping().map(|s| s.why);
                self.exited(pod, exit_code, ran, killed_for, now)
            }
            (
                State::Running {
                    started,
                    ready,
                    stopping,
                },
                Event::Probe { kind, success },
            ) => match (kind, success) {
                (ProbeKind::Readiness, _) => {
                    *ready = success;
                    if success {
                        Vec::new()
                    } else {
                        vec![Action::Unhealthy(kind)]
                    }
                }
                (ProbeKind::Liveness, true) => Vec::new(),
                (ProbeKind::Startup, true) => {
                    *started = true;
                    *ready = !t.readiness_probe;
                    self.after_startup()
                }
                (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                    let mut actions = vec![Action::Unhealthy(kind)];
                    if stopping.is_none() {
                        let own = match kind {
                            ProbeKind::Startup => t.startup_grace,
                            _ => t.liveness_grace,
                        };
                        let deadline = now + own.unwrap_or(t.grace);
                        actions.extend(self.stop(StopReason::ProbeFailed(kind), deadline));
                    }
                    actions
                }
            },
            (State::Running { stopping, .. }, Event::PostStartFailed) => {
                let mut actions = vec![Action::PostStartHookFailed];
                if stopping.is_none() {
                    let deadline = now + t.grace;
                    actions.extend(self.stop(StopReason::PostStartFailed, deadline));
                }
                actions
            }
            (_, Event::Stop { why, deadline }) => self.stop(why, deadline),
            (
                State::Running {
                    stopping: Some(s), ..
                },
                Event::Tick,
            ) if now >= s.kill_at => {
                vec![Action::Kill]
            }
            _ => Vec::new(),
        }
    }

    /// The probes that run once the container has started.
    fn after_startup(&self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.traits.liveness_probe {
            actions.push(Action::StartProbe(ProbeKind::Liveness));
        }
        if self.traits.readiness_probe {
            actions.push(Action::StartProbe(ProbeKind::Readiness));
        }
        actions
    }

    fn stop(&mut self, why: StopReason, deadline: Instant) -> Vec<Action> {
        let own_decision = matches!(
            why,
            StopReason::ProbeFailed(_) | StopReason::PostStartFailed
        );
        let earliest = |current: Option<Stopping>| Stopping {
            why,
            kill_at: current.map_or(deadline, |c| c.kill_at.min(deadline)),
        };
        match &mut self.state {
            State::Running { stopping, .. } => {
                let first = stopping.is_none();
                *stopping = Some(earliest(*stopping));
                if !first {
                    // Already being stopped: only the SIGKILL can come sooner.
                    return Vec::new();
                }
                let mut actions = Vec::new();
                if own_decision {
                    actions.push(Action::Killing(why));
                }
                actions.push(Action::Terminate {
                    deadline,
                    pre_stop: !self.traits.init && self.traits.pre_stop,
                });
                actions
            }
            State::Starting { stop, .. } => {
                *stop = Some(earliest(*stop));
                Vec::new()
            }
            State::NotStarted | State::BackOff { .. }
                if matches!(why, StopReason::PodDeleted | StopReason::DeadlineExceeded) =>
            {
                self.state = State::Finished { succeeded: false };
                vec![Action::Cancel]
            }
            _ => Vec::new(),
        }
    }

    fn exited(
        &mut self,
        pod: PodView,
        exit_code: i32,
        ran: Duration,
        killed_for: Option<StopReason>,
        now: Instant,
    ) -> Vec<Action> {
        let failed = exit_code != 0;
        let t = &self.traits;
        let restart = !pod.deleting
            && !pod.deadline_exceeded
            && if t.init {
                failed && t.policy != RestartPolicy::Never
            } else {
                match t.policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => {
                        failed || matches!(killed_for, Some(StopReason::ProbeFailed(_)))
                    }
                    RestartPolicy::Always => true,
                }
            };
        if restart {
            let (delay, next) = crash_backoff(self.backoff_secs, ran);
            self.backoff_secs = next;
            self.state = State::BackOff { until: now + delay };
            vec![Action::StopProbes, Action::Restart { delay }]
        } else {
            self.state = State::Finished { succeeded: !failed };
            vec![Action::StopProbes, Action::Finish]
        }
    }
}

/// The kubelet's crash-loop backoff: given the delay stored for the next restart and how long the
/// instance ran, the delay before this restart and the one stored for the next (seconds). The
/// first restart is immediate, then 10 s doubling up to 5 min; 10 minutes of running resets it.
pub fn crash_backoff(stored_secs: u64, ran: Duration) -> (Duration, u64) {
    let stored = if ran >= BACKOFF_RESET_AFTER {
        0
    } else {
        stored_secs
    };
    let delay = Duration::from_secs(stored);
    let next = if delay.is_zero() {
        BACKOFF_INITIAL
    } else {
        (delay * 2).min(BACKOFF_MAX)
    };
    (delay, next.as_secs())
}

/// Which containers to launch now (indices into `containers`, init containers first in the
/// order given): the first init container that has not succeeded, when it is due; once every
/// init container succeeded, every app container that is due. A container is due when it never
/// ran or its backoff is over. Nothing is due once an init container failed for good.
pub fn due_to_start(containers: &[&Container], now: Instant) -> Vec<usize> {
    let due = |s: &State| match s {
        State::NotStarted => true,
        State::BackOff { until } => now >= *until,
        _ => false,
    };
    for (i, c) in containers.iter().enumerate().filter(|(_, c)| c.traits.init) {
        match &c.state {
            State::Finished { succeeded: true } => {}
            s if due(s) => return vec![i],
            _ => return Vec::new(),
        }
    }
    containers
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.traits.init && due(&c.state))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn traits() -> Traits {
        Traits {
            init: false,
            policy: RestartPolicy::Always,
            startup_probe: false,
            liveness_probe: false,
            readiness_probe: false,
            post_start: false,
            pre_stop: false,
            grace: 30 * SEC,
            startup_grace: None,
            liveness_grace: None,
        }
    }

    fn with(f: impl FnOnce(&mut Traits)) -> Traits {
        let mut t = traits();
        f(&mut t);
        t
    }

    fn running(t: Traits) -> Container {
        Container::new(
            t,
            State::Running {
                started: true,
                ready: true,
                stopping: None,
            },
            0,
        )
    }

    /// A container brought to Running through its events (so probes start as they would).
    fn started(t: Traits, now: Instant) -> (Container, Vec<Action>) {
        let mut c = Container::new(t, State::NotStarted, 0);
        assert_eq!(c.step(PodView::default(), Event::Launched, now), vec![]);
        assert!(matches!(c.state, State::Starting { .. }));
        let actions = c.step(PodView::default(), Event::Running, now);
        (c, actions)
    }

    fn exit(code: i32) -> Event {
        Event::Exited {
            exit_code: code,
            ran: SEC,
        }
    }

    fn ready(c: &Container) -> (bool, bool) {
        match c.state {
            State::Running { started, ready, .. } => (started, ready),
            ref s => panic!("not running: {s:?}"),
        }
    }

    #[test]
    fn crash_backoff_doubles_to_five_minutes_and_resets_after_ten_minutes_of_running() {
        let mut stored = 0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let (delay, next) = crash_backoff(stored, SEC);
            delays.push(delay.as_secs());
            stored = next;
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(crash_backoff(300, 599 * SEC), (300 * SEC, 300));
        assert_eq!(crash_backoff(300, 600 * SEC), (Duration::ZERO, 10));
    }

    #[test]
    fn every_restart_policy_and_exit_code_of_an_app_container() {
        let now = Instant::now();
        for (policy, code, restarts) in [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::Always, 137, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 1, true),
            (RestartPolicy::OnFailure, 137, true),
            (RestartPolicy::Never, 0, false),
            (RestartPolicy::Never, 1, false),
            (RestartPolicy::Never, 137, false),
        ] {
            let mut c = running(with(|t| t.policy = policy));
            let actions = c.step(PodView::default(), exit(code), now);
            let case = format!("{policy:?} exit {code}");
            if restarts {
                assert_eq!(
                    actions,
                    vec![
                        Action::StopProbes,
                        Action::Restart {
                            delay: Duration::ZERO
                        }
                    ],
                    "{case}"
                );
                assert_eq!(c.state, State::BackOff { until: now }, "{case}");
            } else {
                assert_eq!(actions, vec![Action::StopProbes, Action::Finish], "{case}");
                assert_eq!(
                    c.state,
                    State::Finished {
                        succeeded: code == 0
                    },
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn every_restart_policy_and_exit_code_of_an_init_container() {
        let now = Instant::now();
        for (policy, code, restarts) in [
            (RestartPolicy::Always, 0, false),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 1, true),
            (RestartPolicy::Never, 0, false),
            (RestartPolicy::Never, 1, false),
        ] {
            let mut c = running(with(|t| {
                t.init = true;
                t.policy = policy;
            }));
            let actions = c.step(PodView::default(), exit(code), now);
            let case = format!("init {policy:?} exit {code}");
            let expected = if restarts {
                Action::Restart {
                    delay: Duration::ZERO,
                }
            } else {
                Action::Finish
            };
            assert_eq!(actions, vec![Action::StopProbes, expected], "{case}");
            assert_eq!(
                matches!(c.state, State::Finished { succeeded: true }),
                code == 0,
                "{case}"
            );
        }
    }

    #[test]
    fn nothing_restarts_while_the_pod_is_deleted_or_past_its_deadline() {
        let now = Instant::now();
        for pod in [
            PodView {
                deleting: true,
                deadline_exceeded: false,
            },
            PodView {
                deleting: false,
                deadline_exceeded: true,
            },
        ] {
            let mut c = running(traits());
            assert_eq!(
                c.step(pod, exit(1), now),
                vec![Action::StopProbes, Action::Finish],
                "{pod:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_from_zero_by_doubling_to_five_minutes_and_resets_after_ten_minutes() {
        let mut now = Instant::now();
        let mut c = Container::new(traits(), State::NotStarted, 0);
        let mut delays = Vec::new();
        for _ in 0..8 {
            c.step(PodView::default(), Event::Launched, now);
            c.step(PodView::default(), Event::Running, now);
            let actions = c.step(PodView::default(), exit(1), now + SEC);
            let Some(Action::Restart { delay }) = actions.last().cloned() else {
                panic!("{actions:?}");
            };
            assert_eq!(
                c.state,
                State::BackOff {
                    until: now + SEC + delay
                }
            );
            // Not due a moment before the backoff ends, due when it does.
            let refs = [&c];
            if !delay.is_zero() {
                assert!(due_to_start(&refs, now + SEC + delay - SEC / 2).is_empty());
            }
            assert_eq!(due_to_start(&refs, now + SEC + delay), vec![0]);
            delays.push(delay.as_secs());
            now += SEC + delay;
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        // Ten minutes of running start the backoff afresh; a second less does not.
        assert_eq!(crash_backoff(300, 599 * SEC), (300 * SEC, 300));
        c.step(PodView::default(), Event::Launched, now);
        c.step(PodView::default(), Event::Running, now);
        let long = Event::Exited {
            exit_code: 1,
            ran: 600 * SEC,
        };
        let actions = c.step(PodView::default(), long, now + 600 * SEC);
        assert_eq!(
            actions.last(),
            Some(&Action::Restart {
                delay: Duration::ZERO
            })
        );
        assert_eq!(c.backoff_secs, 10);
    }

    #[test]
    fn liveness_failure_stops_with_the_probes_grace_and_the_exit_restarts_even_under_on_failure() {
        let now = Instant::now();
        let t = with(|t| {
            t.policy = RestartPolicy::OnFailure;
            t.liveness_probe = true;
            t.pre_stop = true;
            t.liveness_grace = Some(5 * SEC);
        });
        let (mut c, actions) = started(t, now);
        assert_eq!(actions, vec![Action::StartProbe(ProbeKind::Liveness)]);
        let fail = Event::Probe {
            kind: ProbeKind::Liveness,
            success: false,
        };
        let actions = c.step(PodView::default(), fail.clone(), now + SEC);
        let why = StopReason::ProbeFailed(ProbeKind::Liveness);
        assert_eq!(
            actions,
            vec![
                Action::Unhealthy(ProbeKind::Liveness),
                Action::Killing(why),
                Action::Terminate {
                    deadline: now + 6 * SEC,
                    pre_stop: true
                },
            ]
        );
        // A repeated failure does not stop it twice.
        assert_eq!(
            c.step(PodView::default(), fail, now + 2 * SEC),
            vec![Action::Unhealthy(ProbeKind::Liveness)]
        );
        // It exits 0 on SIGTERM: under OnFailure a probe kill still restarts it.
        let actions = c.step(PodView::default(), exit(0), now + 3 * SEC);
        assert_eq!(
            actions,
            vec![
                Action::StopProbes,
                Action::Restart {
                    delay: Duration::ZERO
                }
            ]
        );
    }

    #[test]
    fn liveness_failure_without_a_probe_grace_uses_the_pods() {
        let now = Instant::now();
        let (mut c, _) = started(with(|t| t.liveness_probe = true), now);
        let actions = c.step(
            PodView::default(),
            Event::Probe {
                kind: ProbeKind::Liveness,
                success: false,
            },
            now,
        );
        assert_eq!(
            actions.last(),
            Some(&Action::Terminate {
                deadline: now + 30 * SEC,
                pre_stop: false
            })
        );
    }

    #[test]
    fn readiness_flips_with_its_probe_and_never_stops_the_container() {
        let now = Instant::now();
        let (mut c, actions) = started(with(|t| t.readiness_probe = true), now);
        assert_eq!(actions, vec![Action::StartProbe(ProbeKind::Readiness)]);
        assert_eq!(ready(&c), (true, false), "unready until the probe passes");
        let probe = |success| Event::Probe {
            kind: ProbeKind::Readiness,
            success,
        };
        assert_eq!(c.step(PodView::default(), probe(true), now), vec![]);
        assert_eq!(ready(&c), (true, true));
        assert_eq!(
            c.step(PodView::default(), probe(false), now),
            vec![Action::Unhealthy(ProbeKind::Readiness)]
        );
        assert_eq!(ready(&c), (true, false));
        assert_eq!(c.stopping(), None);
        c.step(PodView::default(), probe(true), now);
        assert_eq!(ready(&c), (true, true));
    }

    #[test]
    fn without_a_readiness_probe_a_started_container_is_ready() {
        let now = Instant::now();
        let (c, actions) = started(traits(), now);
        assert_eq!(actions, vec![]);
        assert_eq!(ready(&c), (true, true));
    }

    #[test]
    fn a_startup_probe_gates_liveness_and_readiness() {
        let now = Instant::now();
        let t = with(|t| {
            t.startup_probe = true;
            t.liveness_probe = true;
            t.readiness_probe = true;
        });
        let (mut c, actions) = started(t, now);
        assert_eq!(actions, vec![Action::StartProbe(ProbeKind::Startup)]);
        assert_eq!(ready(&c), (false, false));
        let actions = c.step(
            PodView::default(),
            Event::Probe {
                kind: ProbeKind::Startup,
                success: true,
            },
            now + SEC,
        );
        assert_eq!(
            actions,
            vec![
                Action::StartProbe(ProbeKind::Liveness),
                Action::StartProbe(ProbeKind::Readiness)
            ]
        );
        assert_eq!(ready(&c), (true, false));
    }

    #[test]
    fn a_failed_startup_probe_stops_the_container_with_its_own_grace() {
        let now = Instant::now();
        let t = with(|t| {
            t.startup_probe = true;
            t.liveness_probe = true;
            t.startup_grace = Some(2 * SEC);
        });
        let (mut c, _) = started(t, now);
        let actions = c.step(
            PodView::default(),
            Event::Probe {
                kind: ProbeKind::Startup,
                success: false,
            },
            now,
        );
        let why = StopReason::ProbeFailed(ProbeKind::Startup);
        assert_eq!(
            actions,
            vec![
                Action::Unhealthy(ProbeKind::Startup),
                Action::Killing(why),
                Action::Terminate {
                    deadline: now + 2 * SEC,
                    pre_stop: false
                }
            ]
        );
        assert_eq!(ready(&c), (false, false), "liveness never started");
    }

    #[test]
    fn a_failed_post_start_hook_kills_and_restarts_the_container() {
        let now = Instant::now();
        let t = with(|t| {
            t.post_start = true;
            t.grace = 3 * SEC;
        });
        let (mut c, actions) = started(t, now);
        assert_eq!(actions, vec![Action::RunPostStart]);
        let actions = c.step(PodView::default(), Event::PostStartFailed, now);
        assert_eq!(
            actions,
            vec![
                Action::PostStartHookFailed,
                Action::Killing(StopReason::PostStartFailed),
                Action::Terminate {
                    deadline: now + 3 * SEC,
                    pre_stop: false
                }
            ]
        );
        // It ignores SIGTERM: killed when the grace period ends, then restarted.
        assert_eq!(
            c.step(PodView::default(), Event::Tick, now + 2 * SEC),
            vec![]
        );
        assert_eq!(
            c.step(PodView::default(), Event::Tick, now + 3 * SEC),
            vec![Action::Kill]
        );
        assert_eq!(
            c.step(PodView::default(), exit(137), now + 3 * SEC),
            vec![
                Action::StopProbes,
                Action::Restart {
                    delay: Duration::ZERO
                }
            ]
        );
    }

    #[test]
    fn pre_stop_then_exit_within_the_grace_period_is_never_killed() {
        let now = Instant::now();
        let mut c = running(with(|t| t.pre_stop = true));
        let deleted = PodView {
            deleting: true,
            deadline_exceeded: false,
        };
        let stop = Event::Stop {
            why: StopReason::PodDeleted,
            deadline: now + 30 * SEC,
        };
        assert_eq!(
            c.step(deleted, stop, now),
            vec![Action::Terminate {
                deadline: now + 30 * SEC,
                pre_stop: true
            }],
            "a delete is no decision of vkubelet's: no Killing event for it"
        );
        assert_eq!(c.step(deleted, Event::Tick, now + 29 * SEC), vec![]);
        assert_eq!(
            c.step(deleted, exit(0), now + 29 * SEC),
            vec![Action::StopProbes, Action::Finish]
        );
        assert_eq!(c.step(deleted, Event::Tick, now + 31 * SEC), vec![]);
    }

    #[test]
    fn pre_stop_beyond_the_grace_period_ends_in_sigkill_and_a_shorter_delete_wins() {
        let now = Instant::now();
        let mut c = running(with(|t| t.pre_stop = true));
        let deleted = PodView {
            deleting: true,
            deadline_exceeded: false,
        };
        let stop = |deadline| Event::Stop {
            why: StopReason::PodDeleted,
            deadline,
        };
        c.step(deleted, stop(now + 30 * SEC), now);
        // A second delete with a shorter grace period brings the SIGKILL forward; a longer one
        // does not push it back; neither runs preStop again.
        assert_eq!(c.step(deleted, stop(now + 10 * SEC), now + SEC), vec![]);
        assert_eq!(c.step(deleted, stop(now + 60 * SEC), now + SEC), vec![]);
        assert_eq!(c.step(deleted, Event::Tick, now + 9 * SEC), vec![]);
        assert_eq!(
            c.step(deleted, Event::Tick, now + 10 * SEC),
            vec![Action::Kill]
        );
        // Killed again at every later pass until it is gone.
        assert_eq!(
            c.step(deleted, Event::Tick, now + 11 * SEC),
            vec![Action::Kill]
        );
        assert_eq!(
            c.step(deleted, exit(137), now + 11 * SEC),
            vec![Action::StopProbes, Action::Finish]
        );
    }

    #[test]
    fn a_stop_while_starting_applies_once_the_container_runs() {
        let now = Instant::now();
        let t = with(|t| {
            t.pre_stop = true;
            t.post_start = true;
            t.liveness_probe = true;
        });
        let mut c = Container::new(t, State::NotStarted, 0);
        c.step(PodView::default(), Event::Launched, now);
        let stop = Event::Stop {
            why: StopReason::DeadlineExceeded,
            deadline: now + 5 * SEC,
        };
        assert_eq!(c.step(PodView::default(), stop, now), vec![]);
        let actions = c.step(PodView::default(), Event::Running, now + SEC);
        assert_eq!(
            actions,
            vec![Action::Terminate {
                deadline: now + 5 * SEC,
                pre_stop: true
            }],
            "no hook or probe for an instance that is being stopped"
        );
    }

    #[test]
    fn a_delete_cancels_pending_starts_and_restarts() {
        let now = Instant::now();
        for state in [State::NotStarted, State::BackOff { until: now + SEC }] {
            let mut c = Container::new(traits(), state.clone(), 10);
            let stop = Event::Stop {
                why: StopReason::PodDeleted,
                deadline: now,
            };
            assert_eq!(c.step(PodView::default(), stop, now), vec![Action::Cancel]);
            assert_eq!(c.state, State::Finished { succeeded: false }, "{state:?}");
        }
    }

    #[test]
    fn init_containers_run_one_at_a_time_in_order_then_the_apps_together() {
        let now = Instant::now();
        let init = with(|t| t.init = true);
        let mut cs = vec![
            Container::new(init.clone(), State::NotStarted, 0),
            Container::new(init, State::NotStarted, 0),
            Container::new(traits(), State::NotStarted, 0),
            Container::new(traits(), State::NotStarted, 0),
        ];
        let due = |cs: &[Container]| due_to_start(&cs.iter().collect::<Vec<_>>(), now);
        assert_eq!(due(&cs), vec![0]);
        cs[0].step(PodView::default(), Event::Launched, now);
        assert_eq!(due(&cs), Vec::<usize>::new(), "the first one is running");
        cs[0].step(PodView::default(), Event::Running, now);
        cs[0].step(PodView::default(), exit(0), now);
        assert_eq!(due(&cs), vec![1]);
        cs[1].step(PodView::default(), Event::Launched, now);
        cs[1].step(PodView::default(), Event::Running, now);
        cs[1].step(PodView::default(), exit(0), now);
        assert_eq!(due(&cs), vec![2, 3]);
    }

    #[test]
    fn a_failed_init_container_is_retried_with_backoff_except_under_never() {
        let now = Instant::now();
        for policy in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            let init = with(|t| {
                t.init = true;
                t.policy = policy;
            });
            let app = with(|t| t.policy = policy);
            let mut cs = vec![
                Container::new(init, State::NotStarted, 10),
                Container::new(app, State::NotStarted, 0),
            ];
            cs[0].step(PodView::default(), Event::Launched, now);
            cs[0].step(PodView::default(), Event::Running, now);
            cs[0].step(PodView::default(), exit(1), now);
            let due = |cs: &[Container], at| due_to_start(&cs.iter().collect::<Vec<_>>(), at);
            match policy {
                RestartPolicy::Never => {
                    assert_eq!(cs[0].state, State::Finished { succeeded: false });
                    assert!(due(&cs, now + 600 * SEC).is_empty(), "the pod fails");
                }
                _ => {
                    assert_eq!(
                        cs[0].state,
                        State::BackOff {
                            until: now + 10 * SEC
                        }
                    );
                    assert!(due(&cs, now + 9 * SEC).is_empty(), "{policy:?}");
                    assert_eq!(due(&cs, now + 10 * SEC), vec![0], "{policy:?}");
                }
            }
        }
    }

    #[test]
    fn events_that_do_not_apply_change_nothing() {
        let now = Instant::now();
        let mut c = Container::new(traits(), State::Finished { succeeded: true }, 0);
        for e in [
            Event::Running,
            exit(1),
            Event::PostStartFailed,
            Event::Tick,
            Event::Probe {
                kind: ProbeKind::Liveness,
                success: false,
            },
        ] {
            assert_eq!(c.step(PodView::default(), e.clone(), now), vec![], "{e:?}");
            assert_eq!(c.state, State::Finished { succeeded: true });
        }
    }
}
