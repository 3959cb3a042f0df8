//! SHA-256 and HMAC-SHA256.

use ring::{digest, hmac};

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest32 {
    to_array(digest::digest(&digest::SHA256, data).as_ref())
}

/// SHA-256 of the concatenation of `parts`, without copying them together.
pub fn sha256_parts(parts: &[&[u8]]) -> Digest32 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    to_array(ctx.finish().as_ref())
}

/// SHA-256 of two 32-byte values concatenated: the inner node of CCF's Merkle tree.
pub fn sha256_pair(left: &Digest32, right: &Digest32) -> Digest32 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    sha256(&buf)
}

/// Incremental SHA-256.
#[derive(Clone)]
pub struct Sha256(digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256(digest::Context::new(&digest::SHA256))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub fn finish(self) -> Digest32 {
        to_array(self.0.finish().as_ref())
    }
}

/// An HMAC-SHA256 key with its inner and outer states precomputed, for repeated use.
#[derive(Clone)]
pub struct HmacKey(hmac::Key);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    pub fn new(key: &[u8]) -> Self {
        HmacKey(hmac::Key::new(hmac::HMAC_SHA256, key))
    }
    pub fn sign(&self, data: &[u8]) -> Digest32 {
        to_array(hmac::sign(&self.0, data).as_ref())
    }
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Digest32 {
    HmacKey::new(key).sign(data)
}

/// Parses 64 hex digits (either case) into a digest.
pub fn digest_from_hex(s: &str) -> Option<Digest32> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn to_array(s: &[u8]) -> Digest32 {
    let mut out = [0u8; 32];
    out.copy_from_slice(s);
    out
}

/// Compares two byte strings in constant time (for MACs and secrets).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_parts(&[b"a", b"bc"]), sha256(b"abc"));
        let mut s = Sha256::new();
        s.update(b"ab");
        s.update(b"c");
        assert_eq!(s.finish(), sha256(b"abc"));
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hex_parsing() {
        let d = sha256(b"x");
        assert_eq!(digest_from_hex(&hex::encode(d)), Some(d));
        assert_eq!(digest_from_hex(&hex::encode(d).to_uppercase()), Some(d));
        assert_eq!(digest_from_hex("00"), None);
        assert_eq!(digest_from_hex(&"zz".repeat(32)), None);
        assert!(constant_time_eq(b"ab", b"ab"));
        assert!(!constant_time_eq(b"ab", b"ac"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
