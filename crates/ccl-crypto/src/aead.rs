//! AES-256-GCM with detached tags, as CCF's ledger entries store them (tag, then IV, then data).

use crate::{CryptoError, Result};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const IV_LEN: usize = 12;

/// An AES-256-GCM key. The caller guarantees that an IV is never reused under one key (the ledger
/// derives IVs from the unique (seqno, view) of each entry).
pub struct AesGcmKey(LessSafeKey);

impl std::fmt::Debug for AesGcmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesGcmKey(..)")
    }
}

impl AesGcmKey {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // A 32-byte key is always accepted by AES-256.
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes 32-byte keys");
        AesGcmKey(LessSafeKey::new(unbound))
    }

    /// Encrypts `data` in place and returns the tag, which also authenticates `aad`.
    pub fn seal(&self, iv: [u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), data)
            .expect("AES-GCM sealing fails only for inputs beyond 64 GiB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `data` in place, checking `tag` over the ciphertext and `aad`.
    pub fn open(
        &self,
        iv: [u8; IV_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        let tag = Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(aad),
                tag,
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::DecryptionFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = AesGcmKey::new(&[7u8; 32]);
        let iv = [1u8; 12];
        let mut data = b"secret payload".to_vec();
        let tag = key.seal(iv, b"header", &mut data);
        assert_ne!(&data[..], b"secret payload");
        let mut copy = data.clone();
        key.open(iv, b"header", &mut copy, &tag).unwrap();
        assert_eq!(&copy[..], b"secret payload");
        // Altered AAD, ciphertext, tag or IV, or another key: refused.
        assert!(key.open(iv, b"Header", &mut data.clone(), &tag).is_err());
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert!(key.open(iv, b"header", &mut bad, &tag).is_err());
        let mut bad_tag = tag;
        bad_tag[15] ^= 0x80;
        assert!(
            key.open(iv, b"header", &mut data.clone(), &bad_tag)
                .is_err()
        );
        assert!(
            key.open([2u8; 12], b"header", &mut data.clone(), &tag)
                .is_err()
        );
        assert!(
            AesGcmKey::new(&[8u8; 32])
                .open(iv, b"header", &mut data.clone(), &tag)
                .is_err()
        );
    }

    #[test]
    fn empty_plaintext_still_authenticates_aad() {
        let key = AesGcmKey::new(&[9u8; 32]);
        let tag = key.seal([0u8; 12], b"public domain", &mut []);
        key.open([0u8; 12], b"public domain", &mut [], &tag)
            .unwrap();
        assert!(
            key.open([0u8; 12], b"public domomain", &mut [], &tag)
                .is_err()
        );
    }
}
