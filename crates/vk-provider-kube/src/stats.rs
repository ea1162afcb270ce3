//! A pod's container usage from the backend node's kubelet summary (`/stats/summary`, the
//! kubelet's own format), for the virtual node's `/stats/summary` and `kubectl top`.

use std::collections::BTreeMap;

use vk_provider_api::streams::ContainerStats;

/// The containers of `namespace/name` in a summary; `None` when the pod is not in it (yet).
pub fn pod_stats(
    summary: &serde_json::Value,
    namespace: &str,
    name: &str,
) -> Option<BTreeMap<String, ContainerStats>> {
    let pod = summary["pods"].as_array()?.iter().find(|p| {
        p["podRef"]["name"].as_str() == Some(name)
            && p["podRef"]["namespace"].as_str() == Some(namespace)
    })?;
    let mut out = BTreeMap::new();
    for c in pod["containers"].as_array().into_iter().flatten() {
        let Some(container) = c["name"].as_str() else {
            continue;
        };
        out.insert(
            container.to_string(),
            ContainerStats {
                cpu_usage_core_nanoseconds: c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0),
                memory_working_set_bytes: c["memory"]["workingSetBytes"].as_u64().unwrap_or(0),
                memory_rss_bytes: c["memory"]["rssBytes"].as_u64().unwrap_or(0),
            },
        );
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_pod_among_the_nodes_pods() {
        let summary = serde_json::json!({
            "node": {"nodeName": "b-1"},
            "pods": [
                {"podRef": {"name": "other", "namespace": "x"}, "containers": [{"name": "c"}]},
                {"podRef": {"name": "web-uid", "namespace": "cce-burst-1"}, "containers": [
                    {"name": "app", "cpu": {"usageCoreNanoSeconds": 2_000_000_000u64},
                     "memory": {"workingSetBytes": 100, "rssBytes": 50}},
                    {"name": "sidecar"}
                ]}
            ]
        });
        let s = pod_stats(&summary, "cce-burst-1", "web-uid").unwrap();
        assert_eq!(s["app"].cpu_usage_core_nanoseconds, 2_000_000_000);
        assert_eq!(s["app"].memory_working_set_bytes, 100);
        assert_eq!(s["app"].memory_rss_bytes, 50);
        assert_eq!(s["sidecar"], ContainerStats::default());
        assert!(pod_stats(&summary, "cce-burst-1", "missing").is_none());
        assert!(pod_stats(&serde_json::json!({}), "a", "b").is_none());
    }
}
