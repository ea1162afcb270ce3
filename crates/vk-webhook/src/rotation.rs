//! Keeps the webhook's serving certificate fresh while it runs. The TLS server asks a
//! [`RotatingCert`] for the certificate at every handshake, so a new one is served from the next
//! connection on, without a restart and without dropping open connections.
//!
//! Where the next certificate comes from ([`CertSource`]):
//! - issued from vkubelet's CA directory: a new one two thirds into the current one's validity
//!   (a replica that runs for a year never serves an expired certificate);
//! - the operator's files (`--webhook-tls-cert-file`, e.g. a cert-manager Secret, which the
//!   kubelet updates in place): read again when either file changes.
//!
//! The CA bundle is not rotated here: a new CA needs a new registration (a restart does it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use parking_lot::RwLock;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vk_kubelet_api::tls::ServingCert;

use crate::Error;
#[cfg(test)]
use crate::certs::renewal_time;
use crate::certs::{self, WebhookCert};

/// How often the operator's files are looked at.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// The longest single wait before a due renewal is looked at again (a clock that jumps, a
/// machine that slept).
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// After a failed renewal (a CA directory that cannot be read, a half-written file).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The certificate the server presents, replaceable while it serves.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl RotatingCert {
    pub fn new(cert: ServingCert) -> Result<Arc<Self>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified(&provider, cert)?;
        Ok(Arc::new(Self {
            current: RwLock::new(key),
            provider,
        }))
    }

    /// Serve `cert` from the next handshake on.
    pub fn replace(&self, cert: ServingCert) -> Result<(), Error> {
        let key = certified(&self.provider, cert)?;
        *self.current.write() = key;
        Ok(())
    }

    /// The leaf being served now (DER).
    pub fn leaf(&self) -> Vec<u8> {
        self.current
            .read()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// A TLS configuration (HTTP/1.1, no client certificates: the API server authenticates
    /// the webhook, not the reverse) that serves whatever this holds at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn certified(provider: &CryptoProvider, cert: ServingCert) -> Result<Arc<CertifiedKey>, Error> {
    let key = provider
        .key_provider
        .load_private_key(cert.key)
        .map_err(|e| Error::Certificate(format!("serving key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(cert.chain, key)))
}

/// Where renewed certificates come from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Issued from the CA in `dir` for `hosts`; the current one is due at `renew_at`.
    Issued {
        dir: PathBuf,
        hosts: Vec<String>,
        renew_at: Timestamp,
    },
    /// The operator's files, read again when they change.
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

impl CertSource {
    /// The source that renews `cert`, which came from `dir` (issued) or from the files.
    pub fn for_issued(dir: &Path, hosts: &[String], cert: &WebhookCert) -> Option<Self> {
        Some(Self::Issued {
            dir: dir.to_path_buf(),
            hosts: hosts.to_vec(),
            renew_at: cert.renew_at?,
        })
    }
}

/// The files' modification times, to notice a change.
fn stamps(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Renew `served` from `source` until `cancel`.
pub async fn keep_fresh(served: Arc<RotatingCert>, source: CertSource, cancel: CancellationToken) {
    let mut source = source;
    let mut last_files = match &source {
        CertSource::Files { cert, key, .. } => stamps(&[cert, key]),
        CertSource::Issued { .. } => Vec::new(),
    };
    let mut wait = first_wait(&source);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match &mut source {
            CertSource::Issued {
                dir,
                hosts,
                renew_at,
            } => {
                if Timestamp::now() < *renew_at {
                    until(*renew_at)
                } else {
                    match certs::issue(dir, hosts).and_then(|c| {
                        let next = c.renew_at;
                        served.replace(c.serving).map(|()| next)
                    }) {
                        Ok(next) => {
                            if let Some(next) = next {
                                *renew_at = next;
                            }
                            info!(renew_at = %renew_at, "webhook serving certificate renewed");
                            until(*renew_at)
                        }
                        Err(e) => {
                            warn!(error = %e, "renewing the webhook serving certificate failed; retrying");
                            RETRY_AFTER
                        }
                    }
                }
            }
            CertSource::Files { cert, key, ca } => {
                let now = stamps(&[cert, key]);
                if now == last_files {
                    FILE_CHECK_INTERVAL
                } else {
                    match certs::from_files(cert, key, ca).and_then(|c| served.replace(c.serving)) {
                        Ok(()) => {
                            last_files = now;
                            info!(cert = %cert.display(), "webhook serving certificate reloaded");
                            FILE_CHECK_INTERVAL
                        }
                        // Possibly caught half-way through an update: try again soon, and
                        // keep serving the previous pair meanwhile.
                        Err(e) => {
                            warn!(error = %e, "reloading the webhook serving certificate failed; retrying");
                            FILE_CHECK_INTERVAL
                        }
                    }
                }
            }
        };
    }
}

fn first_wait(source: &CertSource) -> Duration {
    match source {
        CertSource::Issued { renew_at, .. } => until(*renew_at),
        CertSource::Files { .. } => FILE_CHECK_INTERVAL,
    }
}

/// How long until `at` (zero if past), at most [`MAX_WAIT`].
fn until(at: Timestamp) -> Duration {
    let secs = at.as_second().saturating_sub(Timestamp::now().as_second());
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_WAIT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("vk-webhook-rotation-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The leaf a TLS client is shown by a server with `config`.
    async fn served_leaf(config: Arc<ServerConfig>, ca_bundle: &[u8]) -> Vec<u8> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_bundle).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("the served certificate verifies against the CA bundle");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        drop(tls);
        let _ = server.await;
        leaf
    }

    #[test]
    fn renewal_is_two_thirds_into_the_validity() {
        let from = Timestamp::from_second(0).unwrap();
        let to = Timestamp::from_second(300).unwrap();
        assert_eq!(renewal_time(from, to).as_second(), 200);
        let dir = tempdir("due");
        let c = certs::issue(&dir, &["127.0.0.1".into()]).unwrap();
        let due = c.renew_at.unwrap();
        let now = Timestamp::now().as_second();
        let day = 86_400;
        // A year's certificate: due in about eight months, not before.
        assert!(due.as_second() > now + 230 * day && due.as_second() < now + 250 * day);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_due_certificate_is_renewed_from_the_ca_and_served_at_the_next_handshake() {
        let dir = tempdir("issued");
        let hosts = vec!["127.0.0.1".to_string()];
        let first = certs::issue(&dir, &hosts).unwrap();
        let ca_bundle = first.ca_bundle.clone();
        let served = RotatingCert::new(first.serving).unwrap();
        let config = served.server_config().unwrap();
        let before = served_leaf(config.clone(), &ca_bundle).await;
        assert_eq!(before, served.leaf());

        // Due already (as if two thirds of its year had passed).
        let source = CertSource::Issued {
            dir: dir.clone(),
            hosts,
            renew_at: Timestamp::now(),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(keep_fresh(served.clone(), source, cancel.clone()));
        // Bounded: the renewal is one key generation away.
        let mut renewed = false;
        for _ in 0..500 {
            if served.leaf() != before {
                renewed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(renewed, "the due certificate was renewed");
        let after = served_leaf(config, &ca_bundle).await;
        assert_ne!(after, before, "the next handshake gets the new certificate");
        assert_eq!(after, served.leaf());
        cancel.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn changed_files_are_served_after_the_next_check_and_a_broken_pair_is_not() {
        let dir = tempdir("files");
        let ca_dir = dir.join("ca");
        let (cert, key, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
        // Distinct modification times for every write (the filesystem's clock may be coarse).
        let mut version = 0;
        let mut stamp = |path: &Path| {
            version += 1;
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(version))
                .unwrap();
        };
        let (first, (cert_pem, key_pem)) =
            certs::issue_with_pem(&ca_dir, &["127.0.0.1".into()]).unwrap();
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        std::fs::write(&ca, &first.ca_bundle).unwrap();
        stamp(&cert);
        let served =
            RotatingCert::new(certs::from_files(&cert, &key, &ca).unwrap().serving).unwrap();
        let before = served.leaf();
        assert_eq!(before, first.serving.chain[0].to_vec());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(keep_fresh(
            served.clone(),
            CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            cancel.clone(),
        ));
        // Unchanged files: the same certificate after a check.
        tokio::time::sleep(FILE_CHECK_INTERVAL + Duration::from_secs(1)).await;
        assert_eq!(served.leaf(), before);

        // A broken pair (caught half-way through an update) is not served.
        std::fs::write(&key, b"not a key").unwrap();
        stamp(&key);
        tokio::time::sleep(FILE_CHECK_INTERVAL).await;
        assert_eq!(served.leaf(), before, "the previous pair stays");

        // The operator's new pair is, at the next check.
        let (second, (cert_pem, key_pem)) =
            certs::issue_with_pem(&ca_dir, &["127.0.0.1".into()]).unwrap();
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        stamp(&cert);
        stamp(&key);
        tokio::time::sleep(FILE_CHECK_INTERVAL).await;
        assert_eq!(served.leaf(), second.serving.chain[0].to_vec());
        cancel.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
