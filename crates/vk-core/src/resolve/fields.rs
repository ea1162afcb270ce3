//! Downward API fields: `fieldRef` paths and `resourceFieldRef` values, computed as the kubelet
//! computes them, plus the `$(VAR)` expansion used by env values, commands and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::{Amount, bytes_in_divisor, cpu_in_divisor};
use super::types::{AddressField, Template};

/// `$(VAR)` expansion with Kubernetes semantics: a known name is replaced, an unknown one is left
/// as written, `$$` is a literal `$`, and anything else after `$` (including an unclosed `$(`)
/// stays as it is. Replaced values are not expanded again.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<Template>) -> Template {
    let mut out = Template::default();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_text(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(next) = after.chars().next() else {
            out.push_text("$");
            rest = after;
            break;
        };
        match next {
            '$' => {
                out.push_text("$");
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(v) => out.push_template(&v),
                        None => out.push_text(&format!("$({name})")),
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_text("$(");
                    rest = &after[1..];
                }
            },
            c => {
                out.push_text("$");
                out.push_text(&after[..c.len_utf8()]);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_text(rest);
    out
}

/// Why a downward-API field could not be computed. Permanent: the spec asks for something that
/// does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedFieldPath(String),
    #[error("unsupported fieldRef apiVersion {0:?}")]
    UnsupportedApiVersion(String),
    #[error("unsupported resourceFieldRef resource {0:?}")]
    UnsupportedResource(String),
    #[error("resourceFieldRef names container {0:?}, which the pod does not have")]
    UnknownContainer(String),
    #[error("resourceFieldRef {resource:?}: {why}")]
    BadQuantity { resource: String, why: String },
}

/// Where a field is used: env values may name pod addresses; volumes may name whole label and
/// annotation maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldUse {
    Env,
    Volume,
}

/// The value of a `fieldRef` (`metadata.name`, `metadata.labels['app']`, `status.podIP`, ...).
pub fn field_value(
    pod: &Pod,
    sel: &ObjectFieldSelector,
    usage: FieldUse,
) -> Result<Template, FieldError> {
    if let Some(v) = sel.api_version.as_deref()
        && !v.is_empty()
        && v != "v1"
    {
        return Err(FieldError::UnsupportedApiVersion(v.to_string()));
    }
    let path = sel.field_path.as_str();
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let unsupported = || FieldError::UnsupportedFieldPath(path.to_string());
    if usage == FieldUse::Env
        && let Some(f) = AddressField::from_field_path(path)
    {
        return Ok(Template::field(f));
    }
    let text = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" if usage == FieldUse::Env => {
            spec.and_then(|s| s.node_name.clone()).unwrap_or_default()
        }
        "spec.serviceAccountName" if usage == FieldUse::Env => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "metadata.labels" if usage == FieldUse::Volume => {
            format_map(meta.labels.as_ref().unwrap_or(&BTreeMap::new()))
        }
        "metadata.annotations" if usage == FieldUse::Volume => {
            format_map(meta.annotations.as_ref().unwrap_or(&BTreeMap::new()))
        }
        other => {
            if let Some(key) = subscript(other, "metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript(other, "metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(unsupported());
            }
        }
    };
    Ok(Template::text(text))
}

/// `metadata.labels['key']` → `key`.
fn subscript<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let inner = path
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let unquoted = inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    Some(unquoted)
}

/// A label or annotation map as the downward API writes it: `key="value"` lines, sorted by key,
/// values quoted like Go's `%q`.
pub fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`: printable characters as they are, the rest escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let n = c as u32;
                if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The node's allocatable resources, used for limits a container leaves unset (as the kubelet
/// does: "no limit" means "up to the node").
pub type NodeAllocatable = BTreeMap<String, Quantity>;

/// The value of a `resourceFieldRef` for `container` (the env case) or for the container it
/// names (the volume case).
pub fn resource_value(
    pod: &Pod,
    container: Option<&Container>,
    sel: &ResourceFieldSelector,
    allocatable: &NodeAllocatable,
) -> Result<String, FieldError> {
    let container = match (sel.container_name.as_deref(), container) {
        (Some(name), _) if !name.is_empty() => find_container(pod, name)
            .ok_or_else(|| FieldError::UnknownContainer(name.to_string()))?,
        (_, Some(c)) => c,
        (_, None) => return Err(FieldError::UnknownContainer(String::new())),
    };
    let bad = |why: String| FieldError::BadQuantity {
        resource: sel.resource.clone(),
        why,
    };
    // Unset, and the "0" the API server stores for unset, both mean 1 (as in the kubelet).
    let divisor = match &sel.divisor {
        Some(q) if !q.0.is_empty() => Amount::of(q).map_err(|e| bad(e.to_string()))?,
        _ => Amount::ZERO,
    };
    let divisor = if divisor.is_zero() {
        Amount::from_units(1)
    } else {
        divisor
    };
    let (section, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| FieldError::UnsupportedResource(sel.resource.clone()))?;
    let is_cpu = name == "cpu";
    if !(is_cpu
        || name == "memory"
        || name == "ephemeral-storage"
        || name.starts_with("hugepages-"))
    {
        return Err(FieldError::UnsupportedResource(sel.resource.clone()));
    }
    let resources = container.resources.as_ref();
    let amount = match section {
        "limits" => {
            let set = resources
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(name));
            match set.or_else(|| allocatable.get(name)) {
                Some(q) => Amount::of(q).map_err(|e| bad(e.to_string()))?,
                None => Amount::ZERO,
            }
        }
        "requests" => {
            let set = resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get(name));
            match set {
                Some(q) => Amount::of(q).map_err(|e| bad(e.to_string()))?,
                None => Amount::ZERO,
            }
        }
        _ => return Err(FieldError::UnsupportedResource(sel.resource.clone())),
    };
    let out = if is_cpu {
        cpu_in_divisor(amount, divisor)
    } else {
        bytes_in_divisor(amount, divisor)
    };
    out.map_err(|why| bad(why.to_string()))
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn lookup(name: &str) -> Option<Template> {
        match name {
            "A" => Some(Template::text("alpha")),
            "EMPTY" => Some(Template::text("")),
            "IP" => Some(Template::field(AddressField::PodIp)),
            "DOLLAR" => Some(Template::text("$(A)")),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let cases = [
            ("plain", "plain"),
            ("$(A)", "alpha"),
            ("x$(A)y", "xalphay"),
            ("$(A)$(A)", "alphaalpha"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$x", "$x"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("$()", "$()"),
            ("$(EMPTY)|", "|"),
            ("$(DOLLAR)", "$(A)"), // substituted values are not expanded again
            ("€$é$(A)", "€$éalpha"),
        ];
        for (input, want) in cases {
            let got = expand(input, lookup);
            assert_eq!(got.as_text().as_deref(), Some(want), "{input:?}");
        }
        let late = expand("http://$(IP):80", lookup);
        assert!(late.is_late_bound());
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([
                    ("app".into(), "web".into()),
                    ("tier".into(), "front \"end\"".into()),
                ])),
                annotations: Some(BTreeMap::from([("note".into(), "a\nb".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("vk-1".into()),
                service_account_name: Some("builder".into()),
                containers: vec![Container {
                    name: "main".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some(BTreeMap::from([
                            ("cpu".into(), Quantity("1500m".into())),
                            ("memory".into(), Quantity("256Mi".into())),
                        ])),
                        requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "setup".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sel(path: &str) -> ObjectFieldSelector {
        ObjectFieldSelector {
            field_path: path.into(),
            api_version: None,
        }
    }

    #[test]
    fn field_paths_for_env() {
        let p = pod();
        let cases = [
            ("metadata.name", "web-1"),
            ("metadata.namespace", "shop"),
            ("metadata.uid", "u-1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['note']", "a\nb"),
            ("spec.nodeName", "vk-1"),
            ("spec.serviceAccountName", "builder"),
        ];
        for (path, want) in cases {
            let got = field_value(&p, &sel(path), FieldUse::Env);
            assert_eq!(
                got.map(|t| t.as_text()),
                Ok(Some(want.to_string())),
                "{path}"
            );
        }
        for path in [
            "status.podIP",
            "status.podIPs",
            "status.hostIP",
            "status.hostIPs",
        ] {
            let got = field_value(&p, &sel(path), FieldUse::Env);
            assert!(got.is_ok_and(|t| t.is_late_bound()), "{path}");
        }
        for path in ["metadata.labels", "spec.containers", "status.phase"] {
            assert_eq!(
                field_value(&p, &sel(path), FieldUse::Env),
                Err(FieldError::UnsupportedFieldPath(path.into())),
                "{path}"
            );
        }
        let mut v2 = sel("metadata.name");
        v2.api_version = Some("v2".into());
        assert!(field_value(&p, &v2, FieldUse::Env).is_err());
    }

    #[test]
    fn field_paths_for_volumes_include_whole_maps() {
        let p = pod();
        let labels = field_value(&p, &sel("metadata.labels"), FieldUse::Volume)
            .ok()
            .and_then(|t| t.as_text());
        assert_eq!(
            labels.as_deref(),
            Some("app=\"web\"\ntier=\"front \\\"end\\\"\"")
        );
        let ann = field_value(&p, &sel("metadata.annotations"), FieldUse::Volume)
            .ok()
            .and_then(|t| t.as_text());
        assert_eq!(ann.as_deref(), Some("note=\"a\\nb\""));
        assert!(field_value(&p, &sel("status.podIP"), FieldUse::Volume).is_err());
        assert!(field_value(&p, &sel("spec.nodeName"), FieldUse::Volume).is_err());
    }

    #[test]
    fn go_quote_escapes_like_go() {
        assert_eq!(go_quote("a\u{1}b\u{7f}"), "\"a\\x01b\\x7f\"");
        assert_eq!(go_quote("é\t"), "\"é\\t\"");
        assert_eq!(go_quote("\u{85}"), "\"\\u0085\"");
    }

    fn rsel(
        resource: &str,
        divisor: Option<&str>,
        container: Option<&str>,
    ) -> ResourceFieldSelector {
        ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: container.map(Into::into),
        }
    }

    #[test]
    fn resource_fields_use_limits_requests_and_node_allocatable() {
        let p = pod();
        let main = p.spec.as_ref().map(|s| s.containers[0].clone());
        let alloc = NodeAllocatable::from([
            ("cpu".into(), Quantity("8".into())),
            ("memory".into(), Quantity("32Gi".into())),
            ("ephemeral-storage".into(), Quantity("100Gi".into())),
        ]);
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("limits.cpu", None, "2"),
            ("limits.cpu", Some("1m"), "1500"),
            ("requests.cpu", None, "1"),
            ("requests.cpu", Some("1m"), "250"),
            ("limits.memory", Some("1Mi"), "256"),
            ("limits.memory", None, "268435456"),
            ("requests.memory", None, "0"),
            ("limits.ephemeral-storage", Some("1Gi"), "100"),
        ];
        for (res, div, want) in cases {
            let got = resource_value(&p, main.as_ref(), &rsel(res, *div, None), &alloc);
            assert_eq!(got.as_deref(), Ok(*want), "{res} / {div:?}");
        }
        // An init container without limits gets the node's allocatable.
        let got = resource_value(&p, None, &rsel("limits.cpu", None, Some("setup")), &alloc);
        assert_eq!(got.as_deref(), Ok("8"));
        let got = resource_value(
            &p,
            None,
            &rsel("limits.memory", Some("1Gi"), Some("setup")),
            &alloc,
        );
        assert_eq!(got.as_deref(), Ok("32"));
        assert!(matches!(
            resource_value(&p, None, &rsel("limits.cpu", None, Some("nope")), &alloc),
            Err(FieldError::UnknownContainer(_))
        ));
        assert!(matches!(
            resource_value(&p, main.as_ref(), &rsel("limits.gpu", None, None), &alloc),
            Err(FieldError::UnsupportedResource(_))
        ));
        let zero = rsel("limits.cpu", Some("0"), None);
        assert_eq!(
            resource_value(&p, main.as_ref(), &zero, &alloc).as_deref(),
            Ok("2"),
            "the API server stores an unset divisor as 0, meaning 1"
        );
        let negative = rsel("limits.cpu", Some("-1"), None);
        assert!(matches!(
            resource_value(&p, main.as_ref(), &negative, &alloc),
            Err(FieldError::BadQuantity { .. })
        ));
    }
}

/// `$(VAR)` expansion against an independent model of Kubernetes' own (the Go expansion
/// package's rules: `$$` escapes, `$(name)` resolves or stays, an unclosed `$(` and a lone `$`
/// stay as written), on inputs made of exactly the characters that matter.
#[cfg(test)]
mod expansion_props {
    use super::*;
    use crate::resolve::PodAddresses;
    use proptest::prelude::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("va".into()),
            "EMPTY" => Some(String::new()),
            // A value that itself looks like a reference: never expanded again.
            "REF" => Some("$(A)".into()),
            _ => None,
        }
    }

    fn model(input: &str) -> String {
        let b: Vec<char> = input.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == '$' && i + 1 < b.len() {
                match b[i + 1] {
                    '$' => {
                        out.push('$');
                        i += 2;
                    }
                    '(' => match b[i + 2..].iter().position(|c| *c == ')') {
                        Some(off) => {
                            let name: String = b[i + 2..i + 2 + off].iter().collect();
                            match lookup(&name) {
                                Some(v) => out.push_str(&v),
                                None => out.push_str(&format!("$({name})")),
                            }
                            i += 3 + off;
                        }
                        None => {
                            out.push_str("$(");
                            i += 2;
                        }
                    },
                    c => {
                        out.push('$');
                        out.push(c);
                        i += 2;
                    }
                }
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_the_kubernetes_rules(input in "[$()AEMPTYREFxé ]{0,40}") {
            let got = expand(&input, |n| lookup(n).map(Template::text)).render(&PodAddresses::default());
            prop_assert_eq!(got, model(&input));
        }

        #[test]
        fn never_panics_on_any_text(input in "\\PC{0,200}") {
            let _ = expand(&input, |n| lookup(n).map(Template::text));
        }
    }
}
