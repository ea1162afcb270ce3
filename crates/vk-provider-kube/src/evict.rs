//! `evictUnschedulableAfter`: which source pods may be deleted when their backend pod has had no
//! room for too long. Only a pod a controller owns is deleted, so that its controller makes a new
//! one the scheduler can place elsewhere; a bare pod has nobody to bring it back and is left
//! waiting, with an event saying why.

use k8s_openapi::api::core::v1::Pod;
use vk_provider_api::PodKey;

/// Event reason on a source pod deleted for lack of room on the backend.
pub const EVICTED_REASON: &str = "EvictedUnschedulable";
/// Event reason on a stuck source pod that no controller owns (never deleted).
pub const NOT_EVICTED_REASON: &str = "NotEvictedBarePod";

/// What to do with the source pod of a backend pod stuck past `evictUnschedulableAfter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it: `owner` (`<Kind>/<name>`) re-creates it.
    Evict { owner: String },
    /// Leave it: no controller owns it.
    KeepBare,
    /// Not the pod the backend pod stands for any more (gone, re-created, already deleting).
    Stale,
}

/// The verdict for `key` given the source pod as the source API has it now.
pub fn verdict(key: &PodKey, source: Option<&Pod>) -> Verdict {
    let Some(pod) = source else {
        return Verdict::Stale;
    };
    if pod.metadata.uid.as_deref() != Some(key.uid.as_str())
        || pod.metadata.deletion_timestamp.is_some()
    {
        return Verdict::Stale;
    }
    match pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        Some(o) => Verdict::Evict {
            owner: format!("{}/{}", o.kind, o.name),
        },
        None => Verdict::KeepBare,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn pod(uid: &str, owners: Vec<OwnerReference>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                owner_references: Some(owners),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn owner(kind: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: "web-1".into(),
            uid: "o1".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_controller_owned_pods_are_evicted() {
        let key = PodKey::new("u1", "ns", "web-1-abc");
        assert_eq!(
            verdict(
                &key,
                Some(&pod("u1", vec![owner("ReplicaSet", Some(true))]))
            ),
            Verdict::Evict {
                owner: "ReplicaSet/web-1".into()
            }
        );
        assert_eq!(verdict(&key, Some(&pod("u1", vec![]))), Verdict::KeepBare);
        // An owner that is not the controller (e.g. a garbage-collection parent) brings
        // nothing back.
        assert_eq!(
            verdict(
                &key,
                Some(&pod(
                    "u1",
                    vec![owner("ConfigMap", None), owner("Thing", Some(false))]
                ))
            ),
            Verdict::KeepBare
        );
    }

    #[test]
    fn a_pod_that_changed_is_left_alone() {
        let key = PodKey::new("u1", "ns", "web");
        assert_eq!(verdict(&key, None), Verdict::Stale);
        let owned = vec![owner("ReplicaSet", Some(true))];
        assert_eq!(
            verdict(&key, Some(&pod("u2", owned.clone()))),
            Verdict::Stale,
            "same name, another pod"
        );
        let mut deleting = pod("u1", owned);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(verdict(&key, Some(&deleting)), Verdict::Stale);
    }
}
