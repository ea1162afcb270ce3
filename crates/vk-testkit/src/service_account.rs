//! Kubeconfigs that act as a ServiceAccount: apply an install's RBAC manifests, mint the
//! account a token through the TokenRequest API (kubectl 1.20 has no `kubectl create token`),
//! and write a kubeconfig for the test cluster that authenticates with it. This is how the e2e
//! suites prove that deploy/'s RBAC is enough for what vkubelet does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use kube::config::{Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};

use crate::cluster::TestCluster;

/// Why no ServiceAccount kubeconfig could be made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// `kubectl apply` of the manifests failed (its output is included).
    #[error("applying {files}: {output}")]
    Apply { files: String, output: String },
    /// The TokenRequest was refused or failed.
    #[error("TokenRequest for ServiceAccount {namespace}/{name}: {source}")]
    TokenRequest {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The API server answered without a token.
    #[error("TokenRequest for ServiceAccount {namespace}/{name} returned no token")]
    NoToken { namespace: String, name: String },
    /// The admin kubeconfig has no current cluster to copy the server and CA from.
    #[error("kubeconfig {}: {reason}", path.display())]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `kubectl apply --server-side` of `files` against the cluster (as its admin). Server-side so
/// that several test processes applying the same objects at once do not conflict.
pub async fn apply_manifests(cluster: &TestCluster, files: &[&Path]) -> Result<(), MintError> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "apply".into(),
        "--server-side".into(),
        "--force-conflicts".into(),
        "--field-manager=vk-testkit".into(),
    ];
    for f in files {
        args.push("-f".into());
        args.push(f.as_os_str().to_owned());
    }
    let out = cluster.kubectl(&args).await;
    if out.success() {
        Ok(())
    } else {
        Err(MintError::Apply {
            files: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            output: out.to_string(),
        })
    }
}

/// A token for ServiceAccount `namespace/name`, valid for `lifetime` (the API server may grant
/// less), with the API server's default audiences.
pub async fn mint_token(
    cluster: &TestCluster,
    namespace: &str,
    name: &str,
    lifetime: Duration,
) -> Result<String, MintError> {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .map_err(|source| MintError::TokenRequest {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MintError::NoToken {
            namespace: namespace.into(),
            name: name.into(),
        })
}

/// Mint a token for `namespace/name` and write, into `dir`, the token (`<name>.token`, mode
/// 0600) and a kubeconfig (`<name>.kubeconfig`, returned) for the same API server and CA as the
/// cluster's admin kubeconfig, authenticating with that token file.
pub async fn service_account_kubeconfig(
    cluster: &TestCluster,
    namespace: &str,
    name: &str,
    lifetime: Duration,
    dir: &Path,
) -> Result<PathBuf, MintError> {
    let admin_path = cluster.kubeconfig_path();
    let bad_kubeconfig = |reason: String| MintError::Kubeconfig {
        path: admin_path.to_path_buf(),
        reason,
    };
    // read_from makes the CA path absolute, so the copy works from any directory.
    let admin = Kubeconfig::read_from(admin_path).map_err(|e| bad_kubeconfig(e.to_string()))?;
    let context_name = admin
        .current_context
        .clone()
        .or_else(|| admin.contexts.first().map(|c| c.name.clone()))
        .ok_or_else(|| bad_kubeconfig("no context".into()))?;
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| bad_kubeconfig(format!("no context {context_name:?}")))?;
    let server = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| bad_kubeconfig(format!("no cluster {cluster_name:?}")))?;

    let token = mint_token(cluster, namespace, name, lifetime).await?;
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MintError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    let token_path = dir.join(format!("{name}.token"));
    write_private(&token_path, token.as_bytes()).map_err(write_error(&token_path))?;

    let user = format!("system:serviceaccount:{namespace}:{name}");
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: cluster_name.clone(),
            cluster: Some(server),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(kube::config::AuthInfo {
                token_file: Some(token_path.to_string_lossy().into_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: user.clone(),
            context: Some(Context {
                cluster: cluster_name,
                user: Some(user.clone()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(user),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    let path = dir.join(format!("{name}.kubeconfig"));
    // JSON is YAML: every kubeconfig reader takes it.
    let text = serde_json::to_vec_pretty(&kubeconfig).map_err(|e| MintError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_private(&path, &text).map_err(write_error(&path))?;
    Ok(path)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
