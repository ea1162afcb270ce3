//! The spec checks a profile implies besides sizing: which volume kinds the backend carries and
//! whether emptyDir may be mounted with subPath.

use k8s_openapi::api::core::v1::{Pod, Volume, VolumeMount};

use super::{SizingProfile, VolumePolicy};

/// The volume's kind: the name of its source field as the API spells it (`configMap`, `hostPath`).
/// Read from the serialised form so every kind the API knows is named, including ones added after
/// this code was written. A volume with no source is an emptyDir (the API server's default).
fn kinds(volume: &Volume) -> Vec<String> {
    let kinds: Vec<String> = match serde_json::to_value(volume) {
        Ok(serde_json::Value::Object(map)) => {
            map.keys().filter(|k| *k != "name").cloned().collect()
        }
        _ => Vec::new(),
    };
    if kinds.is_empty() {
        vec!["emptyDir".to_string()]
    } else {
        kinds
    }
}

impl VolumePolicy {
    fn allows(&self, kind: &str) -> bool {
        match self {
            VolumePolicy::Any => true,
            VolumePolicy::AllButHostPath => kind != "hostPath",
            VolumePolicy::Only(list) => list.iter().any(|k| k == kind),
        }
    }
}

impl SizingProfile {
    /// Reasons this pod's spec cannot run under the profile, besides sizing: a volume kind the
    /// profile does not carry, emptyDir mounted with subPath/subPathExpr where the profile forbids
    /// it. Empty = fine.
    pub fn spec_problems(&self, pod: &Pod) -> Vec<String> {
        let Some(spec) = pod.spec.as_ref() else {
            return Vec::new();
        };
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        let mut problems = Vec::new();
        let mut empty_dirs = Vec::new();
        for volume in volumes {
            for kind in kinds(volume) {
                if !self.volumes.allows(&kind) {
                    problems.push(format!(
                        "volume {:?} ({kind}) is not supported by profile {}",
                        volume.name, self.name
                    ));
                }
                if kind == "emptyDir" {
                    empty_dirs.push(volume.name.as_str());
                }
            }
        }
        if !self.empty_dir_sub_path && !empty_dirs.is_empty() {
            let mounts = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .map(|c| (c.name.as_str(), c.volume_mounts.as_deref()))
                .chain(
                    spec.ephemeral_containers
                        .iter()
                        .flatten()
                        .map(|c| (c.name.as_str(), c.volume_mounts.as_deref())),
                );
            for (container, mounts) in mounts {
                for m in mounts.unwrap_or_default() {
                    if !empty_dirs.contains(&m.name.as_str()) {
                        continue;
                    }
                    if let Some(field) = sub_path_field(m) {
                        problems.push(format!(
                            "container {container:?} mounts emptyDir volume {:?} with {field}, which profile {} does not support",
                            m.name, self.name
                        ));
                    }
                }
            }
        }
        problems
    }
}

fn sub_path_field(m: &VolumeMount) -> Option<&'static str> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if set(&m.sub_path) {
        Some("subPath")
    } else if set(&m.sub_path_expr) {
        Some("subPathExpr")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::sizing::SizingProfile;
    use crate::sizing::test_support::pod_from;

    fn pod_with(
        volumes: serde_json::Value,
        mounts: serde_json::Value,
    ) -> k8s_openapi::api::core::v1::Pod {
        pod_from(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {
                "containers": [{"name": "app", "image": "x", "volumeMounts": mounts}],
                "volumes": volumes,
            }
        }))
    }

    fn problems(profile: &str, pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
        SizingProfile::builtin(profile).unwrap().spec_problems(pod)
    }

    #[test]
    fn volume_kinds_per_profile() {
        let host = json!([{"name": "data", "hostPath": {"path": "/var"}}]);
        let pvc = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]);
        let nfs = json!([{"name": "data", "nfs": {"server": "s", "path": "/"}}]);
        let csi = json!([{"name": "data", "csi": {"driver": "d"}}]);
        let carried = json!([
            {"name": "a", "configMap": {"name": "cm"}},
            {"name": "b", "secret": {"secretName": "s"}},
            {"name": "c", "emptyDir": {}},
            {"name": "d", "downwardAPI": {"items": []}},
            {"name": "e", "projected": {"sources": []}},
            {"name": "f", "persistentVolumeClaim": {"claimName": "c"}},
            {"name": "g"},
        ]);
        let no_mounts = json!([]);
        // (profile, volumes, expected problems)
        let cases: Vec<(&str, &serde_json::Value, Vec<&str>)> = vec![
            (
                "cci",
                &host,
                vec![r#"volume "data" (hostPath) is not supported by profile cci"#],
            ),
            ("cci", &pvc, vec![]),
            (
                "cci",
                &nfs,
                vec![r#"volume "data" (nfs) is not supported by profile cci"#],
            ),
            ("cci", &carried, vec![]),
            (
                "cci2",
                &host,
                vec![r#"volume "data" (hostPath) is not supported by profile cci2"#],
            ),
            ("cci2", &carried, vec![]),
            ("cube", &nfs, vec![]),
            ("cube", &carried, vec![]),
            (
                "cube",
                &host,
                vec![r#"volume "data" (hostPath) is not supported by profile cube"#],
            ),
            (
                "cube",
                &csi,
                vec![r#"volume "data" (csi) is not supported by profile cube"#],
            ),
            (
                "eci",
                &host,
                vec![r#"volume "data" (hostPath) is not supported by profile eci"#],
            ),
            ("eci", &csi, vec![]),
            ("eci", &nfs, vec![]),
            ("none", &host, vec![]),
            ("none", &csi, vec![]),
        ];
        for (profile, volumes, want) in cases {
            let got = problems(profile, &pod_with(volumes.clone(), no_mounts.clone()));
            assert_eq!(got, want, "{profile} {volumes}");
        }
    }

    #[test]
    fn empty_dir_sub_path_is_refused_only_where_the_profile_says() {
        let vols = json!([
            {"name": "cache", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cm"}},
        ]);
        let sub = json!([{"name": "cache", "mountPath": "/c", "subPath": "x"}]);
        let expr = json!([{"name": "cache", "mountPath": "/c", "subPathExpr": "$(POD)"}]);
        let cfg_sub = json!([{"name": "cfg", "mountPath": "/c", "subPath": "x"}]);
        let plain = json!([{"name": "cache", "mountPath": "/c"}]);
        let empty_sub = json!([{"name": "cache", "mountPath": "/c", "subPath": ""}]);
        let cases: Vec<(&str, &serde_json::Value, Vec<&str>)> = vec![
            (
                "cci",
                &sub,
                vec![
                    r#"container "app" mounts emptyDir volume "cache" with subPath, which profile cci does not support"#,
                ],
            ),
            (
                "cci",
                &expr,
                vec![
                    r#"container "app" mounts emptyDir volume "cache" with subPathExpr, which profile cci does not support"#,
                ],
            ),
            ("cci", &cfg_sub, vec![]),
            ("cci", &plain, vec![]),
            ("cci", &empty_sub, vec![]),
            ("cube", &sub, vec![]),
            ("eci", &expr, vec![]),
            ("none", &sub, vec![]),
        ];
        for (profile, mounts, want) in cases {
            let got = problems(profile, &pod_with(vols.clone(), mounts.clone()));
            assert_eq!(got, want, "{profile} {mounts}");
        }
    }

    #[test]
    fn init_container_mounts_are_checked_and_spec_less_pods_are_fine() {
        let pod = pod_from(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "setup", "image": "x",
                    "volumeMounts": [{"name": "cache", "mountPath": "/c", "subPath": "s"}]}],
                "containers": [{"name": "app", "image": "x"}],
                "volumes": [{"name": "cache", "emptyDir": {}}],
            }
        }));
        let got = problems("cci", &pod);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with(r#"container "setup""#), "{got:?}");
        let bare = pod_from(json!({"metadata": {"name": "p"}}));
        assert!(problems("cci", &bare).is_empty());
    }
}
