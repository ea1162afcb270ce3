//! Leader election over a `coordination.k8s.io/v1` Lease, one Lease per thing led (vkubelet: per
//! virtual node, so replicas share the nodes between them).
//!
//! [`Elector::acquire`] waits until this replica holds the Lease and returns a [`Term`]; the term
//! renews in the background and its [`Term::lost`] token fires as soon as leadership can no
//! longer be vouched for — before the Lease can expire for anyone else (see [`decide`]). The
//! caller stops acting on that token, then calls [`Term::release`] (or drops the term after a
//! loss) and goes back to [`Elector::acquire`].
//!
//! The Lease is written the way client-go writes it (holderIdentity, leaseDurationSeconds,
//! acquireTime, renewTime, leaseTransitions), so `kubectl get lease` and other tools read it.
//! Every write is a compare-and-swap on the resourceVersion.
//!
//! Why not kube-lease-manager (the maintained crate for this): its watch loop keeps reporting
//! leadership while renewals fail (an unreachable API server is logged and retried, the flag
//! stays `true` past the lease's expiry), and it decides expiry from the holder's wall-clock
//! renewTime, so clock skew between machines shortens or lengthens terms. Both break the "no two
//! writers" promise a kubelet needs.

#![deny(unsafe_code)]

pub mod decide;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use decide::Timing;
use decide::{Observation, Record, Standing, Step, WriteOutcome, after_write, decide};

/// Label on every Lease written here, so tools (and `vkubelet uninstall`) find them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "vkubelet";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election timing: {0}")]
    Timing(String),
}

/// Prometheus metrics of all elections in this process.
#[derive(Clone, Default)]
pub struct LeaderMetrics {
    is_leader: Family<LeaseLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    lease: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    lease: String,
    /// acquired, lost, released.
    event: String,
}

impl LeaderMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vkubelet_leader",
            "1 while this replica holds the lease, else 0",
            self.is_leader.clone(),
        );
        registry.register(
            "vkubelet_leader_transitions",
            "Leadership changes of this replica, by event (acquired, lost, released)",
            self.transitions.clone(),
        );
    }

    fn record(&self, lease: &str, event: &str, leading: bool) {
        self.is_leader
            .get_or_create(&LeaseLabels {
                lease: lease.to_string(),
            })
            .set(i64::from(leading));
        self.transitions
            .get_or_create(&TransitionLabels {
                lease: lease.to_string(),
                event: event.to_string(),
            })
            .inc();
    }
}

/// One election: one Lease, one identity.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    metrics: LeaderMetrics,
}

impl Elector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
        metrics: LeaderMetrics,
    ) -> Result<Self, Error> {
        if let Some(problem) = timing.problem() {
            return Err(Error::Timing(problem));
        }
        Ok(Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            metrics,
        })
    }

    pub fn lease_name(&self) -> &str {
        &self.name
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Wait until this identity holds the Lease; `None` if `cancel` fired first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Option<Term> {
        let mut standing = Standing::Follower { seen: None };
        let mut reported_holder: Option<String> = None;
        loop {
            let (observed, lease) = self.read().await;
            if let Observation::Found(r) = &observed {
                let holder = r.holder.clone().filter(|h| !h.is_empty());
                if holder != reported_holder && holder.as_deref() != Some(&self.identity) {
                    info!(lease = %self.name, holder = ?holder, "waiting for the lease");
                    reported_holder = holder;
                }
            }
            let now = Instant::now();
            let (step, next) = decide(&standing, &observed, &self.identity, &self.timing, now);
            standing = self.write(&step, &next, lease, now).await;
            if let Standing::Leader { renewed_at } = standing {
                info!(lease = %self.name, identity = %self.identity, "acquired the lease");
                self.metrics.record(&self.name, "acquired", true);
                return Some(Term::start(self.clone(), renewed_at, cancel));
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Read the Lease: what `decide` needs, and the object itself for the write that follows.
    async fn read(&self) -> (Observation, Option<Lease>) {
        match self.api.get_opt(&self.name).await {
            Ok(None) => (Observation::Missing, None),
            Ok(Some(lease)) => (Observation::Found(record(&lease)), Some(lease)),
            Err(e) => {
                debug!(lease = %self.name, error = %e, "reading the lease failed");
                (Observation::Unreadable, None)
            }
        }
    }

    /// Carry out `step` (decided at `now`) and return the standing after its answer.
    async fn write(
        &self,
        step: &Step,
        standing: &Standing,
        read: Option<Lease>,
        now: Instant,
    ) -> Standing {
        let outcome = match (step, read) {
            (Step::Wait | Step::StepDown { .. }, _) => return standing.clone(),
            (Step::Create, _) => self.create().await,
            (Step::Acquire { over }, Some(lease)) => self.put(lease, over, true).await,
            (Step::Renew { over }, Some(lease)) => self.put(lease, over, false).await,
            // decide() only acquires or renews over a record it was shown.
            (Step::Acquire { .. } | Step::Renew { .. }, None) => WriteOutcome::Conflict,
        };
        if outcome != WriteOutcome::Written {
            debug!(lease = %self.name, ?step, ?outcome, "lease write not applied");
        }
        after_write(standing, step, outcome, now)
    }

    fn spec(&self, acquired: bool, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        // As client-go counts: every acquisition by a new holder, a released lease included.
        let changed_hands = acquired
            && previous.is_some_and(|p| p.holder_identity.as_deref() != Some(&self.identity));
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(secs_i32(self.timing.lease_duration)),
            acquire_time: if acquired {
                Some(now.clone())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if changed_hands {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    async fn create(&self) -> WriteOutcome {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
                ..Default::default()
            },
            spec: Some(self.spec(true, None)),
        };
        outcome(self.api.create(&PostParams::default(), &lease).await)
    }

    /// Replace `current` (read at version `over`) with ourselves as holder. The version in the
    /// object makes the API server refuse the write (409) if anyone wrote since.
    async fn put(&self, current: Lease, over: &str, acquired: bool) -> WriteOutcome {
        if current.metadata.resource_version.as_deref() != Some(over) {
            return WriteOutcome::Conflict;
        }
        let mut lease = current.clone();
        lease.spec = Some(self.spec(acquired, current.spec.as_ref()));
        lease
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
        outcome(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Give the Lease up if we still hold it, so a follower takes over at its next read instead of
    /// after a whole lease duration.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !ours {
            return;
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the lease"),
            Err(e) => {
                warn!(lease = %self.name, error = %e, "releasing the lease failed; it expires on its own")
            }
        }
    }
}

fn outcome<T>(res: Result<T, kube::Error>) -> WriteOutcome {
    match res {
        Ok(_) => WriteOutcome::Written,
        Err(kube::Error::Api(s)) if s.code == 409 => WriteOutcome::Conflict,
        Err(e) => {
            debug!(error = %e, "lease write failed");
            WriteOutcome::Failed
        }
    }
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.as_ref();
    Record {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        lease_duration: Duration::from_secs(
            spec.and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
        ),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

fn secs_i32(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// A held term. Renews in the background until lost or released.
pub struct Term {
    lost: CancellationToken,
    stop: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    elector: Arc<Elector>,
}

impl Term {
    fn start(elector: Elector, renewed_at: Instant, cancel: &CancellationToken) -> Self {
        let lost = cancel.child_token();
        let stop = CancellationToken::new();
        let elector = Arc::new(elector);
        let renewer = tokio::spawn(renew(
            elector.clone(),
            renewed_at,
            lost.clone(),
            stop.clone(),
        ));
        Self {
            lost,
            stop,
            renewer,
            elector,
        }
    }

    /// Fires when leadership ends (lost, or the caller's cancel token fired): stop acting.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stop renewing and hand the Lease over (when it is still ours).
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.renewer.await;
        self.elector.release().await;
        self.elector
            .metrics
            .record(&self.elector.name, "released", false);
    }
}

async fn renew(
    elector: Arc<Elector>,
    renewed_at: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let timing = elector.timing;
    let mut standing = Standing::Leader { renewed_at };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(timing.retry_period) => {}
        }
        // Each round must end by the deadline even when the API server hangs: past it the step
        // below is StepDown whatever the read returned.
        let Standing::Leader { renewed_at } = standing else {
            break;
        };
        let left = timing
            .renew_deadline
            .saturating_sub(Instant::now().saturating_duration_since(renewed_at));
        let round = async {
            let (observed, lease) = elector.read().await;
            let now = Instant::now();
            let (step, next) = decide(&standing, &observed, &elector.identity, &timing, now);
            if let Step::StepDown { by } = &step {
                return (Some(by.clone()), next);
            }
            (None, elector.write(&step, &next, lease, now).await)
        };
        let (stepped_down, next) = match tokio::time::timeout(left, round).await {
            Ok(r) => r,
            Err(_) => (Some(None), Standing::Follower { seen: None }),
        };
        standing = next;
        if let Some(by) = stepped_down {
            warn!(lease = %elector.name, taken_by = ?by, "lost the lease: stopping");
            break;
        }
        // A write that did not land leaves the old deadline; the next round decides.
    }
    elector.metrics.record(&elector.name, "lost", false);
    lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, secs: Option<i32>, rv: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: rv.map(str::to_string),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn records_read_what_client_go_writes() {
        let r = record(&lease(Some("a"), Some(15), Some("12")));
        assert_eq!(r.holder.as_deref(), Some("a"));
        assert_eq!(r.lease_duration, Duration::from_secs(15));
        assert_eq!(r.version, "12");
        // A negative or missing duration is treated as expired at once, never as forever.
        let r = record(&lease(Some("a"), Some(-5), None));
        assert_eq!(r.lease_duration, Duration::ZERO);
        assert_eq!(r.version, "");
    }

    #[test]
    fn durations_round_to_whole_positive_seconds() {
        assert_eq!(secs_i32(Duration::from_millis(300)), 1);
        assert_eq!(secs_i32(Duration::from_secs(15)), 15);
        assert_eq!(secs_i32(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
