//! The webhook's registration: a MutatingWebhookConfiguration that vkubelet creates or brings
//! up to date at start, so its `caBundle` always matches the serving certificate. It is built to
//! never stand in the way of pod creation: `failurePolicy: Ignore`, a short timeout, and
//! namespaces that must keep working without it (kube-system, vkubelet's own) left out.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::{Api, DeleteParams, PostParams};
use tracing::info;

use crate::Error;

pub const WEBHOOK_PATH: &str = "/mutate-pods";
/// The webhook's name inside its configuration.
pub const WEBHOOK_NAME: &str = "burst-policy.vkubelet.io";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "vkubelet");
/// The label Kubernetes ≥ 1.21 puts on every namespace; on older servers the webhook itself
/// skips excluded namespaces too.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Out of cluster: `https://HOST:PORT/mutate-pods`.
    Url(String),
    /// In cluster: a Service in front of the vkubelet pods.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Registration {
    /// The MutatingWebhookConfiguration's name.
    pub name: String,
    pub endpoint: Endpoint,
    pub ca_bundle: Vec<u8>,
    pub excluded_namespaces: Vec<String>,
    /// Only namespaces with these labels (empty: every namespace but the excluded ones).
    pub namespace_labels: BTreeMap<String, String>,
    pub timeout_seconds: i32,
}

impl Registration {
    pub fn configuration(&self) -> MutatingWebhookConfiguration {
        let client_config = match &self.endpoint {
            Endpoint::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{WEBHOOK_PATH}", base.trim_end_matches('/'))),
                ca_bundle: Some(ByteString(self.ca_bundle.clone())),
                service: None,
            },
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                url: None,
                ca_bundle: Some(ByteString(self.ca_bundle.clone())),
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(WEBHOOK_PATH.into()),
                    port: Some(i32::from(*port)),
                }),
            },
        };
        let mut match_expressions = Vec::new();
        if !self.excluded_namespaces.is_empty() {
            match_expressions.push(LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.into(),
                operator: "NotIn".into(),
                values: Some(self.excluded_namespaces.clone()),
            });
        }
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
                ..Default::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: WEBHOOK_NAME.into(),
                admission_review_versions: vec!["v1".into(), "v1beta1".into()],
                client_config,
                // A webhook that is down must never block pod creation.
                failure_policy: Some("Ignore".into()),
                match_policy: Some("Equivalent".into()),
                side_effects: "None".into(),
                timeout_seconds: Some(self.timeout_seconds),
                reinvocation_policy: Some("IfNeeded".into()),
                namespace_selector: Some(LabelSelector {
                    match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
                    match_labels: (!self.namespace_labels.is_empty())
                        .then(|| self.namespace_labels.clone()),
                }),
                object_selector: None,
                match_conditions: None,
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into()]),
                    resources: Some(vec!["pods".into()]),
                    scope: Some("Namespaced".into()),
                }]),
            }]),
        }
    }

    /// Create the configuration, or replace ours with what this start serves.
    pub async fn apply(&self, client: kube::Client) -> Result<(), Error> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client);
        let mut want = self.configuration();
        match api.get_opt(&self.name).await? {
            None => {
                api.create(&PostParams::default(), &want).await?;
                info!(name = %self.name, "registered the burst-policy webhook");
            }
            Some(have) => {
                if have.webhooks == want.webhooks && labelled_ours(&have) {
                    return Ok(());
                }
                want.metadata.resource_version = have.metadata.resource_version;
                api.replace(&self.name, &PostParams::default(), &want)
                    .await?;
                info!(name = %self.name, "updated the burst-policy webhook registration");
            }
        }
        Ok(())
    }
}

fn labelled_ours(c: &MutatingWebhookConfiguration) -> bool {
    c.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// Remove the registration (uninstall); a missing one is fine.
pub async fn unregister(client: kube::Client, name: &str) -> Result<bool, Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reg(endpoint: Endpoint) -> Registration {
        Registration {
            name: "vkubelet".into(),
            endpoint,
            ca_bundle: b"PEM".to_vec(),
            excluded_namespaces: vec!["kube-system".into(), "vkubelet-system".into()],
            namespace_labels: BTreeMap::new(),
            timeout_seconds: 3,
        }
    }

    #[test]
    fn never_blocks_pod_creation() {
        let c = reg(Endpoint::Url("https://127.0.0.1:9443".into())).configuration();
        let w = &c.webhooks.unwrap()[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(w.side_effects, "None");
        assert!(w.timeout_seconds.unwrap() <= 5);
        assert_eq!(
            w.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/mutate-pods")
        );
        assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
        let sel = w.namespace_selector.as_ref().unwrap();
        let e = &sel.match_expressions.as_ref().unwrap()[0];
        assert_eq!(e.operator, "NotIn");
        assert_eq!(
            e.values.as_ref().unwrap(),
            &vec!["kube-system".to_string(), "vkubelet-system".to_string()]
        );
        let rule = &w.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.operations.as_ref().unwrap(),
            &vec!["CREATE".to_string()]
        );
        assert_eq!(rule.resources.as_ref().unwrap(), &vec!["pods".to_string()]);
    }

    #[test]
    fn service_form_in_cluster() {
        let c = reg(Endpoint::Service {
            namespace: "vkubelet-system".into(),
            name: "vkubelet".into(),
            port: 443,
        })
        .configuration();
        let w = &c.webhooks.unwrap()[0];
        assert!(w.client_config.url.is_none());
        let s = w.client_config.service.as_ref().unwrap();
        assert_eq!(
            (s.name.as_str(), s.port, s.path.as_deref()),
            ("vkubelet", Some(443), Some(WEBHOOK_PATH))
        );
    }
}
