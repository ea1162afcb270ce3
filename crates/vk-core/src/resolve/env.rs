//! A container's environment, computed as the kubelet computes it (`makeEnvironmentVariables`),
//! except that the declared order is kept: `envFrom` sources in order (keys sorted within
//! each source), then `env` in order, then service-link variables.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};

use super::fields::{FieldUse, NodeAllocatable, expand, field_value, resource_value};
use super::refs::{Fetched, ObjectRef};
use super::types::{EnvVar, ResolvedContainer, Template};
use super::{ResolveError, Warning};

/// The API server's own Service, always visible to pods as `KUBERNETES_*` variables.
pub const MASTER_SERVICE_NAMESPACE: &str = "default";
pub const MASTER_SERVICE_NAME: &str = "kubernetes";

/// What a Service contributes to service-link variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub cluster_ip: String,
    /// (name, port, protocol)
    pub ports: Vec<(String, i32, String)>,
}

impl ServiceInfo {
    /// `None` for Services without a cluster IP (headless, ExternalName) or ports: the kubelet
    /// makes no variables for them.
    pub fn of(svc: &Service) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        let ip = spec
            .cluster_ip
            .clone()
            .filter(|ip| !ip.is_empty() && ip != "None")?;
        let ports: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect();
        if ports.is_empty() {
            return None;
        }
        Some(Self {
            name: svc.metadata.name.clone()?,
            cluster_ip: ip,
            ports,
        })
    }

    /// The variables in the kubelet's order (`envvars.FromServices`).
    fn variables(&self, out: &mut Vec<(String, String)>) {
        let prefix = env_name(&self.name);
        let ip = &self.cluster_ip;
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        let Some((_, first_port, _)) = self.ports.first() else {
            return;
        };
        let port_var = format!("{prefix}_SERVICE_PORT");
        out.push((port_var.clone(), first_port.to_string()));
        for (name, port, _) in &self.ports {
            if !name.is_empty() {
                out.push((format!("{port_var}_{}", env_name(name)), port.to_string()));
            }
        }
        let host_port = |ip: &str, port: i32| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        for (i, (_, port, protocol)) in self.ports.iter().enumerate() {
            let proto = protocol.to_lowercase();
            let url = format!("{proto}://{}", host_port(ip, *port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{port}_{}", protocol.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), proto));
            out.push((format!("{pp}_PORT"), port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
}

fn env_name(service_name: &str) -> String {
    service_name.replace('-', "_").to_uppercase()
}

/// Service-link variables for a pod: the master `kubernetes` Service always, the Services of the
/// pod's namespace when `enableServiceLinks` is on (a namespace Service of the same name wins).
/// Sorted by Service name for a stable order.
pub fn service_variables(
    master: Option<&ServiceInfo>,
    namespace_services: &[ServiceInfo],
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut by_name: std::collections::BTreeMap<&str, &ServiceInfo> = Default::default();
    if let Some(m) = master {
        by_name.insert(&m.name, m);
    }
    if enable_service_links {
        for s in namespace_services {
            by_name.insert(&s.name, s);
        }
    }
    let mut out = Vec::new();
    for s in by_name.values() {
        s.variables(&mut out);
    }
    out
}

/// Whether `name` is a valid environment variable name (`[-._a-zA-Z][-._a-zA-Z0-9]*`).
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    (first.is_ascii_alphabetic() || matches!(first, '-' | '.' | '_')) && chars.all(ok)
}

/// Ordered environment with "later definition replaces earlier" semantics.
#[derive(Default)]
struct OrderedEnv {
    vars: Vec<EnvVar>,
    index: HashMap<String, usize>,
}

impl OrderedEnv {
    fn set(&mut self, name: String, value: Template) {
        if let Some(&i) = self.index.get(&name) {
            // The winning definition takes its own place in the declared order.
            self.vars.remove(i);
            for v in self.index.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
        self.index.insert(name.clone(), self.vars.len());
        self.vars.push(EnvVar { name, value });
    }

    fn get(&self, name: &str) -> Option<&Template> {
        self.index.get(name).map(|&i| &self.vars[i].value)
    }
}

/// Inputs shared by every container of a pod.
pub struct EnvInputs<'a> {
    pub pod: &'a Pod,
    pub fetched: &'a Fetched,
    pub services: &'a [(String, String)],
    pub allocatable: &'a NodeAllocatable,
}

/// The container's environment, command and args.
pub fn resolve_container(
    inputs: &EnvInputs<'_>,
    container: &Container,
    init: bool,
    warnings: &mut Vec<Warning>,
) -> Result<ResolvedContainer, ResolveError> {
    let pod = inputs.pod;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let services: HashMap<&str, &str> = inputs
        .services
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut env = OrderedEnv::default();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (object, optional, data): (ObjectRef, bool, Option<Vec<(String, String)>>) =
            if let Some(r) = &from.config_map_ref {
                let data = inputs.fetched.config_map(&r.name).map(|cm| {
                    cm.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                });
                (
                    ObjectRef::config_map(&r.name),
                    r.optional == Some(true),
                    data,
                )
            } else if let Some(r) = &from.secret_ref {
                let data = inputs.fetched.secret(&r.name).map(|s| {
                    s.data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                        .collect()
                });
                (ObjectRef::secret(&r.name), r.optional == Some(true), data)
            } else {
                continue;
            };
        let Some(data) = data else {
            if optional {
                continue;
            }
            return Err(missing_object(object, None));
        };
        let mut invalid = Vec::new();
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            if !is_env_var_name(&name) {
                invalid.push(name);
                continue;
            }
            env.set(name, Template::text(v));
        }
        if !invalid.is_empty() {
            invalid.sort();
            warnings.push(Warning {
                reason: "InvalidEnvironmentVariableNames",
                message: format!(
                    "Keys [{}] from the EnvFrom {} {namespace}/{} were skipped since they are considered invalid environment variable names.",
                    invalid.join(", "),
                    object.kind.noun(),
                    object.name
                ),
            });
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, |name| {
                env.get(name)
                    .cloned()
                    .or_else(|| services.get(name).map(|s| Template::text(*s)))
            }),
            (_, Some(from)) => {
                if let Some(sel) = &from.field_ref {
                    field_value(pod, sel, FieldUse::Env)
                        .map_err(|e| ResolveError::Invalid(format!("env {:?}: {e}", var.name)))?
                } else if let Some(sel) = &from.resource_field_ref {
                    let v = resource_value(pod, Some(container), sel, inputs.allocatable)
                        .map_err(|e| ResolveError::Invalid(format!("env {:?}: {e}", var.name)))?;
                    Template::text(v)
                } else if let Some(sel) = &from.config_map_key_ref {
                    let optional = sel.optional == Some(true);
                    let object = ObjectRef::config_map(&sel.name);
                    match inputs.fetched.config_map(&sel.name) {
                        None if optional => continue,
                        None => return Err(missing_object(object, None)),
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&sel.key)) {
                            Some(v) => Template::text(v.clone()),
                            None if optional => continue,
                            None => return Err(missing_key(object, namespace, &sel.key)),
                        },
                    }
                } else if let Some(sel) = &from.secret_key_ref {
                    let optional = sel.optional == Some(true);
                    let object = ObjectRef::secret(&sel.name);
                    match inputs.fetched.secret(&sel.name) {
                        None if optional => continue,
                        None => return Err(missing_object(object, None)),
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&sel.key)) {
                            Some(v) => Template::text(String::from_utf8_lossy(&v.0).into_owned()),
                            None if optional => continue,
                            None => return Err(missing_key(object, namespace, &sel.key)),
                        },
                    }
                } else {
                    Template::default()
                }
            }
            _ => Template::default(),
        };
        env.set(var.name.clone(), value);
    }

    for (name, value) in inputs.services {
        if env.get(name).is_none() {
            env.set(name.clone(), Template::text(value.clone()));
        }
    }

    let lookup = |name: &str| env.get(name).cloned();
    let expand_all = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|s| expand(s, lookup)).collect::<Vec<_>>())
    };
    let command = expand_all(&container.command);
    let args = expand_all(&container.args);
    Ok(ResolvedContainer {
        name: container.name.clone(),
        init,
        env: env.vars,
        command,
        args,
    })
}

/// A mandatory object does not exist (kubelet wording: `configmap "x" not found`).
pub(crate) fn missing_object(object: ObjectRef, volume: Option<&str>) -> ResolveError {
    let what = format!("{} {:?} not found", object.kind.noun(), object.name);
    let message = match volume {
        Some(v) => format!("MountVolume.SetUp failed for volume {v:?} : {what}"),
        None => what,
    };
    ResolveError::Missing {
        object,
        message,
        volume: volume.map(str::to_string),
    }
}

fn missing_key(object: ObjectRef, namespace: &str, key: &str) -> ResolveError {
    let message = format!(
        "couldn't find key {key} in {} {namespace}/{}",
        object.kind.kind(),
        object.name
    );
    ResolveError::Missing {
        object,
        message,
        volume: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::resolve::types::{AddressField, PodAddresses};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVarSource,
        ObjectFieldSelector, PodSpec, ResourceFieldSelector, Secret, SecretEnvSource,
        SecretKeySelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// Builder for env test cases.
    #[derive(Default)]
    struct Case {
        env_from: Vec<EnvFromSource>,
        env: Vec<k8s_openapi::api::core::v1::EnvVar>,
        command: Option<Vec<String>>,
        fetched: Fetched,
        services: Vec<(String, String)>,
    }

    impl Case {
        fn value(mut self, name: &str, value: &str) -> Self {
            self.env.push(k8s_openapi::api::core::v1::EnvVar {
                name: name.into(),
                value: Some(value.into()),
                value_from: None,
            });
            self
        }

        fn from(mut self, name: &str, source: EnvVarSource) -> Self {
            self.env.push(k8s_openapi::api::core::v1::EnvVar {
                name: name.into(),
                value: None,
                value_from: Some(source),
            });
            self
        }

        fn cm_key(self, name: &str, cm: &str, key: &str, optional: bool) -> Self {
            self.from(
                name,
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: cm.into(),
                        key: key.into(),
                        optional: Some(optional),
                    }),
                    ..Default::default()
                },
            )
        }

        fn secret_key(self, name: &str, secret: &str, key: &str, optional: bool) -> Self {
            self.from(
                name,
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.into(),
                        key: key.into(),
                        optional: Some(optional),
                    }),
                    ..Default::default()
                },
            )
        }

        fn field(self, name: &str, path: &str) -> Self {
            self.from(
                name,
                EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: path.into(),
                        api_version: None,
                    }),
                    ..Default::default()
                },
            )
        }

        fn env_from_cm(mut self, cm: &str, prefix: Option<&str>, optional: bool) -> Self {
            self.env_from.push(EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: cm.into(),
                    optional: Some(optional),
                }),
                prefix: prefix.map(Into::into),
                secret_ref: None,
            });
            self
        }

        fn env_from_secret(mut self, s: &str) -> Self {
            self.env_from.push(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.into(),
                    optional: None,
                }),
                ..Default::default()
            });
            self
        }

        fn config_map(mut self, name: &str, data: &[(&str, &str)]) -> Self {
            self.fetched = self.fetched.with_config_map(ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            });
            self
        }

        fn secret(mut self, name: &str, data: &[(&str, &str)]) -> Self {
            self.fetched = self.fetched.with_secret(Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                        .collect(),
                ),
                ..Default::default()
            });
            self
        }

        fn service_var(mut self, k: &str, v: &str) -> Self {
            self.services.push((k.into(), v.into()));
            self
        }

        fn command(mut self, cmd: &[&str]) -> Self {
            self.command = Some(cmd.iter().map(|s| s.to_string()).collect());
            self
        }

        fn run(&self) -> (Result<ResolvedContainer, ResolveError>, Vec<Warning>) {
            let container = Container {
                name: "main".into(),
                env: Some(self.env.clone()),
                env_from: Some(self.env_from.clone()),
                command: self.command.clone(),
                ..Default::default()
            };
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some("p".into()),
                    namespace: Some("ns".into()),
                    uid: Some("uid-1".into()),
                    labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some("vk".into()),
                    containers: vec![container.clone()],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let alloc = NodeAllocatable::from([("cpu".into(), Quantity("4".into()))]);
            let inputs = EnvInputs {
                pod: &pod,
                fetched: &self.fetched,
                services: &self.services,
                allocatable: &alloc,
            };
            let mut warnings = Vec::new();
            let r = resolve_container(&inputs, &container, false, &mut warnings);
            (r, warnings)
        }

        fn env(&self) -> Vec<(String, String)> {
            let addrs = PodAddresses {
                pod_ips: vec!["10.9.0.5".into()],
                host_ips: vec!["127.0.0.1".into()],
            };
            match self.run().0 {
                Ok(c) => c.render_env(&addrs),
                Err(e) => vec![("ERROR".into(), e.to_string())],
            }
        }

        fn error(&self) -> String {
            match self.run().0 {
                Ok(c) => format!("unexpected success: {c:?}"),
                Err(e) => e.to_string(),
            }
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn declared_order_is_kept() {
        let c = Case::default()
            .value("Z", "1")
            .value("A", "2")
            .value("M", "3");
        assert_eq!(c.env(), pairs(&[("Z", "1"), ("A", "2"), ("M", "3")]));
    }

    #[test]
    fn later_definitions_win_at_their_own_position() {
        let c = Case::default()
            .config_map("cm", &[("B", "from-cm"), ("A", "from-cm")])
            .env_from_cm("cm", None, false)
            .value("X", "x")
            .value("A", "override");
        assert_eq!(
            c.env(),
            pairs(&[("B", "from-cm"), ("X", "x"), ("A", "override")])
        );
    }

    #[test]
    fn expansion_sees_earlier_vars_and_services_but_not_later_ones() {
        let c = Case::default()
            .service_var("DB_SERVICE_HOST", "10.0.0.7")
            .value("A", "a")
            .value("B", "$(A)-$(C)-$$(A)-$(DB_SERVICE_HOST)")
            .value("C", "c");
        let env = c.env();
        assert_eq!(
            env[1],
            ("B".to_string(), "a-$(C)-$(A)-10.0.0.7".to_string())
        );
        // Service variables come last, unless overridden.
        assert_eq!(
            env[3],
            ("DB_SERVICE_HOST".to_string(), "10.0.0.7".to_string())
        );
        let overridden = Case::default()
            .service_var("DB_SERVICE_HOST", "10.0.0.7")
            .value("DB_SERVICE_HOST", "mine");
        assert_eq!(overridden.env(), pairs(&[("DB_SERVICE_HOST", "mine")]));
    }

    #[test]
    fn config_map_and_secret_keys() {
        let c = Case::default()
            .config_map("cm", &[("k", "v")])
            .secret("s", &[("pw", "hunter2")])
            .cm_key("A", "cm", "k", false)
            .secret_key("B", "s", "pw", false)
            .cm_key("C", "cm", "absent", true)
            .cm_key("D", "absent-cm", "k", true)
            .secret_key("E", "absent-s", "k", true);
        assert_eq!(c.env(), pairs(&[("A", "v"), ("B", "hunter2")]));
    }

    #[test]
    fn missing_mandatory_references_use_kubelet_wording() {
        let cases = [
            (
                Case::default().cm_key("A", "cm", "k", false),
                "configmap \"cm\" not found",
            ),
            (
                Case::default()
                    .config_map("cm", &[])
                    .cm_key("A", "cm", "k", false),
                "couldn't find key k in ConfigMap ns/cm",
            ),
            (
                Case::default().secret_key("A", "s", "k", false),
                "secret \"s\" not found",
            ),
            (
                Case::default()
                    .secret("s", &[("x", "y")])
                    .secret_key("A", "s", "k", false),
                "couldn't find key k in Secret ns/s",
            ),
            (
                Case::default().env_from_cm("cm", None, false),
                "configmap \"cm\" not found",
            ),
            (
                Case::default().env_from_secret("s"),
                "secret \"s\" not found",
            ),
        ];
        for (case, want) in cases {
            assert_eq!(case.error(), want);
        }
        let (r, _) = Case::default().cm_key("A", "cm", "k", false).run();
        assert!(
            matches!(r, Err(ResolveError::Missing { object, volume: None, .. }) if object == ObjectRef::config_map("cm"))
        );
    }

    #[test]
    fn env_from_prefix_and_invalid_names() {
        let c = Case::default()
            .config_map("cm", &[("ok", "1"), ("1bad", "2"), ("has space", "3")])
            .env_from_cm("cm", Some("P_"), false)
            .config_map("raw", &[("1bad", "2"), ("fine", "4")])
            .env_from_cm("raw", None, false)
            .env_from_cm("missing", None, true);
        assert_eq!(
            c.env(),
            pairs(&[("P_1bad", "2"), ("P_ok", "1"), ("fine", "4")])
        );
        let (_, warnings) = c.run();
        assert_eq!(warnings.len(), 2);
        assert_eq!(warnings[0].reason, "InvalidEnvironmentVariableNames");
        assert_eq!(
            warnings[0].message,
            "Keys [P_has space] from the EnvFrom configmap ns/cm were skipped since they are considered invalid environment variable names."
        );
        assert!(
            warnings[1].message.contains("Keys [1bad]"),
            "{:?}",
            warnings[1]
        );
    }

    #[test]
    fn env_from_secret_values() {
        let c = Case::default()
            .secret("s", &[("USER", "admin"), ("PASS", "x")])
            .env_from_secret("s");
        assert_eq!(c.env(), pairs(&[("PASS", "x"), ("USER", "admin")]));
    }

    #[test]
    fn field_refs_including_late_bound_addresses() {
        let c = Case::default()
            .field("NAME", "metadata.name")
            .field("NS", "metadata.namespace")
            .field("UID", "metadata.uid")
            .field("APP", "metadata.labels['app']")
            .field("NODE", "spec.nodeName")
            .field("IP", "status.podIP")
            .field("HOST", "status.hostIP")
            .value("URL", "http://$(IP):8080/$(NAME)");
        assert_eq!(
            c.env(),
            pairs(&[
                ("NAME", "p"),
                ("NS", "ns"),
                ("UID", "uid-1"),
                ("APP", "web"),
                ("NODE", "vk"),
                ("IP", "10.9.0.5"),
                ("HOST", "127.0.0.1"),
                ("URL", "http://10.9.0.5:8080/p"),
            ])
        );
        let (r, _) = c.run();
        let url = r
            .ok()
            .and_then(|c| c.env.into_iter().find(|e| e.name == "URL"));
        assert!(url.is_some_and(|e| e.value.segments().len() == 3
            && e.value.segments()[1]
                == crate::resolve::types::Segment::Field(AddressField::PodIp)));
        assert!(
            Case::default()
                .field("X", "spec.containers")
                .error()
                .contains("unsupported fieldRef")
        );
    }

    #[test]
    fn resource_field_ref_defaults_to_node_allocatable() {
        let c = Case::default().from(
            "CPU",
            EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    resource: "limits.cpu".into(),
                    divisor: Some(Quantity("1m".into())),
                    container_name: None,
                }),
                ..Default::default()
            },
        );
        assert_eq!(c.env(), pairs(&[("CPU", "4000")]));
    }

    #[test]
    fn empty_value_without_source_is_an_empty_string() {
        let c = Case::default().value("EMPTY", "");
        assert_eq!(c.env(), pairs(&[("EMPTY", "")]));
    }

    #[test]
    fn command_and_args_expand_against_the_final_env() {
        let c = Case::default()
            .value("GREETING", "hello world")
            .field("IP", "status.podIP")
            .command(&["echo", "$(GREETING)", "$(IP)", "$$(GREETING)", "$(NOPE)"]);
        let (r, _) = c.run();
        let addrs = PodAddresses {
            pod_ips: vec!["10.9.0.5".into()],
            host_ips: vec![],
        };
        let cmd: Vec<String> = r
            .ok()
            .and_then(|c| c.command)
            .unwrap_or_default()
            .iter()
            .map(|t| t.render(&addrs))
            .collect();
        assert_eq!(
            cmd,
            ["echo", "hello world", "10.9.0.5", "$(GREETING)", "$(NOPE)"]
        );
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "a_b", "_x", "-x", ".x", "A1", "my.var-2"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a b", "a=b", "é"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }

    fn service(name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: (!proto.is_empty()).then(|| proto.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_link_variables_match_the_kubelet() {
        let master = ServiceInfo::of(&service("kubernetes", "10.0.0.1", &[("https", 443, "TCP")]));
        let db = ServiceInfo::of(&service(
            "my-db",
            "10.0.0.9",
            &[("", 5432, ""), ("metrics", 9187, "UDP")],
        ));
        assert!(ServiceInfo::of(&service("headless", "None", &[("", 80, "")])).is_none());
        let ns: Vec<ServiceInfo> = db.into_iter().collect();
        let vars = service_variables(master.as_ref(), &ns, true);
        let want = pairs(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.0.0.1"),
            ("MY_DB_SERVICE_HOST", "10.0.0.9"),
            ("MY_DB_SERVICE_PORT", "5432"),
            ("MY_DB_SERVICE_PORT_METRICS", "9187"),
            ("MY_DB_PORT", "tcp://10.0.0.9:5432"),
            ("MY_DB_PORT_5432_TCP", "tcp://10.0.0.9:5432"),
            ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
            ("MY_DB_PORT_5432_TCP_PORT", "5432"),
            ("MY_DB_PORT_5432_TCP_ADDR", "10.0.0.9"),
            ("MY_DB_PORT_9187_UDP", "udp://10.0.0.9:9187"),
            ("MY_DB_PORT_9187_UDP_PROTO", "udp"),
            ("MY_DB_PORT_9187_UDP_PORT", "9187"),
            ("MY_DB_PORT_9187_UDP_ADDR", "10.0.0.9"),
        ]);
        assert_eq!(vars, want);
        // Links off: only the master service.
        let vars = service_variables(master.as_ref(), &ns, false);
        assert_eq!(vars.len(), 8);
        assert!(vars.iter().all(|(k, _)| k.starts_with("KUBERNETES_")));
        // IPv6 cluster IPs are bracketed in URLs.
        let v6 = ServiceInfo::of(&service("v6", "fd00::1", &[("", 80, "TCP")]));
        let vars = service_variables(None, &v6.into_iter().collect::<Vec<_>>(), true);
        assert!(vars.contains(&("V6_PORT".to_string(), "tcp://[fd00::1]:80".to_string())));
    }
}
