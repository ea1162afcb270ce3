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
    BackendPod, NodeResources, PodKey, PodUpdate, Provider, ProviderLimits, ProviderSinks,
    ResolvedPod,
};
use crate::resolve::ResolvedVolume;
use crate::streams::{
    AttachRequest, ByteReader, ContainerStats, Duplex, ExecRequest, ExecSession, LogRequest,
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

    // Everything else goes straight to the backend: polling changes how status arrives, not
    // what the backend can do.
    async fn update_volumes(
        &self,
        key: &PodKey,
        volumes: &[ResolvedVolume],
    ) -> Result<(), ProviderError> {
        self.inner.update_volumes(key, volumes).await
    }

    fn limits(&self) -> ProviderLimits {
        self.inner.limits()
    }

    async fn container_logs(
        &self,
        key: &PodKey,
        request: &LogRequest,
    ) -> Result<ByteReader, ProviderError> {
        self.inner.container_logs(key, request).await
    }

    async fn exec(
        &self,
        key: &PodKey,
        request: &ExecRequest,
    ) -> Result<ExecSession, ProviderError> {
        self.inner.exec(key, request).await
    }

    async fn attach(
        &self,
        key: &PodKey,
        request: &AttachRequest,
    ) -> Result<ExecSession, ProviderError> {
        self.inner.attach(key, request).await
    }

    async fn port_forward(
        &self,
        key: &PodKey,
        port: u16,
    ) -> Result<std::pin::Pin<Box<dyn Duplex>>, ProviderError> {
        self.inner.port_forward(key, port).await
    }

    async fn pod_stats(
        &self,
        key: &PodKey,
    ) -> Result<std::collections::BTreeMap<String, ContainerStats>, ProviderError> {
        self.inner.pod_stats(key).await
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

    /// A backend that answers every optional call in its own recognisable way.
    struct Capable;

    #[async_trait]
    impl Provider for Capable {
        fn kind(&self) -> &str {
            "capable"
        }
        async fn start(&self, _: ProviderSinks) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn node_resources(&self) -> Result<NodeResources, ProviderError> {
            Ok(NodeResources::default())
        }
        async fn create_pod(&self, _: &ResolvedPod) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn update_pod(&self, _: &ResolvedPod) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn delete_pod(&self, _: &PodKey, _: Duration) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list_pods(&self) -> Result<Vec<BackendPod>, ProviderError> {
            Ok(Vec::new())
        }
        async fn cleanup_all(&self) -> Result<usize, ProviderError> {
            Ok(0)
        }
        fn limits(&self) -> ProviderLimits {
            ProviderLimits::default().with_max_volume_bytes(Some(7))
        }
        async fn update_volumes(
            &self,
            _: &PodKey,
            _: &[ResolvedVolume],
        ) -> Result<(), ProviderError> {
            Err(ProviderError::Other("volumes reached the backend".into()))
        }
        async fn container_logs(
            &self,
            _: &PodKey,
            _: &LogRequest,
        ) -> Result<ByteReader, ProviderError> {
            Err(ProviderError::Other("logs reached the backend".into()))
        }
        async fn exec(&self, _: &PodKey, _: &ExecRequest) -> Result<ExecSession, ProviderError> {
            Err(ProviderError::Other("exec reached the backend".into()))
        }
        async fn attach(
            &self,
            _: &PodKey,
            _: &AttachRequest,
        ) -> Result<ExecSession, ProviderError> {
            Err(ProviderError::Other("attach reached the backend".into()))
        }
        async fn port_forward(
            &self,
            _: &PodKey,
            _: u16,
        ) -> Result<std::pin::Pin<Box<dyn Duplex>>, ProviderError> {
            Err(ProviderError::Other(
                "port-forward reached the backend".into(),
            ))
        }
        async fn pod_stats(
            &self,
            _: &PodKey,
        ) -> Result<std::collections::BTreeMap<String, ContainerStats>, ProviderError> {
            Ok([("app".to_string(), ContainerStats::default())].into())
        }
    }

    #[tokio::test]
    async fn forwards_every_capability() {
        let p = PollingAdapter::new(Capable, Duration::from_secs(60));
        let key = PodKey::new("u", "ns", "p");
        let reached = |r: Result<(), ProviderError>, what: &str| {
            assert_eq!(
                r,
                Err(ProviderError::Other(format!("{what} reached the backend")))
            );
        };
        assert_eq!(p.limits().max_volume_bytes, Some(7));
        reached(p.update_volumes(&key, &[]).await, "volumes");
        reached(
            p.container_logs(&key, &LogRequest::default())
                .await
                .map(|_| ()),
            "logs",
        );
        reached(
            p.exec(&key, &ExecRequest::default()).await.map(|_| ()),
            "exec",
        );
        reached(
            p.attach(&key, &AttachRequest::default()).await.map(|_| ()),
            "attach",
        );
        reached(p.port_forward(&key, 80).await.map(|_| ()), "port-forward");
        assert_eq!(p.pod_stats(&key).await.map(|m| m.len()), Ok(1));
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
