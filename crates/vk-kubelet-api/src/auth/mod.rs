//! Who is calling, and may they: the kubelet's authentication (client certificate, bearer token
//! via TokenReview, optional anonymous) and authorization (SubjectAccessReview on
//! `nodes/<subresource>`), both cached.
//!
//! The attribute mapping is the kubelet's own (`pkg/kubelet/server/auth.go`,
//! `GetRequestAttributes`): verb from the HTTP method, resource `nodes`, name = the node,
//! subresource `stats` for `/stats/...`, `metrics` for `/metrics...`, `log` for `/logs/...`, and
//! `proxy` for everything else — including `/containerLogs`, `/exec`, `/pods` and `/healthz`.

mod review;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine;
use tracing::{debug, warn};

pub use review::{SubjectAccessReviewAuthorizer, TokenReviewAuthenticator};

use crate::metrics::ApiMetrics;
use crate::status::ApiError;
use vk_core::cache::TtlCache;

/// Every authenticated user is in this group (the API server's authenticated-group adder).
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The WebSocket subprotocol prefix that carries a bearer token (browsers cannot set headers).
const WS_TOKEN_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user from a certificate or token; joins `system:authenticated`.
    pub fn authenticated(name: impl Into<String>, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_string());
        }
        Self {
            name: name.into(),
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS_USER.into(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED_GROUP.into()],
            extra: BTreeMap::new(),
        }
    }
}

/// What a request asks to do to the node, in API terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, `update`, `patch`, `delete`, or empty for other methods (which no RBAC
    /// rule grants, as with the kubelet).
    pub verb: &'static str,
    pub subresource: &'static str,
    pub node: String,
}

/// Whether `path` is `prefix` (without its trailing slash) or below it (the kubelet's
/// `isSubpath`).
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The kubelet's attribute mapping for a request to `path` on `node`.
pub fn request_attributes(method: &Method, path: &str, node: &str) -> Attributes {
    let verb = match *method {
        Method::POST => "create",
        Method::GET => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let subresource = if is_subpath(path, "/stats/") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs/") {
        "log"
    } else {
        "proxy"
    };
    Attributes {
        verb,
        subresource,
        node: node.to_string(),
    }
}

/// A failed call to the API server (TokenReview or SubjectAccessReview).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Bearer tokens to users (TokenReview in production).
#[async_trait]
pub trait TokenAuthenticator: Send + Sync + 'static {
    /// `Ok(None)`: the token is not valid.
    async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError>;
}

/// An authorization verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// Users and attributes to verdicts (SubjectAccessReview in production).
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<Decision, AuthError>;
}

/// Allows everything; for tests of the routes and for deployments that put their own proxy in
/// front (not wired to any flag).
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysAllow;

#[async_trait]
impl Authorizer for AlwaysAllow {
    async fn authorize(&self, _: &UserInfo, _: &Attributes) -> Result<Decision, AuthError> {
        Ok(Decision {
            allowed: true,
            reason: String::new(),
        })
    }
}

/// Cache lifetimes and the anonymous switch. The defaults are the kubelet's
/// (`authentication.webhook.cacheTTL` 2 min; `authorization.webhook.cacheAuthorizedTTL` 5 min,
/// `cacheUnauthorizedTTL` 30 s), except that a rejected token is remembered for 30 s rather than
/// 2 min, so a token minted a moment too late is not refused for long.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub anonymous: bool,
    pub token_success_ttl: Duration,
    pub token_failure_ttl: Duration,
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
    /// Most entries in each cache.
    pub cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: false,
            token_success_ttl: Duration::from_secs(120),
            token_failure_ttl: Duration::from_secs(30),
            authorized_ttl: Duration::from_secs(300),
            unauthorized_ttl: Duration::from_secs(30),
            cache_entries: 10_000,
        }
    }
}

/// A token's cache key: its SHA-256, so no raw token is kept (or could be logged) as a key.
type TokenKey = [u8; 32];

fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct AuthzKey {
    user: UserInfo,
    attrs: Attributes,
}

/// Authentication and authorization for one node's kubelet API.
pub struct Auth {
    node: String,
    cfg: AuthConfig,
    tokens: Option<Arc<dyn TokenAuthenticator>>,
    authorizer: Arc<dyn Authorizer>,
    token_cache: TtlCache<TokenKey, Option<UserInfo>>,
    authz_cache: TtlCache<AuthzKey, Decision>,
    metrics: ApiMetrics,
}

/// Where a bearer token came from.
fn bearer_token(headers: &mut HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let mut parts = text.splitn(3, ' ');
        let scheme = parts.next()?;
        let token = parts.next()?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
            return Some(token.to_string());
        }
        return None;
    }
    // WebSocket clients pass the token as a subprotocol; it is taken out of the list so that the
    // protocol negotiation downstream never sees (or echoes) it.
    let protocols = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let mut token = None;
    let mut rest = Vec::new();
    for p in protocols
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match p.strip_prefix(WS_TOKEN_PROTOCOL) {
            Some(encoded) => {
                token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(encoded.trim_end_matches('='))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|t| !t.is_empty());
            }
            None => rest.push(p),
        }
    }
    token.as_ref()?;
    if rest.is_empty() {
        headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    } else if let Ok(v) = HeaderValue::from_str(&rest.join(", ")) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    token
}

impl Auth {
    pub fn new(
        node: impl Into<String>,
        cfg: AuthConfig,
        tokens: Option<Arc<dyn TokenAuthenticator>>,
        authorizer: Arc<dyn Authorizer>,
        metrics: ApiMetrics,
    ) -> Self {
        Self {
            node: node.into(),
            token_cache: TtlCache::new(cfg.cache_entries),
            authz_cache: TtlCache::new(cfg.cache_entries),
            cfg,
            tokens,
            authorizer,
            metrics,
        }
    }

    /// Who sent the request: the client certificate's user, else the bearer token's, else
    /// anonymous when enabled. A token that does not authenticate is refused even when
    /// anonymous access is on (as the API server and kubelet do).
    pub async fn authenticate(
        &self,
        peer: Option<&UserInfo>,
        headers: &mut HeaderMap,
    ) -> Result<UserInfo, ApiError> {
        if let Some(user) = peer {
            self.metrics.authn(&self.node, "x509", "ok", false);
            return Ok(user.clone());
        }
        if let Some(token) = bearer_token(headers) {
            let Some(tokens) = &self.tokens else {
                self.metrics
                    .authn(&self.node, "token", "unauthenticated", false);
                return Err(ApiError::unauthorized());
            };
            let key = token_key(&token);
            let (found, cached) = match self.token_cache.get(&key) {
                Some(found) => (found, true),
                None => match tokens.authenticate(&token).await {
                    Ok(found) => {
                        let ttl = if found.is_some() {
                            self.cfg.token_success_ttl
                        } else {
                            self.cfg.token_failure_ttl
                        };
                        self.token_cache.insert(key, found.clone(), ttl);
                        (found, false)
                    }
                    Err(e) => {
                        warn!(node = %self.node, error = %e, "TokenReview failed; request refused");
                        self.metrics.authn(&self.node, "token", "error", false);
                        self.metrics
                            .error(&self.node, "kubelet_api_authn", "tokenreview");
                        return Err(ApiError::unauthorized());
                    }
                },
            };
            return match found {
                Some(user) => {
                    self.metrics.authn(&self.node, "token", "ok", cached);
                    Ok(user)
                }
                None => {
                    self.metrics
                        .authn(&self.node, "token", "unauthenticated", cached);
                    Err(ApiError::unauthorized())
                }
            };
        }
        if self.cfg.anonymous {
            self.metrics.authn(&self.node, "anonymous", "ok", false);
            return Ok(UserInfo::anonymous());
        }
        self.metrics
            .authn(&self.node, "none", "unauthenticated", false);
        Err(ApiError::unauthorized())
    }

    /// Whether `user` may do `attrs`: 403 when denied, 500 when the review failed.
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
        let key = AuthzKey {
            user: user.clone(),
            attrs: attrs.clone(),
        };
        let (decision, cached) = match self.authz_cache.get(&key) {
            Some(d) => (d, true),
            None => match self.authorizer.authorize(user, attrs).await {
                Ok(d) => {
                    let ttl = if d.allowed {
                        self.cfg.authorized_ttl
                    } else {
                        self.cfg.unauthorized_ttl
                    };
                    self.authz_cache.insert(key, d.clone(), ttl);
                    (d, false)
                }
                Err(e) => {
                    warn!(node = %self.node, user = %user.name, error = %e, "SubjectAccessReview failed");
                    self.metrics
                        .authz(&self.node, attrs.subresource, "error", false);
                    self.metrics
                        .error(&self.node, "kubelet_api_authz", "subjectaccessreview");
                    return Err(ApiError::internal(format!(
                        "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                        user.name, attrs.verb, attrs.subresource
                    )));
                }
            },
        };
        if decision.allowed {
            self.metrics
                .authz(&self.node, attrs.subresource, "allowed", cached);
            return Ok(());
        }
        self.metrics
            .authz(&self.node, attrs.subresource, "denied", cached);
        debug!(node = %self.node, user = %user.name, verb = attrs.verb, subresource = attrs.subresource, "forbidden");
        let mut message = format!(
            "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])",
            user.name, attrs.verb, attrs.subresource
        );
        if !decision.reason.is_empty() {
            message.push_str(": ");
            message.push_str(&decision.reason);
        }
        Err(ApiError::forbidden(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn attributes_follow_the_kubelet() {
        let a = |m: Method, p: &str| {
            let a = request_attributes(&m, p, "vk-1");
            assert_eq!(a.node, "vk-1");
            (a.verb, a.subresource)
        };
        assert_eq!(a(Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(a(Method::GET, "/stats"), ("get", "stats"));
        assert_eq!(a(Method::GET, "/statsx"), ("get", "proxy"));
        assert_eq!(a(Method::GET, "/metrics"), ("get", "metrics"));
        assert_eq!(a(Method::GET, "/metrics/resource"), ("get", "metrics"));
        assert_eq!(a(Method::GET, "/metricsfoo"), ("get", "proxy"));
        assert_eq!(a(Method::GET, "/logs/"), ("get", "log"));
        assert_eq!(a(Method::GET, "/logs/syslog"), ("get", "log"));
        // containerLogs is not under /logs/: the kubelet authorizes it as nodes/proxy.
        assert_eq!(a(Method::GET, "/containerLogs/ns/p/c"), ("get", "proxy"));
        assert_eq!(a(Method::POST, "/exec/ns/p/c"), ("create", "proxy"));
        assert_eq!(a(Method::GET, "/pods"), ("get", "proxy"));
        assert_eq!(a(Method::GET, "/healthz"), ("get", "proxy"));
        assert_eq!(a(Method::PUT, "/x"), ("update", "proxy"));
        assert_eq!(a(Method::PATCH, "/x"), ("patch", "proxy"));
        assert_eq!(a(Method::DELETE, "/x"), ("delete", "proxy"));
        assert_eq!(a(Method::HEAD, "/x"), ("", "proxy"));
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_from_header_or_websocket_protocol() {
        let mut h = headers(&[(header::AUTHORIZATION, "Bearer abc")]);
        assert_eq!(bearer_token(&mut h).as_deref(), Some("abc"));
        let mut h = headers(&[(header::AUTHORIZATION, "bearer abc extra")]);
        assert_eq!(bearer_token(&mut h).as_deref(), Some("abc"));
        let mut h = headers(&[(header::AUTHORIZATION, "Basic abc")]);
        assert_eq!(bearer_token(&mut h), None);
        let mut h = headers(&[(header::AUTHORIZATION, "Bearer ")]);
        assert_eq!(bearer_token(&mut h), None);
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("tok.en");
        let mut h = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            &format!("v4.channel.k8s.io, {WS_TOKEN_PROTOCOL}{encoded}"),
        )]);
        assert_eq!(bearer_token(&mut h).as_deref(), Some("tok.en"));
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], "v4.channel.k8s.io");
        let mut h = headers(&[(header::SEC_WEBSOCKET_PROTOCOL, "v4.channel.k8s.io")]);
        assert_eq!(bearer_token(&mut h), None);
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], "v4.channel.k8s.io");
    }

    #[test]
    fn token_keys_are_digests() {
        let k = token_key("secret-token");
        assert_eq!(k, token_key("secret-token"));
        assert_ne!(k, token_key("secret-token2"));
        assert!(!k.windows(6).any(|w| w == b"secret"));
    }

    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl TokenAuthenticator for Counting {
        async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match token {
                "good" => Ok(Some(UserInfo::authenticated("sa", vec!["g".into()]))),
                "boom" => Err(AuthError("unreachable".into())),
                _ => Ok(None),
            }
        }
    }

    #[async_trait]
    impl Authorizer for Counting {
        async fn authorize(
            &self,
            user: &UserInfo,
            attrs: &Attributes,
        ) -> Result<Decision, AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if user.name == "boom" {
                return Err(AuthError("unreachable".into()));
            }
            Ok(Decision {
                allowed: user.name == "sa" && attrs.subresource == "proxy",
                reason: "rbac says".into(),
            })
        }
    }

    fn auth(anonymous: bool) -> (Auth, Arc<Counting>, Arc<Counting>) {
        let tokens = Arc::new(Counting::default());
        let authz = Arc::new(Counting::default());
        let cfg = AuthConfig {
            anonymous,
            ..Default::default()
        };
        let a = Auth::new(
            "vk-1",
            cfg,
            Some(tokens.clone()),
            authz.clone(),
            ApiMetrics::default(),
        );
        (a, tokens, authz)
    }

    fn with_token(t: &str) -> HeaderMap {
        headers(&[(header::AUTHORIZATION, &format!("Bearer {t}"))])
    }

    #[tokio::test(start_paused = true)]
    async fn authentication_order_and_token_cache() {
        let (a, tokens, _) = auth(false);
        let cert_user = UserInfo::authenticated("kube-apiserver-kubelet-client", vec![]);
        // A client certificate wins; the token is not even looked at.
        let u = a
            .authenticate(Some(&cert_user), &mut with_token("bad"))
            .await
            .unwrap();
        assert_eq!(u, cert_user);
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 0);
        // Nothing at all, anonymous off: 401.
        let e = a
            .authenticate(None, &mut HeaderMap::new())
            .await
            .unwrap_err();
        assert_eq!(e.code.as_u16(), 401);
        // A good token is reviewed once, then served from the cache for two minutes.
        let u = a.authenticate(None, &mut with_token("good")).await.unwrap();
        assert_eq!(u.name, "sa");
        assert_eq!(u.groups, ["g", AUTHENTICATED_GROUP]);
        a.authenticate(None, &mut with_token("good")).await.unwrap();
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(121)).await;
        a.authenticate(None, &mut with_token("good")).await.unwrap();
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 2);
        // A bad token: 401, remembered for 30 s.
        for _ in 0..2 {
            let e = a
                .authenticate(None, &mut with_token("bad"))
                .await
                .unwrap_err();
            assert_eq!(e.code.as_u16(), 401);
        }
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 3);
        tokio::time::advance(Duration::from_secs(31)).await;
        a.authenticate(None, &mut with_token("bad"))
            .await
            .unwrap_err();
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 4);
        // A failed review is a 401 and never cached.
        for _ in 0..2 {
            let e = a
                .authenticate(None, &mut with_token("boom"))
                .await
                .unwrap_err();
            assert_eq!(e.code.as_u16(), 401);
        }
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn anonymous_only_when_enabled_and_never_for_a_bad_token() {
        let (a, _, _) = auth(true);
        let u = a.authenticate(None, &mut HeaderMap::new()).await.unwrap();
        assert_eq!(u, UserInfo::anonymous());
        assert_eq!(u.groups, [UNAUTHENTICATED_GROUP]);
        let e = a
            .authenticate(None, &mut with_token("bad"))
            .await
            .unwrap_err();
        assert_eq!(e.code.as_u16(), 401);
    }

    #[tokio::test(start_paused = true)]
    async fn authorization_cache_keeps_allow_5_min_and_deny_30_s() {
        let (a, _, authz) = auth(false);
        let sa = UserInfo::authenticated("sa", vec![]);
        let proxy = request_attributes(&Method::GET, "/pods", "vk-1");
        let stats = request_attributes(&Method::GET, "/stats/summary", "vk-1");
        a.authorize(&sa, &proxy).await.unwrap();
        let e = a.authorize(&sa, &stats).await.unwrap_err();
        assert_eq!(e.code.as_u16(), 403);
        assert!(
            e.message
                .contains("user=sa, verb=get, resource=nodes, subresource(s)=[stats]"),
            "{}",
            e.message
        );
        assert!(e.message.contains("rbac says"), "{}", e.message);
        assert_eq!(authz.calls.load(Ordering::SeqCst), 2);
        a.authorize(&sa, &proxy).await.unwrap();
        a.authorize(&sa, &stats).await.unwrap_err();
        assert_eq!(authz.calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        a.authorize(&sa, &proxy).await.unwrap();
        a.authorize(&sa, &stats).await.unwrap_err();
        assert_eq!(
            authz.calls.load(Ordering::SeqCst),
            3,
            "only the denial expired"
        );
        tokio::time::advance(Duration::from_secs(270)).await;
        a.authorize(&sa, &proxy).await.unwrap();
        assert_eq!(authz.calls.load(Ordering::SeqCst), 4);
        // Another verb is another question.
        let create = request_attributes(&Method::POST, "/exec/ns/p/c", "vk-1");
        a.authorize(&sa, &create).await.unwrap();
        assert_eq!(authz.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn failed_review_is_a_500_and_not_cached() {
        let (a, _, authz) = auth(false);
        let boom = UserInfo::authenticated("boom", vec![]);
        let attrs = request_attributes(&Method::GET, "/pods", "vk-1");
        for _ in 0..2 {
            let e = a.authorize(&boom, &attrs).await.unwrap_err();
            assert_eq!(e.code.as_u16(), 500);
        }
        assert_eq!(authz.calls.load(Ordering::SeqCst), 2);
    }
}
