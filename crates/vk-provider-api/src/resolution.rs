//! What the resolver hands a backend: env per container (in declared order, with the pod's
//! addresses left as late-bound fields), volume contents, and registry credentials.
//!
//! Secrets travel in these types, so their `Debug` output never shows secret bytes.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A pod address the backend only knows once it has placed the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressField {
    /// `status.podIP`
    PodIp,
    /// `status.podIPs`, comma-separated
    PodIps,
    /// `status.hostIP`
    HostIp,
    /// `status.hostIPs`, comma-separated
    HostIps,
}

impl AddressField {
    pub fn from_field_path(path: &str) -> Option<Self> {
        Some(match path {
            "status.podIP" => Self::PodIp,
            "status.podIPs" => Self::PodIps,
            "status.hostIP" => Self::HostIp,
            "status.hostIPs" => Self::HostIps,
            _ => return None,
        })
    }
}

/// The addresses a backend assigned to a pod, used to render late-bound env values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAddresses {
    pub pod_ips: Vec<String>,
    pub host_ips: Vec<String>,
}

impl PodAddresses {
    fn field(&self, f: AddressField) -> String {
        match f {
            AddressField::PodIp => self.pod_ips.first().cloned().unwrap_or_default(),
            AddressField::PodIps => self.pod_ips.join(","),
            AddressField::HostIp => self.host_ips.first().cloned().unwrap_or_default(),
            AddressField::HostIps => self.host_ips.join(","),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Text(String),
    Field(AddressField),
}

/// A string that may contain late-bound pod addresses. Most are plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    pub fn text(s: impl Into<String>) -> Self {
        let s = s.into();
        Self {
            segments: if s.is_empty() {
                Vec::new()
            } else {
                vec![Segment::Text(s)]
            },
        }
    }

    pub fn field(f: AddressField) -> Self {
        Self {
            segments: vec![Segment::Field(f)],
        }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The value when it needs no address (`None` if it is late-bound).
    pub fn as_text(&self) -> Option<String> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Field(_) => return None,
            }
        }
        Some(out)
    }

    pub fn is_late_bound(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Field(_)))
    }

    pub fn render(&self, addresses: &PodAddresses) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Field(f) => out.push_str(&addresses.field(*f)),
            }
        }
        out
    }

    pub fn push_text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(Segment::Text(last)) = self.segments.last_mut() {
            last.push_str(s);
        } else {
            self.segments.push(Segment::Text(s.to_string()));
        }
    }

    pub fn push_template(&mut self, other: &Template) {
        for s in &other.segments {
            match s {
                Segment::Text(t) => self.push_text(t),
                Segment::Field(f) => self.segments.push(Segment::Field(*f)),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvVar {
    pub name: String,
    pub value: Template,
}

/// One container's environment and command line, as the kubelet would hand them to a runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedContainer {
    pub name: String,
    pub init: bool,
    /// In declared order: `envFrom` sources (keys sorted within each), then `env`; a later
    /// definition of a name replaces the earlier one at its own position; service-link variables
    /// last.
    pub env: Vec<EnvVar>,
    /// `command` with `$(VAR)` references expanded against `env`; `None` keeps the image's.
    pub command: Option<Vec<Template>>,
    pub args: Option<Vec<Template>>,
}

impl ResolvedContainer {
    /// `NAME=value` pairs for a backend that knows the pod's addresses.
    pub fn render_env(&self, addresses: &PodAddresses) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| (e.name.clone(), e.value.render(addresses)))
            .collect()
    }
}

/// Where a file-backed volume's content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilesKind {
    ConfigMap,
    Secret,
    DownwardApi,
    Projected,
    /// The legacy service-account token Secret (API servers before 1.21).
    ServiceAccountToken,
}

/// One file of a volume. Paths are relative, normalized and free of `..`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VolumeFile {
    pub path: String,
    /// Permission bits (`defaultMode` / `mode`), e.g. `0o644`.
    pub mode: u32,
    pub data: Arc<[u8]>,
    /// Secret material (Secret keys, service-account tokens): keep off disk where possible and
    /// never log.
    pub sensitive: bool,
}

impl fmt::Debug for VolumeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VolumeFile");
        d.field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode));
        if self.sensitive {
            d.field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            );
        } else {
            d.field("data", &String::from_utf8_lossy(&self.data));
        }
        d.finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedVolumeSource {
    /// Content the core resolved (configMap, secret, downwardAPI, projected).
    Files {
        kind: FilesKind,
        files: Vec<VolumeFile>,
    },
    EmptyDir {
        medium: Option<String>,
        size_limit: Option<Quantity>,
    },
    /// A volume the core cannot resolve (persistentVolumeClaim, csi, nfs, ephemeral, ...),
    /// passed as the pod declared it for the backend to accept or reject.
    Passthrough(Box<Volume>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedVolume {
    pub name: String,
    pub source: ResolvedVolumeSource,
}

impl ResolvedVolume {
    /// Bytes of resolved content (the figure checked against a provider's size limit).
    pub fn data_len(&self) -> usize {
        match &self.source {
            ResolvedVolumeSource::Files { files, .. } => files.iter().map(|f| f.data.len()).sum(),
            _ => 0,
        }
    }
}

/// Credentials for one registry, from an image pull secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// As written in the secret: `registry.example.com`, `https://index.docker.io/v1/`, ...
    pub registry: String,
    pub username: String,
    pub password: String,
    /// An OAuth identity token, for registries that use one instead of a password.
    pub identity_token: Option<String>,
    /// The Secret this came from, for messages.
    pub secret: String,
}

impl RegistryCredential {
    /// Whether this credential applies to `image` (`host[:port]/path:tag`), with the
    /// kubelet's rules: Docker Hub images match `docker.io`/`index.docker.io` entries, a
    /// registry entry with a path matches images under that path.
    pub fn matches_image(&self, image: &str) -> bool {
        let want = normalize_registry(&self.registry);
        let image = image_location(image);
        image == want || image.starts_with(&format!("{want}/"))
    }
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .field("secret", &self.secret)
            .finish()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `my.reg:5000/team` → `my.reg:5000/team`.
fn normalize_registry(registry: &str) -> String {
    let r = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let r = r.strip_suffix("/v1").unwrap_or(r);
    let r = r.strip_suffix("/v2").unwrap_or(r);
    match r {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        other => other.to_string(),
    }
}

/// The repository location of an image, with the registry made explicit: `busybox` →
/// `docker.io/library/busybox`, `quay.io/a/b:1` → `quay.io/a/b`.
fn image_location(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag is a ':' after the last '/'.
    let without_tag = match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    };
    let first = without_tag.split('/').next().unwrap_or("");
    let has_registry = without_tag.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        let (host, rest) = without_tag.split_at(first.len());
        format!("{}{rest}", normalize_registry(host))
    } else if without_tag.contains('/') {
        format!("docker.io/{without_tag}")
    } else {
        format!("docker.io/library/{without_tag}")
    }
}

/// Everything the core resolved for one pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolution {
    /// Init containers first (in order), then containers.
    pub containers: Vec<ResolvedContainer>,
    pub volumes: Vec<ResolvedVolume>,
    pub registry_credentials: Vec<RegistryCredential>,
}

impl Resolution {
    pub fn container(&self, name: &str) -> Option<&ResolvedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn volume(&self, name: &str) -> Option<&ResolvedVolume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// Credentials that apply to `image`, most specific registry path first.
    pub fn credentials_for(&self, image: &str) -> Vec<&RegistryCredential> {
        let mut found: Vec<_> = self
            .registry_credentials
            .iter()
            .filter(|c| c.matches_image(image))
            .collect();
        found.sort_by_key(|c| std::cmp::Reverse(normalize_registry(&c.registry).len()));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_late_bound_addresses() {
        let mut t = Template::text("http://");
        t.push_template(&Template::field(AddressField::PodIp));
        t.push_text(":8080");
        assert!(t.is_late_bound());
        assert_eq!(t.as_text(), None);
        let addrs = PodAddresses {
            pod_ips: vec!["10.1.2.3".into(), "fd00::3".into()],
            host_ips: vec!["192.0.2.1".into()],
        };
        assert_eq!(t.render(&addrs), "http://10.1.2.3:8080");
        assert_eq!(
            Template::field(AddressField::PodIps).render(&addrs),
            "10.1.2.3,fd00::3"
        );
        assert_eq!(Template::text("plain").as_text().as_deref(), Some("plain"));
    }

    #[test]
    fn image_locations_follow_docker_rules() {
        let cases = [
            ("busybox", "docker.io/library/busybox"),
            ("busybox:1.36", "docker.io/library/busybox"),
            ("team/app:2", "docker.io/team/app"),
            ("quay.io/a/b:1", "quay.io/a/b"),
            ("my.reg:5000/x/y@sha256:abc", "my.reg:5000/x/y"),
            ("localhost/app", "localhost/app"),
            ("index.docker.io/library/nginx", "docker.io/library/nginx"),
        ];
        for (image, want) in cases {
            assert_eq!(image_location(image), want, "{image}");
        }
    }

    fn cred(registry: &str) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            username: "u".into(),
            password: "p".into(),
            identity_token: None,
            secret: "s".into(),
        }
    }

    #[test]
    fn credentials_match_registry_and_path_prefixes() {
        assert!(cred("https://index.docker.io/v1/").matches_image("busybox"));
        assert!(cred("docker.io").matches_image("team/app:1"));
        assert!(cred("my.reg:5000").matches_image("my.reg:5000/x/y:1"));
        assert!(cred("my.reg:5000/x").matches_image("my.reg:5000/x/y:1"));
        assert!(!cred("my.reg:5000/x").matches_image("my.reg:5000/xy/z"));
        assert!(!cred("quay.io").matches_image("busybox"));
        let r = Resolution {
            registry_credentials: vec![cred("my.reg"), cred("my.reg/team")],
            ..Default::default()
        };
        let found = r.credentials_for("my.reg/team/app");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].registry, "my.reg/team");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = cred("r");
        let shown = format!("{c:?}");
        assert!(!shown.contains("\"p\""), "{shown}");
        let f = VolumeFile {
            path: "token".into(),
            mode: 0o644,
            data: Arc::from(b"s3cr3t".as_slice()),
            sensitive: true,
        };
        let shown = format!("{f:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("6 bytes redacted"), "{shown}");
    }
}
