//! Cryptographic primitives of ccl.
//!
//! Everything the ledger, the receipts and the service need, in one place, so that the rest of the
//! code never touches a crypto library directly:
//! - [`hash`]: SHA-256 and HMAC-SHA256 (ring, hardware accelerated);
//! - [`aead`]: AES-256-GCM with detached tags, as the ledger format stores them;
//! - [`keys`]: ECDSA P-256 / P-384 signing and verifying keys, including signatures over a
//!   pre-hashed digest (CCF signs Merkle roots that way);
//! - [`p384_table`]: P-384 products from tables of a point's multiples (nonces, and repeated
//!   verifications by one key);
//! - [`presign`]: P-384 nonces precomputed on a thread, for signatures in microseconds;
//! - [`cert`]: X.509 certificates: generation (service CA, endorsed node certificates,
//!   identities), parsing and endorsement checks;
//! - [`cose`]: COSE Sign1 messages (root signatures, governance requests);
//! - [`ecies`]: encryption to an ECDSA key's holder (ledger secrets for a joining node);
//! - [`oaep`]: RSA-OAEP-SHA256 (recovery shares for recovery members, as CCF encrypts them);
//! - [`shamir`]: k-of-n secret sharing over GF(2^8) (the key that wraps the ledger secret).
//!
//! This crate is pure: no file or network I/O and no async runtime (a [`presign::NoncePool`]
//! runs a plain thread of its own).

pub mod aead;
pub mod cert;
pub mod cose;
pub mod ecies;
pub mod hash;
pub mod keys;
pub mod oaep;
pub mod p384_table;
pub mod presign;
pub mod shamir;

pub use cert::Certificate;
pub use hash::{Digest32, HmacKey, sha256, sha256_parts};
pub use keys::{Curve, SigningKey, VerifyingKey};

/// Errors of the cryptographic layer. Messages never contain secret material.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    #[error("invalid COSE message: {0}")]
    InvalidCose(String),
    #[error("decryption failed (wrong key, or the data or its authenticated header was altered)")]
    DecryptionFailed,
    #[error("input too large: {0}")]
    TooLarge(String),
    #[error("certificate generation failed: {0}")]
    Generation(String),
    #[error("random number generator failure")]
    Rng,
}

pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::Rng)
}

/// Returns `N` cryptographically secure random bytes.
pub fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    random_bytes(&mut out)?;
    Ok(out)
}
