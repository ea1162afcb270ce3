//! Tests of the translation. Fixtures come from small builders; env checks run the backend pod's
//! env through a miniature of the kubelet's env evaluation, so they test what the backend
//! container would see rather than the shape of the spec.

use super::*;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Affinity, CSIVolumeSource, ConfigMapEnvSource, EnvFromSource, HostPathVolumeSource,
    NodeAffinity, NodeSelector, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    TopologySpreadConstraint, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use vk_provider_api::PodKey;
use vk_provider_api::resolution::{EnvVar as ResolvedEnv, PodAddresses, Resolution};

const NODE_IP: &str = "192.0.2.10";
const POD_IP: &str = "10.0.0.7";
const POD_IPS: &str = "10.0.0.7,fd00::7";

// ---- builders -------------------------------------------------------------------------------

fn ctx() -> TranslateContext {
    TranslateContext {
        namespace: "backend-ns".into(),
        name: "web-b".into(),
        labels: BTreeMap::from([
            ("vkubelet.io/uid".to_string(), "u1".to_string()),
            ("app".to_string(), "ctx-wins".to_string()),
        ]),
        annotations: BTreeMap::from([("vkubelet.io/source".to_string(), "src/web".to_string())]),
        node_ip: NODE_IP.into(),
        pass_through_pvcs: false,
    }
}

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: Some("busybox:1.36".into()),
        ..Default::default()
    }
}

/// `"http://{podIP}:80"` → text and address fields (`{podIP}`, `{podIPs}`, `{hostIP}`,
/// `{hostIPs}`).
fn tpl(s: &str) -> Template {
    let mut t = Template::default();
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        t.push_text(&rest[..start]);
        let field = match &rest[start + 1..end] {
            "podIP" => AddressField::PodIp,
            "podIPs" => AddressField::PodIps,
            "hostIP" => AddressField::HostIp,
            "hostIPs" => AddressField::HostIps,
            other => panic!("unknown field {other}"),
        };
        t.push_template(&Template::field(field));
        rest = &rest[end + 1..];
    }
    t.push_text(rest);
    t
}

fn file(path: &str, mode: u32, data: &[u8], sensitive: bool) -> VolumeFile {
    VolumeFile {
        path: path.into(),
        mode,
        data: Arc::from(data),
        sensitive,
    }
}

fn files(kind: FilesKind, files: Vec<VolumeFile>) -> ResolvedVolumeSource {
    ResolvedVolumeSource::Files { kind, files }
}

fn cred(registry: &str, user: &str, pass: &str, token: Option<&str>) -> RegistryCredential {
    RegistryCredential {
        registry: registry.into(),
        username: user.into(),
        password: pass.into(),
        identity_token: token.map(str::to_string),
        secret: "src-pull".into(),
    }
}

/// A source pod `src/web` with one container `app`, plus its resolution.
struct PodBuilder {
    pod: Pod,
    resolution: Resolution,
}

impl PodBuilder {
    fn new() -> Self {
        Self {
            pod: Pod {
                metadata: ObjectMeta {
                    name: Some("web".into()),
                    namespace: Some("src".into()),
                    uid: Some("u1".into()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![container("app")],
                    ..Default::default()
                }),
                status: None,
            },
            resolution: Resolution::default(),
        }
    }

    fn spec(mut self, f: impl FnOnce(&mut PodSpec)) -> Self {
        if let Some(spec) = self.pod.spec.as_mut() {
            f(spec);
        }
        self
    }

    fn meta(mut self, f: impl FnOnce(&mut ObjectMeta)) -> Self {
        f(&mut self.pod.metadata);
        self
    }

    /// Resolved env for a container (by name) with the given variables.
    fn env(mut self, container: &str, init: bool, vars: &[(&str, Template)]) -> Self {
        self.resolution.containers.push(ResolvedContainer {
            name: container.into(),
            init,
            env: vars
                .iter()
                .map(|(n, v)| ResolvedEnv {
                    name: (*n).into(),
                    value: v.clone(),
                })
                .collect(),
            command: None,
            args: None,
        });
        self
    }

    /// A spec volume and its resolution.
    fn volume(mut self, spec: Volume, resolved: ResolvedVolumeSource) -> Self {
        self.resolution.volumes.push(ResolvedVolume {
            name: spec.name.clone(),
            source: resolved,
        });
        self.spec(|s| s.volumes.get_or_insert_with(Vec::new).push(spec))
    }

    /// A declared volume the core passes through as declared.
    fn passthrough(self, spec: Volume) -> Self {
        let resolved = ResolvedVolumeSource::Passthrough(Box::new(spec.clone()));
        self.volume(spec, resolved)
    }

    fn credential(mut self, c: RegistryCredential) -> Self {
        self.resolution.registry_credentials.push(c);
        self
    }

    fn build(self) -> ResolvedPod {
        ResolvedPod::new(PodKey::new("u1", "src", "web"), Arc::new(self.pod))
            .with_resolution(self.resolution)
    }
}

fn named(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Default::default()
    }
}

fn config_map_volume(name: &str) -> Volume {
    Volume {
        config_map: Some(ConfigMapVolumeSource {
            name: "src-cm".into(),
            ..Default::default()
        }),
        ..named(name)
    }
}

fn pvc_volume(name: &str) -> Volume {
    Volume {
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: "data".into(),
            read_only: None,
        }),
        ..named(name)
    }
}

// ---- inspection -----------------------------------------------------------------------------

fn spec(t: &Translation) -> &PodSpec {
    t.pod.spec.as_ref().unwrap()
}

fn backend_container<'a>(t: &'a Translation, name: &str) -> &'a Container {
    let s = spec(t);
    s.init_containers
        .iter()
        .flatten()
        .chain(s.containers.iter())
        .find(|c| c.name == name)
        .unwrap()
}

fn secret<'a>(t: &'a Translation, name: &str) -> &'a Secret {
    t.secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Secret {name}"))
}

fn secret_value(t: &Translation, name: &str, key: &str) -> String {
    let data = &secret(t, name).data.as_ref().unwrap()[key];
    String::from_utf8(data.0.clone()).unwrap()
}

/// `$(VAR)` expansion as the kubelet does it: defined names substituted (not re-expanded),
/// undefined references kept, `$$` → `$`.
fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(')
            && let Some(close) = tail.find(')')
        {
            let name = &tail[..close];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment the backend kubelet gives the container: each variable evaluated in order
/// (secretKeyRef from the translation's Secrets, fieldRef from the backend pod's addresses,
/// `value` expanded against the earlier ones); a later definition replaces an earlier one.
fn backend_env(t: &Translation, container: &str) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for e in backend_container(t, container).env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => expand(v, &vars),
            (None, Some(src)) => {
                if let Some(r) = &src.secret_key_ref {
                    assert_eq!(r.optional, Some(false));
                    secret_value(t, &r.name, &r.key)
                } else if let Some(f) = &src.field_ref {
                    match f.field_path.as_str() {
                        "status.podIP" => POD_IP.to_string(),
                        "status.podIPs" => POD_IPS.to_string(),
                        other => panic!("unexpected fieldRef {other}"),
                    }
                } else {
                    panic!("unexpected source {src:?}")
                }
            }
            other => panic!("variable {} is {other:?}", e.name),
        };
        vars.insert(e.name.clone(), value);
    }
    vars
}

fn source_view() -> PodAddresses {
    PodAddresses {
        pod_ips: POD_IPS.split(',').map(str::to_string).collect(),
        host_ips: vec![NODE_IP.to_string()],
    }
}

fn not_supported(r: Result<Translation, ProviderError>) -> String {
    match r {
        Err(ProviderError::NotSupported(m)) => m,
        other => panic!("expected NotSupported, got {other:?}"),
    }
}

// ---- env ------------------------------------------------------------------------------------

#[test]
fn secret_derived_env_never_appears_in_the_backend_pod() {
    const SECRET: &str = "hunter2-s3cr3t";
    let pod = PodBuilder::new()
        .env(
            "app",
            false,
            &[
                ("PASSWORD", Template::text(SECRET)),
                ("DSN", tpl(&format!("postgres://u:{SECRET}@{{podIP}}/db"))),
            ],
        )
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    let json = serde_json::to_string(&t.pod).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    assert!(!json.contains("postgres://"), "{json}");
    let env_secret = secret(&t, "web-b-env");
    assert_eq!(env_secret.type_.as_deref(), Some("Opaque"));
    let data = env_secret.data.as_ref().unwrap();
    assert!(data.values().any(|v| v.0 == SECRET.as_bytes()));
    for key in data.keys() {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
            "{key}"
        );
    }
    let env = backend_env(&t, "app");
    assert_eq!(env["PASSWORD"], SECRET);
    assert_eq!(env["DSN"], format!("postgres://u:{SECRET}@{POD_IP}/db"));
}

#[test]
fn backend_env_equals_what_the_source_pod_would_see() {
    // (template, why it is here)
    let cases = [
        // First, so its first helper would be VKUBELET_E1_0 (see below).
        ("http://{podIP}:8080/$(X)", "text around a field"),
        ("plain", "plain text"),
        ("", "an empty value"),
        (
            "$(NOT_EXPANDED) and $$ stay literal",
            "text the backend must not expand again",
        ),
        ("{podIP}", "a lone pod IP"),
        ("{podIPs}", "all pod IPs"),
        ("{hostIP}", "the host is the virtual node"),
        ("{hostIPs}", "all host IPs"),
        ("{podIP}{podIP}", "adjacent fields"),
        ("{hostIP}:{podIP}:{hostIPs}", "host and pod addresses mixed"),
        ("a{hostIP}b", "host address inside text"),
    ];
    // A user variable named like the first helper comes first, so a helper that shadowed it
    // would win in the final environment.
    let mut vars = vec![("VKUBELET_E1_0".to_string(), Template::text("user's own"))];
    vars.extend(
        cases
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (format!("V{i}"), tpl(t))),
    );
    let refs: Vec<(&str, Template)> = vars.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let pod = PodBuilder::new().env("app", false, &refs).build();
    let t = translate(&pod, &ctx()).unwrap();
    let env = backend_env(&t, "app");
    for (name, template) in &vars {
        assert_eq!(
            env.get(name),
            Some(&template.render(&source_view())),
            "{name}"
        );
    }
    for (i, (_, why)) in cases.iter().enumerate() {
        assert!(env.contains_key(&format!("V{i}")), "{why}");
    }
    // Nothing inline but `$(helper)` compositions.
    for e in backend_container(&t, "app").env.iter().flatten() {
        if let Some(v) = &e.value {
            assert!(
                v.starts_with("$(VKUBELET_E") && v.ends_with(')'),
                "{}: {v}",
                e.name
            );
        }
    }
}

#[test]
fn field_only_values_become_field_refs_without_helpers() {
    let cases = [
        (AddressField::PodIp, "status.podIP"),
        (AddressField::PodIps, "status.podIPs"),
    ];
    for (field, path) in cases {
        let pod = PodBuilder::new()
            .env("app", false, &[("IP", Template::field(field))])
            .build();
        let t = translate(&pod, &ctx()).unwrap();
        let env = backend_container(&t, "app").env.clone().unwrap();
        assert_eq!(env.len(), 1, "{path}: {env:?}");
        assert_eq!(env[0].name, "IP");
        let r = env[0]
            .value_from
            .as_ref()
            .and_then(|s| s.field_ref.as_ref());
        assert_eq!(r.map(|f| f.field_path.as_str()), Some(path));
        assert!(t.secrets.is_empty(), "{path}: no env Secret needed");
    }
}

#[test]
fn mixed_template_composes_helpers_in_order() {
    let pod = PodBuilder::new()
        .env(
            "app",
            false,
            &[
                ("A", Template::text("first")),
                ("URL", tpl("http://{podIP}:8080")),
            ],
        )
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    let env = backend_container(&t, "app").env.clone().unwrap();
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "A",
            "VKUBELET_E1_0",
            "VKUBELET_E1_1",
            "VKUBELET_E1_2",
            "URL"
        ]
    );
    let key = |i: usize| {
        env[i]
            .value_from
            .as_ref()
            .and_then(|s| s.secret_key_ref.as_ref())
            .map(|r| r.key.clone())
            .unwrap()
    };
    assert_eq!(secret_value(&t, "web-b-env", &key(1)), "http://");
    assert_eq!(
        env[2]
            .value_from
            .as_ref()
            .and_then(|s| s.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.podIP")
    );
    assert_eq!(secret_value(&t, "web-b-env", &key(3)), ":8080");
    assert_eq!(
        env[4].value.as_deref(),
        Some("$(VKUBELET_E1_0)$(VKUBELET_E1_1)$(VKUBELET_E1_2)")
    );
    assert_eq!(
        backend_env(&t, "app")["URL"],
        format!("http://{POD_IP}:8080")
    );
}

#[test]
fn host_ip_is_the_node_ip() {
    let pod = PodBuilder::new()
        .env(
            "app",
            false,
            &[
                ("HOST", Template::field(AddressField::HostIp)),
                ("HOSTS", Template::field(AddressField::HostIps)),
            ],
        )
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    let json = serde_json::to_string(&t.pod).unwrap();
    assert!(!json.contains("status.hostIP"), "{json}");
    let env = backend_env(&t, "app");
    assert_eq!(env["HOST"], NODE_IP);
    assert_eq!(env["HOSTS"], NODE_IP);
}

#[test]
fn command_and_args_stay_as_declared() {
    let command = vec!["sh".to_string(), "-c".to_string()];
    let args = vec!["echo $(PASSWORD) $$HOME".to_string()];
    let mut pod = PodBuilder::new()
        .spec(|s| {
            s.containers[0].command = Some(command.clone());
            s.containers[0].args = Some(args.clone());
        })
        .env("app", false, &[("PASSWORD", Template::text("s3cr3t"))])
        .build();
    // The resolution's expanded copies hold the secret; they must not be used.
    pod.resolution.containers[0].command = Some(command.iter().map(Template::text).collect());
    pod.resolution.containers[0].args = Some(vec![Template::text("echo s3cr3t $HOME")]);
    let t = translate(&pod, &ctx()).unwrap();
    let c = backend_container(&t, "app");
    assert_eq!(c.command.as_ref(), Some(&command));
    assert_eq!(c.args.as_ref(), Some(&args));
    assert!(!serde_json::to_string(&t.pod).unwrap().contains("s3cr3t"));
}

#[test]
fn env_from_is_removed_and_each_container_gets_its_own_env() {
    let pod = PodBuilder::new()
        .spec(|s| {
            let with_refs = |mut c: Container| {
                c.env_from = Some(vec![EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "src-cm".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }]);
                c.env = Some(vec![EnvVar {
                    name: "SPEC_ONLY".into(),
                    value: Some("from the spec".into()),
                    value_from: None,
                }]);
                c
            };
            s.containers[0] = with_refs(s.containers[0].clone());
            s.containers.push(with_refs(container("side")));
            s.init_containers = Some(vec![with_refs(container("setup"))]);
        })
        .env("setup", true, &[("STAGE", Template::text("init"))])
        .env("app", false, &[("STAGE", Template::text("main"))])
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    for name in ["setup", "app", "side"] {
        assert_eq!(backend_container(&t, name).env_from, None, "{name}");
    }
    assert_eq!(backend_env(&t, "setup")["STAGE"], "init");
    assert_eq!(backend_env(&t, "app")["STAGE"], "main");
    assert!(!backend_env(&t, "app").contains_key("SPEC_ONLY"));
    // No resolution entry: no env (the spec's would reference source-cluster objects).
    assert_eq!(backend_container(&t, "side").env, None);
    // Everything else of a container is kept.
    assert_eq!(
        backend_container(&t, "side").image.as_deref(),
        Some("busybox:1.36")
    );
}

// ---- volumes --------------------------------------------------------------------------------

#[test]
fn file_volumes_become_per_pod_objects_with_the_same_paths_and_modes() {
    // (spec volume, resolved kind, expect a ConfigMap)
    let cases = [
        (config_map_volume("cfg"), FilesKind::ConfigMap, true),
        (named("sec"), FilesKind::Secret, false),
        (named("proj"), FilesKind::Projected, false),
        (named("down"), FilesKind::DownwardApi, false),
        (named("legacy-token"), FilesKind::ServiceAccountToken, false),
    ];
    let content = vec![
        file("app.conf", 0o644, b"a=1", false),
        file("nested/dir/key", 0o400, b"k", false),
    ];
    let mounts = Some(vec![VolumeMount {
        name: "cfg".into(),
        mount_path: "/etc/app.conf".into(),
        sub_path: Some("app.conf".into()),
        ..Default::default()
    }]);
    let mut b = PodBuilder::new().spec(|s| s.containers[0].volume_mounts = mounts.clone());
    for (v, kind, _) in &cases {
        b = b.volume(v.clone(), files(*kind, content.clone()));
    }
    let t = translate(&b.build(), &ctx()).unwrap();
    let volumes = spec(&t).volumes.clone().unwrap();
    assert_eq!(volumes.len(), cases.len());
    let want_items = vec![
        KeyToPath {
            key: super::file_key("app.conf"),
            path: "app.conf".into(),
            mode: Some(0o644),
            ..Default::default()
        },
        KeyToPath {
            key: super::file_key("nested/dir/key"),
            path: "nested/dir/key".into(),
            mode: Some(0o400),
            ..Default::default()
        },
    ];
    for (i, ((v, kind, is_cm), backend)) in cases.iter().zip(&volumes).enumerate() {
        let object = format!("web-b-vol-{i}");
        assert_eq!(backend.name, v.name);
        if *is_cm {
            let src = backend.config_map.as_ref().unwrap();
            assert_eq!(src.name, object, "{kind:?}");
            assert_eq!(src.items.as_ref(), Some(&want_items), "{kind:?}");
            assert!(backend.secret.is_none());
            let cm = t
                .config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(object.as_str()))
                .unwrap();
            let data = cm.data.as_ref().unwrap();
            assert_eq!(data[&super::file_key("app.conf")], "a=1");
            assert_eq!(data[&super::file_key("nested/dir/key")], "k");
            assert_eq!(cm.binary_data, None);
        } else {
            let src = backend.secret.as_ref().unwrap();
            assert_eq!(
                src.secret_name.as_deref(),
                Some(object.as_str()),
                "{kind:?}"
            );
            assert_eq!(src.items.as_ref(), Some(&want_items), "{kind:?}");
            assert!(backend.config_map.is_none());
            assert_eq!(secret(&t, &object).type_.as_deref(), Some("Opaque"));
            assert_eq!(
                secret_value(&t, &object, &super::file_key("app.conf")),
                "a=1"
            );
            assert_eq!(
                secret_value(&t, &object, &super::file_key("nested/dir/key")),
                "k"
            );
        }
    }
    assert_eq!(t.config_maps.len(), 1);
    assert_eq!(t.secrets.len(), 4);
    // Mounts are unchanged (subPath works since item paths are the same).
    assert_eq!(backend_container(&t, "app").volume_mounts, mounts);
}

#[test]
fn binary_config_map_content_goes_to_binary_data() {
    let pod = PodBuilder::new()
        .volume(
            config_map_volume("cfg"),
            files(
                FilesKind::ConfigMap,
                vec![
                    file("text", 0o644, b"hello", false),
                    file("blob", 0o644, &[0xff, 0x00, 0xfe], false),
                ],
            ),
        )
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    let cm = &t.config_maps[0];
    assert_eq!(cm.data.as_ref().unwrap()[&super::file_key("text")], "hello");
    assert!(
        !cm.data
            .as_ref()
            .unwrap()
            .contains_key(&super::file_key("blob"))
    );
    assert_eq!(
        cm.binary_data.as_ref().unwrap()[&super::file_key("blob")].0,
        vec![0xff, 0x00, 0xfe]
    );
}

#[test]
fn sensitive_files_never_land_in_a_config_map() {
    let pod = PodBuilder::new()
        .volume(
            config_map_volume("cfg"),
            files(
                FilesKind::ConfigMap,
                vec![file("token", 0o600, b"tok", true)],
            ),
        )
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    assert!(t.config_maps.is_empty());
    assert_eq!(
        secret_value(&t, "web-b-vol-0", &super::file_key("token")),
        "tok"
    );
}

#[test]
fn empty_dir_passes_as_declared() {
    let declared = Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            mode: Some(0o1777),
            size_limit: None,
        }),
        ..named("scratch")
    };
    let pod = PodBuilder::new()
        .volume(
            declared.clone(),
            ResolvedVolumeSource::EmptyDir {
                medium: Some("Memory".into()),
                size_limit: None,
            },
        )
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    assert_eq!(spec(&t).volumes.as_ref(), Some(&vec![declared]));
    assert!(t.secrets.is_empty() && t.config_maps.is_empty());
}

#[test]
fn pvcs_are_refused_unless_passed_through() {
    let pod = PodBuilder::new().passthrough(pvc_volume("data")).build();
    assert_eq!(
        not_supported(translate(&pod, &ctx())),
        "volume \"data\" (persistentVolumeClaim) cannot be sent to the backend; set \
         passThroughPVCs: true and create a claim of the same name in the backend namespace"
    );
    let ctx = TranslateContext {
        pass_through_pvcs: true,
        ..ctx()
    };
    let t = translate(&pod, &ctx).unwrap();
    assert_eq!(spec(&t).volumes.as_ref(), Some(&vec![pvc_volume("data")]));
}

#[test]
fn every_unsupported_volume_is_named_in_one_error() {
    let host_path = Volume {
        host_path: Some(HostPathVolumeSource {
            path: "/var/run".into(),
            type_: None,
        }),
        ..named("host")
    };
    let csi = Volume {
        csi: Some(CSIVolumeSource {
            driver: "ebs.csi".into(),
            ..Default::default()
        }),
        ..named("disk")
    };
    let pod = PodBuilder::new()
        .passthrough(host_path)
        .volume(
            config_map_volume("fine"),
            files(FilesKind::ConfigMap, vec![]),
        )
        .passthrough(csi)
        .build();
    // Even with PVCs passed, other kinds stay refused.
    let ctx = TranslateContext {
        pass_through_pvcs: true,
        ..ctx()
    };
    let m = not_supported(translate(&pod, &ctx));
    assert!(m.contains("volume \"host\" (hostPath)"), "{m}");
    assert!(m.contains("volume \"disk\" (csi)"), "{m}");
    assert!(!m.contains("fine"), "{m}");
    assert!(!m.contains("passThroughPVCs"), "{m}");
}

#[test]
fn host_namespaces_are_refused() {
    let pod = PodBuilder::new()
        .spec(|s| s.host_network = Some(true))
        .passthrough(pvc_volume("data"))
        .build();
    let m = not_supported(translate(&pod, &ctx()));
    assert!(m.contains("hostNetwork: true"), "{m}");
    assert!(m.contains("volume \"data\" (persistentVolumeClaim)"), "{m}");
}

#[test]
fn a_volume_without_resolution_is_invalid_input() {
    let pod = PodBuilder::new()
        .spec(|s| s.volumes = Some(vec![config_map_volume("orphan")]))
        .build();
    match translate(&pod, &ctx()) {
        Err(ProviderError::InvalidInput(m)) => assert!(m.contains("\"orphan\""), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pod_without_spec_is_invalid_input() {
    let mut pod = PodBuilder::new();
    pod.pod.spec = None;
    assert!(matches!(
        translate(&pod.build(), &ctx()),
        Err(ProviderError::InvalidInput(_))
    ));
}

#[test]
fn volume_objects_match_translate() {
    let pod = PodBuilder::new()
        .volume(
            named("scratch"),
            ResolvedVolumeSource::EmptyDir {
                medium: None,
                size_limit: None,
            },
        )
        .volume(
            config_map_volume("cfg"),
            files(
                FilesKind::ConfigMap,
                vec![
                    file("a", 0o644, b"1", false),
                    file("b", 0o644, &[0xff], false),
                ],
            ),
        )
        .volume(
            named("token"),
            files(FilesKind::Projected, vec![file("token", 0o600, b"t", true)]),
        )
        .env("app", false, &[("X", Template::text("y"))])
        .credential(cred("r.example", "u", "p", None))
        .build();
    let ctx = ctx();
    let t = translate(&pod, &ctx).unwrap();
    let (secrets, config_maps) = volume_objects(&pod.resolution.volumes, &ctx);
    assert_eq!(config_maps, t.config_maps);
    let volume_secrets: Vec<Secret> = t
        .secrets
        .iter()
        .filter(|s| {
            let n = s.metadata.name.as_deref().unwrap_or("");
            n != env_secret_name(&ctx.name) && n != pull_secret_name(&ctx.name)
        })
        .cloned()
        .collect();
    assert_eq!(secrets, volume_secrets);
    assert_eq!(
        secrets[0].metadata.name.as_deref(),
        Some("web-b-vol-2"),
        "named by volume index"
    );
    assert_eq!(config_maps[0].metadata.name.as_deref(), Some("web-b-vol-1"));
}

// ---- credentials, spec, metadata --------------------------------------------------------------

#[test]
fn registry_credentials_become_one_dockerconfigjson_secret() {
    let pod = PodBuilder::new()
        .spec(|s| {
            s.image_pull_secrets = Some(vec![LocalObjectReference {
                name: "src-pull".into(),
            }])
        })
        .credential(cred("https://index.docker.io/v1/", "alice", "pw", None))
        .credential(cred("my.reg:5000/team", "bob", "pw2", Some("idtok")))
        .credential(cred("my.reg:5000/team", "shadowed", "x", None))
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    assert_eq!(
        spec(&t).image_pull_secrets,
        Some(vec![LocalObjectReference {
            name: "web-b-pull".into()
        }])
    );
    let s = secret(&t, "web-b-pull");
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let config: serde_json::Value =
        serde_json::from_str(&secret_value(&t, "web-b-pull", ".dockerconfigjson")).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {
                "username": "alice", "password": "pw", "auth": "YWxpY2U6cHc="
            },
            "my.reg:5000/team": {
                "username": "bob", "password": "pw2", "auth": "Ym9iOnB3Mg==",
                "identitytoken": "idtok"
            }
        }})
    );

    // Without credentials there is no pull Secret, and the source's references are dropped.
    let pod = PodBuilder::new()
        .spec(|s| {
            s.image_pull_secrets = Some(vec![LocalObjectReference {
                name: "src-pull".into(),
            }])
        })
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    assert_eq!(spec(&t).image_pull_secrets, None);
    assert!(t.secrets.is_empty());
}

#[test]
fn scheduling_and_source_cluster_fields_are_dropped_workload_fields_kept() {
    let toleration = |key: Option<&str>, op: &str| Toleration {
        key: key.map(str::to_string),
        operator: Some(op.into()),
        ..Default::default()
    };
    let pod = PodBuilder::new()
        .spec(|s| {
            s.node_name = Some("vk-node".into());
            s.node_selector = Some(BTreeMap::from([("type".into(), "virtual-kubelet".into())]));
            s.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            s.tolerations = Some(vec![
                toleration(Some("virtual-kubelet.io/provider"), "Exists"),
                toleration(None, "Exists"),
                toleration(Some(""), "Exists"),
                toleration(Some("dedicated"), "Equal"),
            ]);
            s.scheduler_name = Some("custom".into());
            s.priority_class_name = Some("high".into());
            s.priority = Some(1000);
            s.preemption_policy = Some("Never".into());
            s.runtime_class_name = Some("kata".into());
            s.overhead = Some(BTreeMap::new());
            s.service_account_name = Some("builder".into());
            s.service_account = Some("builder".into());
            s.automount_service_account_token = Some(true);
            s.enable_service_links = Some(true);
            s.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                ..Default::default()
            }]);
            s.hostname = Some("web-0".into());
            s.subdomain = Some("web".into());
            s.restart_policy = Some("OnFailure".into());
            s.termination_grace_period_seconds = Some(5);
            s.active_deadline_seconds = Some(600);
            s.dns_policy = Some("ClusterFirst".into());
            s.share_process_namespace = Some(true);
            s.security_context = Some(PodSecurityContext {
                run_as_user: Some(1000),
                ..Default::default()
            });
        })
        .build();
    let t = translate(&pod, &ctx()).unwrap();
    let s = spec(&t);
    assert_eq!(s.node_name, None);
    assert_eq!(s.node_selector, None);
    assert_eq!(s.affinity, None);
    assert_eq!(
        s.tolerations,
        Some(vec![toleration(Some("dedicated"), "Equal")])
    );
    assert_eq!(s.scheduler_name, None);
    assert_eq!(s.priority_class_name, None);
    assert_eq!(s.priority, None);
    assert_eq!(s.preemption_policy, None);
    assert_eq!(s.runtime_class_name, None);
    assert_eq!(s.overhead, None);
    assert_eq!(s.service_account_name, None);
    assert_eq!(s.service_account, None);
    assert_eq!(s.topology_spread_constraints, None);
    assert_eq!(s.automount_service_account_token, Some(false));
    assert_eq!(s.enable_service_links, Some(false));
    assert_eq!(s.hostname.as_deref(), Some("web-0"));
    assert_eq!(s.subdomain.as_deref(), Some("web"));
    assert_eq!(s.restart_policy.as_deref(), Some("OnFailure"));
    assert_eq!(s.termination_grace_period_seconds, Some(5));
    assert_eq!(s.active_deadline_seconds, Some(600));
    assert_eq!(s.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(s.share_process_namespace, Some(true));
    assert_eq!(
        s.security_context.as_ref().and_then(|c| c.run_as_user),
        Some(1000)
    );
}

#[test]
fn metadata_is_identity_only_with_labels_merged_and_ctx_winning() {
    let pod = PodBuilder::new()
        .meta(|m| {
            m.labels = Some(BTreeMap::from([
                ("app".to_string(), "source".to_string()),
                ("tier".to_string(), "web".to_string()),
            ]));
            m.annotations = Some(BTreeMap::from([
                (LAST_APPLIED.to_string(), "{\"big\":true}".to_string()),
                ("team".to_string(), "a".to_string()),
            ]));
            m.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-abc".into(),
                uid: "rs-uid".into(),
                ..Default::default()
            }]);
            m.resource_version = Some("42".into());
            m.finalizers = Some(vec!["x".into()]);
            m.generate_name = Some("web-".into());
        })
        .env("app", false, &[("X", Template::text("y"))])
        .volume(
            config_map_volume("cfg"),
            files(FilesKind::ConfigMap, vec![file("a", 0o644, b"1", false)]),
        )
        .volume(
            named("sec"),
            files(FilesKind::Secret, vec![file("a", 0o644, b"1", true)]),
        )
        .credential(cred("r", "u", "p", None))
        .build();
    let ctx = ctx();
    let t = translate(&pod, &ctx).unwrap();
    let m = &t.pod.metadata;
    assert_eq!(m.name.as_deref(), Some("web-b"));
    assert_eq!(m.namespace.as_deref(), Some("backend-ns"));
    assert_eq!(
        m.labels,
        Some(BTreeMap::from([
            ("app".to_string(), "ctx-wins".to_string()),
            ("tier".to_string(), "web".to_string()),
            ("vkubelet.io/uid".to_string(), "u1".to_string()),
        ]))
    );
    assert_eq!(
        m.annotations,
        Some(BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            ("vkubelet.io/source".to_string(), "src/web".to_string()),
            (SOURCE_LABEL_KEYS_ANNOTATION.to_string(), "tier".to_string()),
            (
                SOURCE_ANNOTATION_KEYS_ANNOTATION.to_string(),
                "team".to_string()
            ),
        ]))
    );
    assert_eq!(m.owner_references, None);
    assert_eq!(m.uid, None);
    assert_eq!(m.resource_version, None);
    assert_eq!(m.finalizers, None);
    assert_eq!(m.generate_name, None);
    assert_eq!(t.pod.status, None);

    let mut names: Vec<&str> = Vec::new();
    let metas = t
        .secrets
        .iter()
        .map(|s| &s.metadata)
        .chain(t.config_maps.iter().map(|c| &c.metadata));
    for om in metas {
        names.push(om.name.as_deref().unwrap());
        assert_eq!(om.namespace.as_deref(), Some("backend-ns"));
        assert_eq!(om.labels.as_ref(), Some(&ctx.labels));
        assert_eq!(om.owner_references, None);
    }
    names.sort();
    assert_eq!(
        names,
        ["web-b-env", "web-b-pull", "web-b-vol-0", "web-b-vol-1"]
    );
}

#[test]
fn object_names_derive_from_the_backend_pod_name() {
    assert_eq!(env_secret_name("p"), "p-env");
    assert_eq!(pull_secret_name("p"), "p-pull");
    assert_eq!(volume_object_name("p", 3), "p-vol-3");
}

#[test]
fn file_keys_follow_paths_not_positions() {
    // A refresh that adds a file before another keeps every existing path's key.
    assert_eq!(super::file_key("b"), super::file_key("b"));
    assert_ne!(super::file_key("a"), super::file_key("b"));
    let k = super::file_key("nested/dir/key");
    assert!(
        k.len() == 17 && k.bytes().all(|c| c.is_ascii_alphanumeric()),
        "{k}"
    );
}

fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    ObjectMeta {
        labels: map(labels),
        annotations: map(annotations),
        ..Default::default()
    }
}

#[test]
fn label_and_annotation_changes_become_a_patch_that_spares_the_backends_own_keys() {
    let ctx = ctx();
    let before = meta(&[("tier", "web"), ("old", "1")], &[("team", "a")]);
    let (labels, annotations) = backend_metadata(&before, &ctx);
    // What the backend pod looks like after create, plus a label the backend added itself.
    let mut current = ObjectMeta {
        labels: Some(labels.clone()),
        annotations: Some(annotations.clone()),
        ..Default::default()
    };
    current
        .labels
        .as_mut()
        .unwrap()
        .insert("backend.example/zone".into(), "z1".into());
    assert_eq!(
        metadata_patch(&current, &labels, &annotations),
        None,
        "nothing changed on the source"
    );

    let after = meta(
        &[("tier", "api"), ("new", "2")],
        &[("team", "b"), (LAST_APPLIED, "{}")],
    );
    let (labels, annotations) = backend_metadata(&after, &ctx);
    let patch = metadata_patch(&current, &labels, &annotations).unwrap();
    assert_eq!(
        patch["labels"],
        serde_json::json!({"tier": "api", "new": "2", "old": null}),
        "changed, added, removed; identity and the backend's own label untouched"
    );
    assert_eq!(patch["annotations"]["team"], "b");
    assert_eq!(
        patch["annotations"][SOURCE_LABEL_KEYS_ANNOTATION],
        "new,tier"
    );
    assert!(
        patch["annotations"].get(LAST_APPLIED).is_none(),
        "kubectl's copy of the object stays on the source"
    );
    // A source label may not override an identity label.
    let sneaky = meta(&[("vkubelet.io/uid", "someone-else")], &[]);
    let (labels, _) = backend_metadata(&sneaky, &ctx);
    assert_eq!(labels["vkubelet.io/uid"], "u1");
}
