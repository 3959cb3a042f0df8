//! ECDSA signing and verifying keys on NIST P-256 and P-384.
//!
//! CCF signs a Merkle root by treating the 32-byte root as an already computed SHA-256 digest
//! ("prehashed"), whatever the curve; certificates and COSE messages are signed over their bytes
//! with the hash that matches the curve (SHA-256 for P-256, SHA-384 for P-384).

use crate::{CryptoError, Result};
use ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use zeroize::Zeroizing;

/// The elliptic curves ccl accepts for identities. Service and node keys are always P-384.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// The COSE algorithm for this curve (ES256 = -7, ES384 = -35).
    pub fn cose_algorithm(self) -> coset::iana::Algorithm {
        match self {
            Curve::P256 => coset::iana::Algorithm::ES256,
            Curve::P384 => coset::iana::Algorithm::ES384,
        }
    }
    /// The hash that goes with the curve for message signatures.
    pub fn hash(self) -> HashAlg {
        match self {
            Curve::P256 => HashAlg::Sha256,
            Curve::P384 => HashAlg::Sha384,
        }
    }
}

/// Hash functions used with ECDSA signatures over messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
}

impl HashAlg {
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            HashAlg::Sha256 => &ring::digest::SHA256,
            HashAlg::Sha384 => &ring::digest::SHA384,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

#[derive(Clone)]
pub(crate) enum SigningInner {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

/// A private ECDSA key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SigningKey {
    pub(crate) inner: SigningInner,
    /// The same key in ring, for signatures over messages (faster than the pure-Rust curves);
    /// built on first use. `None` inside when ring cannot load it.
    ring: std::sync::Arc<std::sync::OnceLock<Option<ring::signature::EcdsaKeyPair>>>,
    /// Precomputed nonces for P-384 signatures (see [`crate::presign`]), if the owner keeps a
    /// pool.
    nonces: Option<crate::presign::NoncePool>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, ..)", self.curve())
    }
}

impl SigningKey {
    fn wrap(inner: SigningInner) -> Self {
        SigningKey {
            inner,
            ring: Default::default(),
            nonces: None,
        }
    }

    /// The same key, signing with precomputed nonces from `pool` while it has some (P-384
    /// only: a P-256 key ignores the pool).
    pub fn with_nonces(mut self, pool: crate::presign::NoncePool) -> Self {
        if self.curve() == Curve::P384 {
            self.nonces = Some(pool);
        }
        self
    }

    /// Pooled nonces ready for this key's next signatures (0 without a pool).
    pub fn nonces_ready(&self) -> u64 {
        self.nonces.as_ref().map_or(0, |p| p.ready())
    }

    /// Signatures made with a pooled nonce, by every key sharing this key's pool.
    pub fn pooled_signatures(&self) -> u64 {
        self.nonces.as_ref().map_or(0, |p| p.used())
    }

    /// Signs a 48-byte digest with a pooled nonce, if this is a P-384 key with a pool that
    /// has one.
    fn sign_pooled(&self, digest: &[u8]) -> Option<p384::ecdsa::Signature> {
        let (SigningInner::P384(k), Some(pool)) = (&self.inner, &self.nonces) else {
            return None;
        };
        pool.sign(k.as_nonzero_scalar(), digest.try_into().ok()?)
    }

    fn ring_key(&self) -> Option<&ring::signature::EcdsaKeyPair> {
        self.ring
            .get_or_init(|| {
                let alg = match self.curve() {
                    Curve::P256 => &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    Curve::P384 => &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                };
                let rng = ring::rand::SystemRandom::new();
                ring::signature::EcdsaKeyPair::from_pkcs8(alg, &self.to_pkcs8_der(), &rng).ok()
            })
            .as_ref()
    }

    /// Generates a fresh key on `curve` from the operating system's secure random source.
    pub fn generate(curve: Curve) -> Result<Self> {
        loop {
            match curve {
                Curve::P256 => {
                    let bytes = Zeroizing::new(crate::random_array::<32>()?);
                    if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes[..]) {
                        return Ok(SigningKey::wrap(SigningInner::P256(k)));
                    }
                }
                Curve::P384 => {
                    let bytes = Zeroizing::new(crate::random_array::<48>()?);
                    if let Ok(k) = p384::ecdsa::SigningKey::from_slice(&bytes[..]) {
                        return Ok(SigningKey::wrap(SigningInner::P384(k)));
                    }
                }
            }
            // A random value outside the scalar range is astronomically rare: draw again.
        }
    }

    /// Parses a PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") PEM block; when `pem` holds
    /// several blocks (a certificate and its key in one file), the first key block is used.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let blocks = pem::parse_many(pem).map_err(|e| CryptoError::InvalidPem(e.to_string()))?;
        for b in blocks {
            match b.tag() {
                "PRIVATE KEY" => return Self::from_pkcs8_der(b.contents()),
                "EC PRIVATE KEY" => {
                    if let Ok(k) = p384::SecretKey::from_sec1_der(b.contents()) {
                        return Ok(SigningKey::wrap(SigningInner::P384(k.into())));
                    }
                    if let Ok(k) = p256::SecretKey::from_sec1_der(b.contents()) {
                        return Ok(SigningKey::wrap(SigningInner::P256(k.into())));
                    }
                    return Err(CryptoError::InvalidKey(
                        "EC PRIVATE KEY is neither a P-256 nor a P-384 key".into(),
                    ));
                }
                _ => continue,
            }
        }
        Err(CryptoError::InvalidPem("no private key block found".into()))
    }

    /// Parses a PKCS#8 DER private key (P-256 or P-384).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(SigningKey::wrap(SigningInner::P384(k)));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(SigningKey::wrap(SigningInner::P256(k)));
        }
        Err(CryptoError::InvalidKey(
            "not a PKCS#8 P-256 or P-384 private key".into(),
        ))
    }

    /// The key as PKCS#8 DER (secret: keep it out of logs).
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let doc = match &self.inner {
            SigningInner::P256(k) => k.to_pkcs8_der(),
            SigningInner::P384(k) => k.to_pkcs8_der(),
        }
        .expect("encoding a valid key to PKCS#8 cannot fail");
        Zeroizing::new(doc.as_bytes().to_vec())
    }

    /// The key as a PKCS#8 PEM block (secret: keep it out of logs).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let der = self.to_pkcs8_der();
        Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec())))
    }

    pub fn curve(&self) -> Curve {
        match self.inner {
            SigningInner::P256(_) => Curve::P256,
            SigningInner::P384(_) => Curve::P384,
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        match &self.inner {
            SigningInner::P256(k) => VerifyingKey::P256(*k.verifying_key()),
            SigningInner::P384(k) => VerifyingKey::P384(*k.verifying_key()),
        }
    }

    /// Signs a digest computed elsewhere (CCF's root signatures: the 32-byte Merkle root).
    /// Returns a DER-encoded ECDSA signature.
    pub fn sign_prehashed(&self, digest: &[u8]) -> Result<Vec<u8>> {
        let padded = left_pad(digest, self.curve());
        let digest = &padded[..];
        if let Some(s) = self.sign_pooled(digest) {
            return Ok(s.to_der().as_bytes().to_vec());
        }
        let der = match &self.inner {
            SigningInner::P256(k) => {
                let s: p256::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|e| CryptoError::InvalidSignature(e.to_string()))?;
                s.to_der().as_bytes().to_vec()
            }
            SigningInner::P384(k) => {
                let s: p384::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|e| CryptoError::InvalidSignature(e.to_string()))?;
                s.to_der().as_bytes().to_vec()
            }
        };
        Ok(der)
    }

    /// Signs `msg` hashed with the curve's hash; returns the fixed-size r||s form used by COSE.
    pub fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        use ecdsa::signature::Signer;
        if self.nonces.is_some()
            && let Some(s) = self.sign_pooled(&HashAlg::Sha384.digest(msg))
        {
            return s.to_bytes().to_vec();
        }
        if let Some(k) = self.ring_key()
            && let Ok(sig) = k.sign(&ring::rand::SystemRandom::new(), msg)
        {
            return sig.as_ref().to_vec();
        }
        match &self.inner {
            SigningInner::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            SigningInner::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
        }
    }

    /// A key pair usable by rcgen to sign certificates.
    pub(crate) fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair> {
        let alg = match self.curve() {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let der = self.to_pkcs8_der();
        let pkd = rustls_pki_types::PrivatePkcs8KeyDer::from(&der[..]);
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkd, alg)
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))
    }
}

/// A public ECDSA key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyingKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl VerifyingKey {
    /// Parses a DER SubjectPublicKeyInfo holding a P-256 or P-384 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(VerifyingKey::P384(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(VerifyingKey::P256(k));
        }
        Err(CryptoError::InvalidKey(
            "not a P-256 or P-384 public key".into(),
        ))
    }

    /// Parses a PEM "PUBLIC KEY" block.
    pub fn from_pem(pem_str: &str) -> Result<Self> {
        let p = pem::parse(pem_str).map_err(|e| CryptoError::InvalidPem(e.to_string()))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(CryptoError::InvalidPem(format!(
                "expected PUBLIC KEY, found {}",
                p.tag()
            )));
        }
        Self::from_spki_der(p.contents())
    }

    pub fn curve(&self) -> Curve {
        match self {
            VerifyingKey::P256(_) => Curve::P256,
            VerifyingKey::P384(_) => Curve::P384,
        }
    }

    /// The DER SubjectPublicKeyInfo of the key.
    pub fn spki_der(&self) -> Vec<u8> {
        match self {
            VerifyingKey::P256(k) => k.to_public_key_der(),
            VerifyingKey::P384(k) => k.to_public_key_der(),
        }
        .expect("encoding a valid public key cannot fail")
        .as_bytes()
        .to_vec()
    }

    /// The PEM "PUBLIC KEY" form.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der()))
    }

    /// Verification with the key's table of multiples ([`crate::p384_table`]), for a P-384 key
    /// verified with before and a digest of at most 48 bytes. `None`: the caller verifies the
    /// ordinary way.
    fn verify_with_table(&self, digest: &[u8], sig: TableSig<'_>) -> Option<Result<()>> {
        let VerifyingKey::P384(k) = self else {
            return None;
        };
        let padded: [u8; 48] = left_pad(digest, Curve::P384).try_into().ok()?;
        let sig = match sig {
            TableSig::Der(der) => p384::ecdsa::Signature::from_der(der),
            TableSig::Fixed(raw) => p384::ecdsa::Signature::from_slice(raw),
        };
        let Ok(sig) = sig else {
            return Some(Err(CryptoError::InvalidSignature(
                "malformed ECDSA signature".into(),
            )));
        };
        Some(if crate::p384_table::verify(k, &padded, &sig)? {
            Ok(())
        } else {
            Err(CryptoError::InvalidSignature(
                "ECDSA signature does not verify".into(),
            ))
        })
    }

    /// Verifies a DER ECDSA signature over an already computed digest.
    pub fn verify_prehashed(&self, digest: &[u8], sig_der: &[u8]) -> Result<()> {
        if let Some(r) = self.verify_with_table(digest, TableSig::Der(sig_der)) {
            return r;
        }
        let bad = |e: ecdsa::Error| CryptoError::InvalidSignature(e.to_string());
        let padded = left_pad(digest, self.curve());
        let digest = &padded[..];
        match self {
            VerifyingKey::P256(k) => {
                let s = p256::ecdsa::Signature::from_der(sig_der).map_err(bad)?;
                k.verify_prehash(digest, &s).map_err(bad)
            }
            VerifyingKey::P384(k) => {
                let s = p384::ecdsa::Signature::from_der(sig_der).map_err(bad)?;
                k.verify_prehash(digest, &s).map_err(bad)
            }
        }
    }

    /// Verifies a DER ECDSA signature over SHA-256(`msg`): the same check as
    /// `verify_prehashed(&sha256(msg), sig)` when the caller knows the digest's preimage (a
    /// Merkle root is the hash of its two children), done by ring (faster than the pure-Rust
    /// prehashed check) until the key has a table of its own.
    pub fn verify_der_sha256(&self, msg: &[u8], sig_der: &[u8]) -> Result<()> {
        self.verify_der(msg, sig_der, HashAlg::Sha256)
    }

    /// Verifies a DER ECDSA signature over `msg` hashed with `hash`: with the key's table once a
    /// P-384 key has one ([`crate::p384_table`]), else with ring (about twice as fast as the
    /// pure-Rust curves, and ring has every curve/hash pair of `Curve` and `HashAlg`).
    pub fn verify_der(&self, msg: &[u8], sig_der: &[u8], hash: HashAlg) -> Result<()> {
        if self.curve() == Curve::P384
            && let Some(r) = self.verify_with_table(&hash.digest(msg), TableSig::Der(sig_der))
        {
            return r;
        }
        use ring::signature as rs;
        let alg: &dyn rs::VerificationAlgorithm = match (self, hash) {
            (VerifyingKey::P256(_), HashAlg::Sha256) => &rs::ECDSA_P256_SHA256_ASN1,
            (VerifyingKey::P256(_), HashAlg::Sha384) => &rs::ECDSA_P256_SHA384_ASN1,
            (VerifyingKey::P384(_), HashAlg::Sha256) => &rs::ECDSA_P384_SHA256_ASN1,
            (VerifyingKey::P384(_), HashAlg::Sha384) => &rs::ECDSA_P384_SHA384_ASN1,
        };
        alg.verify(self.sec1_point()[..].into(), msg.into(), sig_der.into())
            .map_err(|_| CryptoError::InvalidSignature("ECDSA signature does not verify".into()))
    }

    /// The uncompressed SEC1 point, as ring reads public keys.
    fn sec1_point(&self) -> Vec<u8> {
        match self {
            VerifyingKey::P256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
            VerifyingKey::P384(k) => k.to_encoded_point(false).as_bytes().to_vec(),
        }
    }

    /// Verifies a fixed-size r||s signature (COSE) over `msg` hashed with the curve's hash.
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        if self.curve() == Curve::P384
            && let Some(r) =
                self.verify_with_table(&HashAlg::Sha384.digest(msg), TableSig::Fixed(sig))
        {
            return r;
        }
        // Else ring: several times faster than the pure-Rust curves for whole messages.
        let alg: &dyn ring::signature::VerificationAlgorithm = match self {
            VerifyingKey::P256(_) => &ring::signature::ECDSA_P256_SHA256_FIXED,
            VerifyingKey::P384(_) => &ring::signature::ECDSA_P384_SHA384_FIXED,
        };
        alg.verify(self.sec1_point()[..].into(), msg.into(), sig.into())
            .map_err(|_| CryptoError::InvalidSignature("ECDSA signature does not verify".into()))
    }

    /// The affine coordinates (x, y), big-endian, as COSE keys carry them.
    pub fn affine_coordinates(&self) -> (Vec<u8>, Vec<u8>) {
        let point = self.sec1_point();
        let n = (point.len() - 1) / 2;
        (point[1..1 + n].to_vec(), point[1 + n..].to_vec())
    }
}

/// A signature in one of its two encodings.
enum TableSig<'a> {
    /// ASN.1 DER (X.509, CCF's node signatures).
    Der(&'a [u8]),
    /// r ‖ s, fixed size (COSE).
    Fixed(&'a [u8]),
}

/// A digest shorter than the curve's field, as the integer it stands for in a field-sized buffer
/// (zeros on the left). X9.62 and OpenSSL read a short digest as that integer; RustCrypto's
/// `bits2field` pads on the right instead, which would make P-384 signatures over 32-byte
/// digests (CCF's Merkle roots) unverifiable by everyone else.
fn left_pad(digest: &[u8], curve: Curve) -> Vec<u8> {
    let field = match curve {
        Curve::P256 => 32,
        Curve::P384 => 48,
    };
    if digest.len() >= field {
        return digest.to_vec();
    }
    let mut out = vec![0u8; field - digest.len()];
    out.extend_from_slice(digest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prehashed_signatures_round_trip_on_both_curves() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve).unwrap();
            let root = crate::sha256(b"root");
            let sig = k.sign_prehashed(&root).unwrap();
            let vk = k.verifying_key();
            vk.verify_prehashed(&root, &sig).unwrap();
            let other = crate::sha256(b"other");
            assert!(vk.verify_prehashed(&other, &sig).is_err());
            assert!(vk.verify_prehashed(&root, &sig[1..]).is_err());
            let vk2 = VerifyingKey::from_spki_der(&vk.spki_der()).unwrap();
            assert_eq!(vk, vk2);
            assert_eq!(vk2.curve(), curve);
        }
    }

    #[test]
    fn raw_signatures_and_pem_round_trip() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve).unwrap();
            let sig = k.sign_raw(b"message");
            k.verifying_key().verify_raw(b"message", &sig).unwrap();
            assert!(k.verifying_key().verify_raw(b"messagf", &sig).is_err());
            let pem = k.to_pkcs8_pem();
            let k2 = SigningKey::from_pem(&pem).unwrap();
            assert_eq!(k.verifying_key(), k2.verifying_key());
            assert!(!format!("{k:?}").contains(&hex::encode(&k.to_pkcs8_der()[..])));
            k.rcgen_key_pair().unwrap();
        }
    }

    #[test]
    fn prehashed_and_preimage_verification_agree() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve).unwrap();
            let msg = [7u8; 64];
            let sig = k.sign_prehashed(&crate::sha256(&msg)).unwrap();
            let v = k.verifying_key();
            v.verify_prehashed(&crate::sha256(&msg), &sig).unwrap();
            v.verify_der_sha256(&msg, &sig).unwrap();
            assert!(v.verify_der_sha256(&[8u8; 64], &sig).is_err());
            // Every curve/hash pair: ring's verification of the message agrees with a
            // signature over its digest, and refuses another message or hash.
            for hash in [HashAlg::Sha256, HashAlg::Sha384] {
                let sig = k.sign_prehashed(&hash.digest(&msg)).unwrap();
                v.verify_der(&msg, &sig, hash).unwrap();
                assert!(v.verify_der(&[8u8; 64], &sig, hash).is_err());
                let other = match hash {
                    HashAlg::Sha256 => HashAlg::Sha384,
                    HashAlg::Sha384 => HashAlg::Sha256,
                };
                assert!(v.verify_der(&msg, &sig, other).is_err());
            }
        }
    }

    #[test]
    fn ring_and_rustcrypto_agree() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve).unwrap();
            assert!(
                k.ring_key().is_some(),
                "ring loads our PKCS#8 for {curve:?}"
            );
            let sig = k.sign_raw(b"message");
            k.verifying_key().verify_raw(b"message", &sig).unwrap();
            assert!(k.verifying_key().verify_raw(b"messagf", &sig).is_err());
            // A clone shares nothing it should not: it signs the same way.
            let c = k.clone();
            k.verifying_key()
                .verify_raw(b"m2", &c.sign_raw(b"m2"))
                .unwrap();
        }
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(SigningKey::from_pem("not a pem").is_err());
        assert!(SigningKey::from_pkcs8_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
        assert!(VerifyingKey::from_spki_der(b"\x30\x00").is_err());
    }
}
