//! The API server decides: TokenReview for bearer tokens, SubjectAccessReview for permissions
//! (the kubelet's `--authentication-token-webhook` and `--authorization-mode=Webhook`). vkubelet's
//! own identity needs `create` on both (the `system:auth-delegator` ClusterRole grants it).

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use super::{Attributes, AuthError, Authorizer, Decision, TokenAuthenticator, UserInfo};

pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

#[async_trait]
impl TokenAuthenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = self
            .api
            .create(&PostParams::default(), &review)
            .await
            // The error never contains the token: it is only in the request body.
            .map_err(|e| AuthError(format!("TokenReview: {e}")))?;
        let Some(status) = out.status else {
            return Ok(None);
        };
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let Some(user) = status.user else {
            return Ok(None);
        };
        let Some(name) = user.username.filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let mut info = UserInfo::authenticated(name, user.groups.unwrap_or_default());
        info.uid = user.uid.unwrap_or_default();
        info.extra = user.extra.unwrap_or_default();
        Ok(Some(info))
    }
}

pub struct SubjectAccessReviewAuthorizer {
    api: Api<SubjectAccessReview>,
}

impl SubjectAccessReviewAuthorizer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

/// The review the kubelet sends for `user` doing `attrs` (cluster-scoped `nodes`, core group).
pub(crate) fn review_for(user: &UserInfo, attrs: &Attributes) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some("nodes".into()),
                subresource: Some(attrs.subresource.into()),
                name: Some(attrs.node.clone()),
                namespace: Some(String::new()),
                verb: Some(attrs.verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[async_trait]
impl Authorizer for SubjectAccessReviewAuthorizer {
    async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<Decision, AuthError> {
        let out = self
            .api
            .create(&PostParams::default(), &review_for(user, attrs))
            .await
            .map_err(|e| AuthError(format!("SubjectAccessReview: {e}")))?;
        let Some(status) = out.status else {
            return Err(AuthError("SubjectAccessReview without a status".into()));
        };
        if let Some(err) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            // RBAC reports rules it could not read here; the verdict stands as given.
            tracing::debug!(error = %err, "SubjectAccessReview evaluation error");
        }
        Ok(Decision {
            allowed: status.allowed && status.denied != Some(true),
            reason: status.reason.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn review_names_the_node_subresource() {
        let mut user = UserInfo::authenticated("system:serviceaccount:ns:sa", vec!["g".into()]);
        user.uid = "u-1".into();
        let attrs = crate::auth::request_attributes(&Method::GET, "/stats/summary", "vk-1");
        let v = serde_json::to_value(review_for(&user, &attrs)).unwrap();
        assert_eq!(v["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(v["kind"], "SubjectAccessReview");
        assert_eq!(
            v["spec"],
            serde_json::json!({
                "user": "system:serviceaccount:ns:sa",
                "uid": "u-1",
                "groups": ["g", "system:authenticated"],
                "resourceAttributes": {
                    "group": "", "version": "v1", "resource": "nodes", "subresource": "stats",
                    "name": "vk-1", "namespace": "", "verb": "get"
                }
            })
        );
    }
}
