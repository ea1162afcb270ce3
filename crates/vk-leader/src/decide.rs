//! The election as a pure state machine: what one candidate does next, given what it holds, the
//! Lease it just read (or failed to read) and the time on its own monotonic clock.
//!
//! Safety rests on two clocks never being compared across machines:
//! - a follower takes an expired lease only after it has seen the *same* record (same
//!   resourceVersion) for a whole lease duration on its own clock — a holder's wall-clock
//!   `renewTime` is never trusted, so clock skew between replicas cannot shorten a term;
//! - a leader counts its renew deadline from the moment it *sent* its last successful renewal,
//!   and steps down when the deadline passes; since `renew_deadline < lease_duration` and any
//!   follower's observation of that renewal starts after it was sent, the leader has stopped
//!   acting before anyone may take over.

use std::time::Duration;

use tokio::time::Instant;

/// Timing of the election, client-go's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a record must stay unchanged before a follower may take the lease.
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// Pause between attempts (reads by followers, renewals by the leader).
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Why these timings cannot keep two writers apart, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.retry_period.is_zero() {
            return Some("the retry period must be positive".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Some(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}), or a \
                 leader could still act after another replica took over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Some(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?}), or a \
                 leader would step down between two renewals",
                self.retry_period, self.renew_deadline
            ));
        }
        None
    }
}

/// What a read of the Lease returned, reduced to what the election needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// No Lease object (yet).
    Missing,
    /// The Lease as stored.
    Found(Record),
    /// The read failed (API server unreachable, forbidden, ...).
    Unreadable,
}

/// The election fields of a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `spec.holderIdentity`; `None` or empty when released.
    pub holder: Option<String>,
    /// `spec.leaseDurationSeconds` of the holder (a released lease says 1).
    pub lease_duration: Duration,
    /// `metadata.resourceVersion`: opaque, compared for equality only.
    pub version: String,
}

impl Record {
    fn held_by(&self, identity: &str) -> bool {
        self.holder.as_deref() == Some(identity)
    }

    fn free(&self) -> bool {
        self.holder.as_deref().is_none_or(str::is_empty)
    }
}

/// One candidate's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not the holder. `seen` is the other holder's record as last read and when, on our clock,
    /// it was first read in that version.
    Follower { seen: Option<(Record, Instant)> },
    /// The holder. `renewed_at` is when the last successful write (acquire or renew) was sent.
    Leader { renewed_at: Instant },
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the Lease holding it.
    Create,
    /// Write ourselves as holder over this version (a new term: acquireTime, transitions + 1).
    Acquire { over: String },
    /// Refresh our own record at this version.
    Renew { over: String },
    /// Nothing to do until the next retry.
    Wait,
    /// Stop acting: leadership is gone (taken by `by`, or the renew deadline passed).
    StepDown { by: Option<String> },
}

/// Decide the next step after `observed` was read at `now`. Returns the step and the standing to
/// keep until a write (if any) has been answered.
pub fn decide(
    standing: &Standing,
    observed: &Observation,
    identity: &str,
    timing: &Timing,
    now: Instant,
) -> (Step, Standing) {
    match standing {
        Standing::Leader { renewed_at } => {
            let overdue = now.saturating_duration_since(*renewed_at) >= timing.renew_deadline;
            match observed {
                Observation::Found(r) if r.held_by(identity) => {
                    if overdue {
                        (Step::StepDown { by: None }, follower())
                    } else {
                        (
                            Step::Renew {
                                over: r.version.clone(),
                            },
                            standing.clone(),
                        )
                    }
                }
                Observation::Found(r) => (
                    Step::StepDown {
                        by: r.holder.clone().filter(|h| !h.is_empty()),
                    },
                    follower_seeing(r, now),
                ),
                // Someone deleted the Lease; nobody else can hold it, so keep the term by
                // re-creating it — unless we have been out of touch too long to be sure.
                Observation::Missing if !overdue => (Step::Create, standing.clone()),
                Observation::Missing | Observation::Unreadable if overdue => {
                    (Step::StepDown { by: None }, follower())
                }
                Observation::Missing | Observation::Unreadable => (Step::Wait, standing.clone()),
            }
        }
        Standing::Follower { seen } => match observed {
            Observation::Missing => (Step::Create, standing.clone()),
            Observation::Unreadable => (Step::Wait, standing.clone()),
            Observation::Found(r) if r.free() || r.held_by(identity) => (
                // Our own name on it: a previous run of this identity held it (no one else may
                // have written since, or the version would name them).
                Step::Acquire {
                    over: r.version.clone(),
                },
                standing.clone(),
            ),
            Observation::Found(r) => match seen {
                Some((prev, since)) if prev.version == r.version => {
                    if now.saturating_duration_since(*since) >= r.lease_duration {
                        (
                            Step::Acquire {
                                over: r.version.clone(),
                            },
                            standing.clone(),
                        )
                    } else {
                        (Step::Wait, standing.clone())
                    }
                }
                _ => (Step::Wait, follower_seeing(r, now)),
            },
        },
    }
}

/// How a write's answer changes the standing. `sent_at` is when the write was sent.
pub fn after_write(
    standing: &Standing,
    step: &Step,
    outcome: WriteOutcome,
    sent_at: Instant,
) -> Standing {
    match (step, outcome) {
        (Step::Create | Step::Acquire { .. } | Step::Renew { .. }, WriteOutcome::Written) => {
            Standing::Leader {
                renewed_at: sent_at,
            }
        }
        // A conflict means someone else wrote in between: re-read before anything else. A
        // leader keeps its old deadline (it may still be the holder; the next read tells).
        (_, WriteOutcome::Conflict | WriteOutcome::Failed) => standing.clone(),
        (Step::Wait | Step::StepDown { .. }, WriteOutcome::Written) => standing.clone(),
    }
}

/// The answer to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// 409: the version changed or the object already exists.
    Conflict,
    /// Any other failure.
    Failed,
}

fn follower() -> Standing {
    Standing::Follower { seen: None }
}

fn follower_seeing(r: &Record, now: Instant) -> Standing {
    Standing::Follower {
        seen: Some((r.clone(), now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me";

    fn held(by: &str, version: &str) -> Observation {
        Observation::Found(Record {
            holder: Some(by.into()),
            lease_duration: Duration::from_secs(15),
            version: version.into(),
        })
    }

    fn released(version: &str) -> Observation {
        Observation::Found(Record {
            holder: Some(String::new()),
            lease_duration: Duration::from_secs(1),
            version: version.into(),
        })
    }

    fn t0() -> Instant {
        Instant::now()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn timing() -> Timing {
        Timing::default()
    }

    #[test]
    fn a_missing_lease_is_created() {
        let now = t0();
        let (step, _) = decide(&follower(), &Observation::Missing, ME, &timing(), now);
        assert_eq!(step, Step::Create);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let now = t0();
        let (step, _) = decide(&follower(), &released("7"), ME, &timing(), now);
        assert_eq!(step, Step::Acquire { over: "7".into() });
    }

    #[test]
    fn a_lease_naming_us_is_taken_back() {
        let (step, _) = decide(&follower(), &held(ME, "9"), ME, &timing(), t0());
        assert_eq!(step, Step::Acquire { over: "9".into() });
    }

    #[test]
    fn a_follower_waits_a_full_duration_on_its_own_clock_from_first_sight() {
        let start = t0();
        let (step, standing) = decide(&follower(), &held("other", "5"), ME, &timing(), start);
        assert_eq!(step, Step::Wait);
        // Same version, not yet a full duration since we first saw it.
        let (step, standing) = decide(
            &standing,
            &held("other", "5"),
            ME,
            &timing(),
            start + secs(14),
        );
        assert_eq!(step, Step::Wait);
        let (step, _) = decide(
            &standing,
            &held("other", "5"),
            ME,
            &timing(),
            start + secs(15),
        );
        assert_eq!(step, Step::Acquire { over: "5".into() });
    }

    #[test]
    fn a_renewal_restarts_the_followers_count() {
        let start = t0();
        let (_, standing) = decide(&follower(), &held("other", "5"), ME, &timing(), start);
        // The holder renewed (new version) just before our count ran out.
        let (step, standing) = decide(
            &standing,
            &held("other", "6"),
            ME,
            &timing(),
            start + secs(14),
        );
        assert_eq!(step, Step::Wait);
        let (step, standing) = decide(
            &standing,
            &held("other", "6"),
            ME,
            &timing(),
            start + secs(20),
        );
        assert_eq!(step, Step::Wait, "only 6 s since version 6 was first seen");
        let (step, _) = decide(
            &standing,
            &held("other", "6"),
            ME,
            &timing(),
            start + secs(29),
        );
        assert_eq!(step, Step::Acquire { over: "6".into() });
    }

    #[test]
    fn an_unreadable_lease_changes_nothing_for_a_follower() {
        let start = t0();
        let (_, standing) = decide(&follower(), &held("other", "5"), ME, &timing(), start);
        let (step, after) = decide(
            &standing,
            &Observation::Unreadable,
            ME,
            &timing(),
            start + secs(100),
        );
        assert_eq!(step, Step::Wait);
        assert_eq!(
            after, standing,
            "the count is not lost, nor advanced to a take-over"
        );
    }

    #[test]
    fn a_leader_renews_its_own_record() {
        let start = t0();
        let leader = Standing::Leader { renewed_at: start };
        let (step, standing) = decide(&leader, &held(ME, "3"), ME, &timing(), start + secs(2));
        assert_eq!(step, Step::Renew { over: "3".into() });
        assert_eq!(standing, leader);
    }

    #[test]
    fn a_leader_steps_down_when_another_holds_the_lease() {
        let start = t0();
        let leader = Standing::Leader { renewed_at: start };
        let (step, standing) = decide(&leader, &held("other", "4"), ME, &timing(), start);
        assert_eq!(
            step,
            Step::StepDown {
                by: Some("other".into())
            }
        );
        assert!(matches!(standing, Standing::Follower { seen: Some(_) }));
    }

    #[test]
    fn a_leader_out_of_touch_steps_down_at_the_renew_deadline() {
        let start = t0();
        let leader = Standing::Leader { renewed_at: start };
        let (step, _) = decide(
            &leader,
            &Observation::Unreadable,
            ME,
            &timing(),
            start + secs(9),
        );
        assert_eq!(step, Step::Wait);
        let (step, standing) = decide(
            &leader,
            &Observation::Unreadable,
            ME,
            &timing(),
            start + secs(10),
        );
        assert_eq!(step, Step::StepDown { by: None });
        assert_eq!(standing, follower());
    }

    #[test]
    fn a_leader_whose_renewals_keep_failing_steps_down_even_if_reads_work() {
        let start = t0();
        let leader = Standing::Leader { renewed_at: start };
        // Reads succeed and still show us, but no write has landed for the deadline.
        let (step, _) = decide(&leader, &held(ME, "3"), ME, &timing(), start + secs(10));
        assert_eq!(step, Step::StepDown { by: None });
    }

    #[test]
    fn a_leader_recreates_a_deleted_lease_within_its_deadline() {
        let start = t0();
        let leader = Standing::Leader { renewed_at: start };
        let (step, _) = decide(
            &leader,
            &Observation::Missing,
            ME,
            &timing(),
            start + secs(3),
        );
        assert_eq!(step, Step::Create);
        let (step, _) = decide(
            &leader,
            &Observation::Missing,
            ME,
            &timing(),
            start + secs(11),
        );
        assert_eq!(step, Step::StepDown { by: None });
    }

    #[test]
    fn a_successful_write_starts_the_deadline_from_when_it_was_sent() {
        let sent = t0();
        let standing = after_write(
            &follower(),
            &Step::Acquire { over: "1".into() },
            WriteOutcome::Written,
            sent,
        );
        assert_eq!(standing, Standing::Leader { renewed_at: sent });
        let renewed = after_write(
            &standing,
            &Step::Renew { over: "2".into() },
            WriteOutcome::Written,
            sent + secs(2),
        );
        assert_eq!(
            renewed,
            Standing::Leader {
                renewed_at: sent + secs(2)
            }
        );
    }

    #[test]
    fn a_lost_race_leaves_the_standing_as_it_was() {
        let sent = t0();
        let seen = Standing::Follower {
            seen: Some((
                Record {
                    holder: Some("other".into()),
                    lease_duration: secs(15),
                    version: "5".into(),
                },
                sent,
            )),
        };
        for outcome in [WriteOutcome::Conflict, WriteOutcome::Failed] {
            let after = after_write(&seen, &Step::Acquire { over: "5".into() }, outcome, sent);
            assert_eq!(after, seen);
        }
        let leader = Standing::Leader { renewed_at: sent };
        let after = after_write(
            &leader,
            &Step::Renew { over: "5".into() },
            WriteOutcome::Conflict,
            sent + secs(2),
        );
        assert_eq!(
            after, leader,
            "a failed renewal does not extend the deadline"
        );
    }

    #[test]
    fn no_two_writers_the_leader_stops_before_a_follower_may_start() {
        // The leader's last renewal is sent at `sent`; the follower reads it at the earliest
        // right after. Walk both clocks forward in 100 ms steps and check the invariant.
        let t = timing();
        let sent = t0();
        let leader = Standing::Leader { renewed_at: sent };
        let (_, follower_standing) = decide(&follower(), &held("leader", "8"), ME, &t, sent);
        let mut leader_stopped_at = None;
        let mut follower_took_at = None;
        for tenth in 0..400u64 {
            let now = sent + Duration::from_millis(tenth * 100);
            if leader_stopped_at.is_none() {
                let (step, _) = decide(&leader, &Observation::Unreadable, "leader", &t, now);
                if matches!(step, Step::StepDown { .. }) {
                    leader_stopped_at = Some(now);
                }
            }
            if follower_took_at.is_none() {
                let (step, _) = decide(&follower_standing, &held("leader", "8"), ME, &t, now);
                if matches!(step, Step::Acquire { .. }) {
                    follower_took_at = Some(now);
                }
            }
        }
        let (Some(stop), Some(take)) = (leader_stopped_at, follower_took_at) else {
            panic!("both should have happened within 40 s");
        };
        assert!(
            stop + (t.lease_duration - t.renew_deadline) <= take,
            "leader stopped at {stop:?}, follower took over at {take:?}"
        );
    }

    #[test]
    fn timings_that_allow_two_writers_are_refused() {
        assert_eq!(Timing::default().problem(), None);
        let bad = Timing {
            renew_deadline: secs(15),
            ..Timing::default()
        };
        assert!(bad.problem().is_some_and(|p| p.contains("renew deadline")));
        let bad = Timing {
            retry_period: secs(10),
            ..Timing::default()
        };
        assert!(bad.problem().is_some_and(|p| p.contains("retry period")));
        let bad = Timing {
            retry_period: Duration::ZERO,
            ..Timing::default()
        };
        assert!(bad.problem().is_some());
    }
}
