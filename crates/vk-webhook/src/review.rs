//! One admission review: decide the burst policy of a pod being created, refuse it under
//! `enforce` when it cannot burst, or answer with the JSON patch that adds the tolerations and
//! node affinity the policy needs (and the annotation that records why).

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use tracing::{debug, info};
use vk_core::burst::{self, BurstPolicy, DECISION_ANNOTATION, Meta, Owner, Source, burst_blockers};
use vk_core::sizing::SizingProfile;

use crate::cache::{Kind, Slim, WorkloadCache};

/// How deep ownership is followed (Pod → ReplicaSet → Deployment is two).
const MAX_OWNER_DEPTH: usize = 3;

/// What the webhook enforces.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Applies when neither the pod, its workload nor its namespace says anything. `off` then
    /// changes nothing: such a pod does not tolerate the virtual nodes' taint anyway, and pods
    /// that target virtual nodes by hand (seeds 003/004) keep working.
    pub default: BurstPolicy,
    /// The virtual nodes' `virtual-kubelet.io/provider` taint values (tolerated with `Equal`);
    /// empty: tolerate any value.
    pub taint_values: Vec<String>,
    /// The virtual nodes' sizing profiles: a pod no profile can carry cannot burst.
    pub profiles: Vec<Arc<SizingProfile>>,
    /// Namespaces never touched (kube-system, vkubelet's own).
    pub excluded_namespaces: Vec<String>,
}

/// Where owners and namespaces are read from (the watch-fed cache in production).
pub trait Lookup: Send + Sync {
    fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Option<Arc<Slim>>> + Send;
}

impl Lookup for WorkloadCache {
    fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Option<Arc<Slim>>> + Send {
        WorkloadCache::get(self, kind, namespace, name)
    }
}

/// The outcome, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Unchanged,
    Mutated,
    Denied,
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Unchanged => "unchanged",
            Outcome::Mutated => "mutated",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Answer one request.
pub async fn review<L: Lookup>(
    cfg: &PolicyConfig,
    lookup: &L,
    req: &AdmissionRequest<DynamicObject>,
) -> (AdmissionResponse, Outcome) {
    let allow = AdmissionResponse::from(req);
    let is_pod_create = req.operation == Operation::Create
        && req.kind.kind == "Pod"
        && req.kind.group.is_empty()
        && req.sub_resource.as_deref().is_none_or(str::is_empty);
    if !is_pod_create {
        return (allow, Outcome::Skipped);
    }
    let namespace = req.namespace.clone().unwrap_or_default();
    if cfg.excluded_namespaces.contains(&namespace) {
        return (allow, Outcome::Skipped);
    }
    let Some(object) = req.object.as_ref() else {
        return (allow.deny("pod CREATE without an object"), Outcome::Invalid);
    };
    // The webhook fails open: what it cannot read it admits unchanged, with a warning.
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => {
            let warning = format!("vkubelet burst policy skipped: cannot decode the pod: {e}");
            return (with_warnings(allow, vec![warning]), Outcome::Invalid);
        }
    };
    // DaemonSet pods run on every real node by design: refusing them would stop the DaemonSet.
    let daemonset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    if daemonset {
        return (allow, Outcome::Skipped);
    }
    // A pod bound by hand (seed 004's `nodeName: virtual-kubelet`) skips the scheduler, which
    // is all the injection talks to.
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
    {
        return (allow, Outcome::Skipped);
    }

    let owners = owner_chain(lookup, &namespace, &pod).await;
    let ns = lookup.get(Kind::Namespace, "", &namespace).await;
    let owner_refs: Vec<Owner<'_>> = owners
        .iter()
        .map(|(kind, name, slim)| Owner {
            kind: kind.name(),
            name,
            meta: Meta {
                labels: Some(&slim.labels),
                annotations: Some(&slim.annotations),
            },
        })
        .collect();
    let ns_meta = ns.as_deref().map(|s| {
        (
            namespace.as_str(),
            Meta {
                labels: Some(&s.labels),
                annotations: Some(&s.annotations),
            },
        )
    });
    let (decision, mut warnings) =
        burst::decide(Meta::of(&pod.metadata), &owner_refs, ns_meta, cfg.default);
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    if decision.source == Source::Default && decision.policy == BurstPolicy::Off {
        return (with_warnings(allow, warnings), Outcome::Unchanged);
    }
    let profiles: Vec<&SizingProfile> = cfg.profiles.iter().map(|p| p.as_ref()).collect();
    let blockers = if decision.policy.may_burst() {
        burst_blockers(&pod, &profiles)
    } else {
        Vec::new()
    };
    if decision.policy == BurstPolicy::Enforce && !blockers.is_empty() {
        let message = format!(
            "pod cannot run on a virtual node, which burst policy enforce (from {}) requires: {}",
            decision.source,
            blockers.join("; ")
        );
        info!(namespace, pod = %pod_name, %message, "denied");
        return (
            with_warnings(allow, warnings).deny(message),
            Outcome::Denied,
        );
    }
    if decision.policy.may_burst() && !blockers.is_empty() {
        warnings.push(format!(
            "burst policy {} (from {}): the pod stays on local nodes: {}",
            decision.policy,
            decision.source,
            blockers.join("; ")
        ));
    }
    let mut mutated = pod.clone();
    let injection = burst::inject(
        &mut mutated,
        decision.policy,
        blockers.is_empty(),
        &cfg.taint_values,
    );
    // A re-invocation that adds nothing keeps the first record, which says what was added.
    let annotations = mutated
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    if !injection.added.is_empty() || !annotations.contains_key(DECISION_ANNOTATION) {
        annotations.insert(
            DECISION_ANNOTATION.into(),
            burst::describe(&decision, &injection, &blockers),
        );
    }
    let patch = match (serde_json::to_value(&pod), serde_json::to_value(&mutated)) {
        (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
        (Err(e), _) | (_, Err(e)) => {
            let warning = format!("vkubelet burst policy skipped: cannot encode the pod: {e}");
            return (with_warnings(allow, vec![warning]), Outcome::Invalid);
        }
    };
    if patch.0.is_empty() {
        return (with_warnings(allow, warnings), Outcome::Unchanged);
    }
    debug!(namespace, pod = %pod_name, policy = %decision.policy, source = %decision.source, added = ?injection.added, "mutating");
    match with_warnings(allow.clone(), warnings).with_patch(patch) {
        Ok(resp) => (resp, Outcome::Mutated),
        Err(e) => {
            let warning = format!("vkubelet burst policy skipped: cannot encode the patch: {e}");
            (with_warnings(allow, vec![warning]), Outcome::Invalid)
        }
    }
}

fn with_warnings(mut resp: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    resp
}

/// The pod's controlling owners, nearest first, as far as the kinds a policy can sit on go.
async fn owner_chain<L: Lookup>(
    lookup: &L,
    namespace: &str,
    pod: &Pod,
) -> Vec<(Kind, String, Arc<Slim>)> {
    let mut chain = Vec::new();
    let mut next = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()));
    while let Some((kind, name)) = next.take() {
        if chain.len() >= MAX_OWNER_DEPTH {
            break;
        }
        let Some(kind) = Kind::from_owner_kind(&kind) else {
            break;
        };
        let Some(slim) = lookup.get(kind, namespace, &name).await else {
            break;
        };
        next = slim.owner.clone();
        chain.push((kind, name, slim));
    }
    chain
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use vk_core::burst::{BURST_LABEL, NAMESPACE_INJECTION_LABEL};

    #[derive(Default)]
    struct Fake(HashMap<(Kind, String, String), Arc<Slim>>);

    impl Fake {
        fn with(
            mut self,
            kind: Kind,
            ns: &str,
            name: &str,
            labels: &[(&str, &str)],
            owner: Option<(&str, &str)>,
        ) -> Self {
            let slim = Slim {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: Default::default(),
                owner: owner.map(|(k, n)| (k.to_string(), n.to_string())),
            };
            self.0
                .insert((kind, ns.into(), name.into()), Arc::new(slim));
            self
        }
    }

    impl Lookup for Fake {
        fn get(
            &self,
            kind: Kind,
            namespace: &str,
            name: &str,
        ) -> impl Future<Output = Option<Arc<Slim>>> + Send {
            let hit = self
                .0
                .get(&(kind, namespace.to_string(), name.to_string()))
                .cloned();
            async move { hit }
        }
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            default: BurstPolicy::Off,
            taint_values: vec!["sim".into()],
            profiles: vec![Arc::new(SizingProfile::none())],
            excluded_namespaces: vec!["kube-system".into()],
        }
    }

    fn request(ns: &str, pod: serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false,
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap();
        review.try_into().unwrap()
    }

    fn rs_pod(extra_spec: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "containers": [{"name": "container-0", "image": "centos:latest",
                "resources": {"limits": {"cpu": "500m", "memory": "1024Mi"}, "requests": {"cpu": "500m", "memory": "1024Mi"}}}]
        });
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            for (k, v) in extra {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "test-vk-abc-", "labels": {"app": "test-vk"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "test-vk-abc", "uid": "rs-uid", "controller": true}]},
            "spec": spec,
        })
    }

    /// Apply the response's JSON patch to the pod, as the API server does.
    fn patched(original: &serde_json::Value, resp: &AdmissionResponse) -> Pod {
        let mut doc = original.clone();
        let patch: json_patch::Patch =
            serde_json::from_slice(resp.patch.as_ref().unwrap()).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn seed_001_cluster() -> Fake {
        Fake::default()
            .with(
                Kind::ReplicaSet,
                "default",
                "test-vk-abc",
                &[("app", "test-vk")],
                Some(("Deployment", "test-vk")),
            )
            .with(
                Kind::Deployment,
                "default",
                "test-vk",
                &[(BURST_LABEL, "auto")],
                None,
            )
            .with(Kind::Namespace, "", "default", &[], None)
    }

    #[tokio::test]
    async fn seed_001_deployment_label_reaches_its_pods() {
        let pod = rs_pod(serde_json::json!({}));
        let (resp, outcome) = review(
            &cfg(),
            &seed_001_cluster(),
            &request("default", pod.clone()),
        )
        .await;
        assert_eq!(outcome, Outcome::Mutated);
        assert!(resp.allowed);
        let p = patched(&pod, &resp);
        let spec = p.spec.unwrap();
        let t = spec.tolerations.unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key.as_deref(), Some("virtual-kubelet.io/provider"));
        assert_eq!(t[0].value.as_deref(), Some("sim"));
        let ann = p.metadata.annotations.unwrap();
        assert_eq!(
            ann[DECISION_ANNOTATION],
            "auto from Deployment test-vk virtual-kubelet.io/burst-to-cci; added toleration virtual-kubelet.io/provider=sim:NoSchedule"
        );
        // The user's containers are untouched (sizing happens on the backend copy).
        assert_eq!(spec.containers[0].image.as_deref(), Some("centos:latest"));
    }

    #[tokio::test]
    async fn unlabelled_pods_are_left_alone() {
        let pod = rs_pod(serde_json::json!({}));
        let cluster = Fake::default()
            .with(
                Kind::ReplicaSet,
                "default",
                "test-vk-abc",
                &[],
                Some(("Deployment", "test-vk")),
            )
            .with(Kind::Deployment, "default", "test-vk", &[], None);
        let (resp, outcome) = review(&cfg(), &cluster, &request("default", pod)).await;
        assert_eq!(outcome, Outcome::Unchanged);
        assert!(resp.allowed && resp.patch.is_none());
    }

    #[tokio::test]
    async fn seed_004_namespace_label_enforces() {
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "nginx", "labels": {"run": "nginx"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}});
        let cluster = Fake::default().with(
            Kind::Namespace,
            "",
            "vk",
            &[(NAMESPACE_INJECTION_LABEL, "enabled")],
            None,
        );
        let (resp, outcome) = review(&cfg(), &cluster, &request("vk", pod.clone())).await;
        assert_eq!(outcome, Outcome::Mutated);
        let p = patched(&pod, &resp);
        let terms = p
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let e = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!((e.key.as_str(), e.operator.as_str()), ("type", "In"));
    }

    #[tokio::test]
    async fn enforce_denies_what_cannot_burst_naming_every_reason() {
        let pod = rs_pod(
            serde_json::json!({"hostNetwork": true, "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]}),
        );
        let cluster = seed_001_cluster().with(
            Kind::Deployment,
            "default",
            "test-vk",
            &[(BURST_LABEL, "enforce")],
            None,
        );
        let (resp, outcome) = review(&cfg(), &cluster, &request("default", pod)).await;
        assert_eq!(outcome, Outcome::Denied);
        assert!(!resp.allowed);
        let msg = &resp.result.message;
        assert!(msg.contains("hostNetwork"), "{msg}");
        assert!(msg.contains("hostPath volume \"logs\""), "{msg}");
        assert!(msg.contains("Deployment test-vk"), "{msg}");
    }

    #[tokio::test]
    async fn auto_keeps_a_blocked_pod_local_with_a_warning() {
        let pod = rs_pod(serde_json::json!({"hostNetwork": true}));
        let (resp, outcome) = review(
            &cfg(),
            &seed_001_cluster(),
            &request("default", pod.clone()),
        )
        .await;
        assert!(resp.allowed);
        assert_eq!(outcome, Outcome::Mutated, "only the annotation is added");
        let p = patched(&pod, &resp);
        assert!(p.spec.unwrap().tolerations.is_none());
        let w = resp.warnings.unwrap();
        assert!(w[0].contains("stays on local nodes: hostNetwork"), "{w:?}");
    }

    #[tokio::test]
    async fn excluded_namespaces_bound_pods_and_other_requests_are_skipped() {
        let pod = rs_pod(serde_json::json!({}));
        let (_, outcome) = review(&cfg(), &seed_001_cluster(), &request("kube-system", pod)).await;
        assert_eq!(outcome, Outcome::Skipped);
        let bound = rs_pod(serde_json::json!({"nodeName": "virtual-kubelet"}));
        let (_, outcome) = review(&cfg(), &seed_001_cluster(), &request("default", bound)).await;
        assert_eq!(outcome, Outcome::Skipped);
    }

    #[tokio::test]
    async fn a_second_review_changes_nothing_more() {
        let pod = rs_pod(serde_json::json!({}));
        let (resp, _) = review(
            &cfg(),
            &seed_001_cluster(),
            &request("default", pod.clone()),
        )
        .await;
        let once = serde_json::to_value(patched(&pod, &resp)).unwrap();
        let (resp2, outcome) = review(
            &cfg(),
            &seed_001_cluster(),
            &request("default", once.clone()),
        )
        .await;
        assert_eq!(
            outcome,
            Outcome::Unchanged,
            "{:?}",
            resp2.patch.map(String::from_utf8)
        );
    }

    #[tokio::test]
    async fn undecodable_pod_is_admitted_unchanged_with_a_warning() {
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "not-a-list"}});
        let (resp, outcome) = review(&cfg(), &seed_001_cluster(), &request("default", bad)).await;
        assert_eq!(outcome, Outcome::Invalid);
        // Fail open, as the registration does: never a refusal for the webhook's own trouble.
        assert!(resp.allowed && resp.patch.is_none());
        let w = resp.warnings.unwrap_or_default();
        assert!(
            w.iter().any(|w| w.contains("cannot decode the pod")),
            "{w:?}"
        );
    }

    #[tokio::test]
    async fn daemonset_pods_are_never_touched() {
        let mut pod = rs_pod(serde_json::json!({"hostNetwork": true}));
        pod["metadata"]["ownerReferences"][0]["kind"] = "DaemonSet".into();
        let cluster = Fake::default().with(
            Kind::Namespace,
            "",
            "vk",
            &[(NAMESPACE_INJECTION_LABEL, "enabled")],
            None,
        );
        let (resp, outcome) = review(&cfg(), &cluster, &request("vk", pod)).await;
        assert_eq!(outcome, Outcome::Skipped);
        assert!(
            resp.allowed && resp.patch.is_none(),
            "an enforcing namespace must not stop a DaemonSet"
        );
    }
}
