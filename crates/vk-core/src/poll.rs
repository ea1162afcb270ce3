//! For backends that can only be asked, not told: [`PollingAdapter`] lists all pods in one call
//! every interval and pushes what changed (new status, pod gone) into the core's sinks, so such a
//! backend needs no per-pod polling and the core sees one contract.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::PodStatus;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::ProviderError;
use crate::provider::{
    BackendPod, NodeResources, PodKey, PodUpdate, Provider, ProviderSinks, ResolvedPod,
};

/// Wraps a provider whose `start` does not push status; see the module documentation.
pub struct PollingAdapter<P> {
    inner: Arc<P>,
    interval: Duration,
    cancel: CancellationToken,
}

impl<P: Provider> PollingAdapter<P> {
    pub fn new(inner: P, interval: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            interval,
            cancel: CancellationToken::new(),
        }
    }
}

impl<P> Drop for PollingAdapter<P> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One poll: compare the listing with what was last pushed and push the differences.
fn diff_and_push(
    last: &mut HashMap<String, Option<Arc<PodStatus>>>,
    listed: Vec<BackendPod>,
    sinks: &ProviderSinks,
) {
    let mut seen = HashMap::with_capacity(listed.len());
    for bp in listed {
        let changed = last.get(&bp.key.uid).is_none_or(|prev| prev != &bp.status);
        if changed && let Some(status) = &bp.status {
            sinks.pod(&bp.key.uid, PodUpdate::Status(status.clone()));
        }
        seen.insert(bp.key.uid, bp.status);
    }
    for uid in last.keys() {
        if !seen.contains_key(uid) {
            sinks.pod(uid, PodUpdate::Gone);
        }
    }
    *last = seen;
}

#[async_trait]
impl<P: Provider> Provider for PollingAdapter<P> {
    fn kind(&self) -> &str {
        self.inner.kind()
    }

    async fn start(&self, sinks: ProviderSinks) -> Result<(), ProviderError> {
        self.inner.start(sinks.clone()).await?;
        let inner = self.inner.clone();
        let interval = self.interval;
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let last = Mutex::new(HashMap::new());
            loop {
                match inner.list_pods().await {
                    Ok(listed) => diff_and_push(&mut last.lock(), listed, &sinks),
                    Err(e) => tracing::warn!(error = %e, "polling the backend failed"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        Ok(())
    }

    async fn node_resources(&self) -> Result<NodeResources, ProviderError> {
        self.inner.node_resources().await
    }

    async fn create_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        self.inner.create_pod(pod).await
    }

    async fn update_pod(&self, pod: &ResolvedPod) -> Result<(), ProviderError> {
        self.inner.update_pod(pod).await
    }

    async fn delete_pod(&self, key: &PodKey, grace: Duration) -> Result<(), ProviderError> {
        self.inner.delete_pod(key, grace).await
    }

    async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError> {
        self.inner.list_pods().await
    }

    async fn cleanup_all(&self) -> Result<usize, ProviderError> {
        self.inner.cleanup_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(uid: &str, phase: &str) -> BackendPod {
        BackendPod {
            key: PodKey::new(uid, "ns", uid),
            status: Some(Arc::new(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn pushes_only_changes_and_disappearances() {
        let pushed = Arc::new(Mutex::new(Vec::new()));
        let p2 = pushed.clone();
        let sinks = ProviderSinks::new(move |uid, u| p2.lock().push((uid.to_string(), u)), || {});
        let mut last = HashMap::new();
        diff_and_push(
            &mut last,
            vec![bp("a", "Pending"), bp("b", "Running")],
            &sinks,
        );
        assert_eq!(pushed.lock().len(), 2);
        pushed.lock().clear();
        diff_and_push(
            &mut last,
            vec![bp("a", "Running"), bp("b", "Running")],
            &sinks,
        );
        assert_eq!(
            pushed
                .lock()
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>(),
            vec!["a"]
        );
        pushed.lock().clear();
        diff_and_push(&mut last, vec![bp("a", "Running")], &sinks);
        assert_eq!(
            pushed.lock().as_slice(),
            &[("b".to_string(), PodUpdate::Gone)]
        );
    }
}
