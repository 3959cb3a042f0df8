//! Encryption of a secret to the holder of an ECDSA key (P-256 or P-384), so that ledger secrets
//! can be handed to a joining node, encrypted to the key its attestation evidence binds.
//!
//! Scheme (ECIES, ephemeral-static):
//! 1. an ephemeral key pair on the recipient's curve; `z` = ECDH(ephemeral secret, recipient);
//! 2. `k` = HKDF-SHA256(salt = [`KDF_SALT`], ikm = `z`,
//!    info = ephemeral point ‖ recipient point ‖ `info`), 32 bytes (both points SEC1 uncompressed:
//!    fixed length for a curve, so the concatenation is unambiguous);
//! 3. AES-256-GCM under `k` with a random 12-byte nonce; the header below is the associated data.
//!
//! Format: `version (1) ‖ ephemeral point (SEC1 uncompressed: 65 bytes on P-256, 97 on P-384) ‖
//! nonce (12) ‖ ciphertext ‖ tag (16)`. The curve is the recipient's, so the opener knows the
//! point's length.

use crate::aead::{AesGcmKey, IV_LEN, TAG_LEN};
use crate::keys::{SigningInner, VerifyingKey};
use crate::{CryptoError, Curve, Result, SigningKey};
use zeroize::Zeroizing;

/// The format version (first byte of a sealed message).
pub const VERSION: u8 = 1;
/// HKDF salt: separates these keys from any other use of the same ECDH secret.
pub const KDF_SALT: &[u8] = b"ccl ecies v1 hkdf-sha256 aes-256-gcm";
/// Largest plaintext sealed (the ledger secrets of a long-lived service fit easily).
pub const MAX_SEALED_PLAINTEXT: usize = 16 << 20;

/// Length of an uncompressed SEC1 point on `curve`.
pub fn point_len(curve: Curve) -> usize {
    match curve {
        Curve::P256 => 65,
        Curve::P384 => 97,
    }
}

/// Length of the sealed form of `plaintext_len` bytes to a key on `curve`.
pub fn sealed_len(curve: Curve, plaintext_len: usize) -> usize {
    1 + point_len(curve) + IV_LEN + plaintext_len + TAG_LEN
}

fn kdf(shared: &[u8], eph_point: &[u8], recipient_point: &[u8], info: &[u8]) -> Result<AesGcmKey> {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let failed = |_| CryptoError::InvalidKey("HKDF expansion failed".into());
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, KDF_SALT).extract(shared);
    let info = [eph_point, recipient_point, info];
    let okm = prk.expand(&info, Len32).map_err(failed)?;
    let mut key = Zeroizing::new([0u8; 32]);
    okm.fill(&mut key[..]).map_err(failed)?;
    Ok(AesGcmKey::new(&key))
}

/// ECDH between `secret` and `public` (same curve): the shared x-coordinate.
fn ecdh(secret: &SigningKey, public: &VerifyingKey) -> Result<Zeroizing<Vec<u8>>> {
    match (&secret.inner, public) {
        (SigningInner::P256(s), VerifyingKey::P256(p)) => {
            let shared = p256::ecdh::diffie_hellman(s.as_nonzero_scalar(), p.as_affine());
            Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
        }
        (SigningInner::P384(s), VerifyingKey::P384(p)) => {
            let shared = p384::ecdh::diffie_hellman(s.as_nonzero_scalar(), p.as_affine());
            Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
        }
        _ => Err(CryptoError::InvalidKey("keys on different curves".into())),
    }
}

fn sec1_uncompressed(key: &VerifyingKey) -> Vec<u8> {
    match key {
        VerifyingKey::P256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
        VerifyingKey::P384(k) => k.to_encoded_point(false).as_bytes().to_vec(),
    }
}

/// Parses an uncompressed SEC1 point on `curve` (the identity and points off the curve are
/// refused by the curve crates).
fn point_from_sec1(curve: Curve, bytes: &[u8]) -> Option<VerifyingKey> {
    if bytes.len() != point_len(curve) || bytes.first() != Some(&0x04) {
        return None;
    }
    match curve {
        Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .ok()
            .map(VerifyingKey::P256),
        Curve::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .ok()
            .map(VerifyingKey::P384),
    }
}

/// Encrypts `plaintext` to the holder of `recipient`'s private key. `info` binds the purpose
/// (the opener must give the same). Two seals of one plaintext differ (fresh ephemeral key and
/// nonce).
pub fn seal_to(recipient: &VerifyingKey, info: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_SEALED_PLAINTEXT {
        return Err(CryptoError::TooLarge(format!(
            "plaintext of {} bytes, at most {MAX_SEALED_PLAINTEXT} can be sealed",
            plaintext.len()
        )));
    }
    let curve = recipient.curve();
    let eph = SigningKey::generate(curve)?;
    let eph_point = sec1_uncompressed(&eph.verifying_key());
    let shared = ecdh(&eph, recipient)?;
    let key = kdf(&shared, &eph_point, &sec1_uncompressed(recipient), info)?;
    let nonce = crate::random_array::<IV_LEN>()?;
    let mut out = Vec::with_capacity(sealed_len(curve, plaintext.len()));
    out.push(VERSION);
    out.extend_from_slice(&eph_point);
    out.extend_from_slice(&nonce);
    let header_len = out.len();
    out.extend_from_slice(plaintext);
    let (header, data) = out.split_at_mut(header_len);
    let tag = key.seal(nonce, header, data);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts what [`seal_to`] sealed to `key`'s public key, with the same `info`. Anything else
/// (another key or curve, another `info`, an altered or truncated message, another version) is
/// [`CryptoError::DecryptionFailed`].
pub fn open_with(key: &SigningKey, info: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let curve = key.curve();
    let plen = point_len(curve);
    let header_len = 1 + plen + IV_LEN;
    if sealed.len() < header_len + TAG_LEN || sealed.first() != Some(&VERSION) {
        return Err(CryptoError::DecryptionFailed);
    }
    let (header, body) = sealed.split_at(header_len);
    let eph_point = &header[1..1 + plen];
    let nonce: [u8; IV_LEN] = header[1 + plen..]
        .try_into()
        .map_err(|_| CryptoError::DecryptionFailed)?;
    let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::DecryptionFailed)?;
    let eph = point_from_sec1(curve, eph_point).ok_or(CryptoError::DecryptionFailed)?;
    let shared = ecdh(key, &eph)?;
    let aes = kdf(
        &shared,
        eph_point,
        &sec1_uncompressed(&key.verifying_key()),
        info,
    )?;
    let mut data = Zeroizing::new(ciphertext.to_vec());
    aes.open(nonce, header, &mut data, &tag)
        .map_err(|_| CryptoError::DecryptionFailed)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_on_both_curves() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve).unwrap();
            for plaintext in [&b""[..], b"x", b"ledger secret", &[0xAB; 4096]] {
                let sealed = seal_to(&k.verifying_key(), b"info", plaintext).unwrap();
                assert_eq!(sealed.len(), sealed_len(curve, plaintext.len()));
                assert_eq!(sealed[0], VERSION);
                assert_eq!(sealed[1], 0x04, "uncompressed ephemeral point");
                assert_eq!(&open_with(&k, b"info", &sealed).unwrap()[..], plaintext);
            }
            // A key read back from its PKCS#8 opens too.
            let sealed = seal_to(&k.verifying_key(), b"", b"s").unwrap();
            let k2 = SigningKey::from_pkcs8_der(&k.to_pkcs8_der()).unwrap();
            assert_eq!(&open_with(&k2, b"", &sealed).unwrap()[..], b"s");
        }
    }

    #[test]
    fn only_the_right_key_and_info_open() {
        for curve in [Curve::P256, Curve::P384] {
            let k = SigningKey::generate(curve).unwrap();
            let other = SigningKey::generate(curve).unwrap();
            let sealed = seal_to(&k.verifying_key(), b"info", b"ledger secret").unwrap();
            assert_eq!(
                open_with(&other, b"info", &sealed),
                Err(CryptoError::DecryptionFailed)
            );
            assert_eq!(
                open_with(&k, b"other info", &sealed),
                Err(CryptoError::DecryptionFailed)
            );
            assert!(open_with(&k, b"inf", &sealed).is_err());
            assert!(open_with(&k, b"", &sealed).is_err());
            // Two seals of the same plaintext differ (fresh ephemeral key and nonce).
            assert_ne!(
                sealed,
                seal_to(&k.verifying_key(), b"info", b"ledger secret").unwrap()
            );
        }
        let p256 = SigningKey::generate(Curve::P256).unwrap();
        let p384 = SigningKey::generate(Curve::P384).unwrap();
        let to_384 = seal_to(&p384.verifying_key(), b"i", b"x").unwrap();
        assert!(open_with(&p256, b"i", &to_384).is_err(), "wrong curve");
        let to_256 = seal_to(&p256.verifying_key(), b"i", b"x").unwrap();
        assert!(open_with(&p384, b"i", &to_256).is_err(), "wrong curve");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let k = SigningKey::generate(Curve::P384).unwrap();
        let sealed = seal_to(&k.verifying_key(), b"i", b"secret").unwrap();
        assert!(open_with(&k, b"i", &[]).is_err());
        assert!(open_with(&k, b"i", &[VERSION]).is_err());
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert!(open_with(&k, b"i", &v2).is_err());
        // The point at infinity, a compressed point, and a point off the curve.
        let mut bad = sealed.clone();
        bad[1..98].fill(0);
        assert!(open_with(&k, b"i", &bad).is_err());
        let mut bad = sealed.clone();
        bad[1] = 0x02;
        assert!(open_with(&k, b"i", &bad).is_err());
        let mut bad = sealed.clone();
        bad[50] ^= 0xff;
        assert!(open_with(&k, b"i", &bad).is_err());
        // Extra bytes at the end change the tag's position: refused.
        let mut long = sealed.clone();
        long.push(0);
        assert!(open_with(&k, b"i", &long).is_err());
        assert!(matches!(
            seal_to(&k.verifying_key(), b"i", &vec![0; MAX_SEALED_PLAINTEXT + 1]),
            Err(CryptoError::TooLarge(_))
        ));
    }

    /// Decrypts following the module documentation only, with the primitives directly.
    #[test]
    fn format_is_as_documented() {
        let k = SigningKey::generate(Curve::P384).unwrap();
        let sealed = seal_to(&k.verifying_key(), b"purpose", b"the plaintext").unwrap();
        assert_eq!(sealed[0], 1);
        let eph = p384::PublicKey::from_sec1_bytes(&sealed[1..98]).unwrap();
        let nonce: [u8; 12] = sealed[98..110].try_into().unwrap();
        let SigningInner::P384(sk) = &k.inner else {
            unreachable!()
        };
        let z = p384::ecdh::diffie_hellman(sk.as_nonzero_scalar(), eph.as_affine());
        let recipient = k.verifying_key();
        let VerifyingKey::P384(rp) = &recipient else {
            unreachable!()
        };
        let rp = rp.to_encoded_point(false);
        let prk = ring::hkdf::Salt::new(
            ring::hkdf::HKDF_SHA256,
            b"ccl ecies v1 hkdf-sha256 aes-256-gcm",
        )
        .extract(z.raw_secret_bytes());
        let info = [&sealed[1..98], rp.as_bytes(), b"purpose"];
        let okm = prk.expand(&info, &ring::aead::AES_256_GCM).unwrap();
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm));
        let mut ct_and_tag = sealed[110..].to_vec();
        let plain = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&sealed[..110]),
                &mut ct_and_tag,
            )
            .unwrap();
        assert_eq!(plain, b"the plaintext");
    }

    fn sealed_fixture(curve: Curve) -> (SigningKey, Vec<u8>) {
        let k = SigningKey::generate(curve).unwrap();
        let sealed = seal_to(&k.verifying_key(), b"info", b"some secret bytes").unwrap();
        (k, sealed)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn any_flipped_bit_fails(p384 in any::<bool>(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (k, sealed) = sealed_fixture(if p384 { Curve::P384 } else { Curve::P256 });
            let mut bad = sealed.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert_eq!(open_with(&k, b"info", &bad), Err(CryptoError::DecryptionFailed));
        }

        #[test]
        fn any_truncation_fails(p384 in any::<bool>(), cut in any::<prop::sample::Index>()) {
            let (k, sealed) = sealed_fixture(if p384 { Curve::P384 } else { Curve::P256 });
            let n = cut.index(sealed.len());
            prop_assert_eq!(open_with(&k, b"info", &sealed[..n]), Err(CryptoError::DecryptionFailed));
            prop_assert!(open_with(&k, b"info", &sealed[sealed.len() - n..]).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let k = SigningKey::generate(Curve::P384).unwrap();
            prop_assert!(open_with(&k, b"info", &bytes).is_err());
        }
    }
}
