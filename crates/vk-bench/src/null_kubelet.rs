//! The null kubelet: the cheapest thing that still behaves like a kubelet towards the API
//! server, so that a run against it measures the API server's own limit. It watches the pods
//! bound to its node, marks each one Running with a single status write, and when a pod is being
//! deleted removes it with one final delete (grace 0, UID precondition) — the two writes a real
//! kubelet cannot avoid. It runs as its own process so its RSS and CPU are measured the same way
//! as vkubelet's.

use std::collections::HashSet;
use std::sync::Arc;

use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::cluster::{RETRY_BUDGET, ensure_node, retry_delay, retryable};

/// Runs until the process is stopped.
pub async fn run(client: kube::Client, node: &str, concurrency: usize) -> anyhow::Result<()> {
    ensure_node(&client, node).await?;
    let pods = Api::<Pod>::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = std::pin::pin!(watcher::watcher(pods, config).default_backoff());
    let workers = Arc::new(Semaphore::new(concurrency.max(1)));
    // UIDs already handed to a worker, so a pod's later MODIFIED events cause no second write.
    let mut marked_running: HashSet<String> = HashSet::new();
    let mut deleting: HashSet<String> = HashSet::new();
    tracing::info!(node, concurrency, "null kubelet watching");
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => anyhow::bail!("the pod watch ended"),
            Err(e) => {
                // The watcher re-lists with backoff by itself; a lost watch is not fatal.
                tracing::warn!(error = %e, "pod watch error");
                continue;
            }
        };
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let (Some(ns), Some(name), Some(uid)) = (
                    pod.metadata.namespace.clone(),
                    pod.metadata.name.clone(),
                    pod.metadata.uid.clone(),
                ) else {
                    continue;
                };
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let permit = workers.clone();
                if pod.metadata.deletion_timestamp.is_some() {
                    if deleting.insert(uid.clone()) {
                        tokio::spawn(async move {
                            let _permit = permit.acquire_owned().await;
                            remove(&api, &name, &uid).await;
                        });
                    }
                } else if !is_running(&pod) && marked_running.insert(uid) {
                    tokio::spawn(async move {
                        let _permit = permit.acquire_owned().await;
                        mark_running(&api, &name).await;
                    });
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    marked_running.remove(uid);
                    deleting.remove(uid);
                }
            }
            Event::Init | Event::InitDone => {}
        }
    }
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Retries throttling and transport errors a few times; anything else is the pod's problem.
async fn with_retries<F, Fut>(what: &str, name: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let start = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(()) => return,
            Err(e) if retryable(&e) && start.elapsed() < RETRY_BUDGET => {
                attempt += 1;
                tokio::time::sleep(retry_delay(attempt)).await;
            }
            Err(e) if retryable(&e) => {
                tracing::warn!(pod = name, error = %e, ?RETRY_BUDGET, "{what}: gave up");
                return;
            }
            Err(e) => {
                tracing::debug!(pod = name, error = %e, "{what} failed");
                return;
            }
        }
    }
}

async fn mark_running(api: &Api<Pod>, name: &str) {
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": "c", "ready": true, "started": true, "restartCount": 0,
            "image": "busybox", "imageID": "", "state": {"running": {"startedAt": now}},
        }],
    }});
    let patch = Patch::Merge(&status);
    with_retries("status patch", name, || async {
        api.patch_status(name, &PatchParams::default(), &patch)
            .await
            .map(|_| ())
    })
    .await;
}

async fn remove(api: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    with_retries("final delete", name, || async {
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            // Gone already, or re-created under another UID: nothing of ours to delete.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
}
