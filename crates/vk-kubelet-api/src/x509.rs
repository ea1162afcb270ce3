//! The subject of a client certificate: common name (user) and organizations (groups), as the
//! kubelet's x509 authenticator reads them.
//!
//! rustls has already verified the certificate against the client CA when this runs, so the
//! input is CA-signed; still, it is parsed defensively: the DER goes through `x509-parser` (a
//! maintained, fuzzed parser), and anything it refuses is `None` (no user), never a panic.
//! Extensions are not parsed deeply: only the subject is read, and an extension this parser
//! reads differently from webpki must not lock out a client that webpki accepted.

use x509_parser::asn1_rs::{Any, Tag};
use x509_parser::certificate::X509CertificateParser;
use x509_parser::nom::Parser as _;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Common name and organizations of a certificate's subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
}

/// The subject of a DER-encoded X.509 certificate; `None` if it does not parse.
pub fn subject(cert_der: &[u8]) -> Option<Subject> {
    let mut parser = X509CertificateParser::new().with_deep_parse_extensions(false);
    // Bytes after the certificate are ignored: rustls verified exactly this certificate.
    let (_rest, cert) = parser.parse(cert_der).ok()?;
    Some(subject_of_name(cert.subject()))
}

fn subject_of_name(name: &X509Name<'_>) -> Subject {
    Subject {
        // Go's pkix keeps the last CN when a subject has several.
        common_name: name.iter_common_name().filter_map(text).last(),
        // Every O in every RDN, in order: each is a group.
        organizations: name.iter_organization().filter_map(text).collect(),
    }
}

/// An attribute's value as text; `None` for values that are no string (skipped, as before).
fn text(attribute: &AttributeTypeAndValue<'_>) -> Option<String> {
    let value = attribute.attr_value();
    match value.tag() {
        // x509-parser decodes (and UTF-8-checks) the common string types itself.
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString => {
            attribute.as_str().ok().map(str::to_owned)
        }
        // It leaves these two to the caller.
        Tag::T61String => Some(latin1(value)),
        Tag::BmpString => utf16_be(value),
        _ => None,
    }
}

/// T61String: Latin-1 in practice.
fn latin1(value: &Any<'_>) -> String {
    value.as_bytes().iter().map(|&b| char::from(b)).collect()
}

/// BMPString: UTF-16BE, two bytes per code unit (an odd length is malformed; asn1-rs would
/// read the last byte as a unit of its own).
fn utf16_be(value: &Any<'_>) -> Option<String> {
    let bytes = value.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};
    use x509_parser::prelude::FromDer;

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0A];

    fn self_signed(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        self_signed(dn)
    }

    #[test]
    fn reads_common_name_and_organization() {
        let s = subject(&cert("kube-apiserver-kubelet-client", &["system:masters"])).unwrap();
        assert_eq!(
            s.common_name.as_deref(),
            Some("kube-apiserver-kubelet-client")
        );
        assert_eq!(s.organizations, ["system:masters"]);
    }

    #[test]
    fn rcgen_certificate_with_several_organizations() {
        // rcgen keeps one value per attribute type, so the second O goes in under its OID as a
        // custom type (2.5.4.10 is O): both land in RDNs of their own, as openssl writes
        // `/O=a/O=b/CN=u`, and in different string types.
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::OrganizationName,
            DnValue::PrintableString("system:masters".try_into().unwrap()),
        );
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 10]), "system:nodes");
        dn.push(DnType::OrganizationalUnitName, "not a group");
        dn.push(DnType::CommonName, "system:node:vk-1");
        let s = subject(&self_signed(dn)).unwrap();
        assert_eq!(s.common_name.as_deref(), Some("system:node:vk-1"));
        assert_eq!(s.organizations, ["system:masters", "system:nodes"]);
    }

    #[test]
    fn rcgen_certificate_without_common_name() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "system:masters");
        let s = subject(&self_signed(dn)).unwrap();
        assert_eq!(s.common_name, None);
        assert_eq!(s.organizations, ["system:masters"]);
        // An empty subject parses too (and names no one).
        assert_eq!(
            subject(&self_signed(DistinguishedName::new())),
            Some(Subject::default())
        );
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.extend([0x82, (content.len() >> 8) as u8, content.len() as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn attr(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        tlv(
            SET,
            &tlv(SEQUENCE, &[tlv(OID, oid), tlv(tag, value)].concat()),
        )
    }

    /// The subject of a Name given as its RDNs' DER.
    fn parse_name(rdns: &[u8]) -> Option<Subject> {
        let der = tlv(SEQUENCE, rdns);
        let (_, name) = X509Name::from_der(&der).ok()?;
        Some(subject_of_name(&name))
    }

    #[test]
    fn several_organizations_each_in_its_own_rdn() {
        // Built by hand, the way openssl writes `/CN=u/O=a/O=b/C=DE`.
        let name = [
            attr(OID_COMMON_NAME, 0x0C, b"u"),
            attr(OID_ORGANIZATION, 0x0C, b"system:masters"),
            attr(OID_ORGANIZATION, 0x13, b"team"),
            attr(&[0x55, 0x04, 0x06], 0x13, b"DE"),
        ]
        .concat();
        let s = parse_name(&name).unwrap();
        assert_eq!(s.common_name.as_deref(), Some("u"));
        assert_eq!(s.organizations, ["system:masters", "team"]);
    }

    #[test]
    fn the_last_common_name_counts() {
        let name = [
            attr(OID_COMMON_NAME, 0x0C, b"first"),
            attr(OID_COMMON_NAME, 0x0C, b"last"),
            // Not a string: skipped, the last string CN stays.
            attr(OID_COMMON_NAME, 0x04, b"octets"),
        ]
        .concat();
        assert_eq!(
            parse_name(&name).unwrap().common_name.as_deref(),
            Some("last")
        );
    }

    #[test]
    fn subject_without_organization() {
        let s = subject(&cert("admin", &[])).unwrap();
        assert_eq!(s.common_name.as_deref(), Some("admin"));
        assert!(s.organizations.is_empty());
    }

    #[test]
    fn garbage_and_truncations_never_panic() {
        let good = cert("user", &["g"]);
        for n in 0..good.len() {
            let _ = subject(&good[..n]);
        }
        assert_eq!(subject(&[]), None);
        assert_eq!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject(&[0x1F, 0x00]), None);
        // Flip every byte in turn: whatever comes out, nothing panics.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xA5;
            let _ = subject(&bad);
        }
    }

    #[test]
    fn truncated_certificates_name_no_one() {
        // A cut certificate does not parse at all: no partial subject becomes a user.
        let good = cert("user", &["g"]);
        for n in 0..good.len() {
            assert_eq!(subject(&good[..n]), None, "cut at {n}");
        }
    }

    /// A CN of the given string type, read back.
    fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
        parse_name(&attr(OID_COMMON_NAME, tag, value))?.common_name
    }

    #[test]
    fn string_types() {
        assert_eq!(decode_string(0x13, b"abc").as_deref(), Some("abc"));
        assert_eq!(
            decode_string(0x1E, &[0, b'h', 0, b'i']).as_deref(),
            Some("hi")
        );
        assert_eq!(decode_string(0x1E, &[0]), None);
        assert_eq!(decode_string(0x14, &[0xE9]).as_deref(), Some("é"));
        assert_eq!(decode_string(0x04, b"octets"), None);
        assert_eq!(decode_string(0x0C, &[0xFF]), None);
    }
}
