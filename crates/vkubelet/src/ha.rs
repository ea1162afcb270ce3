//! High availability: with `--leader-elect`, every replica competes for one Lease per virtual
//! node (`vkubelet-<node>`); only the holder runs that node's controllers and serves its kubelet
//! API, so replicas share the nodes between them. A term ends before the Lease can expire for
//! anyone else (vk-leader); the node stops, and the replica becomes a candidate again. The next
//! leader starts from a full list of both sides and adopts by UID.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vk_core::virtual_node::ProviderHandoff;
use vk_leader::{Elector, LeaderMetrics, Timing};

use crate::providers;
use crate::serve::{Common, NodePlan, prepare_with_retry};

/// Where the service-account namespace of an in-cluster pod is mounted.
const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Clone)]
pub struct HaOptions {
    pub namespace: String,
    pub identity: String,
    pub timing: Timing,
    pub metrics: LeaderMetrics,
}

/// The Lease of `node`'s election.
pub fn lease_name(node: &str) -> String {
    format!("vkubelet-{node}")
}

/// Where the election Leases live unless `--leader-elect-namespace` says: vkubelet's own
/// namespace in a cluster (`POD_NAMESPACE` from the downward API, or the service-account mount),
/// else `kube-node-lease`.
pub fn default_namespace() -> String {
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.trim().is_empty()
    {
        return ns.trim().to_string();
    }
    match std::fs::read_to_string(SA_NAMESPACE_FILE) {
        Ok(ns) if !ns.trim().is_empty() => ns.trim().to_string(),
        _ => "kube-node-lease".to_string(),
    }
}

/// A name unique to this process among the replicas: the pod (or host) name, the process id and
/// the start time, so a replica restarted in place is a new candidate, never mistaken for the
/// holder it replaced.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "vkubelet".to_string());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() % 1_000_000_000)
        .unwrap_or_default();
    format!("{host}_{}_{started}", std::process::id())
}

/// Compete for `plan`'s node until `cancel`, running it during every term won.
pub async fn lead_node(
    plan: NodePlan,
    common: Common,
    ha: HaOptions,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let name = plan.name().to_string();
    let elector = Elector::new(
        common.heartbeat_client.clone(),
        &ha.namespace,
        &lease_name(&name),
        &ha.identity,
        ha.timing,
        ha.metrics.clone(),
    )?;
    // Built at the first term and kept: a backend's watches and local processes outlive terms.
    let mut handoff: Option<ProviderHandoff> = None;
    loop {
        let Some(term) = elector.acquire(&cancel).await else {
            return Ok(());
        };
        info!(node = %name, lease = %elector.lease_name(), namespace = %ha.namespace, "leading the node");
        let lost = term.lost();
        let current = match &handoff {
            Some(h) => h.clone(),
            None => match plan.build_provider(&common).await {
                Ok(p) => handoff.insert(ProviderHandoff::new(p)).clone(),
                Err(e) => {
                    error!(node = %name, error = format!("{e:#}"), "cannot build the provider; handing the node over");
                    term.release().await;
                    pause(&cancel, ha.timing.lease_duration).await;
                    continue;
                }
            },
        };
        let provider = current.provider().clone();
        let Some(ready) =
            prepare_with_retry(&plan, &common, provider.clone(), current, &lost).await
        else {
            if cancel.is_cancelled() {
                term.release().await;
                return Ok(());
            }
            continue;
        };
        let result = ready.run(lost.clone()).await;
        if cancel.is_cancelled() {
            term.release().await;
            return Ok(());
        }
        match result {
            Ok(()) => warn!(node = %name, "leadership lost: the node stopped here"),
            Err(e) => {
                error!(node = %name, error = %e, "the node stopped with an error; handing it over");
                term.release().await;
                pause(&cancel, ha.timing.retry_period).await;
            }
        }
        if providers::pods_are_local(provider.kind()) {
            // Another replica runs this node now, with pods of its own: ours would be orphans.
            match provider.cleanup_all().await {
                Ok(n) => info!(node = %name, pods = n, "stopped this replica's pods of the node"),
                Err(e) => {
                    error!(node = %name, error = %e, "cannot stop this replica's pods of the node")
                }
            }
        }
    }
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_name_the_process() {
        let id = default_identity();
        assert!(id.contains(&format!("_{}_", std::process::id())), "{id}");
    }

    #[test]
    fn lease_names_follow_the_node() {
        assert_eq!(lease_name("vk-1"), "vkubelet-vk-1");
    }
}
