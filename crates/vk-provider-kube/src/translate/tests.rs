//! Tests of the translation. Fixtures come from small builders; env checks run the backend pod's
//! env through a miniature of the kubelet's env evaluation, so they test what the backend
//! container would see rather than the shape of the spec.

use super::*;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Affinity, CSIVolumeSource, ConfigMapEnvSource, ConfigMapVolumeSource, EnvFromSource,
    HostPathVolumeSource, NodeAffinity, NodeSelector, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, TopologySpreadConstraint, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use vk_provider_api::PodKey;
use vk_provider_api::resolution::{EnvVar as ResolvedEnv, FilesKind, PodAddresses, Resolution};

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
    let env_secret = secret(&t, "web-b-data");
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
        assert!(t.secrets.is_empty(), "{path}: no Secret needed");
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
    assert_eq!(secret_value(&t, "web-b-data", &key(1)), "http://");
    assert_eq!(
        env[2]
            .value_from
            .as_ref()
            .and_then(|s| s.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.podIP")
    );
    assert_eq!(secret_value(&t, "web-b-data", &key(3)), ":8080");
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
fn file_volumes_of_every_kind_share_the_one_per_pod_secret_with_the_same_paths_and_modes() {
    let kinds = [
        (config_map_volume("cfg"), FilesKind::ConfigMap),
        (named("sec"), FilesKind::Secret),
        (named("proj"), FilesKind::Projected),
        (named("down"), FilesKind::DownwardApi),
        (named("legacy-token"), FilesKind::ServiceAccountToken),
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
    let mut b = PodBuilder::new()
        .spec(|s| s.containers[0].volume_mounts = mounts.clone())
        .env("app", false, &[("X", Template::text("y"))]);
    for (v, kind) in &kinds {
        b = b.volume(v.clone(), files(*kind, content.clone()));
    }
    let t = translate(&b.build(), &ctx()).unwrap();
    assert_eq!(t.secrets.len(), 1, "env and every volume in one object");
    let s = secret(&t, "web-b-data");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let volumes = spec(&t).volumes.clone().unwrap();
    assert_eq!(volumes.len(), kinds.len());
    let mut keys = BTreeSet::new();
    for (i, ((v, kind), backend)) in kinds.iter().zip(&volumes).enumerate() {
        assert_eq!(backend.name, v.name);
        assert!(backend.config_map.is_none(), "{kind:?}");
        let src = backend.secret.as_ref().unwrap();
        assert_eq!(src.secret_name.as_deref(), Some("web-b-data"), "{kind:?}");
        assert_eq!(src.default_mode, None, "every item carries its mode");
        let items = src.items.as_ref().unwrap();
        let got: Vec<(&str, Option<i32>)> =
            items.iter().map(|i| (i.path.as_str(), i.mode)).collect();
        assert_eq!(
            got,
            [("app.conf", Some(0o644)), ("nested/dir/key", Some(0o400))],
            "{kind:?}"
        );
        // Each item's key holds its own volume's file, whatever the other volumes hold.
        assert_eq!(items[0].key, super::file_key(i, "app.conf"));
        assert_eq!(secret_value(&t, "web-b-data", &items[0].key), "a=1");
        assert_eq!(secret_value(&t, "web-b-data", &items[1].key), "k");
        keys.extend(items.iter().map(|i| i.key.clone()));
    }
    assert_eq!(keys.len(), 2 * kinds.len(), "same paths, distinct keys");
    assert_eq!(backend_env(&t, "app")["X"], "y");
    // Mounts are unchanged (subPath works since item paths are the same).
    assert_eq!(backend_container(&t, "app").volume_mounts, mounts);
}

#[test]
fn binary_content_reaches_the_secret_unchanged() {
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
    let data = secret(&t, "web-b-data").data.as_ref().unwrap();
    assert_eq!(data[&super::file_key(0, "text")].0, b"hello");
    assert_eq!(data[&super::file_key(0, "blob")].0, vec![0xff, 0x00, 0xfe]);
}

/// A file volume of `size` bytes.
fn big_volume(b: PodBuilder, name: &str, size: usize) -> PodBuilder {
    b.volume(
        named(name),
        files(
            FilesKind::Secret,
            vec![file("blob", 0o400, &vec![b'x'; size], true)],
        ),
    )
}

#[test]
fn a_volume_that_would_take_the_secret_past_the_api_limit_gets_a_secret_of_its_own() {
    let third = SECRET_DATA_LIMIT / 3;
    let mut b = PodBuilder::new().env("app", false, &[("X", Template::text("y"))]);
    // 0 and 1 fit beside the env value; 2 (a half) does not and goes alone; 3 still fits.
    for (name, size) in [
        ("a", third),
        ("b", third),
        ("c", SECRET_DATA_LIMIT / 2),
        ("d", 100),
    ] {
        b = big_volume(b, name, size);
    }
    let t = translate(&b.build(), &ctx()).unwrap();
    let names: Vec<&str> = t
        .secrets
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["web-b-data", "web-b-vol-2"]);
    for s in &t.secrets {
        let size: usize = s.data.iter().flatten().map(|(_, v)| v.0.len()).sum();
        assert!(size <= SECRET_DATA_LIMIT, "{:?}: {size}", s.metadata.name);
    }
    let mounted: Vec<&str> = spec(&t)
        .volumes
        .iter()
        .flatten()
        .map(|v| v.secret.as_ref().unwrap().secret_name.as_deref().unwrap())
        .collect();
    assert_eq!(
        mounted,
        ["web-b-data", "web-b-data", "web-b-vol-2", "web-b-data"]
    );
    let own = secret(&t, "web-b-vol-2");
    assert_eq!(own.metadata.labels.as_ref(), Some(&ctx().labels));
    assert_eq!(
        own.data.as_ref().unwrap()[&super::file_key(2, "blob")]
            .0
            .len(),
        SECRET_DATA_LIMIT / 2
    );
}

#[test]
fn the_secret_may_be_filled_to_the_byte() {
    let t = translate(
        &big_volume(PodBuilder::new(), "a", SECRET_DATA_LIMIT).build(),
        &ctx(),
    )
    .unwrap();
    assert_eq!(t.secrets.len(), 1);
    let t = translate(
        &big_volume(PodBuilder::new(), "a", SECRET_DATA_LIMIT + 1).build(),
        &ctx(),
    )
    .unwrap();
    let names: Vec<&str> = t
        .secrets
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    // Too large for any Secret: the backend's refusal will name it.
    assert_eq!(names, ["web-b-vol-0"]);
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
    assert!(t.secrets.is_empty());
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
fn volume_refresh_writes_the_keys_the_backend_pod_mounts_and_nothing_else() {
    let token = |t: &[u8]| files(FilesKind::Projected, vec![file("token", 0o600, t, true)]);
    let config = |a: &[u8]| {
        files(
            FilesKind::ConfigMap,
            vec![file("a", 0o644, a, false), file("b", 0o644, &[0xff], false)],
        )
    };
    let build = |cfg: ResolvedVolumeSource, tok: ResolvedVolumeSource| {
        let b = PodBuilder::new()
            .volume(
                named("scratch"),
                ResolvedVolumeSource::EmptyDir {
                    medium: None,
                    size_limit: None,
                },
            )
            .volume(config_map_volume("cfg"), cfg)
            .volume(named("token"), tok)
            .env("app", false, &[("X", Template::text("y"))])
            .credential(cred("r.example", "u", "p", None));
        big_volume(b, "big", SECRET_DATA_LIMIT).build()
    };
    let created = build(config(b"1"), token(b"t1"));
    let t = translate(&created, &ctx()).unwrap();

    // Unchanged content: the refresh writes what the pod was created with, key for key.
    let same = volume_refresh(&t.pod, &created.resolution.volumes);
    assert_eq!(
        same.keys().collect::<Vec<_>>(),
        ["web-b-data", "web-b-vol-3"]
    );
    for (name, data) in &same {
        let made = secret(&t, name).data.as_ref().unwrap();
        for (k, v) in data {
            assert_eq!(made.get(k), Some(v), "{name}/{k}");
        }
    }
    // Env values and credentials are never part of a refresh.
    let data = &same["web-b-data"];
    assert!(!data.contains_key(DOCKER_CONFIG_JSON_KEY));
    assert!(data.keys().all(|k| k.starts_with('v')), "{data:?}");
    assert_eq!(data.len(), 3, "cfg's two files and the token");

    // New content lands under the keys the backend pod's items name.
    let refreshed = build(config(b"2"), token(b"t2"));
    let new = volume_refresh(&t.pod, &refreshed.resolution.volumes);
    let data = &new["web-b-data"];
    assert_eq!(data[&super::file_key(1, "a")].0, b"2");
    assert_eq!(data[&super::file_key(2, "token")].0, b"t2");

    // A file added after creation has no item, so nothing to write; one removed keeps its key.
    let added = build(
        files(
            FilesKind::ConfigMap,
            vec![
                file("a", 0o644, b"3", false),
                file("new", 0o644, b"n", false),
            ],
        ),
        token(b"t3"),
    );
    let data = &volume_refresh(&t.pod, &added.resolution.volumes)["web-b-data"];
    assert_eq!(data[&super::file_key(1, "a")].0, b"3");
    assert!(!data.contains_key(&super::file_key(1, "new")));
    assert!(!data.contains_key(&super::file_key(1, "b")));
}

// ---- credentials, spec, metadata --------------------------------------------------------------

#[test]
fn registry_credentials_make_the_per_pod_secret_a_dockerconfigjson_one() {
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
            name: "web-b-data".into()
        }])
    );
    let s = secret(&t, "web-b-data");
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let config: serde_json::Value =
        serde_json::from_str(&secret_value(&t, "web-b-data", ".dockerconfigjson")).unwrap();
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
    for om in t.secrets.iter().map(|s| &s.metadata) {
        names.push(om.name.as_deref().unwrap());
        assert_eq!(om.namespace.as_deref(), Some("backend-ns"));
        assert_eq!(om.labels.as_ref(), Some(&ctx.labels));
        assert_eq!(om.owner_references, None);
    }
    names.sort();
    assert_eq!(
        names,
        ["web-b-data"],
        "env, credentials and both volumes in one"
    );
}

#[test]
fn object_names_derive_from_the_backend_pod_name() {
    assert_eq!(data_secret_name("p"), "p-data");
    assert_eq!(volume_secret_name("p", 3), "p-vol-3");
}

#[test]
fn file_keys_follow_volume_and_path_not_positions() {
    assert_eq!(super::file_key(0, "b"), super::file_key(0, "b"));
    assert_ne!(super::file_key(0, "a"), super::file_key(0, "b"));
    assert_ne!(super::file_key(0, "a"), super::file_key(1, "a"));
    let k = super::file_key(12, "nested/dir/key");
    assert!(
        k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'),
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
