//! Bursts of pods for scale and fault tests: create many at once (and keep creating through an
//! API-server outage), record every state each pod was seen in through a watch, and collect the
//! events written about them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use tokio::task::JoinHandle;

/// How long one pod's create is retried through errors that a healthy API server would not give
/// (connection refused, 5xx, 429) before the burst gives up.
const CREATE_RETRY_BUDGET: Duration = Duration::from_secs(180);
/// Pause between two attempts at one pod's create while the API server does not answer.
const CREATE_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Pods being created concurrently in the background; see [`Burst::start`].
pub struct Burst {
    created: Arc<AtomicUsize>,
    total: usize,
    task: JoinHandle<Result<(), String>>,
}

impl Burst {
    /// Creates `pods` through `api`, `concurrency` requests at a time, on a background task.
    ///
    /// A create that fails because the API server is away (a connection error, a 5xx, 429 or a
    /// `ServerTimeout`) is retried; `AlreadyExists` counts as created (an earlier attempt
    /// succeeded but its answer was lost). Any other refusal fails the burst.
    pub fn start(api: Api<Pod>, pods: Vec<Pod>, concurrency: usize) -> Self {
        let created = Arc::new(AtomicUsize::new(0));
        let total = pods.len();
        let counter = created.clone();
        let task = tokio::spawn(async move {
            futures::stream::iter(pods.into_iter().map(Ok))
                .try_for_each_concurrent(concurrency.max(1), |pod| {
                    let api = api.clone();
                    let counter = counter.clone();
                    async move {
                        create_until_stored(&api, &pod).await?;
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })
                .await
        });
        Self {
            created,
            total,
            task,
        }
    }

    /// Pods the API server has stored so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    /// How many pods the burst creates in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Waits until every pod is stored. Panics with the reason if one could not be.
    pub async fn finish(self) {
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("burst: {e}"),
            Err(e) => panic!("burst task failed: {e}"),
        }
    }
}

/// Whether an error means "the API server is not (fully) there": worth another attempt.
fn is_outage(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || s.reason == "ServerTimeout",
        _ => true,
    }
}

async fn create_until_stored(api: &Api<Pod>, pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + CREATE_RETRY_BUDGET;
    loop {
        match api.create(&PostParams::default(), pod).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_already_exists() => return Ok(()),
            Err(e) if is_outage(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(CREATE_RETRY_PAUSE).await;
            }
            Err(e) => return Err(format!("creating pod {name}: {e}")),
        }
    }
}

/// Everything a watch saw of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodHistory {
    pub name: String,
    /// Every `status.reason` the pod had at some point.
    pub reasons: BTreeSet<String>,
    /// Every `status.phase` the pod had at some point.
    pub phases: BTreeSet<String>,
    /// The watch saw the pod deleted.
    pub deleted: bool,
}

/// Watches the pods of one namespace from before a burst to after it and remembers, per UID,
/// every reason and phase each pod showed (a poll would miss a reason that lasted a moment).
/// The watch re-lists on its own after a break (an API-server restart); states a pod had only
/// while the watch was broken can be missed then.
pub struct PodRecorder {
    seen: Arc<Mutex<BTreeMap<String, PodHistory>>>,
    listed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PodRecorder {
    /// Starts watching `api` (a namespaced pod API). Wait for [`PodRecorder::wait_listed`]
    /// before creating the pods of interest.
    pub fn start(api: Api<Pod>) -> Self {
        let seen: Arc<Mutex<BTreeMap<String, PodHistory>>> = Arc::default();
        let listed = Arc::new(AtomicBool::new(false));
        let (seen2, listed2) = (seen.clone(), listed.clone());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let (pod, deleted) = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                    Ok(watcher::Event::Delete(p)) => (p, true),
                    Ok(watcher::Event::InitDone) => {
                        listed2.store(true, Ordering::SeqCst);
                        continue;
                    }
                    Ok(watcher::Event::Init) => continue,
                    // The watcher re-lists by itself; pause so an outage is not a busy loop.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                let mut all = seen2.lock().unwrap_or_else(PoisonError::into_inner);
                let h = all.entry(uid).or_default();
                h.name = pod.metadata.name.clone().unwrap_or_default();
                if let Some(s) = &pod.status {
                    h.reasons.extend(s.reason.clone());
                    h.phases.extend(s.phase.clone());
                }
                h.deleted |= deleted;
            }
        });
        Self { seen, listed, task }
    }

    /// Waits (up to `timeout`) until the watch has made its first list, so every change after
    /// this call is seen. Panics if it has not by then.
    pub async fn wait_listed(&self, timeout: Duration) {
        crate::wait_for(timeout, Duration::from_millis(50), async || {
            if self.listed.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("the pod watch has not listed yet")
            }
        })
        .await;
    }

    /// What was seen so far, by pod UID.
    pub fn snapshot(&self) -> BTreeMap<String, PodHistory> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for PodRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reasons of the events in `api`'s namespace, by the UID of the object they are about.
pub async fn event_reasons_by_uid(
    api: &Api<Event>,
) -> Result<BTreeMap<String, BTreeSet<String>>, kube::Error> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for e in &page.items {
            if let (Some(uid), Some(reason)) = (&e.involved_object.uid, &e.reason) {
                out.entry(uid.clone()).or_default().insert(reason.clone());
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}
