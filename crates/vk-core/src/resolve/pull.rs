//! Image pull secrets (`kubernetes.io/dockerconfigjson` and the legacy `kubernetes.io/dockercfg`)
//! parsed into per-registry credentials.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use super::types::RegistryCredential;

pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
pub const DOCKERCFG_TYPE: &str = "kubernetes.io/dockercfg";
pub const DOCKERCFG_KEY: &str = ".dockercfg";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullSecretError {
    #[error(
        "secret {secret:?} has type {found:?}, not {DOCKER_CONFIG_JSON_TYPE} or {DOCKERCFG_TYPE}"
    )]
    WrongType { secret: String, found: String },
    #[error("secret {secret:?} has no {key} key")]
    MissingKey { secret: String, key: &'static str },
    #[error("secret {secret:?}: {why}")]
    Malformed { secret: String, why: String },
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigEntry>,
}

#[derive(Deserialize, Default)]
struct DockerConfigEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The credentials in one pull secret, ordered by registry.
pub fn credentials(secret: &Secret) -> Result<Vec<RegistryCredential>, PullSecretError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let type_ = secret.type_.as_deref().unwrap_or_default();
    let (key, legacy) = match type_ {
        DOCKER_CONFIG_JSON_TYPE => (DOCKER_CONFIG_JSON_KEY, false),
        DOCKERCFG_TYPE => (DOCKERCFG_KEY, true),
        other => {
            return Err(PullSecretError::WrongType {
                secret: name,
                found: other.to_string(),
            });
        }
    };
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| PullSecretError::MissingKey {
            secret: name.clone(),
            key,
        })?;
    let malformed = |why: String| PullSecretError::Malformed {
        secret: name.clone(),
        why,
    };
    let entries: BTreeMap<String, DockerConfigEntry> = if legacy {
        serde_json::from_slice(&raw.0).map_err(|e| malformed(format!("{key}: {e}")))?
    } else {
        serde_json::from_slice::<DockerConfigJson>(&raw.0)
            .map_err(|e| malformed(format!("{key}: {e}")))?
            .auths
    };
    entries
        .into_iter()
        .map(|(registry, e)| {
            let (username, password) = if e.auth.is_empty() {
                (e.username, e.password)
            } else {
                decode_auth(&e.auth)
                    .map_err(|why| malformed(format!("auth for {registry:?}: {why}")))?
            };
            Ok(RegistryCredential {
                registry,
                username,
                password,
                identity_token: e.identity_token.filter(|t| !t.is_empty()),
                secret: name.clone(),
            })
        })
        .collect()
}

/// `base64(user:password)`, as Docker writes the `auth` field (it wins over the separate fields,
/// as in the kubelet).
fn decode_auth(auth: &str) -> Result<(String, String), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| "not of the form user:password".to_string())?;
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(type_: &str, key: &str, json: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("pull".into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn dockerconfigjson_with_auth_and_separate_fields() {
        let json = format!(
            r#"{{"auths":{{"reg.example.com":{{"auth":"{}"}},"quay.io":{{"username":"bot","password":"pw","email":"x@y"}},"gcr.io":{{"identitytoken":"tok"}}}}}}"#,
            b64("alice:s3:cret")
        );
        let creds = credentials(&secret(
            DOCKER_CONFIG_JSON_TYPE,
            DOCKER_CONFIG_JSON_KEY,
            &json,
        ));
        let Ok(creds) = creds else {
            panic!("{creds:?}")
        };
        let got: Vec<_> = creds
            .iter()
            .map(|c| {
                (
                    c.registry.as_str(),
                    c.username.as_str(),
                    c.password.as_str(),
                    c.identity_token.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("gcr.io", "", "", Some("tok")),
                ("quay.io", "bot", "pw", None),
                ("reg.example.com", "alice", "s3:cret", None),
            ]
        );
        assert!(creds.iter().all(|c| c.secret == "pull"));
    }

    #[test]
    fn legacy_dockercfg() {
        let json = format!(
            r#"{{"https://index.docker.io/v1/":{{"auth":"{}","email":"a@b"}}}}"#,
            b64("bob:pw")
        );
        let creds = credentials(&secret(DOCKERCFG_TYPE, DOCKERCFG_KEY, &json));
        assert_eq!(
            creds.map(|c| (
                c[0].registry.clone(),
                c[0].username.clone(),
                c[0].password.clone()
            )),
            Ok((
                "https://index.docker.io/v1/".into(),
                "bob".into(),
                "pw".into()
            ))
        );
    }

    #[test]
    fn bad_secrets_give_precise_errors() {
        let wrong = credentials(&secret("Opaque", DOCKER_CONFIG_JSON_KEY, "{}"));
        assert!(matches!(wrong, Err(PullSecretError::WrongType { .. })));
        let missing = credentials(&secret(DOCKER_CONFIG_JSON_TYPE, "other", "{}"));
        assert_eq!(
            missing.map_err(|e| e.to_string()),
            Err("secret \"pull\" has no .dockerconfigjson key".into())
        );
        let garbage = credentials(&secret(
            DOCKER_CONFIG_JSON_TYPE,
            DOCKER_CONFIG_JSON_KEY,
            "{",
        ));
        assert!(matches!(garbage, Err(PullSecretError::Malformed { .. })));
        let bad_auth = credentials(&secret(
            DOCKER_CONFIG_JSON_TYPE,
            DOCKER_CONFIG_JSON_KEY,
            r#"{"auths":{"r":{"auth":"!!!"}}}"#,
        ));
        assert!(matches!(bad_auth, Err(PullSecretError::Malformed { .. })));
        let no_colon = credentials(&secret(
            DOCKER_CONFIG_JSON_TYPE,
            DOCKER_CONFIG_JSON_KEY,
            &format!(r#"{{"auths":{{"r":{{"auth":"{}"}}}}}}"#, b64("nocolon")),
        ));
        assert!(matches!(no_colon, Err(PullSecretError::Malformed { .. })));
    }
}
