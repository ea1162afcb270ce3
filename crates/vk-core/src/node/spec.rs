//! What the Node object of a virtual node says: labels, taints, addresses, capacity, conditions,
//! node info. Pure functions, so the rules are testable without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::controller::NodeConfig;
use crate::provider::NodeResources;

pub const PROVIDER_TAINT_KEY: &str = "virtual-kubelet.io/provider";
/// Added while the backend cannot take pods, so the scheduler stops sending more ("auto-shield").
pub const SOLD_OUT_TAINT_KEY: &str = "virtual-kubelet.io/sold-out";
/// A PreferNoSchedule taint that burst pods do not tolerate: TaintToleration scoring then ranks
/// real nodes first (the `auto` burst policy of seed 001). Pods that must run here are not
/// affected: PreferNoSchedule never keeps a pod off a node.
pub const PREFER_LOCAL_TAINT_KEY: &str = "virtual-kubelet.io/prefer-local";

fn is_ours(key: &str) -> bool {
    key == PROVIDER_TAINT_KEY || key == SOLD_OUT_TAINT_KEY || key == PREFER_LOCAL_TAINT_KEY
}

/// The provider taint's value on this node: the configured one, else the provider's name.
pub fn taint_value<'a>(cfg: &'a NodeConfig, provider_kind: &'a str) -> &'a str {
    cfg.taint_value.as_deref().unwrap_or(provider_kind)
}

pub fn labels(cfg: &NodeConfig) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("type".into(), "virtual-kubelet".into());
    l.insert("kubernetes.io/role".into(), "agent".into());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), go_arch().into());
    l.insert("beta.kubernetes.io/arch".into(), go_arch().into());
    l.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    l.insert(
        "node.kubernetes.io/exclude-from-external-load-balancers".into(),
        "true".into(),
    );
    l.extend(cfg.labels.clone());
    l
}

pub fn taints(cfg: &NodeConfig, provider_kind: &str, sold_out: bool) -> Vec<Taint> {
    let mut t = Vec::new();
    if !cfg.disable_taint {
        t.push(Taint {
            key: PROVIDER_TAINT_KEY.into(),
            value: Some(taint_value(cfg, provider_kind).into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        if cfg.prefer_local_taint {
            t.push(Taint {
                key: PREFER_LOCAL_TAINT_KEY.into(),
                value: Some("true".into()),
                effect: "PreferNoSchedule".into(),
                time_added: None,
            });
        }
    }
    if sold_out {
        t.push(Taint {
            key: SOLD_OUT_TAINT_KEY.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
    }
    t
}

/// The node's taints with ours brought up to date and everyone else's kept.
pub fn merged_taints(existing: &[Taint], ours: &[Taint]) -> Vec<Taint> {
    let mut out: Vec<Taint> = existing
        .iter()
        .filter(|t| !is_ours(&t.key))
        .cloned()
        .collect();
    out.extend(ours.iter().cloned());
    out
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The kubelet-owned part of the node status. `previous` supplies transition times for conditions
/// whose status did not change.
pub fn status(
    cfg: &NodeConfig,
    provider_kind: &str,
    res: &NodeResources,
    previous: &[NodeCondition],
    now: Timestamp,
) -> NodeStatus {
    let mut capacity = res.capacity.clone();
    let mut allocatable = if res.allocatable.is_empty() {
        res.capacity.clone()
    } else {
        res.allocatable.clone()
    };
    if let Some(max) = cfg.max_pods {
        for list in [&mut capacity, &mut allocatable] {
            cap_pods(list, max);
        }
    }
    let mut conditions = vec![
        if res.accepting_pods {
            condition("Ready", "True", "KubeletReady", "vkubelet is ready", now)
        } else {
            // Still Ready: the pods already running are fine, and a NotReady node would get them
            // evicted. New pods are kept away by the sold-out taint instead.
            condition(
                "Ready",
                "True",
                "KubeletReady",
                res.message
                    .as_deref()
                    .unwrap_or("vkubelet is ready; the backend accepts no new pods"),
                now,
            )
        },
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "backend has sufficient memory",
            now,
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "backend has no disk pressure",
            now,
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "backend has sufficient PID available",
            now,
        ),
        condition(
            "NetworkUnavailable",
            "False",
            "RouteCreated",
            "backend network is available",
            now,
        ),
    ];
    conditions.extend(res.conditions.iter().cloned().map(|mut c| {
        c.last_heartbeat_time = Some(Time(now));
        if c.last_transition_time.is_none() {
            c.last_transition_time = Some(Time(now));
        }
        c
    }));
    for c in conditions.iter_mut() {
        if let Some(prev) = previous.iter().find(|p| p.type_ == c.type_)
            && prev.status == c.status
            && prev.last_transition_time.is_some()
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
    }
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.hostname.clone().unwrap_or_else(|| cfg.node_ip.clone()),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(cfg.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().into(),
            operating_system: "linux".into(),
            kubelet_version: cfg.kubelet_version.clone(),
            kube_proxy_version: String::new(),
            container_runtime_version: format!("vkubelet://{provider_kind}"),
            os_image: format!(
                "vkubelet {} ({provider_kind} provider)",
                env!("CARGO_PKG_VERSION")
            ),
            kernel_version: String::new(),
            machine_id: cfg.name.clone(),
            system_uuid: String::new(),
            boot_id: String::new(),
            ..Default::default()
        }),
        phase: Some("Running".into()),
        ..Default::default()
    }
}

/// Lower `pods` to `max` (set it when the provider reports none).
fn cap_pods(list: &mut BTreeMap<String, Quantity>, max: u32) {
    let reported = list
        .get("pods")
        .and_then(|q| crate::resolve::quantity::Amount::of(q).ok())
        .map(|a| a.value());
    if reported.is_none_or(|n| n > i128::from(max)) {
        list.insert("pods".into(), Quantity(max.to_string()));
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> NodeCondition {
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// A fresh Node object for registration.
pub fn new_node(
    cfg: &NodeConfig,
    provider_kind: &str,
    res: &NodeResources,
    now: Timestamp,
) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels(cfg)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints(cfg, provider_kind, !res.accepting_pods)),
            ..Default::default()
        }),
        status: Some(status(cfg, provider_kind, res, &[], now)),
    }
}

/// Status equality ignoring heartbeat times (which change on every write by design).
pub fn same_status(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        let mut c = NodeConfig::new("vk-1");
        c.labels.insert("team".into(), "a".into());
        c
    }

    fn resources(accepting: bool) -> NodeResources {
        NodeResources {
            capacity: [
                ("cpu".to_string(), Quantity("8".into())),
                ("pods".to_string(), Quantity("100".into())),
            ]
            .into(),
            accepting_pods: accepting,
            ..Default::default()
        }
    }

    #[test]
    fn labels_and_taint_match_what_users_know() {
        let l = labels(&cfg());
        assert_eq!(l["type"], "virtual-kubelet");
        assert_eq!(l["kubernetes.io/role"], "agent");
        assert_eq!(l["kubernetes.io/hostname"], "vk-1");
        assert_eq!(l["team"], "a");
        let t = taints(&cfg(), "sim", false);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[1].key.as_str(), t[1].effect.as_str()),
            (PREFER_LOCAL_TAINT_KEY, "PreferNoSchedule")
        );
        assert_eq!(
            (
                t[0].key.as_str(),
                t[0].value.as_deref(),
                t[0].effect.as_str()
            ),
            (PROVIDER_TAINT_KEY, Some("sim"), "NoSchedule")
        );
        assert_eq!(taints(&cfg(), "sim", true).len(), 3);
        // seed 003's nodes are tainted with the vendor's value, not the provider's name.
        let mut c = cfg();
        c.taint_value = Some("ucloud".into());
        c.prefer_local_taint = false;
        let t = taints(&c, "kube", false);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].value.as_deref(), Some("ucloud"));
        c.disable_taint = true;
        assert!(
            taints(&c, "kube", true)
                .iter()
                .all(|t| t.key == SOLD_OUT_TAINT_KEY)
        );
    }

    #[test]
    fn every_published_address_resolves() {
        let mut c = cfg();
        c.node_ip = "10.1.2.3".into();
        let s = status(&c, "sim", &resources(true), &[], Timestamp::UNIX_EPOCH);
        let addrs: Vec<(String, String)> = s
            .addresses
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        // Not the node name: an API server dialling Hostname first would fail to look it up.
        assert_eq!(
            addrs,
            vec![
                ("InternalIP".to_string(), "10.1.2.3".to_string()),
                ("Hostname".to_string(), "10.1.2.3".to_string())
            ]
        );
        c.hostname = Some("vk.example.internal".into());
        let s = status(&c, "sim", &resources(true), &[], Timestamp::UNIX_EPOCH);
        assert_eq!(
            s.addresses.unwrap_or_default()[1].address,
            "vk.example.internal"
        );
    }

    #[test]
    fn max_pods_caps_capacity_and_allocatable() {
        let mut c = cfg();
        c.max_pods = Some(50);
        let s = status(&c, "sim", &resources(true), &[], Timestamp::UNIX_EPOCH);
        assert_eq!(
            s.capacity.as_ref().and_then(|m| m.get("pods")),
            Some(&Quantity("50".into()))
        );
        assert_eq!(
            s.allocatable.as_ref().and_then(|m| m.get("pods")),
            Some(&Quantity("50".into()))
        );
        // Never raised above what the backend reports.
        c.max_pods = Some(500);
        let s = status(&c, "sim", &resources(true), &[], Timestamp::UNIX_EPOCH);
        assert_eq!(
            s.capacity.as_ref().and_then(|m| m.get("pods")),
            Some(&Quantity("100".into()))
        );
    }

    #[test]
    fn merged_taints_keep_others_and_replace_ours() {
        let other = Taint {
            key: "dedicated".into(),
            value: Some("x".into()),
            effect: "NoExecute".into(),
            time_added: None,
        };
        let stale = Taint {
            key: PROVIDER_TAINT_KEY.into(),
            value: Some("old".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let merged = merged_taints(&[other.clone(), stale], &taints(&cfg(), "sim", false));
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0], other);
        assert_eq!(merged[1].value.as_deref(), Some("sim"));
    }

    #[test]
    fn status_carries_capacity_endpoint_and_keeps_transition_times() {
        let t0 = Timestamp::from_second(1000).unwrap_or(Timestamp::UNIX_EPOCH);
        let t1 = Timestamp::from_second(2000).unwrap_or(Timestamp::UNIX_EPOCH);
        let s0 = status(&cfg(), "sim", &resources(true), &[], t0);
        assert_eq!(
            s0.allocatable, s0.capacity,
            "allocatable defaults to capacity"
        );
        assert_eq!(
            s0.daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(10250)
        );
        let prev = s0.conditions.clone().unwrap_or_default();
        let s1 = status(&cfg(), "sim", &resources(true), &prev, t1);
        let ready = s1
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .cloned()
            .unwrap_or_default();
        assert_eq!(ready.last_transition_time, Some(Time(t0)));
        assert_eq!(ready.last_heartbeat_time, Some(Time(t1)));
        assert!(same_status(
            &status(&cfg(), "sim", &resources(true), &prev, t0),
            &s1
        ));
        assert!(!same_status(
            &status(&cfg(), "sim", &resources(false), &prev, t1),
            &s1
        ));
    }
}
