//! `vkubelet cleanup` and `vkubelet uninstall`: take an install apart so that nothing keeps
//! running — or billing — on a backend, and nothing of vkubelet's is left in the cluster.
//!
//! Uninstall order matters: no vkubelet may still serve a node (it would re-create what is
//! removed), new pods are kept off the nodes (NoSchedule), then the backends are emptied through
//! each provider's cleanup, and only then go the Node objects, their Leases and the webhook
//! registration. Every step tolerates what a previous run already removed, and the command ends
//! with a check that names anything still there.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tracing::{info, warn};
use vk_core::Provider;
use vk_core::metrics::Metrics;
use vk_core::node::LEASE_NAMESPACE;

use crate::config::{NodeSpec, provider_settings};
use crate::providers;

/// Taint put on every node being uninstalled, so the scheduler sends nothing new there.
pub const UNINSTALL_TAINT_KEY: &str = "virtual-kubelet.io/uninstalling";

/// Remove every backend object of `specs`' nodes; returns how many pods were removed and what
/// is still there after waiting.
pub async fn clean_backends(
    specs: &[NodeSpec],
    source: Option<&kube::Client>,
    metrics: &std::sync::Arc<Metrics>,
) -> anyhow::Result<(usize, Vec<String>)> {
    let mut total = 0;
    let mut left = Vec::new();
    for spec in specs {
        let settings = provider_settings(
            spec.provider_config.as_ref(),
            spec.provider_config_file.as_deref(),
        )?;
        let ctx = providers::BuildContext {
            node_name: &spec.name,
            node_ip: "127.0.0.1",
            source,
            metrics: metrics.clone(),
        };
        if spec.provider == "kube" {
            let kube = providers::build_kube(&settings, &ctx).await?;
            let n = kube
                .cleanup_all()
                .await
                .with_context(|| format!("cleaning up node {}", spec.name))?;
            total += n;
            let remaining = kube.wait_until_clean(Duration::from_secs(120)).await;
            info!(node = %spec.name, pods = n, left = remaining.len(), "cleaned up the backend");
            left.extend(remaining);
            continue;
        }
        let provider = providers::build(&spec.provider, settings, &ctx).await?;
        provider
            .start(vk_core::ProviderSinks::discard())
            .await
            .with_context(|| format!("starting provider of {}", spec.name))?;
        let n = provider
            .cleanup_all()
            .await
            .with_context(|| format!("cleaning up node {}", spec.name))?;
        info!(node = %spec.name, pods = n, "removed backend pods");
        total += n;
        let remaining = provider
            .list_pods()
            .await
            .with_context(|| format!("listing what is left on node {}'s backend", spec.name))?;
        left.extend(
            remaining
                .into_iter()
                .map(|p| format!("pod {} on node {}", p.key, spec.name)),
        );
    }
    Ok((total, left))
}

/// What `uninstall` needs besides the nodes.
pub struct UninstallOptions {
    /// The MutatingWebhookConfiguration to remove.
    pub webhook_name: String,
    /// A Deployment (`NAMESPACE/NAME`) running vkubelet, scaled to 0 first.
    pub stop_deployment: Option<String>,
    /// How long to wait for running vkubelets to stop serving the nodes.
    pub wait_stopped: Duration,
    /// Go on even though a node still looks served.
    pub force: bool,
}

pub async fn uninstall(
    specs: &[NodeSpec],
    client: kube::Client,
    metrics: &std::sync::Arc<Metrics>,
    opts: &UninstallOptions,
) -> anyhow::Result<()> {
    if let Some(dep) = &opts.stop_deployment {
        stop_deployment(&client, dep, opts.wait_stopped).await?;
    }
    let served = wait_unserved(&client, specs, opts.wait_stopped).await?;
    if !served.is_empty() {
        if opts.force {
            warn!(served = %served.join("; "), "--force: uninstalling nodes that still look served");
        } else {
            bail!(
                "still served by a running vkubelet (stop it first, e.g. with \
                 --stop-deployment vkubelet-system/vkubelet, or pass --force): {}",
                served.join("; ")
            );
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for spec in specs {
        taint_for_uninstall(&nodes, &spec.name).await?;
    }
    let (removed, mut left) = clean_backends(specs, Some(&client), metrics).await?;
    println!("removed {removed} backend pod(s)");

    let node_leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let elections = election_leases(&client).await?;
    for spec in specs {
        gone(nodes.delete(&spec.name, &DeleteParams::default()).await)
            .with_context(|| format!("deleting node {}", spec.name))?;
        gone(
            node_leases
                .delete(&spec.name, &DeleteParams::default())
                .await,
        )
        .with_context(|| format!("deleting node {}'s heartbeat Lease", spec.name))?;
        for lease in elections_of(&elections, &spec.name) {
            let (ns, name) = lease;
            let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
            gone(api.delete(&name, &DeleteParams::default()).await)
                .with_context(|| format!("deleting election Lease {ns}/{name}"))?;
        }
        println!("removed node {}", spec.name);
    }
    vk_webhook::register::unregister(client.clone(), &opts.webhook_name)
        .await
        .with_context(|| format!("removing webhook configuration {}", opts.webhook_name))?;

    // What is left, checked afresh rather than assumed from the calls above.
    for spec in specs {
        if nodes.get_opt(&spec.name).await?.is_some() {
            left.push(format!("Node {}", spec.name));
        }
        if node_leases.get_opt(&spec.name).await?.is_some() {
            left.push(format!("Lease {LEASE_NAMESPACE}/{}", spec.name));
        }
    }
    let elections_now = election_leases(&client).await?;
    for spec in specs {
        for (ns, name) in elections_of(&elections_now, &spec.name) {
            left.push(format!("Lease {ns}/{name}"));
        }
    }
    let webhooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    if webhooks.get_opt(&opts.webhook_name).await?.is_some() {
        left.push(format!(
            "MutatingWebhookConfiguration {}",
            opts.webhook_name
        ));
    }
    if !left.is_empty() {
        bail!("uninstall incomplete; still there: {}", left.join(", "));
    }
    println!("uninstalled: nothing of vkubelet's is left");
    Ok(())
}

/// Every Lease vkubelet's elections wrote, in any namespace (found by their label).
async fn election_leases(client: &kube::Client) -> anyhow::Result<Vec<Lease>> {
    let all: Api<Lease> = Api::all(client.clone());
    let selector = format!("{}={}", vk_leader::MANAGED_BY_LABEL, vk_leader::MANAGED_BY);
    Ok(all
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing vkubelet's election Leases")?
        .items)
}

/// The election Leases (namespace, name) of `node` among `leases`.
fn elections_of(leases: &[Lease], node: &str) -> Vec<(String, String)> {
    let want = crate::ha::lease_name(node);
    leases
        .iter()
        .filter(|l| l.metadata.name.as_deref() == Some(want.as_str()))
        .filter_map(|l| Some((l.metadata.namespace.clone()?, want.clone())))
        .collect()
}

/// A delete that found nothing to delete is a success.
fn gone<T>(res: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match res {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn stop_deployment(client: &kube::Client, dep: &str, wait: Duration) -> anyhow::Result<()> {
    let Some((ns, name)) = dep.split_once('/') else {
        bail!("--stop-deployment {dep:?}: expected NAMESPACE/NAME");
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let Some(d) = api.get_opt(name).await? else {
        info!(deployment = dep, "no such Deployment: nothing to stop");
        return Ok(());
    };
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": { "replicas": 0 } })),
    )
    .await
    .with_context(|| format!("scaling {dep} to 0"))?;
    let selector = d
        .spec
        .selector
        .match_labels
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 {
            info!(deployment = dep, "vkubelet replicas stopped");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{dep} scaled to 0 but {left} of its pods are still there after {wait:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Wait until no node of `specs` is served, at most `wait`; returns the nodes still served, each
/// with why it looks so.
async fn wait_unserved(
    client: &kube::Client,
    specs: &[NodeSpec],
    wait: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let served = served_nodes(client, specs).await?;
        if served.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(served);
        }
        info!(served = %served.join("; "), "waiting for vkubelet to stop serving the nodes");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Nodes whose election Lease has a holder that renewed within its duration, or — for nodes
/// without an election — whose heartbeat Lease is still within its duration.
async fn served_nodes(client: &kube::Client, specs: &[NodeSpec]) -> anyhow::Result<Vec<String>> {
    let node_leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let elections = election_leases(client).await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut served = BTreeSet::new();
    for spec in specs {
        let want = crate::ha::lease_name(&spec.name);
        let election: Vec<&Lease> = elections
            .iter()
            .filter(|l| l.metadata.name.as_deref() == Some(want.as_str()))
            .collect();
        if election.is_empty() {
            // No election: only the heartbeat tells, and it stays fresh for its whole duration
            // after vkubelet stopped.
            if let Some(l) = node_leases.get_opt(&spec.name).await?
                && let Some(age) = fresh(&l, now)
            {
                served.insert(format!("{} (heartbeat renewed {age}s ago)", spec.name));
            }
            continue;
        }
        // With an election the Lease is authoritative: a replica that stops releases it.
        for l in election {
            let holder = l
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            if !holder.is_empty()
                && let Some(age) = fresh(l, now)
            {
                served.insert(format!(
                    "{} (led by {holder}, renewed {age}s ago)",
                    spec.name
                ));
            }
        }
    }
    Ok(served.into_iter().collect())
}

/// Seconds since the Lease's renewal if that is within its duration.
fn fresh(lease: &Lease, now: k8s_openapi::jiff::Timestamp) -> Option<i64> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let age = now.as_second() - renewed.as_second();
    (age <= duration).then_some(age.max(0))
}

/// Add the uninstall NoSchedule taint to `node` (if it still exists and lacks it).
async fn taint_for_uninstall(nodes: &Api<Node>, node: &str) -> anyhow::Result<()> {
    for _ in 0..5 {
        let Some(mut n) = nodes.get_opt(node).await? else {
            return Ok(());
        };
        let spec = n.spec.get_or_insert_with(Default::default);
        let taints = spec.taints.get_or_insert_with(Vec::new);
        if taints.iter().any(|t| t.key == UNINSTALL_TAINT_KEY) {
            return Ok(());
        }
        taints.push(Taint {
            key: UNINSTALL_TAINT_KEY.into(),
            effect: "NoSchedule".into(),
            value: Some("true".into()),
            ..Default::default()
        });
        // A patch, not an update: deploy/'s ClusterRole grants `patch` on nodes (what the
        // node controller uses too), and the uninstall Job runs with it. The resourceVersion
        // makes it conditional, as an update would be: a taint added meanwhile is a conflict
        // and a fresh read, never lost.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": n.metadata.resource_version },
            "spec": { "taints": taints },
        });
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(node, "tainted NoSchedule for uninstall");
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("tainting node {node}")),
        }
    }
    bail!("tainting node {node}: it kept changing under us")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    use super::*;

    fn lease(ns: &str, name: &str, renewed: Timestamp, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_fresh_only_within_its_duration() {
        let now = Timestamp::now();
        let ago = |s: i64| now - SignedDuration::from_secs(s);
        assert_eq!(fresh(&lease("a", "b", ago(5), 40), now), Some(5));
        assert_eq!(fresh(&lease("a", "b", ago(41), 40), now), None);
        // A released election lease (duration 1) is stale a second later.
        assert_eq!(fresh(&lease("a", "b", ago(2), 1), now), None);
        let mut no_renewal = lease("a", "b", now, 40);
        if let Some(s) = no_renewal.spec.as_mut() {
            s.renew_time = None;
        }
        assert_eq!(fresh(&no_renewal, now), None);
    }

    #[test]
    fn election_leases_are_found_by_node_in_any_namespace() {
        let now = Timestamp::now();
        let leases = vec![
            lease("vkubelet-system", "vkubelet-vk-a", now, 15),
            lease("kube-node-lease", "vkubelet-vk-a", now, 15),
            lease("vkubelet-system", "vkubelet-vk-ab", now, 15),
        ];
        let found = elections_of(&leases, "vk-a");
        assert_eq!(
            found,
            vec![
                ("vkubelet-system".to_string(), "vkubelet-vk-a".to_string()),
                ("kube-node-lease".to_string(), "vkubelet-vk-a".to_string()),
            ]
        );
    }
}
