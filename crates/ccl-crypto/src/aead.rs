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

/// Encrypts `plaintext` under `key` with a fresh random IV into one self-contained blob:
/// `tag (16) ‖ IV (12) ‖ ciphertext` (CCF's `GcmCipher` layout). For keys that wrap other keys
/// (a ledger secret under its successor or under the recovery wrapping key).
pub fn seal_blob(key: &[u8; KEY_LEN], plaintext: &[u8]) -> Result<Vec<u8>> {
    let iv = crate::random_array::<IV_LEN>()?;
    let mut data = plaintext.to_vec();
    let tag = AesGcmKey::new(key).seal(iv, &[], &mut data);
    let mut out = Vec::with_capacity(TAG_LEN + IV_LEN + data.len());
    out.extend_from_slice(&tag);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Opens what [`seal_blob`] sealed under `key`.
pub fn open_blob(key: &[u8; KEY_LEN], blob: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    if blob.len() < TAG_LEN + IV_LEN {
        return Err(CryptoError::DecryptionFailed);
    }
    let tag: [u8; TAG_LEN] = blob[..TAG_LEN].try_into().expect("length checked");
    let iv: [u8; IV_LEN] = blob[TAG_LEN..TAG_LEN + IV_LEN]
        .try_into()
        .expect("length checked");
    let mut data = zeroize::Zeroizing::new(blob[TAG_LEN + IV_LEN..].to_vec());
    AesGcmKey::new(key).open(iv, &[], &mut data, &tag)?;
    Ok(data)
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

    #[test]
    fn blobs_round_trip_and_detect_tampering() {
        let k = [3u8; 32];
        let b = seal_blob(&k, b"secret").unwrap();
        assert_eq!(b.len(), TAG_LEN + IV_LEN + 6);
        assert_eq!(&open_blob(&k, &b).unwrap()[..], b"secret");
        assert_ne!(seal_blob(&k, b"secret").unwrap(), b, "fresh IV each time");
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(open_blob(&k, &bad).is_err());
        assert!(open_blob(&[4u8; 32], &b).is_err());
        assert!(open_blob(&k, &b[..20]).is_err());
    }
}
