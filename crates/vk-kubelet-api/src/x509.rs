//! The subject of a client certificate: common name (user) and organizations (groups), as the
//! kubelet's x509 authenticator reads them.
//!
//! rustls has already verified the certificate against the client CA when this runs, so the
//! input is CA-signed; still, it is parsed defensively (a bounds-checked DER walk that returns
//! `None` on anything unexpected). Only the few DER constructs on the path to the subject are
//! read, which saves a full X.509 parser dependency.

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
/// `[0] EXPLICIT Version` in a TBSCertificate.
const VERSION: u8 = 0xA0;

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0A];

/// Common name and organizations of a certificate's subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
}

/// One DER element: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // High tag numbers (low five bits all set) never occur on the path we walk.
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = element(input)?;
    (t == tag).then_some((content, rest))
}

/// The subject of a DER-encoded X.509 certificate.
pub fn subject(cert_der: &[u8]) -> Option<Subject> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest)?.2;
    }
    let (_serial, rest) = expect(rest, INTEGER)?;
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (_validity, rest) = expect(rest, SEQUENCE)?;
    let (name, _) = expect(rest, SEQUENCE)?;
    parse_name(name)
}

fn parse_name(mut name: &[u8]) -> Option<Subject> {
    let mut out = Subject::default();
    while !name.is_empty() {
        let (mut rdn, rest) = expect(name, SET)?;
        name = rest;
        while !rdn.is_empty() {
            let (atv, rest) = expect(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = expect(atv, OID)?;
            let (tag, value, _) = element(value)?;
            let Some(text) = decode_string(tag, value) else {
                continue;
            };
            if oid == OID_COMMON_NAME {
                // Go's pkix keeps the last CN when a subject has several.
                out.common_name = Some(text);
            } else if oid == OID_ORGANIZATION {
                out.organizations.push(text);
            }
        }
    }
    Some(out)
}

fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0C | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok(),
        // T61String: Latin-1 in practice
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE
        0x1E => {
            if !value.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(cn: &str, orgs: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
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

    #[test]
    fn several_organizations_each_in_its_own_rdn() {
        // rcgen keeps one value per attribute type, so this Name is built by hand, the way
        // openssl writes `/CN=u/O=a/O=b`.
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
    fn string_types() {
        assert_eq!(decode_string(0x13, b"abc").as_deref(), Some("abc"));
        assert_eq!(
            decode_string(0x1E, &[0, b'h', 0, b'i']).as_deref(),
            Some("hi")
        );
        assert_eq!(decode_string(0x1E, &[0]), None);
        assert_eq!(decode_string(0x14, &[0xE9]).as_deref(), Some("é"));
        assert_eq!(decode_string(0x04, b"octets"), None);
    }
}
