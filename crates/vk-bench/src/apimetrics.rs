//! API writes as the API server counts them: `apiserver_request_total` from its /metrics, read
//! before and after a run. Only successful writes (2xx) by verb and resource/subresource count:
//! a request the server refused (429 while saturated) or failed is not a write the kubelet made.

use std::collections::BTreeMap;

use anyhow::Context as _;

const WRITE_VERBS: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// Successful write counts keyed `"VERB resource[/subresource]"`.
pub type WriteCounts = BTreeMap<String, f64>;

pub async fn scrape(client: &kube::Client) -> anyhow::Result<WriteCounts> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .context("metrics request")?;
    let text = client
        .request_text(request)
        .await
        .context("GET /metrics on the API server")?;
    Ok(parse_writes(&text))
}

/// Sums `apiserver_request_total` samples of write verbs with a 2xx code.
pub fn parse_writes(text: &str) -> WriteCounts {
    let mut out = WriteCounts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| label_value(labels, name).unwrap_or_default();
        let verb = label("verb");
        if !WRITE_VERBS.contains(&verb.as_str()) || !label("code").starts_with('2') {
            continue;
        }
        let resource = match label("subresource").as_str() {
            "" => label("resource"),
            sub => format!("{}/{sub}", label("resource")),
        };
        *out.entry(format!("{verb} {resource}")).or_default() += value;
    }
    out
}

/// The value of `name="..."` in a Prometheus label set (values here never contain quotes).
fn label_value(labels: &str, name: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// `after − before`, dropping keys that did not move.
pub fn delta(before: &WriteCounts, after: &WriteCounts) -> WriteCounts {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 1000
apiserver_request_total{code="429",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 17
apiserver_request_total{code="200",component="apiserver",contentType="application/merge-patch+json",dry_run="",group="",resource="pods",scope="namespace",subresource="status",verb="PATCH",version="v1"} 998
apiserver_request_total{code="200",component="apiserver",contentType="application/strategic-merge-patch+json",dry_run="",group="",resource="pods",scope="namespace",subresource="status",verb="PATCH",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 5
apiserver_request_total{code="200",component="apiserver",contentType="application/vnd.kubernetes.protobuf",dry_run="",group="coordination.k8s.io",resource="leases",scope="namespace",subresource="",verb="PUT",version="v1"} 3
apiserver_request_count_total{code="200",resource="pods",verb="PUT"} 99
"#;

    #[test]
    fn successful_writes_are_summed_by_verb_and_subresource() {
        let w = parse_writes(SAMPLE);
        assert_eq!(w.get("POST pods"), Some(&1000.0), "the 429s are not writes");
        assert_eq!(w.get("PATCH pods/status"), Some(&1000.0));
        assert_eq!(w.get("PUT leases"), Some(&3.0));
        assert_eq!(w.len(), 3, "reads and other metrics are ignored: {w:?}");
    }

    #[test]
    fn delta_keeps_what_moved() {
        let before = parse_writes(SAMPLE);
        let mut after = before.clone();
        *after.entry("POST pods".into()).or_default() += 10.0;
        after.insert("DELETE pods".into(), 4.0);
        let d = delta(&before, &after);
        assert_eq!(d.len(), 2);
        assert_eq!(d["POST pods"], 10.0);
        assert_eq!(d["DELETE pods"], 4.0);
    }
}
