//! X.509 certificates: generation with rcgen, parsing with x509-parser, endorsement checks.
//!
//! Service certificates are RFC 5280-clean self-signed CAs (critical basicConstraints CA:TRUE,
//! keyUsage keyCertSign, subject and authority key identifiers), because strict TLS clients (newer
//! Python/urllib3 with VERIFY_X509_STRICT) refuse anything less.

use crate::keys::{HashAlg, SigningKey, VerifyingKey};
use crate::{CryptoError, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::oid_registry;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A parsed certificate. Holds its DER; the fields below are extracted once at parse time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    signature_hash: Option<HashAlg>,
    signature: Vec<u8>,
    subject: String,
    not_before: i64,
    not_after: i64,
    is_ca: bool,
}

impl Certificate {
    /// Parses one DER certificate; trailing bytes are refused.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let bad = |m: String| CryptoError::InvalidCertificate(m);
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the certificate".into()));
        }
        let tbs_raw: &[u8] = cert.tbs_certificate.as_ref();
        // The TBS is a sub-slice of `der`: find its offset by pointer arithmetic.
        let start = tbs_raw.as_ptr() as usize - der.as_ptr() as usize;
        let tbs = start..start + tbs_raw.len();
        let alg = &cert.signature_algorithm.algorithm;
        let signature_hash = if *alg == oid_registry::OID_SIG_ECDSA_WITH_SHA256 {
            Some(HashAlg::Sha256)
        } else if *alg == oid_registry::OID_SIG_ECDSA_WITH_SHA384 {
            Some(HashAlg::Sha384)
        } else {
            None
        };
        Ok(Certificate {
            der: der.to_vec(),
            spki_der: cert.public_key().raw.to_vec(),
            tbs,
            signature_hash,
            signature: cert.signature_value.data.to_vec(),
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
        })
    }

    /// Parses the first CERTIFICATE block of a PEM text (other blocks, such as a key, are skipped).
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        Self::all_from_pem(pem_text)?
            .into_iter()
            .next()
            .ok_or_else(|| CryptoError::InvalidPem("no CERTIFICATE block found".into()))
    }

    /// Parses every CERTIFICATE block of a PEM text.
    pub fn all_from_pem(pem_text: &str) -> Result<Vec<Self>> {
        let blocks =
            pem::parse_many(pem_text).map_err(|e| CryptoError::InvalidPem(e.to_string()))?;
        blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| Self::from_der(b.contents()))
            .collect()
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM form with LF line endings and a trailing newline.
    pub fn pem(&self) -> String {
        let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("CERTIFICATE", self.der.clone()), cfg)
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn public_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_spki_der(&self.spki_der)
    }

    /// SHA-256 of the certificate DER (Azure's user id, CCF's member id and COSE kid).
    pub fn fingerprint(&self) -> [u8; 32] {
        crate::sha256(&self.der)
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo (CCF's node id).
    pub fn key_id(&self) -> [u8; 32] {
        crate::sha256(&self.spki_der)
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
    pub fn not_before(&self) -> i64 {
        self.not_before
    }
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// Whether `unix_time` lies in the validity period.
    pub fn is_valid_at(&self, unix_time: i64) -> bool {
        self.not_before <= unix_time && unix_time <= self.not_after
    }

    /// Checks that `issuer`'s key signed this certificate (ECDSA with SHA-256 or SHA-384).
    pub fn verify_issued_by(&self, issuer: &Certificate) -> Result<()> {
        self.verify_signed_by_key(&issuer.public_key()?)
    }

    /// Checks that `key` signed this certificate.
    pub fn verify_signed_by_key(&self, key: &VerifyingKey) -> Result<()> {
        let hash = self.signature_hash.ok_or_else(|| {
            CryptoError::InvalidCertificate(
                "signature algorithm is not ECDSA with SHA-256/384".into(),
            )
        })?;
        key.verify_der(&self.der[self.tbs.clone()], &self.signature, hash)
    }
}

/// What to put in a generated certificate.
#[derive(Clone, Debug)]
pub struct CertSpec {
    pub common_name: String,
    /// DNS names or IP addresses (parsed as IP when they parse).
    pub subject_alt_names: Vec<String>,
    /// Start of validity, seconds since the epoch.
    pub not_before: i64,
    pub validity_days: u32,
    pub kind: CertKind,
}

impl CertSpec {
    /// A client certificate (a user's or member's identity) named `common_name`, valid from now
    /// for a year.
    pub fn client(common_name: &str) -> Self {
        CertSpec {
            common_name: common_name.to_string(),
            subject_alt_names: Vec::new(),
            not_before: now_unix() - 60,
            validity_days: 365,
            kind: CertKind::Client,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// A certificate authority (the service identity).
    Ca,
    /// A TLS server and client (node certificates).
    Node,
    /// A TLS client (users and members).
    Client,
}

fn params_for(spec: &CertSpec) -> Result<CertificateParams> {
    let generation = |e: rcgen::Error| CryptoError::Generation(e.to_string());
    let mut params = CertificateParams::new(spec.subject_alt_names.clone()).map_err(generation)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.clone());
    params.distinguished_name = dn;
    params.not_before = OffsetDateTime::from_unix_timestamp(spec.not_before)
        .map_err(|e| CryptoError::Generation(e.to_string()))?;
    params.not_after = params.not_before + time::Duration::days(i64::from(spec.validity_days));
    let mut serial = crate::random_array::<16>()?;
    serial[0] &= 0x7f; // positive, RFC 5280 4.1.2.2
    serial[0] |= 0x01; // and with no leading zero octet to strip
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    match spec.kind {
        CertKind::Ca => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        }
        CertKind::Node => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        CertKind::Client => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    Ok(params)
}

/// A self-signed certificate for `key` (service CA, or a user's or member's own identity).
pub fn self_signed(key: &SigningKey, spec: &CertSpec) -> Result<Certificate> {
    let params = params_for(spec)?;
    let kp = key.rcgen_key_pair()?;
    let cert = params
        .self_signed(&kp)
        .map_err(|e| CryptoError::Generation(e.to_string()))?;
    Certificate::from_der(cert.der())
}

/// A certificate for `subject` issued (endorsed) by `issuer_key`, whose certificate is `issuer`.
///
/// Only the subject's *public* key is needed: this is how the service endorses a node that sent
/// its key (in its self-signed certificate, or as a SubjectPublicKeyInfo via
/// [`VerifyingKey::from_spki_der`]) without ever holding its private key. With
/// [`CertKind::Node`] the result is the same RFC 5280-clean node certificate as a service's own
/// node gets: not a CA, keyUsage digitalSignature, extendedKeyUsage serverAuth + clientAuth, the
/// subject alternative names of `spec`, subject and authority key identifiers.
pub fn issue(
    subject: &VerifyingKey,
    spec: &CertSpec,
    issuer_key: &SigningKey,
    issuer: &Certificate,
) -> Result<Certificate> {
    let params = params_for(spec)?;
    let generation = |e: rcgen::Error| CryptoError::Generation(e.to_string());
    let kp = issuer_key.rcgen_key_pair()?;
    if issuer_key.verifying_key().spki_der() != issuer.spki_der() {
        return Err(CryptoError::Generation(
            "issuer key does not match issuer certificate".into(),
        ));
    }
    let issuer_der = rustls_pki_types::CertificateDer::from(issuer.der());
    let rc_issuer = Issuer::from_ca_cert_der(&issuer_der, kp).map_err(generation)?;
    let spki = rcgen::SubjectPublicKeyInfo::from_der(&subject.spki_der()).map_err(generation)?;
    let cert = params.signed_by(&spki, &rc_issuer).map_err(generation)?;
    Certificate::from_der(cert.der())
}

/// Seconds since the epoch now, for certificate validity.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Curve;

    fn spec(kind: CertKind) -> CertSpec {
        CertSpec {
            common_name: "test".into(),
            subject_alt_names: vec!["localhost".into(), "127.0.0.1".into()],
            not_before: now_unix() - 60,
            validity_days: 30,
            kind,
        }
    }

    #[test]
    fn service_ca_endorses_node_certificate() {
        let service_key = SigningKey::generate(Curve::P384).unwrap();
        let service = self_signed(&service_key, &spec(CertKind::Ca)).unwrap();
        assert!(service.is_ca());
        service.verify_issued_by(&service).unwrap();
        let node_key = SigningKey::generate(Curve::P384).unwrap();
        let node = issue(
            &node_key.verifying_key(),
            &spec(CertKind::Node),
            &service_key,
            &service,
        )
        .unwrap();
        assert!(!node.is_ca());
        node.verify_issued_by(&service).unwrap();
        assert_eq!(node.public_key().unwrap(), node_key.verifying_key());
        // Not issued by another CA.
        let other_key = SigningKey::generate(Curve::P384).unwrap();
        let other = self_signed(&other_key, &spec(CertKind::Ca)).unwrap();
        assert!(node.verify_issued_by(&other).is_err());
        // PEM round trip.
        assert_eq!(Certificate::from_pem(&node.pem()).unwrap(), node);
        assert!(node.is_valid_at(now_unix()));
        assert!(!node.is_valid_at(now_unix() + 31 * 86400));
        // A wrong issuer key is refused at generation.
        assert!(
            issue(
                &node_key.verifying_key(),
                &spec(CertKind::Node),
                &other_key,
                &service
            )
            .is_err()
        );
    }

    #[test]
    fn issue_certifies_a_key_known_only_by_its_spki() {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        for (issuer_curve, subject_curve) in [
            (Curve::P384, Curve::P384),
            (Curve::P384, Curve::P256),
            (Curve::P256, Curve::P384),
        ] {
            let service_key = SigningKey::generate(issuer_curve).unwrap();
            let service = self_signed(&service_key, &spec(CertKind::Ca)).unwrap();
            // The issuer sees only the node's SubjectPublicKeyInfo.
            let spki = SigningKey::generate(subject_curve)
                .unwrap()
                .verifying_key()
                .spki_der();
            let node_key = VerifyingKey::from_spki_der(&spki).unwrap();
            let node = issue(&node_key, &spec(CertKind::Node), &service_key, &service).unwrap();
            node.verify_issued_by(&service).unwrap();
            assert_eq!(node.public_key().unwrap(), node_key);
            assert_eq!(node.spki_der(), &spki[..]);
            assert!(!node.is_ca());

            // RFC 5280: issuer name, key identifiers, usages, names.
            let (_, x) = X509Certificate::from_der(node.der()).unwrap();
            let (_, ca) = X509Certificate::from_der(service.der()).unwrap();
            assert_eq!(x.issuer(), ca.subject());
            assert_eq!(x.version(), x509_parser::x509::X509Version::V3);
            let bc = x.basic_constraints().unwrap().unwrap();
            assert!(!bc.value.ca);
            let ku = x.key_usage().unwrap().unwrap();
            assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
            let eku = x.extended_key_usage().unwrap().unwrap();
            assert!(eku.value.server_auth && eku.value.client_auth);
            let san = x.subject_alternative_name().unwrap().unwrap();
            assert!(
                san.value
                    .general_names
                    .contains(&GeneralName::DNSName("localhost"))
            );
            assert!(
                san.value
                    .general_names
                    .contains(&GeneralName::IPAddress(&[127, 0, 0, 1]))
            );
            let ski_of = |c: &X509Certificate<'_>| {
                c.extensions()
                    .iter()
                    .find_map(|e| match e.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                        _ => None,
                    })
            };
            let aki = x
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .unwrap();
            assert_eq!(Some(aki), ski_of(&ca));
            assert!(ski_of(&x).is_some());
            let sig = x.signature_algorithm.algorithm.clone();
            let expected = match issuer_curve {
                Curve::P256 => oid_registry::OID_SIG_ECDSA_WITH_SHA256,
                Curve::P384 => oid_registry::OID_SIG_ECDSA_WITH_SHA384,
            };
            assert_eq!(sig, expected);

            // Another key: another certificate, which does not carry this key.
            let other_key = SigningKey::generate(subject_curve).unwrap().verifying_key();
            let other = issue(&other_key, &spec(CertKind::Node), &service_key, &service).unwrap();
            other.verify_issued_by(&service).unwrap();
            assert_ne!(other.der(), node.der());
            assert_ne!(other.spki_der(), node.spki_der());
            assert_eq!(other.public_key().unwrap(), other_key);
            // The same key twice: two certificates (fresh serials), same key.
            let again = issue(&node_key, &spec(CertKind::Node), &service_key, &service).unwrap();
            assert_ne!(again.der(), node.der());
            assert_eq!(again.spki_der(), node.spki_der());
        }
    }

    #[test]
    fn identity_pem_bundle_parses_both_parts() {
        let key = SigningKey::generate(Curve::P256).unwrap();
        let cert = self_signed(&key, &spec(CertKind::Client)).unwrap();
        let bundle = format!("{}{}", cert.pem(), &*key.to_pkcs8_pem());
        assert_eq!(Certificate::from_pem(&bundle).unwrap(), cert);
        assert_eq!(
            SigningKey::from_pem(&bundle).unwrap().verifying_key(),
            key.verifying_key()
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Certificate::from_der(b"garbage").is_err());
        assert!(
            Certificate::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(Certificate::from_pem("").is_err());
    }
}
