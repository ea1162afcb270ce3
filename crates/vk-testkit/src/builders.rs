//! Small builders for the objects tests create.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// Builds a single-container [`Pod`] (or its template / spec).
///
/// Defaults: container `main`, image `busybox`; nothing else is set, so the API server's
/// defaults apply.
///
/// ```
/// use vk_testkit::PodBuilder;
/// let pod = PodBuilder::new("sleeper")
///     .image("busybox")
///     .command(["sleep", "3600"])
///     .node_selector("type", "virtual-kubelet")
///     .toleration_all()
///     .restart_policy("Never")
///     .build();
/// assert_eq!(pod.metadata.name.as_deref(), Some("sleeper"));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PodBuilder {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    container: Container,
    extra_containers: Vec<Container>,
    node_selector: BTreeMap<String, String>,
    node_name: Option<String>,
    tolerations: Vec<Toleration>,
    restart_policy: Option<String>,
    termination_grace_period_seconds: Option<i64>,
}

impl PodBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            container: Container {
                name: "main".into(),
                image: Some("busybox".into()),
                ..Container::default()
            },
            extra_containers: Vec::new(),
            node_selector: BTreeMap::new(),
            node_name: None,
            tolerations: Vec::new(),
            restart_policy: None,
            termination_grace_period_seconds: None,
        }
    }

    /// Sets `metadata.namespace` (not needed with `TestEnv::create`/`TestEnv::api`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Name of the main container (default `main`).
    pub fn container_name(mut self, name: impl Into<String>) -> Self {
        self.container.name = name.into();
        self
    }

    /// Image of the main container (default `busybox`).
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.container.image = Some(image.into());
        self
    }

    /// The main container's `command` (entrypoint).
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.container.command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// The main container's `args`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.container.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an environment variable to the main container.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.container
            .env
            .get_or_insert_with(Vec::new)
            .push(EnvVar {
                name: name.into(),
                value: Some(value.into()),
                ..EnvVar::default()
            });
        self
    }

    /// Adds another container after the main one.
    pub fn container(mut self, container: Container) -> Self {
        self.extra_containers.push(container);
        self
    }

    pub fn node_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_selector.insert(key.into(), value.into());
        self
    }

    /// Binds the pod to a node directly, bypassing the scheduler.
    pub fn node_name(mut self, node: impl Into<String>) -> Self {
        self.node_name = Some(node.into());
        self
    }

    pub fn toleration(mut self, toleration: Toleration) -> Self {
        self.tolerations.push(toleration);
        self
    }

    /// Tolerates every taint (`operator: Exists` with no key).
    pub fn toleration_all(self) -> Self {
        self.toleration(Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        })
    }

    /// `Always`, `OnFailure` or `Never`.
    pub fn restart_policy(mut self, policy: impl Into<String>) -> Self {
        self.restart_policy = Some(policy.into());
        self
    }

    pub fn termination_grace_period_seconds(mut self, seconds: i64) -> Self {
        self.termination_grace_period_seconds = Some(seconds);
        self
    }

    /// The pod spec alone.
    pub fn build_spec(&self) -> PodSpec {
        let mut containers = vec![self.container.clone()];
        containers.extend(self.extra_containers.iter().cloned());
        PodSpec {
            containers,
            node_selector: non_empty(&self.node_selector),
            node_name: self.node_name.clone(),
            tolerations: (!self.tolerations.is_empty()).then(|| self.tolerations.clone()),
            restart_policy: self.restart_policy.clone(),
            termination_grace_period_seconds: self.termination_grace_period_seconds,
            ..PodSpec::default()
        }
    }

    /// A pod template for a controller: labels and annotations, no name or namespace.
    pub fn build_template(&self) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: non_empty(&self.labels),
                annotations: non_empty(&self.annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(self.build_spec()),
        }
    }

    pub fn build(&self) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: self.namespace.clone(),
                labels: non_empty(&self.labels),
                annotations: non_empty(&self.annotations),
                ..ObjectMeta::default()
            },
            spec: Some(self.build_spec()),
            status: None,
        }
    }
}

/// Builds an apps/v1 [`Deployment`].
///
/// The selector labels (default `app: <name>`) are put on the pod template too. The template
/// defaults to `PodBuilder::new(name)`: one `busybox` container.
///
/// ```
/// use vk_testkit::{DeploymentBuilder, PodBuilder};
/// let d = DeploymentBuilder::new("web")
///     .replicas(3)
///     .selector_label("app", "web")
///     .template(PodBuilder::new("web").command(["sleep", "3600"]))
///     .build();
/// assert_eq!(d.spec.replicas, Some(3));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct DeploymentBuilder {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    replicas: i32,
    selector: BTreeMap<String, String>,
    template: PodBuilder,
}

impl DeploymentBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            template: PodBuilder::new(name.clone()),
            name,
            namespace: None,
            labels: BTreeMap::new(),
            replicas: 1,
            selector: BTreeMap::new(),
        }
    }

    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// A label on the Deployment object itself.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Desired replicas (default 1).
    pub fn replicas(mut self, replicas: i32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Adds a `matchLabels` entry to the selector (and to the pod template's labels).
    pub fn selector_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.selector.insert(key.into(), value.into());
        self
    }

    /// The pod template; its name and namespace are ignored.
    pub fn template(mut self, template: PodBuilder) -> Self {
        self.template = template;
        self
    }

    /// The selector's `matchLabels` as the builder will emit them.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        if self.selector.is_empty() {
            BTreeMap::from([("app".to_string(), self.name.clone())])
        } else {
            self.selector.clone()
        }
    }

    pub fn build(&self) -> Deployment {
        let selector = self.selector_labels();
        let mut template = self.template.clone();
        for (k, v) in &selector {
            template = template.label(k.clone(), v.clone());
        }
        Deployment {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: self.namespace.clone(),
                labels: non_empty(&self.labels),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(self.replicas),
                selector: LabelSelector {
                    match_labels: Some(selector),
                    ..LabelSelector::default()
                },
                template: template.build_template(),
                ..DeploymentSpec::default()
            },
            status: None,
        }
    }
}

fn non_empty(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_defaults() {
        let pod = PodBuilder::new("p").build();
        assert_eq!(
            serde_json::to_value(&pod).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            })
        );
    }

    #[test]
    fn pod_with_everything() {
        let pod = PodBuilder::new("p")
            .namespace("ns")
            .label("app", "x")
            .annotation("note", "y")
            .container_name("c")
            .image("alpine:3")
            .command(["sh", "-c"])
            .args(vec!["echo hi".to_string()])
            .env("A", "1")
            .node_selector("type", "virtual-kubelet")
            .toleration_all()
            .restart_policy("Never")
            .termination_grace_period_seconds(0)
            .container(Container {
                name: "side".into(),
                image: Some("busybox".into()),
                ..Container::default()
            })
            .build();
        assert_eq!(
            serde_json::to_value(&pod).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "p", "namespace": "ns",
                    "labels": {"app": "x"}, "annotations": {"note": "y"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "c", "image": "alpine:3",
                            "command": ["sh", "-c"], "args": ["echo hi"],
                            "env": [{"name": "A", "value": "1"}],
                        },
                        {"name": "side", "image": "busybox"},
                    ],
                    "nodeSelector": {"type": "virtual-kubelet"},
                    "tolerations": [{"operator": "Exists"}],
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                },
            })
        );
    }

    #[test]
    fn node_name_binds_directly() {
        let spec = PodBuilder::new("p").node_name("vk-0").build_spec();
        assert_eq!(spec.node_name.as_deref(), Some("vk-0"));
    }

    #[test]
    fn deployment_defaults_select_on_app_name() {
        let d = DeploymentBuilder::new("web").build();
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(1));
        let want = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&want));
        let meta = spec.template.metadata.unwrap();
        assert_eq!(meta.labels.as_ref(), Some(&want));
        assert_eq!(meta.name, None);
        let pod_spec = spec.template.spec.unwrap();
        assert_eq!(pod_spec.containers[0].image.as_deref(), Some("busybox"));
    }

    #[test]
    fn deployment_with_template() {
        let d = DeploymentBuilder::new("web")
            .namespace("ns")
            .label("tier", "front")
            .replicas(3)
            .selector_label("app", "web")
            .selector_label("track", "stable")
            .template(
                PodBuilder::new("ignored")
                    .namespace("ignored")
                    .label("extra", "1")
                    .command(["sleep", "3600"]),
            )
            .build();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "ns", "labels": {"tier": "front"}},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web", "track": "stable"}},
                    "template": {
                        "metadata": {"labels": {"app": "web", "extra": "1", "track": "stable"}},
                        "spec": {"containers": [
                            {"name": "main", "image": "busybox", "command": ["sleep", "3600"]},
                        ]},
                    },
                },
            })
        );
    }
}
