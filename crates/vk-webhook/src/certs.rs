//! The webhook's serving certificate. The API server only calls a webhook whose certificate
//! chains to the `caBundle` of its registration, so vkubelet keeps a small CA of its own in a
//! directory (made on first start, kept across restarts, so the registered `caBundle` stays
//! valid) and issues a fresh serving certificate from it at every start, for the names and
//! addresses the API server dials. Files given by the operator are used as they are instead.
//! Either is kept fresh while the webhook runs ([`crate::rotation`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use vk_kubelet_api::tls::ServingCert;

use crate::Error;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_COMMON_NAME: &str = "vkubelet-webhook-ca";

/// A serving certificate and the CA bundle (PEM) to register with it.
pub struct WebhookCert {
    pub serving: ServingCert,
    pub ca_bundle: Vec<u8>,
    /// When a certificate issued here is due for renewal (two thirds into its validity, as
    /// kubelets renew theirs); `None` for operator files, which are watched instead.
    pub renew_at: Option<Timestamp>,
}

impl std::fmt::Debug for WebhookCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCert")
            .field("ca_bundle_bytes", &self.ca_bundle.len())
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Operator-supplied files: the chain and key the webhook serves, and the CA bundle that
/// verifies them (registered as `caBundle`).
pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<WebhookCert, Error> {
    let serving = vk_kubelet_api::tls::serving_cert_from_files(cert, key)?;
    let ca_bundle = fs::read(ca).map_err(|e| io_error(ca, e))?;
    if CertificateDer::pem_slice_iter(&ca_bundle)
        .filter_map(Result::ok)
        .next()
        .is_none()
    {
        return Err(Error::Certificate(format!(
            "{}: no PEM CERTIFICATE block",
            ca.display()
        )));
    }
    Ok(WebhookCert {
        serving,
        ca_bundle,
        renew_at: None,
    })
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Two thirds into the validity `[not_before, not_after]`.
pub fn renewal_time(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let life = not_after.as_second().saturating_sub(not_before.as_second());
    Timestamp::from_second(not_before.as_second().saturating_add(life / 3 * 2)).unwrap_or(not_after)
}

/// Valid from today for `years` (day 28 exists in every month).
fn set_validity(params: &mut CertificateParams, years: i32) {
    let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
    let (y, m, d) = (
        i32::from(today.year()),
        today.month() as u8,
        today.day() as u8,
    );
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error(&tmp, e))?;
    f.write_all(data).map_err(|e| io_error(&tmp, e))?;
    f.sync_all().map_err(|e| io_error(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

/// The CA in `dir`, made on first use (ten years).
fn load_or_create_ca(dir: &Path) -> Result<(KeyPair, String), Error> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if cert_path.exists() && key_path.exists() {
        let key_pem = fs::read_to_string(&key_path).map_err(|e| io_error(&key_path, e))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| io_error(&cert_path, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::Certificate(format!("{}: {e}", key_path.display())))?;
        return Ok((key, cert_pem));
    }
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let key = KeyPair::generate()?;
    let mut params = ca_params()?;
    set_validity(&mut params, 10);
    let cert = params.self_signed(&key)?;
    let cert_pem = cert.pem();
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert_pem.as_bytes())?;
    Ok((key, cert_pem))
}

/// A serving certificate for `hosts` (DNS names and IP addresses) from the CA kept in `dir`.
pub fn issue(dir: &Path, hosts: &[String]) -> Result<WebhookCert, Error> {
    issue_with_pem(dir, hosts).map(|(cert, _)| cert)
}

/// [`issue`], with the leaf and its key also as PEM (what an operator's files hold).
pub(crate) fn issue_with_pem(
    dir: &Path,
    hosts: &[String],
) -> Result<(WebhookCert, (String, String)), Error> {
    let (ca_key, ca_pem) = load_or_create_ca(dir)?;
    // The issuer is rebuilt from the same name and key: what a signature and the authority key
    // identifier depend on.
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let mut sans: Vec<String> = Vec::new();
    for h in hosts.iter().map(|h| h.trim()) {
        if !h.is_empty() && !sans.iter().any(|s| s == h) {
            sans.push(h.to_string());
        }
    }
    if sans.is_empty() {
        return Err(Error::Certificate(
            "no host name or address to issue the webhook certificate for".into(),
        ));
    }
    let mut params = CertificateParams::new(sans.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, sans[0].clone());
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    set_validity(&mut params, 1);
    let renew_at = renewal_time(
        Timestamp::from_second(params.not_before.unix_timestamp())
            .map_err(|e| Error::Certificate(e.to_string()))?,
        Timestamp::from_second(params.not_after.unix_timestamp())
            .map_err(|e| Error::Certificate(e.to_string()))?,
    );
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("{}: {e}", dir.join(CA_CERT).display())))?;
    let pem = (cert.pem(), key.serialize_pem());
    Ok((
        WebhookCert {
            serving: ServingCert {
                chain: vec![cert.der().clone(), ca_der],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            },
            ca_bundle: ca_pem.into_bytes(),
            renew_at: Some(renew_at),
        },
        pem,
    ))
}

/// Where the CA lives when the operator names no directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join(".vkubelet")
        .join("webhook")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("vk-webhook-certs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn ca_is_kept_across_restarts_and_verifies_the_leaf() {
        let dir = tempdir("kept");
        let first = issue(
            &dir,
            &["127.0.0.1".into(), "vkubelet.vkubelet-system.svc".into()],
        )
        .unwrap();
        let second = issue(&dir, &["127.0.0.1".into()]).unwrap();
        assert_eq!(
            first.ca_bundle, second.ca_bundle,
            "the registered caBundle must stay valid"
        );
        assert_ne!(
            first.serving.chain[0], second.serving.chain[0],
            "a fresh leaf each start"
        );
        // The leaf verifies against the bundle, as the API server will check it.
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(&second.ca_bundle).unwrap();
        roots.add(ca).unwrap();
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = tokio_rustls::rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        use tokio_rustls::rustls::client::danger::ServerCertVerifier;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(
                &second.serving.chain[0],
                &[],
                &name,
                &[],
                tokio_rustls::rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        // ... and not for a name it was not issued for.
        let other = tokio_rustls::rustls::pki_types::ServerName::try_from("10.0.0.1").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &second.serving.chain[0],
                    &[],
                    &other,
                    &[],
                    tokio_rustls::rustls::pki_types::UnixTime::now(),
                )
                .is_err()
        );
        let mode = fs::metadata(dir.join(CA_KEY)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn needs_a_host() {
        let dir = tempdir("nohost");
        assert!(issue(&dir, &[" ".into()]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_need_a_ca_bundle() {
        let dir = tempdir("files");
        fs::create_dir_all(&dir).unwrap();
        let made = issue(&dir, &["localhost".into()]).unwrap();
        let ca = dir.join("bundle.pem");
        fs::write(&ca, b"not pem").unwrap();
        let cert = dir.join(CA_CERT);
        let key = dir.join(CA_KEY);
        assert!(matches!(
            from_files(&cert, &key, &ca),
            Err(Error::Certificate(_))
        ));
        fs::write(&ca, &made.ca_bundle).unwrap();
        assert!(from_files(&cert, &key, &ca).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
