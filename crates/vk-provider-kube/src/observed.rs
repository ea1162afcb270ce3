//! Backend pods as this provider reads them (its watch and its lists): identity, node and status,
//! without `metadata.managedFields`.
//!
//! The API server sends every pod with its field-manager records. Parsed as k8s-openapi's
//! `FieldsV1` (a `serde_json::Value` tree, one B-tree node per nested object), they outweigh
//! the rest of the pod several times over: a heap profile of a 3,000-pod burst had 87 MB of them
//! live at once, from the periodic full list of backend pods alone. Nothing here reads them, so
//! they are skipped while parsing and never allocated.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

/// A backend pod without what the provider never reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedPod {
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ObservedSpec>,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

/// The one spec field the provider reads: where the backend placed the pod (for stats).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedSpec {
    #[serde(default)]
    pub node_name: Option<String>,
}

/// The metadata fields the provider reads; serde skips the others (`managedFields` among them)
/// without building them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
}

fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Metadata::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        annotations: m.annotations,
        deletion_timestamp: m.deletion_timestamp,
        ..Default::default()
    })
}

impl From<ObservedPod> for Pod {
    fn from(p: ObservedPod) -> Self {
        Pod {
            metadata: p.metadata,
            spec: p.spec.map(|s| PodSpec {
                node_name: s.node_name,
                ..Default::default()
            }),
            status: p.status,
        }
    }
}

impl kube::Resource for ObservedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A pod as the API server sends it, managedFields and spec included.
    const POD: &str = r#"{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-b", "namespace": "ns", "uid": "u-b", "resourceVersion": "41",
            "labels": {"vkubelet.io/source-uid": "u1"},
            "annotations": {"vkubelet.io/source-name": "web"},
            "deletionTimestamp": "2026-12-01T10:00:00Z",
            "creationTimestamp": "2026-12-01T09:00:00Z",
            "managedFields": [{"manager": "vkubelet", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7"}
    }"#;

    #[test]
    fn what_the_provider_reads_survives_and_managed_fields_do_not() {
        let observed: ObservedPod = serde_json::from_str(POD).unwrap();
        let pod = Pod::from(observed);
        let full: Pod = serde_json::from_str(POD).unwrap();
        assert!(
            full.metadata.managed_fields.is_some(),
            "the fixture has them"
        );
        assert_eq!(pod.metadata.managed_fields, None);
        assert_eq!(pod.metadata.creation_timestamp, None, "not read");
        for (got, want) in [
            (&pod.metadata.name, &full.metadata.name),
            (&pod.metadata.namespace, &full.metadata.namespace),
            (&pod.metadata.uid, &full.metadata.uid),
            (
                &pod.metadata.resource_version,
                &full.metadata.resource_version,
            ),
        ] {
            assert_eq!(got, want);
        }
        assert_eq!(pod.metadata.labels, full.metadata.labels);
        assert_eq!(pod.metadata.annotations, full.metadata.annotations);
        assert_eq!(
            pod.metadata.deletion_timestamp,
            full.metadata.deletion_timestamp
        );
        assert_eq!(pod.status, full.status);
        assert_eq!(
            pod.spec.unwrap().node_name.as_deref(),
            Some("node-1"),
            "the node, for stats"
        );
    }

    #[test]
    fn a_pod_without_spec_or_status_parses() {
        let p: ObservedPod = serde_json::from_str(r#"{"metadata": {"name": "x"}}"#).unwrap();
        assert!(p.spec.is_none() && p.status.is_none());
        assert_eq!(p.metadata.name.as_deref(), Some("x"));
    }
}
