//! Who a backend object belongs to. A backend pod's name is derived from the source pod's UID
//! (never `<namespace>-<name>`, which collides and is reused when a pod is re-created), and its
//! labels say which install, node and source pod it stands for: adoption after a restart and
//! cleanup at uninstall read them, nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use vk_provider_api::PodKey;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "vkubelet";
pub const CLUSTER_ID_LABEL: &str = "vkubelet.io/cluster-id";
pub const NODE_LABEL: &str = "vkubelet.io/node";
pub const SOURCE_UID_LABEL: &str = "vkubelet.io/pod-uid";
pub const SOURCE_NAMESPACE_LABEL: &str = "vkubelet.io/pod-namespace";
/// Pod names may be longer than a label value, so the name travels as an annotation.
pub const SOURCE_NAME_ANNOTATION: &str = "vkubelet.io/pod-name";
pub const SOURCE_NAMESPACE_ANNOTATION: &str = "vkubelet.io/pod-namespace";
/// Restarts spent by earlier backend instances of the same source pod.
pub const RESTART_BASE_ANNOTATION: &str = "vkubelet.io/restart-count-base";

/// The backend pod's name: a readable prefix of the source name and the source UID; stable
/// (both are immutable), unique, at most 63 characters.
pub fn backend_name(key: &PodKey) -> String {
    let mut prefix: String = key
        .name
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(20)
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    let uid: String = key
        .uid
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(40)
        .collect();
    if prefix.is_empty() {
        format!("vk-{uid}")
    } else {
        format!("{prefix}-{uid}")
    }
}

/// Labels every backend object of this install and node carries.
pub fn install_labels(cluster_id: &str, node: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (CLUSTER_ID_LABEL.to_string(), label_value(cluster_id)),
        (NODE_LABEL.to_string(), label_value(node)),
    ]
    .into()
}

/// The label selector of everything this install and node made.
pub fn node_selector(cluster_id: &str, node: &str) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{CLUSTER_ID_LABEL}={},{NODE_LABEL}={}",
        label_value(cluster_id),
        label_value(node)
    )
}

/// The label selector of everything this install made, on any node.
pub fn install_selector(cluster_id: &str) -> String {
    format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{CLUSTER_ID_LABEL}={}",
        label_value(cluster_id)
    )
}

/// Labels of one source pod's backend objects.
pub fn pod_labels(cluster_id: &str, node: &str, key: &PodKey) -> BTreeMap<String, String> {
    let mut l = install_labels(cluster_id, node);
    l.insert(SOURCE_UID_LABEL.into(), label_value(&key.uid));
    l.insert(SOURCE_NAMESPACE_LABEL.into(), label_value(&key.namespace));
    l
}

pub fn pod_annotations(key: &PodKey, restart_base: i32) -> BTreeMap<String, String> {
    [
        (SOURCE_NAME_ANNOTATION.to_string(), key.name.clone()),
        (
            SOURCE_NAMESPACE_ANNOTATION.to_string(),
            key.namespace.clone(),
        ),
        (
            RESTART_BASE_ANNOTATION.to_string(),
            restart_base.to_string(),
        ),
    ]
    .into()
}

/// The source pod a backend pod stands for, from its labels and annotations.
pub fn source_key(pod: &Pod) -> Option<PodKey> {
    let labels = pod.metadata.labels.as_ref()?;
    let annotations = pod.metadata.annotations.as_ref()?;
    Some(PodKey::new(
        labels.get(SOURCE_UID_LABEL)?.clone(),
        annotations.get(SOURCE_NAMESPACE_ANNOTATION)?.clone(),
        annotations.get(SOURCE_NAME_ANNOTATION)?.clone(),
    ))
}

pub fn restart_base(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTART_BASE_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let mut v: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    while v.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.remove(0);
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const UID: &str = "0b6f1c2e-3d4a-4b5c-8d9e-0f1a2b3c4d5e";

    #[test]
    fn names_are_stable_unique_and_short() {
        let k = PodKey::new(UID, "default", "web-7d4b9c-abcde");
        assert_eq!(backend_name(&k), format!("web-7d4b9c-abcde-{UID}"));
        assert_eq!(backend_name(&k), backend_name(&k.clone()));
        let long = PodKey::new(UID, "default", "a-very-long-statefulset-name".repeat(9));
        let n = backend_name(&long);
        assert!(n.len() <= 63, "{n}");
        assert!(!n.contains("--"), "{n}");
        // Same name, another UID (a re-created pod): another backend pod.
        let again = PodKey::new(
            "11111111-2222-3333-4444-555555555555",
            "default",
            "web-7d4b9c-abcde",
        );
        assert_ne!(backend_name(&k), backend_name(&again));
        // `<ns>-<name>` collisions cannot happen: the namespace is not in the name.
        let a = PodKey::new(UID, "a-b", "c");
        let b = PodKey::new("u2", "a", "b-c");
        assert_ne!(backend_name(&a), backend_name(&b));
        assert_eq!(backend_name(&PodKey::new("U", "n", "...")), "vk-u");
    }

    #[test]
    fn the_source_key_round_trips() {
        let k = PodKey::new(UID, "team-a", "web-1");
        let pod = Pod {
            metadata: ObjectMeta {
                labels: Some(pod_labels("cid", "vk-1", &k)),
                annotations: Some(pod_annotations(&k, 3)),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(source_key(&pod), Some(k));
        assert_eq!(restart_base(&pod), 3);
        assert_eq!(source_key(&Pod::default()), None);
    }

    #[test]
    fn selectors_and_label_values() {
        assert_eq!(
            node_selector("cid", "vk-1"),
            "app.kubernetes.io/managed-by=vkubelet,vkubelet.io/cluster-id=cid,vkubelet.io/node=vk-1"
        );
        assert_eq!(label_value("-x.y_"), "x.y");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }
}
