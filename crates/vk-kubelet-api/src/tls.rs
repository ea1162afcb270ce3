//! TLS for the kubelet API (rustls with ring, TLS 1.2 and 1.3 only): the serving certificate
//! from files or self-signed at start, and client certificates verified against the client CA.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use tokio_rustls::rustls::crypto::CryptoProvider;
pub use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::auth::UserInfo;
use crate::error::{Error, Result};
use crate::x509;

/// A serving certificate chain and its key.
pub struct ServingCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn pem_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Pem {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Certificates from a PEM file (a chain or a CA bundle).
fn certs_from_file(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(Error::EmptyPem {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// `--tls-cert-file` (the chain, leaf first) and `--tls-private-key-file` (PKCS#8, PKCS#1 or SEC1).
pub fn serving_cert_from_files(cert: &Path, key: &Path) -> Result<ServingCert> {
    let chain = certs_from_file("serving certificate", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("private key", key, e))?;
    Ok(ServingCert { chain, key })
}

/// A self-signed serving certificate for a node, as the kubelet makes one when it is given none:
/// CN `<node>@<unix time>`, the node's addresses (IPs and names) as SANs, valid for a year.
pub fn self_signed(node_name: &str, addresses: &[String]) -> Result<ServingCert> {
    let mut sans: Vec<String> = Vec::new();
    for a in addresses.iter().map(|a| a.trim()) {
        if !a.is_empty() && !sans.iter().any(|s| s == a) {
            sans.push(a.to_string());
        }
    }
    let mut params = CertificateParams::new(sans)?;
    let now = Timestamp::now();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{node_name}@{}", now.as_second()),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let today = now.to_zoned(TimeZone::UTC).date();
    let (y, m, d) = (
        i32::from(today.year()),
        today.month() as u8,
        today.day() as u8,
    );
    params.not_before = rcgen::date_time_ymd(y, m, d);
    // Day 28 exists in every month: no invalid date a year on.
    params.not_after = rcgen::date_time_ymd(y + 1, m, d.min(28));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(ServingCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// The CA bundle client certificates are verified against (`--client-ca-file`).
pub fn client_ca_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    certs_from_file("client CA file", path)
}

/// A CA bundle given as PEM bytes or DER certificates (the kubeconfig's cluster CA).
pub fn client_ca_from_bytes(certs: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    for c in certs {
        let pem: Vec<_> = CertificateDer::pem_slice_iter(c)
            .filter_map(Result::ok)
            .collect();
        if pem.is_empty() {
            out.push(CertificateDer::from(c.clone()));
        } else {
            out.extend(pem);
        }
    }
    out
}

fn crypto() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration. With a client CA, a client *may* present a certificate (which
/// must then verify); without one it can still authenticate with a bearer token. Only HTTP/1.1
/// is offered: the API server's exec/attach/port-forward upgrades need it.
pub fn server_config(
    cert: ServingCert,
    client_ca: Option<&[CertificateDer<'static>]>,
) -> Result<Arc<ServerConfig>> {
    let provider = crypto();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(cas.iter().cloned());
            if added == 0 {
                return Err(Error::ClientCa(
                    "no usable CA certificate in the client CA bundle".into(),
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(cert.chain, cert.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate stands for: CN is the name, each O a group (the
/// kubelet's x509 authenticator). `None` without a certificate or a CN.
pub fn peer_user(certs: Option<&[CertificateDer<'static>]>) -> Option<UserInfo> {
    let leaf = certs?.first()?;
    let subject = x509::subject(leaf.as_ref())?;
    let name = subject.common_name.filter(|n| !n.is_empty())?;
    Some(UserInfo::authenticated(name, subject.organizations))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans(der: &[u8]) -> (Vec<String>, Vec<std::net::IpAddr>) {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => {
                    let octets: [u8; 4] = (*ip).try_into().unwrap();
                    ips.push(std::net::IpAddr::from(octets));
                }
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        (dns, ips)
    }

    #[test]
    fn self_signed_names_the_node_addresses() {
        let c = self_signed(
            "vk-1",
            &["127.0.0.1".into(), "vk-1".into(), "127.0.0.1".into()],
        )
        .unwrap();
        assert_eq!(c.chain.len(), 1);
        let der = c.chain[0].as_ref();
        let (dns, ips) = sans(der);
        // Each SAN exactly once (the duplicate address is dropped), and nothing else.
        assert_eq!(dns.iter().filter(|d| *d == "vk-1").count(), 1, "{dns:?}");
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(ips.iter().filter(|i| **i == loopback).count(), 1, "{ips:?}");
        assert_eq!((dns.len(), ips.len()), (1, 1), "{dns:?} {ips:?}");
        let subject = x509::subject(der).unwrap();
        let cn = subject.common_name.unwrap();
        assert!(cn.starts_with("vk-1@"), "{cn}");
        // The certificate and key make a working server configuration.
        server_config(c, None).unwrap();
    }

    #[test]
    fn client_ca_must_hold_a_certificate() {
        let c = self_signed("vk-1", &["vk-1".into()]).unwrap();
        let ca = c.chain.clone();
        assert!(server_config(c, Some(&ca)).is_ok());
        let c = self_signed("vk-1", &["vk-1".into()]).unwrap();
        let err = server_config(c, Some(&[CertificateDer::from(vec![1, 2, 3])])).unwrap_err();
        assert!(err.to_string().contains("no usable CA"), "{err}");
    }

    #[test]
    fn ca_bytes_may_be_pem_or_der() {
        let c = self_signed("n", &["n".into()]).unwrap();
        let der = c.chain[0].to_vec();
        let b64 = {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.encode(&der);
            let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
            for line in text.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(line).unwrap());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
            out
        };
        let from_pem = client_ca_from_bytes(&[b64.into_bytes()]);
        let from_der = client_ca_from_bytes(std::slice::from_ref(&der));
        assert_eq!(from_pem.len(), 1);
        assert_eq!(from_pem, from_der);
        assert_eq!(from_der[0].as_ref(), der.as_slice());
    }
}
