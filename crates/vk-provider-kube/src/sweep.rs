//! What a crash leaves on the backend: per-pod Secrets that no backend pod owns.
//!
//! A create writes the pod's Secrets, then the pod, then makes the pod their owner. A process
//! killed in between leaves Secrets the backend's garbage collector will never remove. At start
//! (before this process creates anything) each such Secret is adopted by its backend pod when
//! that pod exists, and deleted when it does not; a retried create writes it again.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::identity;

/// A backend pod of this node, as the sweep needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPodRef {
    pub namespace: String,
    pub name: String,
    /// The backend pod's own UID (the owner reference names it).
    pub uid: String,
}

/// What to do with one per-pod Secret found at start.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Owned already (the garbage collector removes it with its pod), or not ours to judge.
    Keep,
    /// Its backend pod exists: make that pod its owner.
    Adopt(OwnerReference),
    /// No backend pod for its source pod: delete it, provided it is still the version listed
    /// (a create elsewhere that rewrote it meanwhile wins).
    Delete { resource_version: String },
}

/// The owner reference that makes a per-pod object a dependent of its backend pod.
pub fn owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// The merge patch that makes `owner` (see [`owner`]) a per-pod object's only owner.
pub fn owner_patch(owner: &OwnerReference) -> serde_json::Value {
    serde_json::json!({"metadata": {"ownerReferences": [owner]}})
}

/// Judges one Secret listed with this node's selector; `pods` maps source UIDs to this node's
/// backend pods.
pub fn verdict(secret: &ObjectMeta, pods: &HashMap<String, BackendPodRef>) -> Verdict {
    if secret
        .owner_references
        .as_ref()
        .is_some_and(|o| !o.is_empty())
        || secret.deletion_timestamp.is_some()
    {
        return Verdict::Keep;
    }
    let Some(source_uid) = secret
        .labels
        .as_ref()
        .and_then(|l| l.get(identity::SOURCE_UID_LABEL))
    else {
        return Verdict::Keep;
    };
    match pods.get(source_uid) {
        Some(pod) if secret.namespace.as_deref() == Some(pod.namespace.as_str()) => {
            Verdict::Adopt(owner(&pod.name, &pod.uid))
        }
        _ => match &secret.resource_version {
            Some(rv) => Verdict::Delete {
                resource_version: rv.clone(),
            },
            None => Verdict::Keep,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secret(source_uid: Option<&str>, owned: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some("web-u1-data".into()),
            namespace: Some("cce-burst-c".into()),
            resource_version: Some("42".into()),
            labels: source_uid
                .map(|u| [(identity::SOURCE_UID_LABEL.to_string(), u.to_string())].into()),
            owner_references: owned.then(|| vec![owner("web-u1", "instance-1")]),
            ..Default::default()
        }
    }

    fn pods(namespace: &str) -> HashMap<String, BackendPodRef> {
        [(
            "u1".to_string(),
            BackendPodRef {
                namespace: namespace.into(),
                name: "web-u1".into(),
                uid: "instance-2".into(),
            },
        )]
        .into()
    }

    #[test]
    fn an_owned_secret_is_left_to_the_garbage_collector() {
        assert_eq!(
            verdict(&secret(Some("u1"), true), &pods("cce-burst-c")),
            Verdict::Keep
        );
        assert_eq!(
            verdict(&secret(Some("u1"), true), &HashMap::new()),
            Verdict::Keep
        );
    }

    #[test]
    fn an_ownerless_secret_whose_pod_exists_is_adopted_by_that_instance() {
        assert_eq!(
            verdict(&secret(Some("u1"), false), &pods("cce-burst-c")),
            Verdict::Adopt(owner("web-u1", "instance-2"))
        );
    }

    #[test]
    fn an_ownerless_secret_without_a_pod_is_deleted_at_its_listed_version() {
        assert_eq!(
            verdict(&secret(Some("u1"), false), &HashMap::new()),
            Verdict::Delete {
                resource_version: "42".into()
            }
        );
        // A pod of that source in another namespace (sameName mapping) does not own it.
        assert_eq!(
            verdict(&secret(Some("u1"), false), &pods("team")),
            Verdict::Delete {
                resource_version: "42".into()
            }
        );
    }

    #[test]
    fn a_secret_without_a_source_label_or_already_going_is_kept() {
        assert_eq!(
            verdict(&secret(None, false), &HashMap::new()),
            Verdict::Keep
        );
        let mut going = secret(Some("u1"), false);
        going.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Default::default(),
        ));
        assert_eq!(verdict(&going, &HashMap::new()), Verdict::Keep);
    }
}
