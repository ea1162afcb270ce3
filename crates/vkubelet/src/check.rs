//! `vkubelet check`: what the burst policy and a sizing profile make of workload manifests,
//! offline. The same functions as the webhook (`vk_core::burst`) and the pod controller
//! (`vk_core::sizing`) give the answer, so what it prints is what a cluster would do — except
//! for namespace labels, which a manifest does not carry (`--namespace-label` stands in).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Serialize;
use vk_core::burst::{self, BurstPolicy, Meta, Owner, burst_blockers};
use vk_core::sizing::SizingProfile;

/// One workload of the manifests, reduced to the pod it would create.
struct Workload {
    kind: String,
    namespace: String,
    name: String,
    /// Owner metadata nearest first (e.g. the CronJob's job template, then the CronJob).
    owners: Vec<(String, String, ObjectMeta)>,
    pod: Pod,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerReport {
    pub name: String,
    pub init: bool,
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub policy: String,
    pub source: String,
    pub can_burst: bool,
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    pub profile: String,
    /// CCI's `${cpu}_${mem}` size, as the pod's `virtual-kubelet.io/size` annotation will say.
    pub size: Option<String>,
    pub containers: Vec<ContainerReport>,
}

/// Read manifests from `path` (`-`: standard input).
pub fn read_manifests(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn parse_documents(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| anyhow::anyhow!("invalid YAML: {e}"))?;
    let mut out = Vec::new();
    for doc in docs {
        match doc {
            serde_json::Value::Null => {}
            // `kubectl get -o yaml` of several objects.
            serde_json::Value::Object(ref m)
                if m.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                if let Some(items) = m.get("items").and_then(|i| i.as_array()) {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn field<T: serde::de::DeserializeOwned>(
    doc: &serde_json::Value,
    pointer: &str,
) -> anyhow::Result<Option<T>> {
    match doc.pointer(pointer) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => Ok(Some(
            serde_json::from_value(v.clone()).with_context(|| format!("field {pointer}"))?,
        )),
    }
}

fn workload(doc: &serde_json::Value) -> anyhow::Result<Option<Workload>> {
    let kind = doc
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let meta: ObjectMeta = field(doc, "/metadata")?.unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let template = |pointer: &str| -> anyhow::Result<(ObjectMeta, PodSpec)> {
        let m: ObjectMeta = field(doc, &format!("{pointer}/metadata"))?.unwrap_or_default();
        let s: PodSpec = field(doc, &format!("{pointer}/spec"))?
            .with_context(|| format!("{kind} {name}: no pod template at {pointer}"))?;
        Ok((m, s))
    };
    let (pod_meta, spec, owners) = match kind.as_str() {
        "Pod" => {
            let s: PodSpec =
                field(doc, "/spec")?.with_context(|| format!("Pod {name}: no spec"))?;
            (meta.clone(), s, Vec::new())
        }
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => {
            let (m, s) = template("/spec/template")?;
            (m, s, vec![(kind.clone(), name.clone(), meta.clone())])
        }
        "CronJob" => {
            let (m, s) = template("/spec/jobTemplate/spec/template")?;
            let job_meta: ObjectMeta =
                field(doc, "/spec/jobTemplate/metadata")?.unwrap_or_default();
            (
                m,
                s,
                vec![
                    ("Job".to_string(), format!("{name}-<scheduled>"), job_meta),
                    (kind.clone(), name.clone(), meta.clone()),
                ],
            )
        }
        _ => return Ok(None),
    };
    let mut pod = Pod {
        metadata: pod_meta,
        spec: Some(spec),
        ..Default::default()
    };
    pod.metadata.namespace = Some(namespace.clone());
    if let Some((owner_kind, owner_name, _)) = owners.first() {
        // What the controller will set: DaemonSet pods are refused by that mark.
        pod.metadata.owner_references = Some(vec![OwnerReference {
            kind: owner_kind.clone(),
            name: owner_name.clone(),
            controller: Some(true),
            ..Default::default()
        }]);
    }
    Ok(Some(Workload {
        kind,
        namespace,
        name,
        owners,
        pod,
    }))
}

pub struct CheckOptions {
    pub profile: SizingProfile,
    pub default: BurstPolicy,
    pub namespace_labels: BTreeMap<String, String>,
}

/// CPU and memory as the core writes them into the pod (the same functions).
fn cpu_text(millis: i64) -> String {
    vk_core::sizing::cpu_quantity(millis).0
}

fn memory_text(bytes: i64) -> String {
    vk_core::sizing::memory_quantity(bytes).0
}

fn report(w: &Workload, opts: &CheckOptions) -> Report {
    let owners: Vec<Owner<'_>> = w
        .owners
        .iter()
        .map(|(kind, name, meta)| Owner {
            kind,
            name,
            meta: Meta::of(meta),
        })
        .collect();
    let ns_meta = Meta {
        labels: Some(&opts.namespace_labels),
        annotations: None,
    };
    let (decision, warnings) = burst::decide(
        Meta::of(&w.pod.metadata),
        &owners,
        Some((w.namespace.as_str(), ns_meta)),
        opts.default,
    );
    let reasons = burst_blockers(&w.pod, &[&opts.profile]);
    let (size, containers) = match opts.profile.normalize(&w.pod) {
        Ok(n) => (
            n.size.map(|s| s.to_string()),
            n.containers
                .iter()
                .map(|c| ContainerReport {
                    name: c.name.clone(),
                    init: c.init,
                    cpu: cpu_text(c.cpu_millis),
                    memory: memory_text(c.memory_bytes),
                })
                .collect(),
        ),
        Err(_) => (None, Vec::new()), // the reason is in `reasons`
    };
    Report {
        kind: w.kind.clone(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        policy: decision.policy.to_string(),
        source: decision.source.to_string(),
        can_burst: reasons.is_empty(),
        reasons,
        warnings,
        profile: opts.profile.name.clone(),
        size,
        containers,
    }
}

/// Reports for every workload in `text`; kinds that make no pods are skipped.
pub fn check(text: &str, opts: &CheckOptions) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for (i, doc) in parse_documents(text)?.iter().enumerate() {
        let w = workload(doc).with_context(|| format!("document {}", i + 1))?;
        if let Some(w) = w {
            reports.push(report(&w, opts));
        }
    }
    if reports.is_empty() {
        bail!(
            "no Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job or CronJob in the input"
        );
    }
    Ok(reports)
}

pub fn print_text(reports: &[Report]) -> String {
    let mut s = String::new();
    for r in reports {
        s.push_str(&format!("{} {}/{}\n", r.kind, r.namespace, r.name));
        s.push_str(&format!("  policy:    {} (from {})\n", r.policy, r.source));
        for w in &r.warnings {
            s.push_str(&format!("  warning:   {w}\n"));
        }
        if r.can_burst {
            s.push_str("  can burst: yes\n");
        } else {
            s.push_str("  can burst: no\n");
            for reason in &r.reasons {
                s.push_str(&format!("    - {reason}\n"));
            }
        }
        match &r.size {
            Some(size) => s.push_str(&format!("  profile:   {} -> size {size}\n", r.profile)),
            None => s.push_str(&format!("  profile:   {}\n", r.profile)),
        }
        for c in &r.containers {
            s.push_str(&format!(
                "    {}{}: cpu {} memory {}\n",
                c.name,
                if c.init { " (init)" } else { "" },
                c.cpu,
                c.memory
            ));
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEED_001: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: test-vk
  labels:
    virtual-kubelet.io/burst-to-cci: 'auto'
spec:
  replicas: 20
  selector:
    matchLabels:
      app: test-vk
  template:
    metadata:
      labels:
        app: test-vk
    spec:
      containers:
      - name: container-0
        image: centos:latest
        resources:
          limits:
            cpu: 500m
            memory: 1024Mi
          requests:
             cpu: 500m
             memory: 1024Mi
        command:
          - /bin/bash
          - '-c'
          - sleep 10000
      dnsPolicy: Default
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent, virtual-kubelet.io/burst-to-cci: enforce}}
    spec:
      hostNetwork: true
      containers: [{name: a, image: agent}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;

    fn opts(profile: &str) -> CheckOptions {
        CheckOptions {
            profile: SizingProfile::builtin(profile).unwrap(),
            default: BurstPolicy::Off,
            namespace_labels: BTreeMap::new(),
        }
    }

    #[test]
    fn seed_001_deployment_under_cci() {
        let reports = check(SEED_001, &opts("cci")).unwrap();
        assert_eq!(reports.len(), 2, "the ConfigMap makes no pods");
        let d = &reports[0];
        assert_eq!(
            (d.kind.as_str(), d.name.as_str()),
            ("Deployment", "test-vk")
        );
        assert_eq!(d.policy, "auto");
        assert_eq!(
            d.source,
            "Deployment test-vk virtual-kubelet.io/burst-to-cci"
        );
        assert!(d.can_burst, "{:?}", d.reasons);
        assert_eq!(d.size.as_deref(), Some("0.5_1"));
        assert_eq!(d.containers[0].cpu, "500m");
        assert_eq!(d.containers[0].memory, "1Gi");
        let ds = &reports[1];
        assert_eq!(ds.policy, "enforce");
        assert!(!ds.can_burst);
        assert!(
            ds.reasons.iter().any(|r| r.contains("hostNetwork")),
            "{:?}",
            ds.reasons
        );
        assert!(
            ds.reasons.iter().any(|r| r.contains("DaemonSet")),
            "{:?}",
            ds.reasons
        );
        let text = print_text(&reports);
        assert!(text.contains("profile:   cci -> size 0.5_1"), "{text}");
        assert!(
            text.contains("    - hostNetwork is not supported"),
            "{text}"
        );
    }

    #[test]
    fn cronjob_policy_from_its_own_label_and_namespace_stand_in() {
        let cron = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, labels: {bursting.cci.io/burst-to-cci: localPrefer}}
spec:
  schedule: "0 0 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: j, image: busybox, resources: {requests: {cpu: "2", memory: 1Gi}}}]
"#;
        let r = &check(cron, &opts("cci")).unwrap()[0];
        assert_eq!(r.policy, "localPrefer");
        assert_eq!(r.source, "CronJob nightly bursting.cci.io/burst-to-cci");
        assert_eq!(
            r.size.as_deref(),
            Some("2_4"),
            "ratio 0.5 raises memory to 4 GiB"
        );
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: nginx, namespace: vk}\nspec: {containers: [{name: nginx, image: nginx}]}\n";
        let mut o = opts("eci");
        o.namespace_labels
            .insert("virtual-node-affinity-injection".into(), "enabled".into());
        let r = &check(pod, &o).unwrap()[0];
        assert_eq!(r.policy, "enforce");
        assert_eq!(r.source, "namespace vk virtual-node-affinity-injection");
        assert_eq!(r.size.as_deref(), Some("2_4"), "ECI's default size");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(check("kind: ConfigMap\n", &opts("none")).is_err());
        let err = check(
            "kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            &opts("none"),
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("no pod template"), "{err}");
        assert!(check(": : :\n  - [", &opts("none")).is_err());
    }

    #[test]
    fn units_print_as_kubernetes_writes_them() {
        assert_eq!(cpu_text(2000), "2");
        assert_eq!(cpu_text(250), "250m");
        assert_eq!(memory_text(1 << 30), "1Gi");
        assert_eq!(memory_text(1 << 40), "1Ti");
        assert_eq!(memory_text(512 << 20), "512Mi");
        assert_eq!(memory_text(214748365), "214748365");
    }
}
