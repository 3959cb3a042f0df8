//! RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) with 2048-bit keys: how recovery shares are
//! encrypted to recovery members, as CCF does, so that a member can also decrypt theirs with
//! `openssl pkeyutl -decrypt -inkey enc_privk.pem -pkeyopt rsa_padding_mode:oaep
//! -pkeyopt rsa_oaep_md:sha256`.
//!
//! Keys are PEM: public keys as SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`), private keys as PKCS#8
//! (`BEGIN PRIVATE KEY`). The service only ever encrypts; decryption is for a member's own tools.

use crate::{CryptoError, Result};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

/// Size of generated encryption keys.
pub const KEY_BITS: usize = 2048;
/// Smallest modulus accepted for a member's encryption key.
pub const MIN_KEY_BITS: usize = 2048;
/// Largest modulus accepted (bounds the cost of an encryption).
pub const MAX_KEY_BITS: usize = 8192;

/// A member's RSA public encryption key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionPublicKey(rsa::RsaPublicKey);

/// A member's RSA private encryption key. `Debug` never shows it.
pub struct EncryptionPrivateKey(rsa::RsaPrivateKey);

impl std::fmt::Debug for EncryptionPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionPrivateKey(..)")
    }
}

fn oaep() -> rsa::Oaep {
    rsa::Oaep::new::<sha2::Sha256>()
}

impl EncryptionPublicKey {
    /// Parses a `BEGIN PUBLIC KEY` PEM (also `BEGIN RSA PUBLIC KEY`, PKCS#1) of 2048 to 8192 bits.
    pub fn from_pem(pem: &str) -> Result<Self> {
        use rsa::pkcs1::DecodeRsaPublicKey;
        let key = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
            .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
            .map_err(|e| CryptoError::InvalidKey(format!("RSA public key: {e}")))?;
        let bits = key.size() * 8;
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
            return Err(CryptoError::InvalidKey(format!(
                "RSA public key of {bits} bits: {MIN_KEY_BITS} to {MAX_KEY_BITS} are accepted"
            )));
        }
        Ok(EncryptionPublicKey(key))
    }

    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))
    }

    /// RSA-OAEP-SHA256 encryption of `plaintext` (at most 190 bytes with a 2048-bit key).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut rng = rand_core::OsRng;
        self.0
            .encrypt(&mut rng, oaep(), plaintext)
            .map_err(|e| CryptoError::InvalidKey(format!("RSA-OAEP encryption: {e}")))
    }
}

impl EncryptionPrivateKey {
    /// A fresh [`KEY_BITS`]-bit key.
    pub fn generate() -> Result<Self> {
        let mut rng = rand_core::OsRng;
        rsa::RsaPrivateKey::new(&mut rng, KEY_BITS)
            .map(EncryptionPrivateKey)
            .map_err(|e| CryptoError::Generation(format!("RSA key: {e}")))
    }

    /// Parses a PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        rsa::RsaPrivateKey::from_pkcs8_pem(pem.trim())
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem.trim()))
            .map(EncryptionPrivateKey)
            .map_err(|_| CryptoError::InvalidKey("not an RSA private key PEM".into()))
    }

    pub fn to_pem(&self) -> Result<Zeroizing<String>> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|p| Zeroizing::new(p.to_string()))
            .map_err(|e| CryptoError::InvalidKey(e.to_string()))
    }

    pub fn public_key(&self) -> EncryptionPublicKey {
        EncryptionPublicKey(self.0.to_public_key())
    }

    /// RSA-OAEP-SHA256 decryption (a member's own tool; the service never decrypts).
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.0
            .decrypt(oaep(), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::DecryptionFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_decrypt_and_pem_round_trips() {
        let k = EncryptionPrivateKey::generate().unwrap();
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let k2 = EncryptionPrivateKey::from_pem(&pem).unwrap();
        let public = k.public_key().to_pem().unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let p = EncryptionPublicKey::from_pem(&public).unwrap();
        let c = p.encrypt(b"a share").unwrap();
        assert_eq!(c.len(), 256);
        assert_eq!(&k2.decrypt(&c).unwrap()[..], b"a share");
        let mut bad = c.clone();
        bad[10] ^= 1;
        assert_eq!(k2.decrypt(&bad).unwrap_err(), CryptoError::DecryptionFailed);
        let other = EncryptionPrivateKey::generate().unwrap();
        assert!(other.decrypt(&c).is_err());
        assert!(!format!("{k:?}").contains("PRIVATE"));
        assert!(EncryptionPublicKey::from_pem("nonsense").is_err());
    }
}
