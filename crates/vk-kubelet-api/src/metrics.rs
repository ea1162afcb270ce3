//! The kubelet API's own metrics, registered in the process's registry (so they appear with the
//! `vkubelet_` prefix on `/metrics` of both the kubelet port and `--metrics-addr`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use vk_core::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub node: String,
    /// A bounded bucket of the path (`containerLogs`, `exec`, `stats`, `metrics/resource`, ...,
    /// `other`), never the raw path.
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpgradeLabels {
    pub node: String,
    /// `exec`, `attach` or `portForward`.
    pub route: &'static str,
    /// What the `101` answered in `Upgrade`: `websocket` or `spdy`.
    pub transport: &'static str,
    /// The sub-protocol the `101` confirmed (`Sec-WebSocket-Protocol` or
    /// `X-Stream-Protocol-Version`), `none` when it named none. Always one of the server's own
    /// supported protocols, so the label set stays bounded.
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthnLabels {
    pub node: String,
    /// `x509`, `token`, `anonymous` or `none`.
    pub method: &'static str,
    /// `ok`, `unauthenticated` or `error`.
    pub result: &'static str,
    pub cached: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub node: String,
    pub subresource: &'static str,
    /// `allowed`, `denied` or `error`.
    pub decision: &'static str,
    pub cached: bool,
}

/// Counters shared by every node's server in the process.
#[derive(Clone, Default)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Streaming upgrades served (`101 Switching Protocols`), by transport and sub-protocol.
    pub upgrades: Family<UpgradeLabels, Counter>,
    pub authn: Family<AuthnLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    /// The process-wide metrics, for `vkubelet_errors_total` (absent in unit tests).
    core: Option<Arc<Metrics>>,
}

impl ApiMetrics {
    /// Register in `registry` (pass it to [`Metrics::new_with`]).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubelet_api_requests",
            "Kubelet API requests by node, route and HTTP code",
            self.requests.clone(),
        );
        registry.register(
            "kubelet_api_stream_upgrades",
            "Kubelet API streaming upgrades served (exec, attach, portForward) by transport and negotiated sub-protocol",
            self.upgrades.clone(),
        );
        registry.register(
            "kubelet_api_authentications",
            "Kubelet API authentication results by method, and whether the cache answered",
            self.authn.clone(),
        );
        registry.register(
            "kubelet_api_authorizations",
            "Kubelet API authorization decisions by nodes subresource, and whether the cache answered",
            self.authz.clone(),
        );
    }

    /// Count errors in `vkubelet_errors_total` too.
    pub fn with_core(mut self, core: Arc<Metrics>) -> Self {
        self.core = Some(core);
        self
    }

    pub fn request(&self, node: &str, route: &'static str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                node: node.to_string(),
                route,
                code,
            })
            .inc();
    }

    /// One `101` served on a streaming route.
    pub fn upgrade(
        &self,
        node: &str,
        route: &'static str,
        transport: &'static str,
        protocol: &str,
    ) {
        self.upgrades
            .get_or_create(&UpgradeLabels {
                node: node.to_string(),
                route,
                transport,
                protocol: if protocol.is_empty() {
                    "none"
                } else {
                    protocol
                }
                .to_string(),
            })
            .inc();
    }

    pub fn authn(&self, node: &str, method: &'static str, result: &'static str, cached: bool) {
        self.authn
            .get_or_create(&AuthnLabels {
                node: node.to_string(),
                method,
                result,
                cached,
            })
            .inc();
    }

    pub fn authz(
        &self,
        node: &str,
        subresource: &'static str,
        decision: &'static str,
        cached: bool,
    ) {
        self.authz
            .get_or_create(&AuthzLabels {
                node: node.to_string(),
                subresource,
                decision,
                cached,
            })
            .inc();
    }

    /// `vkubelet_errors_total{node, operation, error}`.
    pub fn error(&self, node: &str, operation: &'static str, error: &'static str) {
        if let Some(core) = &self.core {
            core.error(node, operation, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_shared_registry() {
        let api = ApiMetrics::default();
        let core = Metrics::new_with(|r| api.register(r));
        let api = api.with_core(core.clone());
        api.request("vk-1", "containerLogs", 200);
        api.upgrade("vk-1", "exec", "websocket", "v5.channel.k8s.io");
        api.upgrade("vk-1", "exec", "websocket", "v5.channel.k8s.io");
        api.upgrade("vk-1", "portForward", "spdy", "");
        api.authn("vk-1", "token", "ok", true);
        api.authz("vk-1", "proxy", "denied", false);
        api.error("vk-1", "kubelet_api_logs", "not_found");
        let text = core.encode();
        for want in [
            r#"vkubelet_kubelet_api_requests_total{node="vk-1",route="containerLogs",code="200"} 1"#,
            r#"vkubelet_kubelet_api_stream_upgrades_total{node="vk-1",route="exec",transport="websocket",protocol="v5.channel.k8s.io"} 2"#,
            r#"vkubelet_kubelet_api_stream_upgrades_total{node="vk-1",route="portForward",transport="spdy",protocol="none"} 1"#,
            r#"vkubelet_kubelet_api_authentications_total{node="vk-1",method="token",result="ok",cached="true"} 1"#,
            r#"vkubelet_kubelet_api_authorizations_total{node="vk-1",subresource="proxy",decision="denied",cached="false"} 1"#,
            r#"vkubelet_errors_total{node="vk-1",operation="kubelet_api_logs",error="not_found"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
