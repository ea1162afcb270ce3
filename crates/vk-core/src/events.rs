//! Kubernetes Events for pods and nodes, as `kubectl describe` shows them.
//!
//! Events are useful but never worth slowing pods down: they go through a bounded queue with their
//! own rate limit (like the kubelet's `eventRecordQPS`), repeats of the same event are folded into a
//! count (like client-go's correlator), and when the queue is full new events are dropped and
//! counted in `vkubelet_events_dropped_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::{Semaphore, mpsc};

use crate::client::TokenBucket;
use crate::metrics::Metrics;
use crate::provider::PodKey;

/// How events are paced.
#[derive(Debug, Clone, Copy)]
pub struct EventOptions {
    pub qps: f64,
    pub burst: u32,
    /// Events waiting to be written; beyond this they are dropped.
    pub queue: usize,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            qps: 50.0,
            burst: 100,
            queue: 4096,
        }
    }
}

#[derive(Debug)]
struct Request {
    object: ObjectReference,
    warning: bool,
    reason: String,
    message: String,
}

/// Records events for one virtual node. Cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Request>,
    node: Arc<str>,
    metrics: Arc<Metrics>,
}

impl EventRecorder {
    /// Start the writer task for `node`; it runs until every recorder clone is dropped.
    pub fn start(
        client: kube::Client,
        node: &str,
        options: EventOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        tokio::spawn(write_events(
            client,
            node.to_string(),
            options,
            rx,
            metrics.clone(),
        ));
        Self {
            tx,
            node: node.into(),
            metrics,
        }
    }

    /// A recorder whose events go nowhere (tools and tests without an API server).
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        let (tx, _rx) = mpsc::channel(1);
        Self {
            tx,
            node: "".into(),
            metrics,
        }
    }

    pub fn pod(&self, key: &PodKey, warning: bool, reason: &str, message: impl Into<String>) {
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            uid: Some(key.uid.clone()),
            ..Default::default()
        };
        self.send(object, warning, reason, message.into());
    }

    pub fn node(&self, warning: bool, reason: &str, message: impl Into<String>) {
        // The kubelet's convention: node events live in `default` and use the node name as uid.
        let object = ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.node.to_string()),
            uid: Some(self.node.to_string()),
            namespace: Some("default".into()),
            ..Default::default()
        };
        self.send(object, warning, reason, message.into());
    }

    fn send(&self, object: ObjectReference, warning: bool, reason: &str, message: String) {
        let req = Request {
            object,
            warning,
            reason: reason.to_string(),
            message,
        };
        if self.tx.try_send(req).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
}

/// Identity of "the same event again".
#[derive(Hash, PartialEq, Eq, Clone)]
struct Fingerprint {
    uid: String,
    reason: String,
    message: String,
}

struct Seen {
    name: String,
    namespace: String,
    count: i32,
    last: tokio::time::Instant,
}

/// Folding window: a repeat within it bumps the count of the existing event.
const FOLD_WINDOW: Duration = Duration::from_secs(600);
const MAX_REMEMBERED: usize = 8192;

async fn write_events(
    client: kube::Client,
    node: String,
    options: EventOptions,
    mut rx: mpsc::Receiver<Request>,
    metrics: Arc<Metrics>,
) {
    let bucket = TokenBucket::new(options.qps, options.burst);
    let inflight = Arc::new(Semaphore::new(8));
    let mut seen: HashMap<Fingerprint, Seen> = HashMap::new();
    while let Some(req) = rx.recv().await {
        let wait = bucket.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let now = tokio::time::Instant::now();
        if seen.len() > MAX_REMEMBERED {
            seen.retain(|_, s| now.duration_since(s.last) < FOLD_WINDOW);
            if seen.len() > MAX_REMEMBERED {
                seen.clear();
            }
        }
        let fp = Fingerprint {
            uid: req.object.uid.clone().unwrap_or_default(),
            reason: req.reason.clone(),
            message: req.message.clone(),
        };
        let write = match seen.get_mut(&fp) {
            Some(s) if now.duration_since(s.last) < FOLD_WINDOW => {
                s.count += 1;
                s.last = now;
                Write::Bump {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    count: s.count,
                }
            }
            _ => {
                let namespace = req
                    .object
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let name = event_name(req.object.name.as_deref().unwrap_or("object"));
                seen.insert(
                    fp,
                    Seen {
                        name: name.clone(),
                        namespace: namespace.clone(),
                        count: 1,
                        last: now,
                    },
                );
                Write::Create(Box::new(new_event(&node, name, namespace, req)))
            }
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match write.send(client).await {
                Ok(()) => {
                    metrics.events_sent.inc();
                }
                Err(e) => tracing::debug!(error = %e, "writing event failed"),
            }
        });
    }
}

enum Write {
    Create(Box<Event>),
    Bump {
        name: String,
        namespace: String,
        count: i32,
    },
}

impl Write {
    async fn send(self, client: kube::Client) -> Result<(), kube::Error> {
        match self {
            Write::Create(ev) => {
                let ns = ev.metadata.namespace.clone().unwrap_or_default();
                Api::<Event>::namespaced(client, &ns)
                    .create(&PostParams::default(), &ev)
                    .await
                    .map(|_| ())
            }
            Write::Bump {
                name,
                namespace,
                count,
            } => {
                let patch =
                    serde_json::json!({ "count": count, "lastTimestamp": Time(Timestamp::now()) });
                Api::<Event>::namespaced(client, &namespace)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(|_| ())
            }
        }
    }
}

fn event_name(object: &str) -> String {
    let nanos = Timestamp::now().as_nanosecond();
    format!("{object}.{:x}", nanos as u64)
}

fn new_event(node: &str, name: String, namespace: String, req: Request) -> Event {
    let now = Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: req.object,
        reason: Some(req.reason),
        message: Some(req.message),
        type_: Some(if req.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("vkubelet".into()),
            host: Some(node.to_string()),
        }),
        reporting_component: Some("vkubelet".into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None::<MicroTime>,
        count: Some(1),
        ..Default::default()
    }
}
