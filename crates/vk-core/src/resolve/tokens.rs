//! Bound service-account tokens for projected volumes, minted with the TokenRequest API and
//! reused until 80% of their lifetime has passed (the kubelet's rule; at most 24 hours).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use parking_lot::Mutex;

use super::volumes::TokenSpec;

/// Refresh once this share of a token's lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// Refresh at least this often, whatever the lifetime.
const MAX_REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub(crate) struct Minted {
    pub(crate) token: Arc<str>,
    pub(crate) refresh_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    pod_uid: String,
    spec: TokenSpec,
}

/// Tokens per pod, so a pod's tokens are minted once and refreshed on schedule.
pub(crate) struct TokenManager {
    client: kube::Client,
    tokens: Mutex<HashMap<TokenKey, Minted>>,
}

/// The pod a token is bound to (the API server checks the UID and invalidates the token when
/// the pod is deleted).
pub(crate) struct BoundPod<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) uid: &'a str,
    pub(crate) service_account: &'a str,
}

impl TokenManager {
    pub(crate) fn new(client: kube::Client) -> Self {
        Self {
            client,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A valid token for `spec`, minted if none is cached or the cached one is due for refresh.
    pub(crate) async fn token(
        &self,
        pod: &BoundPod<'_>,
        spec: &TokenSpec,
    ) -> Result<Minted, kube::Error> {
        let key = TokenKey {
            pod_uid: pod.uid.to_string(),
            spec: spec.clone(),
        };
        if let Some(m) = self.tokens.lock().get(&key)
            && SystemTime::now() < m.refresh_at
        {
            return Ok(m.clone());
        }
        let minted = self.mint(pod, spec).await?;
        self.tokens.lock().insert(key, minted.clone());
        Ok(minted)
    }

    async fn mint(&self, pod: &BoundPod<'_>, spec: &TokenSpec) -> Result<Minted, kube::Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), pod.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: if spec.audience.is_empty() {
                    None // the API server's own audiences
                } else {
                    Some(vec![spec.audience.clone()])
                },
                expiration_seconds: Some(spec.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name.to_string()),
                    uid: Some(pod.uid.to_string()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = SystemTime::now();
        let answer: TokenRequest = api
            .create_subresource(
                "token",
                pod.service_account,
                &PostParams::default(),
                &request,
            )
            .await?;
        let status = answer.status.unwrap_or_default();
        let token = status.token.filter(|t| !t.is_empty()).ok_or_else(|| {
            kube::Error::Service("the TokenRequest answer carries no token".into())
        })?;
        // The server may grant a different lifetime than asked; refresh by what it granted.
        let lifetime = match status.expiration_timestamp {
            Some(t) => SystemTime::from(t.0)
                .duration_since(issued)
                .unwrap_or_default(),
            None => Duration::from_secs(spec.expiration_seconds.max(0).unsigned_abs()),
        };
        Ok(Minted {
            token: Arc::from(token),
            refresh_at: issued + refresh_after(lifetime),
        })
    }

    pub(crate) fn forget_pod(&self, uid: &str) {
        self.tokens.lock().retain(|k, _| k.pod_uid != uid);
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.lock().len()
    }
}

/// When to refresh a token that lives for `lifetime`.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(REFRESH_AT).min(MAX_REFRESH_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_before_eighty_percent_of_the_lifetime_and_at_least_daily() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(7 * 24 * 3600)),
            MAX_REFRESH_AFTER
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }
}
