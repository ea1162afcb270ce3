//! The burst policy: which pods may run on virtual nodes, decided from the labels users already
//! know (`virtual-kubelet.io/burst-to-cci: auto|localPrefer|enforce|off` on the pod, its
//! workload or its namespace; the namespace label `virtual-node-affinity-injection=enabled`),
//! and the tolerations and node affinity that carry the decision to the scheduler.
//!
//! Pure functions over k8s-openapi types: the admission webhook feeds them from its caches and
//! `vkubelet check` from manifests, so both give the same answer for the same pod.
//!
//! Injection only ever adds: the user's own tolerations and affinity terms stay as they are, and
//! applying the same policy twice changes nothing the second time.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PreferredSchedulingTerm, Toleration,
};

use crate::node::PROVIDER_TAINT_KEY;
use crate::pod::admission::unsupported_features;
use crate::sizing::SizingProfile;

/// The workload label of Huawei CCE's bursting add-on (seeds 001/002).
pub const BURST_LABEL: &str = "virtual-kubelet.io/burst-to-cci";
/// CCE's newer spelling of the same label.
pub const BURST_LABEL_CCE: &str = "bursting.cci.io/burst-to-cci";
/// Alibaba ACK's namespace label (seed 004): every pod of the namespace goes to virtual nodes.
pub const NAMESPACE_INJECTION_LABEL: &str = "virtual-node-affinity-injection";
/// Where the webhook records what it decided and added.
pub const DECISION_ANNOTATION: &str = "virtual-kubelet.io/burst-policy";
/// The label every virtual node carries (`type=virtual-kubelet`).
pub const VIRTUAL_NODE_LABEL_KEY: &str = "type";
pub const VIRTUAL_NODE_LABEL_VALUE: &str = "virtual-kubelet";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BurstPolicy {
    /// Never on a virtual node.
    Off,
    /// May burst; the scheduler decides, real nodes preferred through taint scoring.
    Auto,
    /// Bursts when no real node fits: real nodes preferred by taint and by node affinity.
    LocalPrefer,
    /// Only on virtual nodes.
    Enforce,
}

impl BurstPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            BurstPolicy::Off => "off",
            BurstPolicy::Auto => "auto",
            BurstPolicy::LocalPrefer => "localPrefer",
            BurstPolicy::Enforce => "enforce",
        }
    }

    /// Whether pods under this policy are meant to run on virtual nodes at all.
    pub fn may_burst(self) -> bool {
        self != BurstPolicy::Off
    }
}

impl fmt::Display for BurstPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid burst policy {0:?}: expected one of auto, localPrefer, enforce, off")]
pub struct InvalidPolicy(pub String);

impl FromStr for BurstPolicy {
    type Err = InvalidPolicy;

    /// The label values, case-insensitively (`localPrefer`, `localprefer`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(BurstPolicy::Off),
            "auto" => Ok(BurstPolicy::Auto),
            "localprefer" => Ok(BurstPolicy::LocalPrefer),
            "enforce" => Ok(BurstPolicy::Enforce),
            _ => Err(InvalidPolicy(s.to_string())),
        }
    }
}

/// Where a decision came from, for the annotation, warnings and `vkubelet check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pod {
        key: &'static str,
    },
    Workload {
        kind: String,
        name: String,
        key: &'static str,
    },
    Namespace {
        name: String,
        key: &'static str,
    },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pod { key } => write!(f, "pod {key}"),
            Source::Workload { kind, name, key } => write!(f, "{kind} {name} {key}"),
            Source::Namespace { name, key } => write!(f, "namespace {name} {key}"),
            Source::Default => f.write_str("default"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub policy: BurstPolicy,
    pub source: Source,
}

/// The labels and annotations of one object on the way from the pod to its namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta<'a> {
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Meta<'a> {
    pub fn of(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            labels: meta.labels.as_ref(),
            annotations: meta.annotations.as_ref(),
        }
    }
}

/// A workload that owns the pod, directly or through another (ReplicaSet → Deployment).
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub kind: &'a str,
    pub name: &'a str,
    pub meta: Meta<'a>,
}

/// The policy one object states, if any: the label (either spelling), else the older annotation
/// form, which also took `"true"`/`"false"`. `Err` names the key whose value is not a policy.
fn stated(meta: Meta<'_>) -> Result<Option<(BurstPolicy, &'static str)>, (String, &'static str)> {
    for key in [BURST_LABEL, BURST_LABEL_CCE] {
        if let Some(v) = meta.labels.and_then(|l| l.get(key)) {
            return match v.parse() {
                Ok(p) => Ok(Some((p, key))),
                Err(_) => Err((v.clone(), key)),
            };
        }
    }
    if let Some(v) = meta.annotations.and_then(|a| a.get(BURST_LABEL)) {
        return match v.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Some((BurstPolicy::Auto, BURST_LABEL))),
            "false" => Ok(Some((BurstPolicy::Off, BURST_LABEL))),
            _ => match v.parse() {
                Ok(p) => Ok(Some((p, BURST_LABEL))),
                Err(_) => Err((v.clone(), BURST_LABEL)),
            },
        };
    }
    Ok(None)
}

/// Decide the policy, most specific first: the pod, its owners (nearest first), the namespace,
/// then `default`. An unparseable value is skipped with a warning, so a typo never hides a
/// less specific setting.
pub fn decide(
    pod: Meta<'_>,
    owners: &[Owner<'_>],
    namespace: Option<(&str, Meta<'_>)>,
    default: BurstPolicy,
) -> (Decision, Vec<String>) {
    let mut warnings = Vec::new();
    let mut warn = |what: String, (value, key): (String, &'static str)| {
        warnings.push(format!(
            "{what}: {key}={value:?} is not a burst policy (auto, localPrefer, enforce, off); ignored"
        ));
    };
    match stated(pod) {
        Ok(Some((policy, key))) => {
            return (
                Decision {
                    policy,
                    source: Source::Pod { key },
                },
                warnings,
            );
        }
        Ok(None) => {}
        Err(bad) => warn("pod".into(), bad),
    }
    for owner in owners {
        match stated(owner.meta) {
            Ok(Some((policy, key))) => {
                let source = Source::Workload {
                    kind: owner.kind.to_string(),
                    name: owner.name.to_string(),
                    key,
                };
                return (Decision { policy, source }, warnings);
            }
            Ok(None) => {}
            Err(bad) => warn(format!("{} {}", owner.kind, owner.name), bad),
        }
    }
    if let Some((name, meta)) = namespace {
        let injection = meta
            .labels
            .and_then(|l| l.get(NAMESPACE_INJECTION_LABEL))
            .is_some_and(|v| v == "enabled");
        if injection {
            let source = Source::Namespace {
                name: name.to_string(),
                key: NAMESPACE_INJECTION_LABEL,
            };
            return (
                Decision {
                    policy: BurstPolicy::Enforce,
                    source,
                },
                warnings,
            );
        }
        match stated(meta) {
            Ok(Some((policy, key))) => {
                let source = Source::Namespace {
                    name: name.to_string(),
                    key,
                };
                return (Decision { policy, source }, warnings);
            }
            Ok(None) => {}
            Err(bad) => warn(format!("namespace {name}"), bad),
        }
    }
    (
        Decision {
            policy: default,
            source: Source::Default,
        },
        warnings,
    )
}

/// Every reason this pod cannot run on the virtual nodes, whose sizing profiles are `profiles`
/// (empty when it can). With several profiles, fitting any one is enough.
pub fn burst_blockers(pod: &Pod, profiles: &[&SizingProfile]) -> Vec<String> {
    let mut reasons = unsupported_features(pod);
    if profiles.is_empty() {
        return reasons;
    }
    let mut per_profile = Vec::new();
    for profile in profiles {
        let mut problems = profile.spec_problems(pod);
        if let Err(e) = profile.normalize(pod) {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            return reasons;
        }
        per_profile.push(problems);
    }
    // Fits none: the first profile's reasons stand for all (one node profile is the usual case).
    reasons.extend(per_profile.into_iter().next().unwrap_or_default());
    reasons
}

/// The toleration a pod needs for the virtual nodes' provider taint: `Equal` to each taint value
/// this install uses, or `Exists` when the values are not known.
pub fn provider_tolerations(taint_values: &[String]) -> Vec<Toleration> {
    if taint_values.is_empty() {
        return vec![Toleration {
            key: Some(PROVIDER_TAINT_KEY.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }];
    }
    let mut out: Vec<Toleration> = Vec::new();
    for v in taint_values {
        let t = Toleration {
            key: Some(PROVIDER_TAINT_KEY.into()),
            operator: Some("Equal".into()),
            value: Some(v.clone()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// Whether `existing` already lets the pod onto a node tainted `key=value:effect` (`value:
/// None`: whatever the value).
fn tolerates(existing: &Toleration, key: &str, value: Option<&str>, effect: &str) -> bool {
    let effect_ok = existing
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == effect);
    let op = existing.operator.as_deref().unwrap_or("Equal");
    match existing.key.as_deref().filter(|k| !k.is_empty()) {
        None => op == "Exists" && effect_ok,
        Some(k) if k != key => false,
        Some(_) if op == "Exists" => effect_ok,
        // `value: None` stands for every value: only `Exists` covers that.
        Some(_) => effect_ok && value.is_some_and(|v| existing.value.as_deref().unwrap_or("") == v),
    }
}

fn virtual_node_requirement(operator: &str) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: VIRTUAL_NODE_LABEL_KEY.into(),
        operator: operator.into(),
        values: Some(vec![VIRTUAL_NODE_LABEL_VALUE.into()]),
    }
}

/// What [`inject`] did, for the annotation and the admission response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injection {
    pub added: Vec<String>,
}

/// Carry the policy into the pod spec. `burstable: false` (a blocker under `auto` or
/// `localPrefer`) keeps the pod local: no toleration is added.
pub fn inject(
    pod: &mut Pod,
    policy: BurstPolicy,
    burstable: bool,
    taint_values: &[String],
) -> Injection {
    let mut added = Vec::new();
    let Some(spec) = pod.spec.as_mut() else {
        return Injection { added };
    };
    let tolerate = policy.may_burst() && burstable;
    if tolerate {
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for t in provider_tolerations(taint_values) {
            let covered = tolerations
                .iter()
                .any(|e| tolerates(e, PROVIDER_TAINT_KEY, t.value.as_deref(), "NoSchedule"));
            if !covered {
                added.push(match &t.value {
                    Some(v) => format!("toleration {PROVIDER_TAINT_KEY}={v}:NoSchedule"),
                    None => format!("toleration {PROVIDER_TAINT_KEY}:NoSchedule (Exists)"),
                });
                tolerations.push(t);
            }
        }
    }
    let required = match policy {
        BurstPolicy::Off => Some("NotIn"),
        BurstPolicy::Enforce => Some("In"),
        _ => None,
    };
    if let Some(op) = required {
        let node_affinity = spec
            .affinity
            .get_or_insert_with(Affinity::default)
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        let selector = node_affinity
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(|| NodeSelector {
                node_selector_terms: Vec::new(),
            });
        if selector.node_selector_terms.is_empty() {
            selector
                .node_selector_terms
                .push(NodeSelectorTerm::default());
        }
        // Terms are ORed: the requirement must hold in each of them.
        let req = virtual_node_requirement(op);
        let mut changed = false;
        for term in &mut selector.node_selector_terms {
            let exprs = term.match_expressions.get_or_insert_with(Vec::new);
            if !exprs.contains(&req) {
                exprs.push(req.clone());
                changed = true;
            }
        }
        if changed {
            added.push(format!(
                "required node affinity {VIRTUAL_NODE_LABEL_KEY} {op} [{VIRTUAL_NODE_LABEL_VALUE}]"
            ));
        }
    }
    if policy == BurstPolicy::LocalPrefer && tolerate {
        let preferred = spec
            .affinity
            .get_or_insert_with(Affinity::default)
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new);
        let term = PreferredSchedulingTerm {
            weight: 100,
            preference: NodeSelectorTerm {
                match_expressions: Some(vec![virtual_node_requirement("NotIn")]),
                match_fields: None,
            },
        };
        if !preferred.contains(&term) {
            preferred.push(term);
            added.push(format!(
                "preferred node affinity (weight 100) {VIRTUAL_NODE_LABEL_KEY} NotIn [{VIRTUAL_NODE_LABEL_VALUE}]"
            ));
        }
    }
    Injection { added }
}

/// The annotation value recording a decision: `auto from Deployment test-vk
/// virtual-kubelet.io/burst-to-cci; added toleration ...`.
pub fn describe(decision: &Decision, injection: &Injection, blockers: &[String]) -> String {
    let mut s = format!("{} from {}", decision.policy, decision.source);
    if !blockers.is_empty() && decision.policy.may_burst() {
        s.push_str("; stays local: ");
        s.push_str(&blockers.join("; "));
    }
    if !injection.added.is_empty() {
        s.push_str("; added ");
        s.push_str(&injection.added.join(", "));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod() -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("nginx".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_label_values() {
        assert_eq!("auto".parse(), Ok(BurstPolicy::Auto));
        assert_eq!("localPrefer".parse(), Ok(BurstPolicy::LocalPrefer));
        assert_eq!("LOCALPREFER".parse(), Ok(BurstPolicy::LocalPrefer));
        assert_eq!(" enforce ".parse(), Ok(BurstPolicy::Enforce));
        assert_eq!("off".parse(), Ok(BurstPolicy::Off));
        assert!("true".parse::<BurstPolicy>().is_err());
        assert!("".parse::<BurstPolicy>().is_err());
    }

    #[test]
    fn most_specific_wins() {
        let pod_l = labels(&[(BURST_LABEL, "enforce")]);
        let dep_l = labels(&[(BURST_LABEL, "auto")]);
        let ns_l = labels(&[(BURST_LABEL, "off")]);
        let dep = Owner {
            kind: "Deployment",
            name: "web",
            meta: Meta {
                labels: Some(&dep_l),
                annotations: None,
            },
        };
        let ns = Meta {
            labels: Some(&ns_l),
            annotations: None,
        };
        let pod_meta = Meta {
            labels: Some(&pod_l),
            annotations: None,
        };
        let (d, w) = decide(pod_meta, &[dep], Some(("default", ns)), BurstPolicy::Off);
        assert_eq!(d.policy, BurstPolicy::Enforce);
        assert_eq!(d.source, Source::Pod { key: BURST_LABEL });
        assert!(w.is_empty());
        // Without the pod's label, the workload's (seed 001 puts it on the Deployment).
        let (d, _) = decide(
            Meta::default(),
            &[dep],
            Some(("default", ns)),
            BurstPolicy::Off,
        );
        assert_eq!(d.policy, BurstPolicy::Auto);
        assert_eq!(
            d.source.to_string(),
            "Deployment web virtual-kubelet.io/burst-to-cci"
        );
        // Then the namespace, then the default.
        let (d, _) = decide(
            Meta::default(),
            &[],
            Some(("default", ns)),
            BurstPolicy::Auto,
        );
        assert_eq!(d.policy, BurstPolicy::Off);
        let (d, _) = decide(Meta::default(), &[], None, BurstPolicy::LocalPrefer);
        assert_eq!(
            d,
            Decision {
                policy: BurstPolicy::LocalPrefer,
                source: Source::Default
            }
        );
    }

    #[test]
    fn nearest_owner_first() {
        let rs_l = labels(&[(BURST_LABEL_CCE, "enforce")]);
        let dep_l = labels(&[(BURST_LABEL, "off")]);
        let owners = [
            Owner {
                kind: "ReplicaSet",
                name: "web-1",
                meta: Meta {
                    labels: Some(&rs_l),
                    annotations: None,
                },
            },
            Owner {
                kind: "Deployment",
                name: "web",
                meta: Meta {
                    labels: Some(&dep_l),
                    annotations: None,
                },
            },
        ];
        let (d, _) = decide(Meta::default(), &owners, None, BurstPolicy::Off);
        assert_eq!(d.policy, BurstPolicy::Enforce);
        assert_eq!(
            d.source,
            Source::Workload {
                kind: "ReplicaSet".into(),
                name: "web-1".into(),
                key: BURST_LABEL_CCE
            }
        );
    }

    #[test]
    fn namespace_injection_label_means_enforce() {
        let ns_l = labels(&[(NAMESPACE_INJECTION_LABEL, "enabled")]);
        let ns = Meta {
            labels: Some(&ns_l),
            annotations: None,
        };
        let (d, _) = decide(Meta::default(), &[], Some(("vk", ns)), BurstPolicy::Off);
        assert_eq!(d.policy, BurstPolicy::Enforce);
        assert_eq!(
            d.source.to_string(),
            "namespace vk virtual-node-affinity-injection"
        );
        // Any other value is not the switch.
        let ns_l = labels(&[(NAMESPACE_INJECTION_LABEL, "disabled")]);
        let ns = Meta {
            labels: Some(&ns_l),
            annotations: None,
        };
        let (d, _) = decide(Meta::default(), &[], Some(("vk", ns)), BurstPolicy::Off);
        assert_eq!(d.source, Source::Default);
    }

    #[test]
    fn older_annotation_form_and_bad_values() {
        let ann = labels(&[(BURST_LABEL, "true")]);
        let meta = Meta {
            labels: None,
            annotations: Some(&ann),
        };
        let (d, _) = decide(meta, &[], None, BurstPolicy::Off);
        assert_eq!(d.policy, BurstPolicy::Auto);
        let ann = labels(&[(BURST_LABEL, "false")]);
        let meta = Meta {
            labels: None,
            annotations: Some(&ann),
        };
        assert_eq!(
            decide(meta, &[], None, BurstPolicy::Auto).0.policy,
            BurstPolicy::Off
        );
        // A typo on the pod is skipped (with a warning) in favour of the workload's value.
        let bad = labels(&[(BURST_LABEL, "always")]);
        let dep_l = labels(&[(BURST_LABEL, "enforce")]);
        let dep = Owner {
            kind: "Deployment",
            name: "web",
            meta: Meta {
                labels: Some(&dep_l),
                annotations: None,
            },
        };
        let (d, w) = decide(
            Meta {
                labels: Some(&bad),
                annotations: None,
            },
            &[dep],
            None,
            BurstPolicy::Off,
        );
        assert_eq!(d.policy, BurstPolicy::Enforce);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("\"always\""), "{w:?}");
    }

    fn tolerations(p: &Pod) -> Vec<Toleration> {
        p.spec
            .as_ref()
            .unwrap()
            .tolerations
            .clone()
            .unwrap_or_default()
    }

    fn required_terms(p: &Pod) -> Vec<NodeSelectorTerm> {
        p.spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone())
            .unwrap_or_default()
    }

    fn preferred(p: &Pod) -> Vec<PreferredSchedulingTerm> {
        p.spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default()
    }

    #[test]
    fn auto_adds_only_the_toleration() {
        let mut p = pod();
        let inj = inject(&mut p, BurstPolicy::Auto, true, &["sim".into()]);
        assert_eq!(
            inj.added,
            vec!["toleration virtual-kubelet.io/provider=sim:NoSchedule"]
        );
        let t = tolerations(&p);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].operator.as_deref(), Some("Equal"));
        assert_eq!(t[0].value.as_deref(), Some("sim"));
        assert!(required_terms(&p).is_empty());
        assert!(preferred(&p).is_empty());
        // Idempotent.
        let before = p.clone();
        assert!(
            inject(&mut p, BurstPolicy::Auto, true, &["sim".into()])
                .added
                .is_empty()
        );
        assert_eq!(p, before);
    }

    #[test]
    fn without_known_taint_values_tolerates_any() {
        let mut p = pod();
        inject(&mut p, BurstPolicy::Auto, true, &[]);
        let t = tolerations(&p);
        assert_eq!(t[0].operator.as_deref(), Some("Exists"));
        assert_eq!(t[0].value, None);
    }

    #[test]
    fn enforce_requires_virtual_nodes_in_every_term() {
        let mut p = pod();
        // The user's own affinity: two ORed terms.
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "zone".into(),
                                operator: "In".into(),
                                values: Some(vec!["a".into()]),
                            }]),
                            match_fields: None,
                        },
                        NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "zone".into(),
                                operator: "In".into(),
                                values: Some(vec!["b".into()]),
                            }]),
                            match_fields: None,
                        },
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let inj = inject(&mut p, BurstPolicy::Enforce, true, &["sim".into()]);
        assert_eq!(inj.added.len(), 2, "{inj:?}");
        let terms = required_terms(&p);
        assert_eq!(terms.len(), 2);
        for term in &terms {
            let exprs = term.match_expressions.as_ref().unwrap();
            assert_eq!(exprs.len(), 2, "the user's requirement is kept");
            assert_eq!(exprs[1], virtual_node_requirement("In"));
        }
        assert_eq!(tolerations(&p).len(), 1);
        let before = p.clone();
        assert!(
            inject(&mut p, BurstPolicy::Enforce, true, &["sim".into()])
                .added
                .is_empty()
        );
        assert_eq!(p, before);
    }

    #[test]
    fn off_keeps_pods_away_and_adds_no_toleration() {
        let mut p = pod();
        let inj = inject(&mut p, BurstPolicy::Off, true, &["sim".into()]);
        assert_eq!(
            inj.added,
            vec!["required node affinity type NotIn [virtual-kubelet]"]
        );
        assert!(tolerations(&p).is_empty());
        assert_eq!(
            required_terms(&p)[0].match_expressions.as_ref().unwrap()[0],
            virtual_node_requirement("NotIn")
        );
    }

    #[test]
    fn local_prefer_adds_toleration_and_preferred_affinity() {
        let mut p = pod();
        let inj = inject(&mut p, BurstPolicy::LocalPrefer, true, &["sim".into()]);
        assert_eq!(inj.added.len(), 2);
        let pref = preferred(&p);
        assert_eq!(pref.len(), 1);
        assert_eq!(pref[0].weight, 100);
        assert_eq!(
            pref[0].preference.match_expressions.as_ref().unwrap()[0],
            virtual_node_requirement("NotIn")
        );
        assert!(required_terms(&p).is_empty());
        let before = p.clone();
        inject(&mut p, BurstPolicy::LocalPrefer, true, &["sim".into()]);
        assert_eq!(p, before);
    }

    #[test]
    fn a_blocked_pod_stays_local() {
        for policy in [BurstPolicy::Auto, BurstPolicy::LocalPrefer] {
            let mut p = pod();
            let inj = inject(&mut p, policy, false, &["sim".into()]);
            assert!(inj.added.is_empty(), "{policy}: {inj:?}");
            assert!(tolerations(&p).is_empty());
        }
    }

    #[test]
    fn existing_tolerations_count() {
        let mut p = pod();
        // seed 004's own toleration: key Exists, no effect.
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(PROVIDER_TAINT_KEY.into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert!(
            inject(&mut p, BurstPolicy::Auto, true, &["sim".into()])
                .added
                .is_empty()
        );
        // A toleration for another value does not cover ours.
        let mut p = pod();
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(PROVIDER_TAINT_KEY.into()),
            operator: Some("Equal".into()),
            value: Some("ucloud".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert_eq!(
            inject(&mut p, BurstPolicy::Auto, true, &["sim".into()])
                .added
                .len(),
            1
        );
        assert_eq!(tolerations(&p).len(), 2, "the user's toleration is kept");
    }

    #[test]
    fn blockers_name_every_reason() {
        let mut p = pod();
        p.spec.as_mut().unwrap().host_network = Some(true);
        let none = SizingProfile::none();
        let reasons = burst_blockers(&p, &[&none]);
        assert_eq!(reasons, vec!["hostNetwork is not supported".to_string()]);
        assert!(burst_blockers(&pod(), &[&none]).is_empty());
    }

    #[test]
    fn description_records_the_decision() {
        let d = Decision {
            policy: BurstPolicy::Auto,
            source: Source::Workload {
                kind: "Deployment".into(),
                name: "test-vk".into(),
                key: BURST_LABEL,
            },
        };
        let inj = Injection {
            added: vec!["toleration x".into()],
        };
        assert_eq!(
            describe(&d, &inj, &[]),
            "auto from Deployment test-vk virtual-kubelet.io/burst-to-cci; added toleration x"
        );
        assert_eq!(
            describe(
                &d,
                &Injection::default(),
                &["hostNetwork is not supported".into()]
            ),
            "auto from Deployment test-vk virtual-kubelet.io/burst-to-cci; stays local: hostNetwork is not supported"
        );
    }
}

/// Injection on arbitrary existing tolerations and affinity: applying a policy twice equals
/// applying it once, and nothing the user wrote is ever removed.
#[cfg(test)]
mod props {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use proptest::prelude::*;

    fn toleration() -> impl Strategy<Value = Toleration> {
        (
            proptest::option::of(prop_oneof![
                Just(PROVIDER_TAINT_KEY.to_string()),
                Just(String::new()),
                Just("dedicated".to_string())
            ]),
            proptest::option::of(prop_oneof![
                Just("Exists".to_string()),
                Just("Equal".to_string())
            ]),
            proptest::option::of(prop_oneof![
                Just("sim".to_string()),
                Just("other".to_string())
            ]),
            proptest::option::of(prop_oneof![
                Just("NoSchedule".to_string()),
                Just("NoExecute".to_string())
            ]),
        )
            .prop_map(|(key, operator, value, effect)| Toleration {
                key,
                operator,
                value,
                effect,
                ..Default::default()
            })
    }

    fn term() -> impl Strategy<Value = NodeSelectorTerm> {
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("zone".to_string()),
                    Just(VIRTUAL_NODE_LABEL_KEY.to_string())
                ],
                prop_oneof![Just("In".to_string()), Just("NotIn".to_string())],
            ),
            0..3,
        )
        .prop_map(|exprs| NodeSelectorTerm {
            match_expressions: Some(
                exprs
                    .into_iter()
                    .map(|(key, operator)| NodeSelectorRequirement {
                        key,
                        operator,
                        values: Some(vec![VIRTUAL_NODE_LABEL_VALUE.into()]),
                    })
                    .collect(),
            ),
            match_fields: None,
        })
    }

    fn policy() -> impl Strategy<Value = BurstPolicy> {
        prop_oneof![
            Just(BurstPolicy::Off),
            Just(BurstPolicy::Auto),
            Just(BurstPolicy::LocalPrefer),
            Just(BurstPolicy::Enforce)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn idempotent_and_additive(
            tolerations in proptest::collection::vec(toleration(), 0..4),
            terms in proptest::option::of(proptest::collection::vec(term(), 0..3)),
            policy in policy(),
            burstable in any::<bool>(),
            values in proptest::collection::vec(prop_oneof![Just("sim".to_string()), Just("kube".to_string())], 0..3),
        ) {
            let mut pod = Pod {
                spec: Some(PodSpec {
                    containers: vec![Container { name: "c".into(), ..Default::default() }],
                    tolerations: Some(tolerations.clone()),
                    affinity: terms.clone().map(|node_selector_terms| Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            inject(&mut pod, policy, burstable, &values);
            let once = pod.clone();
            let again = inject(&mut pod, policy, burstable, &values);
            prop_assert!(again.added.is_empty(), "{:?}", again);
            prop_assert_eq!(&pod, &once);
            let spec = once.spec.clone().unwrap_or_default();
            // The user's tolerations come first and unchanged.
            let now = spec.tolerations.unwrap_or_default();
            prop_assert_eq!(&now[..tolerations.len()], &tolerations[..]);
            // Every original term keeps its requirements (the policy only adds to them).
            if let Some(terms) = terms {
                let have = spec.affinity.and_then(|a| a.node_affinity)
                    .and_then(|n| n.required_during_scheduling_ignored_during_execution)
                    .map(|r| r.node_selector_terms).unwrap_or_default();
                for (orig, now) in terms.iter().zip(have.iter()) {
                    let o = orig.match_expressions.clone().unwrap_or_default();
                    let n = now.match_expressions.clone().unwrap_or_default();
                    prop_assert_eq!(&n[..o.len()], &o[..]);
                }
            }
        }
    }
}
