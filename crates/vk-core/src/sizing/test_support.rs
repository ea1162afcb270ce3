//! Pod builders shared by the sizing tests.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

pub(super) fn pod_from(v: Value) -> Pod {
    match serde_json::from_value(v) {
        Ok(p) => p,
        Err(e) => panic!("test pod does not deserialise: {e}"),
    }
}

/// A container whose resources are `requests`/`limits` maps of (resource, quantity).
pub(super) fn ctr(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Value {
    let map = |pairs: &[(&str, &str)]| -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
                .collect(),
        )
    };
    let mut resources = serde_json::Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), map(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), map(limits));
    }
    json!({"name": name, "image": "img", "resources": resources})
}

/// A container requesting `cpu`/`memory` (either may be empty for "unset").
pub(super) fn req(name: &str, cpu: &str, memory: &str) -> Value {
    let mut pairs = Vec::new();
    if !cpu.is_empty() {
        pairs.push(("cpu", cpu));
    }
    if !memory.is_empty() {
        pairs.push(("memory", memory));
    }
    ctr(name, &pairs, &[])
}

pub(super) fn pod(inits: Vec<Value>, apps: Vec<Value>) -> Pod {
    pod_from(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {"initContainers": inits, "containers": apps},
    }))
}
