//! The keys and certificates a node signs with.

use ccl_crypto::cert::{self, CertKind, CertSpec, Certificate};
use ccl_crypto::{Curve, SigningKey};

/// A node's identity, and the service identity it holds.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Signs Merkle roots (the `sig` of signature transactions) and node-to-node TLS.
    pub node_key: SigningKey,
    /// The node's certificate, endorsed by the service key.
    pub node_cert: Certificate,
    /// Signs Merkle roots in COSE (`cose_signatures`) and endorses node certificates.
    pub service_key: SigningKey,
    /// The service's self-signed CA certificate: what clients trust.
    pub service_cert: Certificate,
}

/// Validity of generated service and node certificates.
pub const DEFAULT_CERT_VALIDITY_DAYS: u32 = 365;

impl Identity {
    /// The node id: hex SHA-256 of the node's DER public key (CCF's node id).
    pub fn node_id(&self) -> String {
        hex::encode(self.node_cert.key_id())
    }

    /// COSE key id of the service key: hex SHA-256 of its DER public key, as bytes.
    pub fn service_kid(&self) -> Vec<u8> {
        hex::encode(self.service_cert.key_id()).into_bytes()
    }

    /// The same identity, its node and service keys signing with precomputed nonces from
    /// `pool` (see [`ccl_crypto::presign`]).
    pub fn with_nonces(self, pool: ccl_crypto::presign::NoncePool) -> Self {
        Identity {
            node_key: self.node_key.with_nonces(pool.clone()),
            service_key: self.service_key.with_nonces(pool),
            ..self
        }
    }

    /// Generates a service identity and a node endorsed by it, with `names` (DNS names or IP
    /// addresses) in the node certificate.
    pub fn generate(names: &[String]) -> ccl_crypto::Result<Self> {
        let service_key = SigningKey::generate(Curve::P384)?;
        let now = cert::now_unix() - 60;
        let service_cert = cert::self_signed(
            &service_key,
            &CertSpec {
                common_name: "ccl service".into(),
                subject_alt_names: vec![],
                not_before: now,
                validity_days: DEFAULT_CERT_VALIDITY_DAYS,
                kind: CertKind::Ca,
            },
        )?;
        Self::node_of(service_key, service_cert, names)
    }

    /// Another node of this identity's service: a key of its own, endorsed by the service, with
    /// `names` in its certificate.
    pub fn new_node(&self, names: &[String]) -> ccl_crypto::Result<Self> {
        Self::node_of(self.service_key.clone(), self.service_cert.clone(), names)
    }

    fn node_of(
        service_key: SigningKey,
        service_cert: Certificate,
        names: &[String],
    ) -> ccl_crypto::Result<Self> {
        let node_key = SigningKey::generate(Curve::P384)?;
        let node_cert = Self::endorse_node(
            &node_key.verifying_key(),
            names,
            &service_key,
            &service_cert,
        )?;
        Ok(Identity {
            node_key,
            node_cert,
            service_key,
            service_cert,
        })
    }

    /// A node certificate for `node_key`, endorsed by the service.
    pub fn endorse_node(
        node_key: &ccl_crypto::VerifyingKey,
        names: &[String],
        service_key: &SigningKey,
        service_cert: &Certificate,
    ) -> ccl_crypto::Result<Certificate> {
        cert::issue(
            node_key,
            &CertSpec {
                common_name: "ccl node".into(),
                subject_alt_names: names.to_vec(),
                not_before: cert::now_unix() - 60,
                validity_days: DEFAULT_CERT_VALIDITY_DAYS,
                kind: CertKind::Node,
            },
            service_key,
            service_cert,
        )
    }
}
